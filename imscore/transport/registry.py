"""Collect the transports plugins offer (``ims_register_transports``) and name them in messages."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pluggy

from imscore.plugin.errors import PluginError
from imscore.plugin.types import ProviderRegistry

from .flow import TRANSPORTS, TransportError
from .provider import TransportProvider

__all__ = ["OfferedTransport", "collect_transports", "describe_known", "known_transports"]

_ENTRY_POINT_GROUP = "imscore"


@dataclass(frozen=True)
class OfferedTransport:
    """A transport a plugin offers: the provider and where it comes from (for messages)."""

    provider: TransportProvider
    origin: str


def _origins() -> dict[str, str]:
    """Entry-point plugin name -> its distribution name (``sctp`` -> ``imscore-sctp``)."""
    out: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=_ENTRY_POINT_GROUP):
        if ep.dist is not None:
            out[ep.name] = ep.dist.name
    return out


def collect_transports(plugins: pluggy.PluginManager) -> dict[str, OfferedTransport]:
    """Ask every plugin for its transports (``ims_register_transports``), by transport name.

    Each hook implementation gets its own :class:`~imscore.plugin.types.ProviderRegistry`, so each
    transport knows which plugin offered it (named by its distribution when it came from an entry
    point, ``sctp`` -> ``imscore-sctp``). Names are lower-cased.

    :raises TransportError: a built-in name offered, a name offered twice, or a provider without
        ``listen()``.
    """
    origins = _origins()
    found: dict[str, OfferedTransport] = {}
    for impl in plugins.hook.ims_register_transports.get_hookimpls():
        owner = origins.get(impl.plugin_name, impl.plugin_name)
        registry: ProviderRegistry[Any] = ProviderRegistry("transport")
        try:
            impl.function(**{arg: registry for arg in impl.argnames})
        except PluginError as exc:
            raise TransportError(f"plugin {owner}: {exc}") from None
        for name in registry:
            provider = registry.get(name)
            key = name.lower()
            if key in TRANSPORTS:
                raise TransportError(
                    f"plugin {owner}: transport {key!r} is built in; it cannot be replaced"
                )
            if key in found:
                raise TransportError(
                    f"transport {key!r} is offered twice: "
                    f"by plugin {found[key].origin} and by plugin {owner}"
                )
            if not isinstance(provider, TransportProvider):
                raise TransportError(
                    f"plugin {owner}: transport {key!r}: {provider!r} has no listen() method"
                )
            found[key] = OfferedTransport(provider, owner)
    return found


def known_transports(offered: Mapping[str, OfferedTransport]) -> dict[str, str | None]:
    """Every transport name usable in a listener: built-ins (origin ``None``) then plugin ones."""
    known: dict[str, str | None] = dict.fromkeys(TRANSPORTS)
    known.update((name, entry.origin) for name, entry in offered.items())
    return known


def describe_known(known: Mapping[str, str | None]) -> str:
    """``udp, tcp, tls, sctp from plugin imscore-sctp`` for messages."""
    return ", ".join(
        name if origin is None else f"{name} from plugin {origin}" for name, origin in known.items()
    )
