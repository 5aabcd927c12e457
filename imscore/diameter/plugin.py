"""The builtin plugin that offers the ``cx://`` subscriber store (:mod:`imscore.diameter.provider`).

It registers the scheme through ``ims_register_subscriber_stores`` and, once the server started,
hands the store the server (its profile's domain for the defaults, its registrar for RTR).
"""

from __future__ import annotations

from typing import Any

from imscore.plugin.markers import hookimpl
from imscore.plugin.types import ProviderRegistry

__all__ = ["SCHEME"]

SCHEME = "cx"


def _open(url: str) -> Any:
    from imscore.diameter.provider import CxSubscriberStore

    return CxSubscriberStore.from_url(url)


_open.imscore_builtin = True  # type: ignore[attr-defined]  # not listed as a plugin's scheme


@hookimpl(trylast=True)
def ims_register_subscriber_stores(registry: ProviderRegistry[Any]) -> None:
    """Offer ``cx://HOST:PORT`` (unless a plugin offered ``cx`` already)."""
    if SCHEME not in registry:
        registry.add(SCHEME, _open)


@hookimpl
def ims_server_started(server: Any) -> None:
    """Give a Cx store its server (defaults from the profile, the registrar for RTR)."""
    from imscore.diameter.provider import CxSubscriberStore

    store = getattr(server, "subscribers", None)
    if isinstance(store, CxSubscriberStore):
        store.attach(server)
