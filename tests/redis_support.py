"""Real ``redis-server`` processes and ``imscore serve`` nodes for the pool tests (tests/test_redis*.py).

:class:`RedisServer` starts Debian's ``redis-server`` on a free loopback port with its append-only
file in a temporary directory (``appendfsync always``, the setting docs/deployment.rst recommends),
and stops it by its PID; it can be stopped and started again on the same port with the same files.
:func:`redis_cluster` makes a three-master Redis Cluster with ``redis-cli --cluster create``.
:class:`Node` is one ``imscore serve --store redis://… --node-id NAME`` process whose log goes to a
file (a pipe nobody reads would fill up under load and stall the server).

Without the ``redis-server`` binary or redis-py the tests skip with the reason (CI's
``IMSCORE_REQUIRE_ALL=1`` turns that into a failure).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

DOMAIN = "ims.example.test"
READY = re.compile(r"ready: listening on (.*?) \(profile")
#: alice's implicit set has two IMPUs (filed under the first); carol may have 3 devices at most,
#: alice and dave thousands
SUBSCRIBERS = f"""subscribers:
  - impi: alice@{DOMAIN}
    password: alice-secret
    max_devices: 5000
    implicit_sets: [[sip:alice@{DOMAIN}, tel:+15551230001]]
  - impi: carol@{DOMAIN}
    password: carol-secret
    max_devices: 3
    implicit_sets: [[sip:carol@{DOMAIN}]]
  - impi: dave@{DOMAIN}
    password: dave-secret
    max_devices: 5000
    implicit_sets: [[sip:dave@{DOMAIN}]]
"""


def need_redis() -> str:
    """The path of ``redis-server``; skips the test (with the reason) when it or redis-py is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    pytest.importorskip("redis", reason="redis-py is not installed (pip install 'imscore[redis]')")
    return binary


def free_port() -> int:
    """A free loopback TCP port at most 55535 whose cluster bus port (+10000) is free too: Redis
    Cluster refuses a higher port, and the kernel's ephemeral range often lies above it."""
    import random

    for _ in range(200):
        port = random.randint(20000, 55535)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as one, socket.socket(
                socket.AF_INET, socket.SOCK_STREAM
            ) as bus:
                one.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise AssertionError("no free loopback port pair for redis-server found")


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` on ``127.0.0.1:port``, its files in ``directory``."""

    def __init__(self, directory: Path, port: int | None = None, *, cluster: bool = False) -> None:
        self.binary = need_redis()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.cluster = cluster
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
            "--protected-mode", "no", "--logfile", str(self.directory / "redis.log"),
        ]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM to its PID (it writes its files and exits), then wait."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=20
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def redis_cluster(directory: Path, masters: int = 3) -> Iterator[list[RedisServer]]:
    """``masters`` cluster nodes joined with ``redis-cli --cluster create`` (no replicas)."""
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed (Debian package redis-tools)")
    servers = [RedisServer(directory / f"node{n}", cluster=True) for n in range(masters)]
    try:
        for server in servers:
            server.start()
        addresses = [f"127.0.0.1:{s.port}" for s in servers]
        result = subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        deadline = time.monotonic() + 20
        while not all("cluster_state:ok" in s.cli("cluster", "info") for s in servers):
            assert time.monotonic() < deadline, "the Redis Cluster did not become ok"
            time.sleep(0.1)
        yield servers
    finally:
        for server in servers:
            server.stop()


def cluster_url(servers: Sequence[RedisServer]) -> str:
    return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in servers)


class Node:
    """One ``imscore serve`` process of the pool: UDP (and TCP) on loopback, its log in a file."""

    def __init__(
        self, store: str, name: str, directory: Path, *extra: str, transports: Sequence[str] = ("udp",)
    ) -> None:
        self.name = name
        directory.mkdir(parents=True, exist_ok=True)
        subscribers = directory / "subscribers.yaml"
        subscribers.write_text(SUBSCRIBERS)
        self.log_path = directory / f"{name}.log"
        listens = [arg for t in transports for arg in ("--listen", f"{t}:127.0.0.1:0")]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "imscore", "serve", "--store", store, "--node-id", name,
                 "--subscribers", str(subscribers), *listens, *extra],
                stdout=subprocess.DEVNULL, stderr=log,
            )
        self.addresses: dict[str, tuple[str, int]] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = READY.search(self.log())
            if match:
                for spec in match.group(1).split():
                    transport, rest = spec.split(":", 1)
                    host, _, port = rest.rpartition(":")
                    self.addresses.setdefault(transport, (host.strip("[]"), int(port)))
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"node {name} did not get ready:\n{self.log()}")

    @property
    def udp(self) -> tuple[str, int]:
        return self.addresses["udp"]

    @property
    def tcp(self) -> tuple[str, int]:
        return self.addresses["tcp"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM to its PID; its exit status."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL to its PID."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@contextlib.contextmanager
def nodes(
    store: str, directory: Path, names: Sequence[str], *extra: str, transports: Sequence[str] = ("udp",)
) -> Iterator[list[Node]]:
    started: list[Node] = []
    try:
        for name in names:
            started.append(Node(store, name, directory, *extra, transports=transports))
        yield started
    finally:
        for node in started:
            node.stop()


def short_expiry_profile(directory: Path) -> Path:
    """The default profile with ``min_expires: 1``, so a test binding can expire in seconds."""
    profile = directory / "short.yaml"
    shown = subprocess.run(
        [sys.executable, "-m", "imscore", "profile", "show", "default"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    profile.write_text(shown.replace("min_expires: 60", "min_expires: 1"))
    return profile
