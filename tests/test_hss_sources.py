"""``imscore hss --subscribers``: a subscriber file, or any subscriber store a plugin offers (issue 17:
"serves the subscriber store (HSS-lite YAML, or any subscriber provider)").

A vendor's store offered through ``ims_register_subscriber_stores`` answers a real Cx client over
loopback TCP (UAR, MAR with the SIP Digest H(A1)); a file is re-read for ``ppr``; an unknown
scheme, a failing provider and ``cx://`` are one clear line each.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imscore.diameter import dictionary as d
from imscore.diameter.client import CxClient
from imscore.diameter.hss import CxHss
from imscore.diameter.messages import result_of
from imscore.diameter.server import HssServer
from imscore.diameter.sources import SourceError, open_source
from imscore.plugin import hookimpl
from imscore.subscribers import MemorySubscriberStore, SubscriberDirectory
from imscore.subscribers.loader import subscribers_from_data

V = d.VENDOR_3GPP
REALM = "ims.example.test"


class VendorDirectory:
    """A vendor plugin's subscriber store: ``vendorhss://NAME``; ``…/broken`` fails to open."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def _open(self, url: str) -> MemorySubscriberStore:
        self.opened.append(url)
        if url.endswith("/broken"):
            raise ConnectionError("directory unreachable")
        data = {
            "subscribers": [
                {"impi": f"dora@{REALM}", "password": "dora-secret",
                 "implicit_sets": [[f"sip:dora@{REALM}", "tel:+15551239999"]]},
            ]
        }  # fmt: skip
        directory: SubscriberDirectory = subscribers_from_data(data, source=url)
        return MemorySubscriberStore(directory, "the vendor's directory")

    @hookimpl
    def ims_register_subscriber_stores(self, registry: Any) -> None:
        registry.add("vendorhss", self._open)


async def _ask(store: Any) -> tuple[object, object, str]:
    """Serve ``store`` over Cx on a free loopback port and ask it about dora: the UAR's result,
    the MAR's result and the H(A1) of its SIP-Digest-Authenticate."""
    server = HssServer(CxHss(store, f"hss.{REALM}", REALM))
    await server.start("127.0.0.1", 0)
    try:
        host, port = server.addresses[0]
        client = await CxClient.connect(
            host, port, origin_host=f"scscf.{REALM}", origin_realm=REALM, destination_realm=REALM
        )
        try:
            uaa = await client.uar(f"sip:dora@{REALM}", f"dora@{REALM}")
            maa = await client.mar(
                f"sip:dora@{REALM}", f"dora@{REALM}", f"sip:scscf.{REALM}",
                scheme=d.SCHEME_SIP_DIGEST,
            )  # fmt: skip
        finally:
            await client.close()
    finally:
        await server.close()
    item = maa.find(d.SIP_AUTH_DATA_ITEM, V)
    assert item is not None, maa
    digest = item.find(d.SIP_DIGEST_AUTHENTICATE, V)
    assert digest is not None, item
    ha1 = digest.find(d.DIGEST_HA1)
    assert ha1 is not None, digest
    return result_of(uaa), result_of(maa), ha1.as_str()


def test_a_plugin_store_is_served_over_cx() -> None:
    vendor = VendorDirectory()
    source = open_source("vendorhss://directory-a", [vendor])
    assert vendor.opened == ["vendorhss://directory-a"]
    assert source.reload is None  # a live store: ppr reads nothing again
    assert "vendorhss://directory-a" in source.description
    uar, mar, ha1 = asyncio.run(asyncio.wait_for(_ask(source.store), 10))
    assert uar == (d.FIRST_REGISTRATION, V)
    assert mar == (d.SUCCESS, 0)
    assert ha1 == hashlib.md5(f"dora@{REALM}:{REALM}:dora-secret".encode()).hexdigest()


def test_a_file_is_loaded_and_read_again_for_ppr(tmp_path: Path) -> None:
    path = tmp_path / "subscribers.yaml"
    path.write_text(
        "subscribers:\n"
        f"  - {{impi: dora@{REALM}, password: dora-secret, implicit_sets: [[sip:dora@{REALM}]]}}\n"
    )
    source = open_source(str(path))
    assert source.description == f"1 subscribers from {path}"
    assert asyncio.run(source.store.get_by_impi(f"dora@{REALM}")) is not None
    path.write_text(path.read_text() + "  - {impi: eve@ims.example.test, password: e,"
                    " implicit_sets: [[sip:eve@ims.example.test]]}\n")  # fmt: skip
    assert source.reload is not None
    assert len(source.reload()) == 2


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("nosuch://x", "no provider for 'nosuch'"),
        ("vendorhss://x/broken", "the vendorhss provider failed: directory unreachable"),
        ("cx://127.0.0.1:3868", "cannot take its subscribers from another HSS over Cx"),
    ],
)
def test_a_source_that_cannot_serve_is_one_line(given: str, said: str) -> None:
    with pytest.raises(SourceError, match="--subscribers") as caught:
        open_source(given, [VendorDirectory()])
    assert said in str(caught.value)
    assert "\n" not in str(caught.value)


def test_imscore_hss_stops_on_an_unknown_scheme() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imscore", "hss", "--listen", "tcp:127.0.0.1:0",
         "--subscribers", "nosuch://x"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--subscribers" in lines[0] and "no provider for 'nosuch'" in lines[0], lines
