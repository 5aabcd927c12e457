"""The example plugin packaged on its own (plugins/imscore-deskphone), picked by a profile."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from test_registrar import ALICE, Ue

from imscore.profile import PolicyChoice, load_profile
from imscore.testing import start_server


def _installed() -> None:
    if not any(e.value == "imscore_deskphone" for e in entry_points(group="imscore")):
        pytest.skip("plugin not installed: python3 -m pip install --no-deps ./plugins/imscore-deskphone")


def test_one_desk_phone_plus_soft_clients() -> None:
    _installed()
    base = load_profile("default")
    policies = dict(base.policies)
    policies["binding_policy"] = PolicyChoice("deskphone-plus-soft", {"soft_clients": 2})
    running = start_server(dataclasses.replace(base, policies=policies), transports=("udp",))
    devices = {name: Ue(running, *ALICE) for name in ("desk1", "softA", "softB", "softC", "desk2")}
    agents = {
        "desk1": "Yealink SIP-T46S 66.86",
        "softA": "Linphone/5.2",
        "softB": "MicroSIP/3.21",
        "softC": "Zoiper rv2.10",
        "desk2": "PolycomVVX-VVX_450-UA/6.4",
    }

    def register(name: str) -> tuple[int, list[str]]:
        ue = devices[name]
        response = ue.register(extra=[("User-Agent", agents[name])])
        listing = ue.register(contact=None)
        return response.status, sorted(str(c.uri) for c in listing.contacts)

    def uri(name: str) -> str:
        return f"sip:ue@{devices[name].host}:{devices[name].port}"

    try:
        assert register("desk1") == (200, sorted([uri("desk1")]))
        assert register("softA")[0] == 200
        assert register("softB") == (200, sorted([uri("desk1"), uri("softA"), uri("softB")]))
        status, contacts = register("softC")
        assert status == 403  # a third soft client is over the limit
        assert contacts == sorted([uri("desk1"), uri("softA"), uri("softB")])
        # a new desk phone replaces the old desk phone, the soft clients stay
        assert register("desk2") == (200, sorted([uri("desk2"), uri("softA"), uri("softB")]))
    finally:
        for ue in devices.values():
            ue.close()
        running.stop()


def test_profile_check_accepts_the_plugin_name(tmp_path: Path) -> None:
    _installed()
    profile = tmp_path / "desk.yaml"
    profile.write_text(
        "domains: [ims.example.test]\n"
        "policies:\n  binding_policy: {plugin: deskphone-plus-soft, options: {soft_clients: 3}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "imscore", "profile", "check", str(profile)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    misspelt = tmp_path / "typo.yaml"
    misspelt.write_text(profile.read_text().replace("deskphone-plus-soft", "deskphone-plus-sofa"))
    result = subprocess.run(
        [sys.executable, "-m", "imscore", "profile", "check", str(misspelt)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "deskphone-plus-soft" in result.stderr  # listed among the names that exist
