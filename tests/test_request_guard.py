"""Every SipError raised while a request is handled becomes its status (issue 15, item 6).

Typed headers are parsed on first use, so a broken one can raise wherever it is first read. Each
typed header, broken, is sent to each method over real UDP: the answer is a 4xx (400 for a header
that does not parse), never silence, and the server logs no ERROR and keeps serving.
"""

from __future__ import annotations

import logging
import secrets

import pytest

from imscore.testing import SipClient, start_server

DOMAIN = "ims.example.test"

#: a broken value for each header the core parses with a typed accessor
BROKEN_HEADERS = [
    ("Route", "<sip:''>"),
    ("Route", "<sip:>"),
    ("Record-Route", "<sip:''>"),
    ("Path", "<sip:''>"),
    ("Service-Route", "<sip:''>"),
    ("P-Associated-URI", "<sip:''>"),
    ("Contact", "<sip:''>"),
    ("Contact", "<sip:alice@127.0.0.1>;expires=abc"),
    ("Require", "@@@"),
    ("Proxy-Require", "@@@"),
    ("Supported", "@@@"),
    ("Expires", "soon"),
    ("Min-Expires", "-1"),
    ("Content-Type", "text"),
    ("Authorization", "Digest ,,=="),
    ("Proxy-Authorization", "Digest ,,=="),
    ("P-Visited-Network-ID", "\"unterminated"),
    ("P-Access-Network-Info", "\"unterminated"),
    ("Security-Client", "ipsec-3gpp; alg="),
    ("P-Charging-Vector", "icid-value"),
]

METHODS = ["REGISTER", "SUBSCRIBE", "INVITE", "MESSAGE", "OPTIONS", "BYE", "NOTIFY", "INFO", "UPDATE"]


@pytest.fixture(scope="module")
def server():
    running = start_server("multi-device", transports=("udp",))
    try:
        yield running
    finally:
        running.stop()


def _request(client: SipClient, method: str, name: str, value: str, in_dialog: bool) -> bytes:
    uri = f"sip:alice@{DOMAIN}"
    extra: list[tuple[str, object]] = [(name, value)]
    if method == "SUBSCRIBE":
        extra.append(("Event", "reg"))
    request = client.build(method, uri if method != "REGISTER" else f"sip:{DOMAIN}", extra)
    if method == "REGISTER":
        request.headers.set("To", f"<{uri}>")
        request.headers.set("From", f"<{uri}>;tag={secrets.token_hex(4)}")
    if in_dialog:
        request.headers.set("To", f"<{uri}>;tag={secrets.token_hex(4)}")
    return request.to_bytes()


@pytest.mark.parametrize("in_dialog", [False, True], ids=["new", "in-dialog"])
@pytest.mark.parametrize("method", METHODS)
def test_a_broken_typed_header_is_answered_with_its_status(server, method, in_dialog, caplog):
    client = SipClient(server.address("udp"))
    failures = []
    try:
        with caplog.at_level(logging.INFO):
            for name, value in BROKEN_HEADERS:
                if method == "REGISTER" and in_dialog:
                    continue
                client.send_raw(_request(client, method, name, value, in_dialog))
                status = None
                try:
                    while status is None or status < 200:
                        status = client.receive(timeout=3).status
                except TimeoutError:
                    failures.append(f"{name}: {value!r}: no answer")
                    continue
                if status != 400:
                    failures.append(f"{name}: {value!r}: {status}")
        # the server still serves
        assert client.request("OPTIONS", f"sip:{DOMAIN}").status == 200
    finally:
        client.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, failures
    assert not errors, [r.getMessage() for r in errors]
