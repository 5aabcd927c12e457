"""The pytest fixtures imscore offers plugin authors, used the way a plugin author would."""

from __future__ import annotations

import pytest

from imscore.plugin import hookimpl

# the fixtures come from ``pytest_plugins = ["imscore.testing"]`` in tests/conftest.py


class StartedProbe:
    """A plugin that records the server life-cycle hooks it saw."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def ims_server_started(self, server: object) -> None:
        self.seen.append("started")


PROBE = StartedProbe()


@pytest.mark.imscore_plugins(PROBE)
def test_fixture_server_answers_and_runs_plugins(imscore_server, sip_client) -> None:  # type: ignore[no-untyped-def]
    response = sip_client.request("OPTIONS")
    assert response.status == 200
    assert "OPTIONS" in (response.headers.get("Allow") or "")
    assert sip_client.request("REGISTER").status == 404  # not a demo subscriber
    assert PROBE.seen == ["started"]
    host, port = imscore_server.address("tcp")
    assert host == "127.0.0.1" and port > 0


@pytest.mark.imscore_profile("legacy-single-registration")
def test_fixture_profile_marker(imscore_server) -> None:  # type: ignore[no-untyped-def]
    assert imscore_server.server.profile.name == "legacy-single-registration"


def test_profile_connection_limits_reach_the_transports() -> None:
    import dataclasses
    import socket

    from imscore.profile import ConnectionSettings, load_profile
    from imscore.testing import start_server

    profile = dataclasses.replace(
        load_profile("default"), connections=ConnectionSettings(max_connections=1)
    )
    running = start_server(profile)
    try:
        with socket.create_connection(running.address("tcp")) as first:
            first.settimeout(5)
            with socket.create_connection(running.address("tcp")) as second:
                second.settimeout(5)
                assert second.recv(100) == b""  # over the limit: closed at once
            first.sendall(b"\r\n\r\n")
            assert first.recv(100) == b"\r\n"  # the first one still works (RFC 5626 pong)
    finally:
        running.stop()
