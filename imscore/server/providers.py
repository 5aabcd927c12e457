"""Binding stores and subscriber stores offered by plugins (the registry hooks), chosen by URL scheme.

A plugin offers a **binding store** with ``ims_register_binding_stores(registry)``:
``registry.add("redis", factory)``, where ``factory(url)`` returns an object with the
:class:`~imscore.registrar.store.BindingStore` methods (all ``async``). A profile (``store:``) or
``imscore serve --store`` then names it by scheme: ``redis://127.0.0.1:6379/0``. ``memory:`` and
``sqlite:PATH`` are built in.

A **subscriber store** (an HSS, LDAP, SQL …) is offered the same way with
``ims_register_subscriber_stores(registry)``: ``registry.add("ldap", factory)``, ``factory(source)``
returning an object with the :class:`~imscore.subscribers.SubscriberStore` methods; ``imscore serve
--subscribers ldap://...`` selects it. A plain path is a subscriber file.
"""

from __future__ import annotations

from typing import Any

from imscore.plugin.errors import PluginError
from imscore.plugin.types import ProviderRegistry

__all__ = ["BUILTIN_STORES", "ProviderError", "collect", "open_provided", "scheme_of"]

#: binding store schemes imscore itself handles
BUILTIN_STORES = ("memory", "sqlite")


class ProviderError(Exception):
    """No provider for a URL, or the provider failed to open it; the message says which."""


def scheme_of(url: str) -> str | None:
    """``redis`` for ``redis://host``, ``ldap`` for ``ldap:...``; ``None`` for a plain path (a
    single letter before the colon is a drive, not a scheme)."""
    head, sep, _ = url.partition(":")
    if not sep or len(head) < 2 or not head[0].isalpha():
        return None
    if not all(c.isalnum() or c in "+-." for c in head):
        return None
    return head.lower()


def collect(plugins: Any, hook: str, kind: str) -> ProviderRegistry[Any]:
    """Ask every plugin for its providers through the registry hook ``hook``."""
    registry: ProviderRegistry[Any] = ProviderRegistry(kind)
    try:
        getattr(plugins.hook, hook)(registry=registry)
    except PluginError as exc:
        raise ProviderError(str(exc)) from None
    return registry


def open_provided(registry: ProviderRegistry[Any], url: str, what: str) -> Any:
    """Open ``url`` with the provider registered for its scheme.

    :raises ProviderError: no provider for the scheme (naming the known ones), or the provider
        raised while opening (its message is kept).
    """
    scheme = scheme_of(url)
    if scheme is None or scheme not in registry:
        offered = ", ".join(  # (redis: is builtin: check_store_url's message names it)
            f"{name}: (plugin)"
            for name in registry.names()
            if not getattr(registry.get(name), "imscore_builtin", False)
        )
        builtin = "memory:, sqlite:PATH" if what == "store" else "a subscriber file (a path)"
        known = builtin + (f", {offered}" if offered else "; no plugin offers another")
        wanted = repr(scheme) if scheme else "a plain path"
        raise ProviderError(f"{what} {url!r}: no provider for {wanted} (known: {known})")
    factory = registry.get(scheme)
    try:
        return factory(url)
    except Exception as exc:  # a plugin's own error: report it, do not crash start-up
        raise ProviderError(f"{what} {url!r}: the {scheme} provider failed: {exc}") from None
