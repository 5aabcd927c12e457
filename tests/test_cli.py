"""The command line: profile check/show and the start-up errors of serve (no network needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imscore.cli import main


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imscore", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def test_profile_show_default_from_anywhere(tmp_path: Path) -> None:
    result = run("profile", "show", "default", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "domains:\n- ims.example.test" in result.stdout
    assert "plugin: max-contacts" in result.stdout


def test_profile_check_ok_and_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("domains: [lab.example.test]\nlisteners: ['udp:127.0.0.1:5070']\n")
    assert main(["profile", "check", str(good)]) == 0
    assert "OK (profile good; domains lab.example.test; udp:127.0.0.1:5070)" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("domains: [lab.example.test]\npolicies:\n  forking: {plugin: paralel}\n")
    assert main(["profile", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"imscore: {bad}: key 'policies.forking.plugin': unknown plugin 'paralel'")
    # (the builtin strategies; an installed plugin, such as the docs' newest-first example that
    # tox installs, adds its own names to the list)
    offered = err.split("expected one of: ", 1)[1].strip().split(", ")
    assert {"hunt", "parallel", "sequential"} <= set(offered) and offered == sorted(offered)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "udp:127.0.0.1:port"], "--listen: "),
        (["--listen", "xyz:127.0.0.1:5060"], "--listen: unknown transport 'xyz' (known: udp, tcp, tls"),
        (["--store", "sqlite:"], "--store: "),
        (["--store", "postgres://x"], "store 'postgres://x': no provider for 'postgres'"),
        (["--profile", "no-such-profile"], "no-such-profile"),
    ],
)
def test_serve_start_up_errors_name_the_problem(args: list[str], message: str) -> None:
    result = run("serve", *args)
    assert result.returncode == 2
    assert result.stderr.startswith("imscore: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_rejects_a_bad_subscriber_file(tmp_path: Path) -> None:
    subscribers = tmp_path / "subs.yaml"
    subscribers.write_text(
        "subscribers:\n  - impi: bob@ims.example.test\n    password: x\n"
        "    implicit_sets: [[sip:bob@ims.example.test]]\n    max_devices: -1\n"
    )
    result = run("serve", "--subscribers", str(subscribers), "--store", "memory:")
    assert result.returncode == 2
    assert result.stderr.startswith(f"imscore: {subscribers}: subscribers[0] (bob@ims.example.test): ")
    assert "key 'max_devices'" in result.stderr and "Traceback" not in result.stderr


def test_serve_says_which_store_cannot_open(tmp_path: Path) -> None:
    result = run(
        "serve", "--store", f"sqlite:{tmp_path}/missing/dir/x.db", "--listen", "udp:127.0.0.1:0"
    )
    assert result.returncode == 2
    assert "store 'sqlite:" in result.stderr and "cannot open" in result.stderr
