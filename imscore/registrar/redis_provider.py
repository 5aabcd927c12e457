"""The builtin provider of the Redis binding store, offered through ``ims_register_binding_stores``.

The server registers this module as one of its plugins (beside :mod:`imscore.plugin.builtin`), so
``--store redis://HOST:PORT/DB`` and ``--store redis+cluster://HOST:PORT,HOST:PORT`` open
:class:`~imscore.registrar.redis_store.RedisBindingStore` like any plugin's store, and a plugin that
offers its own ``redis`` store replaces this one (its registry hook runs first).
"""

from __future__ import annotations

from typing import Any, Final

from imscore.plugin.markers import hookimpl
from imscore.plugin.types import ProviderRegistry

__all__ = ["SCHEMES", "ims_register_binding_stores"]

#: the URL schemes of the Redis store
SCHEMES: Final = ("redis", "rediss", "redis+cluster", "rediss+cluster")


def _open(url: str) -> Any:
    from .redis_store import open_redis_store  # redis-py is imported only when a Redis URL is used

    return open_redis_store(url)


_open.imscore_builtin = True  # type: ignore[attr-defined]  # not listed as a plugin's scheme


@hookimpl(trylast=True)
def ims_register_binding_stores(registry: ProviderRegistry[Any]) -> None:
    """Offer the Redis store under :data:`SCHEMES` (those a plugin did not offer already)."""
    for scheme in SCHEMES:
        if scheme not in registry:
            registry.add(scheme, _open)
