"""Binding stores and subscriber stores from plugins (the registry hooks), chosen by URL scheme."""

from __future__ import annotations

from typing import Any

import pytest
from sipua import Phone

from imscore.plugin import hookimpl
from imscore.profile import load_profile
from imscore.registrar.store import MemoryBindingStore
from imscore.server.runtime import Server, ServerError
from imscore.subscribers import MemorySubscriberStore, SubscriberDirectory
from imscore.subscribers.loader import subscribers_from_data
from imscore.testing import start_server


class VendorStores:
    """What a vendor plugin would offer: a binding store and an HSS-like subscriber store."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.stores: list[MemoryBindingStore] = []

    def _binding_store(self, url: str) -> MemoryBindingStore:
        self.opened.append(url)
        store = MemoryBindingStore()
        self.stores.append(store)
        return store

    def _subscribers(self, url: str) -> MemorySubscriberStore:
        self.opened.append(url)
        if url.endswith("broken"):
            raise ConnectionError("HSS unreachable")
        data = {
            "subscribers": [
                {"impi": "dora@ims.example.test", "password": "dora-secret",
                 "implicit_sets": [["sip:dora@ims.example.test"]]},
            ]
        }  # fmt: skip
        directory: SubscriberDirectory = subscribers_from_data(data, source=url)
        return MemorySubscriberStore(directory)

    @hookimpl
    def ims_register_binding_stores(self, registry: Any) -> None:
        registry.add("vendordb", self._binding_store)

    @hookimpl
    def ims_register_subscriber_stores(self, registry: Any) -> None:
        registry.add("hss", self._subscribers)


def test_a_plugin_binding_store_and_subscriber_store_serve_registrations() -> None:
    vendor = VendorStores()
    running = start_server(
        "multi-device",
        plugins=[vendor],
        transports=("udp",),
        store_url="vendordb://cluster-a",
        subscriber_source="hss://hss.example.test",
    )
    try:
        phone = Phone(
            running.address("udp"),
            "dora",
            "dora@ims.example.test",
            "dora-secret",
            "sip:dora@ims.example.test",
        )
        try:
            assert phone.register().status == 200
        finally:
            phone.close()
        assert vendor.opened == ["hss://hss.example.test", "vendordb://cluster-a"]
        (store,) = vendor.stores
        bindings = running.call(store.all())
        assert [b.aor for b in bindings] == ["sip:dora@ims.example.test"]
        # alice is not in this HSS: her REGISTER is refused as an unknown user
        alice = Phone(running.address("udp"), "alice")
        try:
            assert alice.register().status == 404
        finally:
            alice.close()
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"store_url": "nosuch://x"},
            "store 'nosuch://x': no provider for 'nosuch' "
            "(known: memory:, sqlite:PATH, vendordb: (plugin))",
        ),
        (
            {"subscriber_source": "ldap://dir"},
            "subscribers 'ldap://dir': no provider for 'ldap' "
            "(known: a subscriber file (a path), hss: (plugin))",
        ),
        (
            {"subscriber_source": "hss://broken"},
            "subscribers 'hss://broken': the hss provider failed: HSS unreachable",
        ),
    ],
)
def test_unknown_or_failing_providers_stop_start_up_with_one_line(options: dict, message: str) -> None:  # type: ignore[type-arg]
    import asyncio

    server = Server(load_profile("multi-device"), extra_plugins=[VendorStores()], **options)

    async def start() -> None:
        await server.start()

    with pytest.raises(ServerError) as info:
        asyncio.run(start())
    assert str(info.value) == message
