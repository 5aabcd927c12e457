"""What an operator sees (issue 16): one log line per finished transaction, rate-limited for
unauthenticated traffic, never a secret; Prometheus metrics and /healthz over real HTTP, parsed
with prometheus_client's own parser; ``serve --log-format json --metrics`` as a real process."""

from __future__ import annotations

import json
import logging
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sipua import Caller, Phone

from imscore.testing import RunningServer, start_server

ALICE = "sip:alice@ims.example.test"


@pytest.fixture
def server() -> Iterator[RunningServer]:
    running = start_server("multi-device", transports=("udp",), metrics_address=("127.0.0.1", 0))
    try:
        yield running
    finally:
        running.stop()


def scrape(url: str) -> dict[str, float]:
    """Every sample of /metrics as ``name{label=value,...}`` -> value."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_one_line_per_finished_transaction(server: RunningServer, caplog) -> None:  # type: ignore[no-untyped-def]
    phone = Phone(server.address("udp"), "app")
    caller = Caller(server.address("udp"))
    try:
        with caplog.at_level(logging.INFO, logger="imscore.requests"):
            assert phone.register().status == 200
            caller.invite(ALICE)
            invite = phone.expect("INVITE")
            phone.reply(invite, 486)  # type: ignore[arg-type]
            assert caller.expect("final").status == 486  # type: ignore[union-attr]
            caller.invite("sip:nobody@ims.example.test")
            assert caller.expect("final").status == 404  # type: ignore[union-attr]
            time.sleep(0.1)
        lines = [r.getMessage() for r in caplog.records if r.name == "imscore.requests"]
        challenge, registered, call, unknown = lines
        assert challenge.startswith(f"REGISTER {ALICE} from udp:127.0.0.1:{phone.port} -> 401")
        assert "(challenge)" in challenge
        assert registered.startswith(f"REGISTER {ALICE} impi=alice@ims.example.test from udp:")
        assert "-> 200 OK (registration, 1 binding)" in registered
        assert call.startswith(f"INVITE {ALICE} from udp:127.0.0.1:{caller.port} -> 486")
        assert "(routed, 1 branch)" in call and call.endswith(" ms")
        assert "INVITE sip:nobody@ims.example.test" in unknown and "-> 404" in unknown
        text = "\n".join(lines)
        assert "alice-secret" not in text and "nonce" not in text and "response=" not in text
        record = next(
            r for r in caplog.records if r.name == "imscore.requests" and "200 OK" in r.getMessage()
        )
        fields = record.sip  # type: ignore[attr-defined]
        assert fields["status"] == 200 and fields["impi"] == "alice@ims.example.test"
    finally:
        phone.close()
        caller.close()


def test_a_flood_of_refusals_is_logged_as_a_summary(server: RunningServer, caplog) -> None:  # type: ignore[no-untyped-def]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    host, port = sock.getsockname()
    outcomes = server.server.outcomes
    try:
        with caplog.at_level(logging.INFO, logger="imscore.requests"):
            for i in range(300):
                sock.sendto(
                    (
                        f"MESSAGE sip:victim@198.51.100.7 SIP/2.0\r\n"
                        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(6)}\r\n"
                        f"Max-Forwards: 70\r\nFrom: <sip:x@evil.example>;tag=1\r\n"
                        f"To: <sip:victim@198.51.100.7>\r\nCall-ID: flood{i}\r\nCSeq: 1 MESSAGE\r\n"
                        f"Content-Length: 0\r\n\r\n"
                    ).encode(),
                    server.address("udp"),
                )
                sock.recvfrom(65535)  # 403 Relaying denied
            time.sleep(0.2)  # (the outcome of the last one is logged just after its answer)
            outcomes.flush(time.monotonic() + 3600)  # the interval is over: the summary line
        lines = [r.getMessage() for r in caplog.records if r.name == "imscore.requests"]
        assert len(lines) == outcomes.burst + 1
        assert lines[-1].startswith("250 more answers to unauthenticated requests")
        assert "MESSAGE sip:victim@198.51.100.7" in lines[-1] and "403 Relaying denied" in lines[-1]
    finally:
        sock.close()


def test_metrics_and_health_over_http(server: RunningServer) -> None:
    url = server.server.metrics_url
    assert url is not None and url.startswith("http://127.0.0.1:")
    phones = [Phone(server.address("udp"), name) for name in ("app", "desk")]
    caller = Caller(server.address("udp"))
    try:
        for phone in phones:
            assert phone.register().status == 200
        caller.invite(ALICE)
        for phone in phones:
            phone.reply(phone.expect("INVITE"), 486)  # type: ignore[arg-type]
        assert caller.expect("final").status == 486  # type: ignore[union-attr]
        time.sleep(0.1)
        samples = scrape(url)
        assert samples["imscore_requests_total{kind=registration,method=REGISTER,status=200}"] == 2
        assert samples["imscore_requests_total{kind=challenge,method=REGISTER,status=401}"] == 2
        assert samples["imscore_requests_total{kind=fork,method=INVITE,status=486}"] == 1
        assert samples["imscore_request_duration_seconds_count{method=REGISTER}"] == 4
        assert samples["imscore_bindings{}"] == 2 and samples["imscore_aors{}"] == 1
        assert samples["imscore_proxy_total{event=forked}"] == 1
        assert samples["imscore_proxy_total{event=branches}"] == 2
        assert samples["imscore_overloaded{}"] == 0
        assert samples["imscore_store_seconds_count{operation=load}"] >= 3
        assert samples["imscore_transport_total{event=received}"] == 7  # 4 REGISTERs, 3 INVITE legs
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as reply:
            assert (reply.status, reply.read()) == (200, b"ready\n")
        server.server.core.overloaded = True
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/healthz", timeout=5)
        assert refused.value.code == 503 and refused.value.read() == b"overloaded\n"
        server.server.core.overloaded = False
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{url}/nothing", timeout=5)
        assert missing.value.code == 404
    finally:
        for phone in phones:
            phone.close()
        caller.close()


def test_auth_failures_are_counted_by_reason(server: RunningServer) -> None:
    phone = Phone(server.address("udp"), "app", password="wrong")
    try:
        assert phone.register().status in (401, 403)
        samples = scrape(server.server.metrics_url or "")
        failures = {k: v for k, v in samples.items() if k.startswith("imscore_auth_failures_total")}
        assert failures == {
            "imscore_auth_failures_total{method=REGISTER,reason=Unauthorized,status=401}": 1
        }
    finally:
        phone.close()


def _free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_with_json_logs_and_metrics(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sip, http = _free_port(), _free_port(socket.SOCK_STREAM)
    process = subprocess.Popen(
        [sys.executable, "-m", "imscore", "serve", "--listen", f"udp:127.0.0.1:{sip}",
         "--store", "memory:", "--log-format", "json", "--metrics", f"127.0.0.1:{http}"],
        stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        ready = None
        deadline = time.monotonic() + 30
        while ready is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            entry = json.loads(line)  # every line is one JSON object
            if " ready: " in entry["message"]:
                ready = entry
        assert ready is not None and f"metrics http://127.0.0.1:{http}/metrics" in ready["message"]
        assert ready["level"] == "INFO" and ready["logger"] == "imscore.server"
        phone = Phone(("127.0.0.1", sip), "app")
        try:
            assert phone.register().status == 200
        finally:
            phone.close()
        entries = [json.loads(process.stderr.readline()) for _ in range(2)]
        assert [e["sip"]["status"] for e in entries] == [401, 200]
        assert entries[1]["sip"]["kind"] == "registration"
        samples = scrape(f"http://127.0.0.1:{http}")
        assert samples["imscore_requests_total{kind=registration,method=REGISTER,status=200}"] == 1
    finally:
        process.terminate()
        process.wait(timeout=30)
