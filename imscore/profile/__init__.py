"""YAML profiles: which plugin decides what, with which options, for which domains, on which sockets.

A profile is data. :func:`load_profile` reads one (a shipped name such as ``default`` or a path),
validates it against :data:`~imscore.profile.schema.PROFILE_SCHEMA` and returns a frozen
:class:`Profile` with every default filled in; any problem is one :class:`ProfileError` naming the
file, the key path and what was expected. :func:`dump_profile` / :func:`effective_settings` show the
effective settings (``imscore profile show``).
"""

from __future__ import annotations

from .errors import ProfileError
from .loader import (
    dump_profile,
    effective_settings,
    load_profile,
    profile_from_data,
    resolve_profile,
    shipped_profiles,
)
from .model import (
    BUILTIN_PLUGINS,
    DECISIONS,
    DEFAULT_PORTS,
    DNS_PREFER,
    TRANSPORTS,
    ConnectionSettings,
    DnsSettings,
    Listener,
    ListenError,
    OptionValue,
    PolicyChoice,
    Profile,
    RegistrarSettings,
    Timers,
    TlsSettings,
    check_domain,
    check_store_url,
    parse_listen,
    parse_nameserver,
)

__all__ = [
    "BUILTIN_PLUGINS",
    "DECISIONS",
    "DEFAULT_PORTS",
    "DNS_PREFER",
    "TRANSPORTS",
    "ConnectionSettings",
    "DnsSettings",
    "ListenError",
    "Listener",
    "OptionValue",
    "PolicyChoice",
    "Profile",
    "ProfileError",
    "RegistrarSettings",
    "Timers",
    "TlsSettings",
    "check_domain",
    "check_store_url",
    "dump_profile",
    "effective_settings",
    "load_profile",
    "parse_listen",
    "parse_nameserver",
    "profile_from_data",
    "resolve_profile",
    "shipped_profiles",
]
