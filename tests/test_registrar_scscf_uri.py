"""A REGISTER whose Request-URI names the S-CSCF itself, as an I-CSCF sends it (TS 24.229
§5.3.1.2: Kamailio's ``I_scscf_select`` writes the S-CSCF's name there), is registered as if it
named the home domain the UE registered with: its Digest ``uri`` (the UE's own Request-URI), else
its To's domain. Over real loopback UDP; a Request-URI naming someone else is still 404.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from sipua import DOMAIN, Phone

from imscore.sip import Request, SipUri, parse_uri
from imscore.testing import RunningServer, start_server


class RelayedPhone(Phone):
    """A phone whose REGISTERs arrive with ``request_uri`` as their Request-URI (the I-CSCF's
    rewrite); its Digest ``uri`` stays the home domain it would have sent."""

    def __init__(self, server: tuple[str, int], request_uri: str) -> None:
        super().__init__(server, "alice-icscf")
        self.request_uri = request_uri

    def _register_request(self, *args: object, **kwargs: object) -> Request:
        request = super()._register_request(*args, **kwargs)  # type: ignore[arg-type]
        request.uri = parse_uri(self.request_uri)
        return request


@pytest.fixture
def running() -> Iterator[RunningServer]:
    server = start_server("default", transports=("udp",))
    try:
        yield server
    finally:
        server.stop()


def test_a_request_uri_naming_our_address_registers_the_home_domain(running: RunningServer) -> None:
    host, port = running.address("udp")
    phone = RelayedPhone((host, port), f"sip:{host}:{port}")
    try:
        ok = phone.register()  # 401 (To's domain), then 200 (the Digest uri's)
        assert ok.status == 200, (ok.status, ok.reason)
        assert str(ok.p_associated_uri[0].uri) == "sip:alice@ims.example.test"
    finally:
        phone.close()


def test_a_request_uri_naming_someone_else_is_still_404(running: RunningServer) -> None:
    phone = RelayedPhone(running.address("udp"), "sip:192.0.2.7:5060")
    try:
        refused = phone.register()
        assert (refused.status, refused.reason) == (404, "Domain not served here")
    finally:
        phone.close()


def test_the_cx_server_name_names_us_too(running: RunningServer) -> None:
    """With ``cx://``, the HSS's Server-Name for this S-CSCF (a host name the I-CSCF resolves)
    is ours as well, port included; the home domain then comes from the To."""
    registrar = running.server.registrar
    assert registrar is not None
    registrar.remote = SimpleNamespace(server_name=f"sip:scscf.{DOMAIN}:6060")  # type: ignore[assignment]
    phones = [
        RelayedPhone(running.address("udp"), f"sip:scscf.{DOMAIN}:6060"),
        RelayedPhone(running.address("udp"), f"sip:scscf.{DOMAIN}"),  # another port: not us
    ]
    try:
        named, other_port = (p._register_request(None, 600, None, None) for p in phones)
        assert registrar._served_request_uri(named) == SipUri(DOMAIN)
        assert registrar._served_request_uri(other_port) is None
    finally:
        registrar.remote = None
        for phone in phones:
            phone.close()
