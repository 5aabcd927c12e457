"""Subscribers (the HSS-lite): private identities, their credentials and public identities.

A subscriber file (YAML) lists, per private identity (IMPI), its Digest password and/or Digest-AKA
credentials, its public identities (IMPUs) grouped into implicit registration sets, its barred IMPUs
and optional per-subscriber binding-policy overrides. :func:`load_subscribers` reads and validates
one into a :class:`SubscriberDirectory`; any problem is one :class:`SubscriberError` naming the file,
the entry, the key and what was expected. The core reads subscribers through a
:class:`SubscriberStore` provider, so a plugin can serve them from LDAP, SQL or a real HSS;
:class:`MemorySubscriberStore` serves a directory from memory.
"""

from __future__ import annotations

from .directory import SubscriberDirectory
from .errors import SubscriberError
from .loader import ENTRY_KEYS, demo_subscribers_path, load_subscribers, subscribers_from_data
from .model import (
    AUTH_AKA,
    AUTH_DIGEST,
    AkaCredentials,
    ImplicitSet,
    Subscriber,
    check_impi,
    impi_key,
    impu_key,
    parse_impu,
)
from .store import MemorySubscriberStore, SubscriberStore

__all__ = [
    "AUTH_AKA",
    "AUTH_DIGEST",
    "ENTRY_KEYS",
    "AkaCredentials",
    "ImplicitSet",
    "MemorySubscriberStore",
    "Subscriber",
    "SubscriberDirectory",
    "SubscriberError",
    "SubscriberStore",
    "check_impi",
    "demo_subscribers_path",
    "impi_key",
    "impu_key",
    "load_subscribers",
    "parse_impu",
    "subscribers_from_data",
]
