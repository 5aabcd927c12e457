"""Subscriber store providers: where the registrar gets subscriber records from.

The core never reads a subscriber file itself: it asks a :class:`SubscriberStore`. The methods are
coroutines so that a store backed by LDAP, SQL or a real HSS (Diameter Cx) fits the same protocol as
the in-memory one. A plugin hands its store to the core through the
``ims_register_subscriber_stores`` registry hook.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from imscore.sip import Uri

from .directory import SubscriberDirectory
from .model import Subscriber

__all__ = ["MemorySubscriberStore", "SubscriberStore"]


@runtime_checkable
class SubscriberStore(Protocol):
    """What the core asks a subscriber store (the HSS-lite)."""

    async def get_by_impi(self, impi: str) -> Subscriber | None:
        """The subscriber with this private identity (from a REGISTER's Authorization username).

        :param impi: the private identity, ``user@realm``.
        :returns: the record, or ``None`` when the IMPI is unknown.
        """
        ...

    async def get_by_impu(self, uri: Uri | str) -> Subscriber | None:
        """The subscriber owning this public identity (a REGISTER's To, a request's target).

        :param uri: the public identity, parsed or as text; compare by ``uri.aor``.
        :returns: the record, or ``None`` when no subscriber owns it (barred identities included:
            the caller checks :meth:`~imscore.subscribers.model.Subscriber.is_barred`).
        """
        ...


class MemorySubscriberStore:
    """A :class:`SubscriberStore` that serves a
    :class:`~imscore.subscribers.directory.SubscriberDirectory` held in memory.

    :param directory: the subscribers, typically from
        :func:`~imscore.subscribers.loader.load_subscribers`.
    """

    __slots__ = ("description", "directory")

    def __init__(self, directory: SubscriberDirectory, description: str | None = None) -> None:
        self.directory = directory
        #: what the start-up log says of these subscribers (e.g. ``3 from subscribers.yaml``)
        self.description = description

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> MemorySubscriberStore:
        """Load a subscriber file into a new store
        (:func:`~imscore.subscribers.loader.load_subscribers`).

        :raises SubscriberError: when the file cannot be read or is invalid.
        """
        from .loader import load_subscribers

        return cls(load_subscribers(path))

    async def get_by_impi(self, impi: str) -> Subscriber | None:
        return self.directory.by_impi(impi)

    async def get_by_impu(self, uri: Uri | str) -> Subscriber | None:
        return self.directory.by_impu(uri)

    def __repr__(self) -> str:
        return f"MemorySubscriberStore({self.directory!r})"

    def __str__(self) -> str:
        return self.description or repr(self)
