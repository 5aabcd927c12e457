"""The command's output into a pipe its reader closes early (``imscore bindings --json | head``):
the command ends quietly, status 0 or 141 (128 + SIGPIPE), no traceback on standard error."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_bindings_cli import _bindings

from imscore.registrar.store import open_binding_store

#: what a command whose reader went away may exit with: done before the close, or ended by it
QUIET = (0, 141)
#: what a closed pipe makes Python say when nobody handles it (a traceback, or the final flush's
#: "Exception ignored"); other noise (a lab run's own log) is another test's business
NOISE = ("BrokenPipeError", "Exception ignored")


def _store_with_many_bindings(path: Path, aors: int) -> str:
    """An SQLite store whose listing is far longer than a pipe's buffer (64 KiB)."""
    url = f"sqlite:{path}"
    template = _bindings(time.time())[0]

    async def fill() -> None:
        store = open_binding_store(url)
        try:
            for n in range(aors):
                aor = f"sip:user{n}@ims.example.test"
                copies = [
                    dataclasses.replace(
                        template,
                        aor=aor,
                        call_id=f"call-{n}-{k}@phone",
                        contact=f"<sip:user{n}@192.168.1.{k}:5060>",
                        uri=f"sip:user{n}@192.168.1.{k}:5060",
                    )
                    for k in range(1, 4)
                ]
                await store.save(aor, copies)
        finally:
            await store.close()

    asyncio.run(fill())
    return url


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _store_with_many_bindings(tmp_path_factory.mktemp("pipe") / "bindings.db", 150)


def _closed_after_one_line(*args: str) -> tuple[int, str, bytes]:
    """Run ``imscore ARGS`` into a pipe, read one line, close the pipe; status, stderr, the line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "imscore", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    line = process.stdout.readline()
    process.stdout.close()
    _, err = process.communicate(timeout=60)
    return process.returncode, err.decode(errors="replace"), line


def _closed_before_writing(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    """Run ``imscore ARGS`` with standard output a pipe whose reading end is already closed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "imscore", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=cwd,
            check=False,
        )
    finally:
        os.close(write_end)
    return result.returncode, result.stderr


@pytest.mark.parametrize("form", [["--json"], []], ids=["json", "text"])
def test_bindings_into_a_pipe_closed_after_one_line(big_store: str, form: list[str]) -> None:
    status, err, line = _closed_after_one_line("bindings", "--store", big_store, *form)
    assert line.strip() in (b"{", b"AOR: sip:user0@ims.example.test (3 bindings)"), line
    assert "Traceback" not in err and not any(word in err for word in NOISE), err
    assert status == 141, err  # the listing is far longer than the pipe holds: it was cut short


def test_every_printing_command_into_a_closed_pipe_is_quiet(big_store: str, tmp_path: Path) -> None:
    profile = tmp_path / "lab.yaml"
    profile.write_text("domains: [lab.example.test]\nlisteners: ['udp:127.0.0.1:5070']\n")
    commands = [
        ["profile", "show", "default"],
        ["profile", "check", str(profile)],
        ["bindings", "--store", big_store, "--json"],
        ["bindings", "--store", big_store],
        ["lab", "run", "three-devices", "--profile", "multi-device", "--out", str(tmp_path / "lab")],
        ["--help"],
    ]
    for command in commands:
        status, err = _closed_before_writing(*command, cwd=tmp_path)
        assert status in QUIET, (command, status, err)
        assert not any(word in err for word in NOISE), (command, err)
    # a command with something to say still says it, on standard error
    status, err = _closed_before_writing("profile", "show", "no-such-profile")
    assert status == 2 and "no-such-profile" in err, err
