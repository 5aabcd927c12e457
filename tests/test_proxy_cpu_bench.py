"""``bench/proxy_cpu_bench.py`` runs: a few calls forked to three devices through a real server in
process, every message where SIPp would expect it; and ``bench/icount.py --bench`` picks its script."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent / "bench"
FIGURE = re.compile(r"round 1: +(\d+) us CPU per call, best block +(\d+) us \((\d+) unexpected")


def load(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the benches import each other by their plain names
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_calls_go_through_and_the_cpu_per_call_is_reported() -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH / "proxy_cpu_bench.py"), "--calls", "100", "--users", "3",
         "--rounds", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    found = FIGURE.search(run.stdout)
    assert found is not None, run.stdout
    mean, best, unexpected = (int(g) for g in found.groups())
    assert 0 < best <= mean
    assert unexpected == 0  # no datagram the SIPp processes would not have expected
    assert "100 calls to 3 users" in run.stdout


def test_device_answers_are_built_from_what_the_server_sent() -> None:
    bench = load("proxy_cpu_bench")
    sent = bench.Sent(
        b"INVITE sip:answer@127.0.0.1:10000 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\n"
        b"v: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-1-1;rport=5999\r\nFrom: <sip:a@b>;tag=1\r\n"
        b"To: <sip:user00000@ims.example.test>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n",
        ("127.0.0.1", 10000),
    )
    ringing = bench.reply(sent, "180 Ringing", "t1", "answer").decode()
    # both Via lines, long and compact form, kept in order; the To gets the device's tag
    assert ringing.startswith(
        "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\nv: "
    )
    assert "To: <sip:user00000@ims.example.test>;tag=t1\r\n" in ringing
    assert "Contact: <sip:answer@127.0.0.1:10000;transport=UDP>\r\n" in ringing
    # a check on what was sent fails when nothing matching was sent
    holder = bench.Bench.__new__(bench.Bench)
    holder.raw, holder._sent = [(sent.data, sent.remote)], []
    assert holder.has(("127.0.0.1", 10000), bench.is_request("INVITE"))()
    assert not holder.has(("127.0.0.1", 10001), bench.is_request("INVITE"))()
    assert not holder.has(("127.0.0.1", 10000), bench.is_request("CANCEL"))()
    assert holder.take(("127.0.0.1", 10000), bench.is_request("INVITE")) is not None
    assert holder.take(("127.0.0.1", 10000), bench.is_request("INVITE")) is None


def test_icount_knows_both_benches_and_keeps_the_register_default() -> None:
    icount = load("icount")
    assert set(icount.BENCHES) == {"register", "proxy"}
    script, option, _, small, large, unit = icount.BENCHES["register"]
    assert (script, option, small, large, unit) == (
        "register_cpu_bench.py", "--registrations", 250, 750, "Digest registration"
    )  # fmt: skip
    script, option, _, small, large, _ = icount.BENCHES["proxy"]
    assert (BENCH / script).is_file() and option == "--calls" and small < large
