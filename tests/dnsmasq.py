"""A real dnsmasq on a free loopback port, for the DNS tests (stopped by PID)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import pytest

DNSMASQ = shutil.which("dnsmasq") or (
    "/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None
)


@dataclass
class Dnsmasq:
    """A running dnsmasq: where it listens and its process."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _answers(port: int, probe: str) -> bool:
    query = dns.message.make_query(probe, "A")
    try:
        asyncio.run(dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=0.2))
    except (dns.exception.DNSException, OSError):
        return False
    return True


@contextmanager
def running_dnsmasq(
    folder: Path, records: Sequence[str], *, domain: str, probe: str, ttl: int = 30
) -> Iterator[Dnsmasq]:
    """dnsmasq serving ``records`` (its command-line record options) for ``domain`` on 127.0.0.1;
    ``probe`` is a name with an A record, asked until dnsmasq answers. Skips the test (with the
    Debian package to install) when dnsmasq is missing."""
    if DNSMASQ is None:
        pytest.skip("dnsmasq not installed (Debian package dnsmasq-base)")
    for _attempt in range(5):  # the free port may be taken (TCP side) between probe and start
        port = free_udp_port()
        log = (folder / f"dnsmasq-{port}.log").open("wb")
        process = subprocess.Popen(
            [
                DNSMASQ, "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                f"--pid-file={folder}/dnsmasq-{port}.pid", f"--local=/{domain}/",
                f"--local-ttl={ttl}", *records,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        for _ in range(100):
            if process.poll() is not None or _answers(port, probe):
                break
            time.sleep(0.02)
        if process.poll() is None:
            break
    else:
        pytest.fail(f"dnsmasq did not start: {(folder / f'dnsmasq-{port}.log').read_text()}")
    try:
        yield Dnsmasq(port, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
