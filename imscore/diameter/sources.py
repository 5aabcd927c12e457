"""Where ``imscore hss`` takes its subscribers from: a subscriber file, or any subscriber store a
plugin offers.

``--subscribers PATH`` is a subscriber file (YAML or the bulk ``.jsonl`` format), read at start-up
and again by ``imscore hss ppr``. ``--subscribers SCHEME:...`` whose scheme is not a file's is
opened with the subscriber store a plugin registered for that scheme
(``ims_register_subscriber_stores``, the hook ``imscore serve --subscribers`` uses), so the HSS
serves an LDAP directory, a SQL table or a vendor's database the same way; such a store is asked
on every Cx request, so ``ppr`` reads nothing again. ``cx://`` (a store that is itself an HSS
reached over Cx) is refused: it needs an S-CSCF's server, and an HSS in front of an HSS is not
what it is for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imscore.server.providers import ProviderError, collect, open_provided, scheme_of
from imscore.subscribers import (
    MemorySubscriberStore,
    SubscriberDirectory,
    SubscriberError,
    SubscriberStore,
    demo_subscribers_path,
    load_subscribers,
)

__all__ = ["HssSource", "SourceError", "open_source"]


class SourceError(Exception):
    """The subscribers cannot be had; the message names the source and why (one line)."""


@dataclass(frozen=True)
class HssSource:
    """The store the HSS answers from, how the start-up line describes it, and how ``ppr`` reads a
    file again (``None`` for a plugin's store, which is live)."""

    store: SubscriberStore
    description: str
    reload: Callable[[], SubscriberDirectory] | None


def open_source(given: str | None, extra_plugins: Iterable[object] = ()) -> HssSource:
    """Open ``--subscribers`` (``None``: the shipped demo file).

    :param extra_plugins: plugins to ask besides the installed ones (tests).
    :raises SourceError: the file does not load, no plugin offers the scheme, or its store failed
        to open.
    """
    source = given or str(demo_subscribers_path())
    scheme = scheme_of(source)
    if scheme is None or Path(source).exists():
        try:
            directory = load_subscribers(source)
        except SubscriberError as exc:
            raise SourceError(str(exc)) from None
        return HssSource(
            MemorySubscriberStore(directory, f"{len(directory)} from {source}"),
            f"{len(directory)} subscribers from {source}",
            lambda: load_subscribers(source),
        )
    if scheme == "cx":
        raise SourceError(
            f"--subscribers {source}: an HSS cannot take its subscribers from another HSS over Cx "
            "(cx:// is for imscore serve); give a subscriber file or a plugin's store"
        )
    from imscore.plugin.manager import create_plugin_manager

    plugins: Any = create_plugin_manager(extra_plugins=extra_plugins)
    try:
        offered = collect(plugins, "ims_register_subscriber_stores", "subscriber store")
        store = open_provided(offered, source, "subscribers")
    except ProviderError as exc:
        raise SourceError(f"--subscribers: {exc}") from None
    return HssSource(store, f"subscribers from {source} ({store})", None)
