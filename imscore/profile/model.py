"""The effective profile: frozen dataclasses with every default filled in.

A :class:`Profile` is what the server runs with after a YAML profile was loaded and validated
(:func:`imscore.profile.load_profile`). The small parsers here (:func:`parse_listen`,
:func:`check_store_url`, :func:`check_domain`) are shared by the loader and the command line
(``--listen``, ``--store``); they raise :class:`ValueError` with a message that says what was expected.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, TypeAlias, cast

__all__ = [
    "AKA_ALGORITHMS",
    "AT_LIMIT_ACTIONS",
    "AUTH_OPTION_DEFAULTS",
    "BUILTIN_PLUGINS",
    "DECISIONS",
    "DEFAULT_AT_LIMIT",
    "DEFAULT_LISTENERS",
    "DEFAULT_MAX_CONTACTS",
    "DEFAULT_POLICIES",
    "DEFAULT_PORTS",
    "DEFAULT_REJECT_STATUS",
    "DEFAULT_STORE",
    "DIGEST_ALGORITHMS",
    "DNS_PREFER",
    "ORIGINATING_AUTH",
    "TRANSPORTS",
    "UNKNOWN_USER_STATUSES",
    "ConnectionSettings",
    "DnsSettings",
    "ListenError",
    "Listener",
    "OptionValue",
    "OverloadSettings",
    "PolicyChoice",
    "PolicyOptionError",
    "Profile",
    "ProxySettings",
    "QualifySettings",
    "RegEventSettings",
    "RegistrarSettings",
    "Timers",
    "TlsSettings",
    "check_auth_options",
    "check_binding_policy_options",
    "check_domain",
    "check_forking_options",
    "check_store_url",
    "parse_listen",
    "parse_nameserver",
]

#: A plugin option value as YAML gives it: scalars, lists and string-keyed mappings.
OptionValue: TypeAlias = str | int | float | bool | list["OptionValue"] | dict[str, "OptionValue"] | None

#: Listener transports, lower case.
TRANSPORTS: Final = ("udp", "tcp", "tls")
#: What a transport name offered by a plugin (``sctp``) must look like: a lower-case token.
TRANSPORT_NAME: Final = re.compile(r"[a-z][a-z0-9-]{0,31}")
#: Port used when a listener names none (RFC 3261 §19.1.2; 5060 for plugin transports, RFC 4168).
DEFAULT_PORTS: Final[Mapping[str, int]] = MappingProxyType({"udp": 5060, "tcp": 5060, "tls": 5061})
#: The decisions a profile picks a plugin for.
DECISIONS: Final = ("binding_policy", "forking", "auth")
#: Plugin names shipped in ``imscore.builtin`` per decision (third-party plugins add more).
BUILTIN_PLUGINS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "binding_policy": ("replace-all", "max-contacts", "unlimited"),
        "forking": ("parallel", "sequential", "hunt"),
        "auth": ("digest", "aka", "digest-or-aka"),
    }
)
#: What the builtin ``max-contacts`` binding policy does when a new device would exceed the limit
#: (its ``at_limit`` option).
AT_LIMIT_ACTIONS: Final = (
    "reject",
    "evict-oldest",
    "evict-soonest-to-expire",
    "evict-unreachable-first",
)
#: Defaults of the ``max-contacts`` options ``max_contacts``, ``at_limit`` and ``reject_status``.
DEFAULT_MAX_CONTACTS: Final = 10
DEFAULT_AT_LIMIT: Final = "reject"
DEFAULT_REJECT_STATUS: Final = 403
#: Statuses a registrar may answer for an unknown user: 404 and 403 tell it apart from a known one,
#: 401 challenges it as if it were known (and never lets it register), see docs/security.rst.
UNKNOWN_USER_STATUSES: Final = (401, 403, 404)
#: Digest algorithms an ``auth`` policy may challenge with (option ``digest_algorithm``).
DIGEST_ALGORITHMS: Final = ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess")
#: Digest-AKA algorithms an ``auth`` policy may challenge with (option ``aka_algorithm``).
AKA_ALGORITHMS: Final = ("AKAv1-MD5", "AKAv2-MD5")
#: The options of the builtin ``auth`` policies and their defaults: the algorithms challenged with,
#: and the limits on failed authentications (per ``failure_window`` seconds; 0: no limit).
AUTH_OPTION_DEFAULTS: Final[Mapping[str, str | int | float]] = MappingProxyType(
    {
        "digest_algorithm": "MD5",
        "aka_algorithm": "AKAv1-MD5",
        "failure_window": 60.0,
        "max_failures": 10,
        "max_failures_per_source": 100,
        "max_failures_per_impi": 0,
    }
)
DEFAULT_STORE: Final = "sqlite:imscore.db"


class ListenError(ValueError):
    """A listener specification (``udp:127.0.0.1:5060``) is malformed."""


@dataclass(frozen=True)
class Listener:
    """One socket to serve on. ``host`` is an IP address or a host name, IPv6 without brackets."""

    transport: str
    host: str
    port: int

    def __post_init__(self) -> None:
        # a plugin may offer more transports (sctp): whether one is offered is checked where the
        # plugins are known (the profile loader, the server); here only the name's form
        if self.transport not in TRANSPORTS and not TRANSPORT_NAME.fullmatch(self.transport):
            raise ListenError(
                f"unknown transport {self.transport!r}; expected one of: "
                f"{', '.join(sorted(TRANSPORTS))} or a transport name offered by a plugin"
            )
        if not 0 <= self.port <= 65535:
            raise ListenError(f"port {self.port} out of range; expected an integer 0-65535")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")


def _is_host_name(text: str) -> bool:
    if not text or len(text) > 253:
        return False
    labels = text.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return False
    if all(label.isdigit() for label in labels):  # looks like IPv4: must be one
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            return False
    return True


def parse_listen(text: str, *, any_transport: bool = False) -> Listener:
    """Parse ``TRANSPORT:HOST[:PORT]`` as ``--listen`` and profiles write it.

    ``udp:127.0.0.1:5060``, ``tcp:[::1]:5060``, ``tls:example.test`` (port 5061). The transport is
    one of :data:`TRANSPORTS` (case-insensitive); an IPv6 address must be in brackets; a missing port
    is the transport's default; port 0 asks the system for a free port.

    :param any_transport: also accept any name of the form :data:`TRANSPORT_NAME` (a transport a
        plugin may offer, such as ``sctp``); the caller then checks it is offered.

    :raises ListenError: naming what was wrong and what was expected.
    """
    transport, sep, rest = text.partition(":")
    if not sep or not transport:
        raise ListenError(f"expected TRANSPORT:HOST[:PORT] such as udp:127.0.0.1:5060, got {text!r}")
    kind = transport.lower()
    if kind not in TRANSPORTS and not (any_transport and TRANSPORT_NAME.fullmatch(kind)):
        raise ListenError(
            f"unknown transport {transport!r} in {text!r}; "
            f"expected one of: {', '.join(sorted(TRANSPORTS))}"
        )
    port_text: str | None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ListenError(f"missing ']' in {text!r}; expected an IPv6 address as [::1]")
        host, after = rest[1:end], rest[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ListenError(
                f"{host!r} in {text!r} is not an IPv6 address; expected an IPv6 address inside brackets"
            ) from None
        if not after:
            port_text = None
        elif after.startswith(":"):
            port_text = after[1:]
        else:
            raise ListenError(f"unexpected {after!r} after ']' in {text!r}; expected ':PORT' or nothing")
    else:
        if rest.count(":") > 1:
            raise ListenError(
                f"IPv6 address without brackets in {text!r}; expected it in brackets, "
                f"as {kind}:[::1]:{DEFAULT_PORTS.get(kind, 5060)}"
            )
        host, colon, port_text_ = rest.partition(":")
        port_text = port_text_ if colon else None
        if not host:
            raise ListenError(f"missing host in {text!r}; expected TRANSPORT:HOST[:PORT]")
        if not _is_host_name(host):
            raise ListenError(
                f"host {host!r} in {text!r} is not an IP address or a host name; "
                "expected an IPv4 address, a host name or an IPv6 address in brackets"
            )
    if port_text is None:
        port = DEFAULT_PORTS.get(kind, 5060)
    else:
        if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
            raise ListenError(f"bad port {port_text!r} in {text!r}; expected an integer 0-65535")
        port = int(port_text)
    return Listener(kind, host, port)


def parse_nameserver(text: str) -> tuple[str, int]:
    """Parse a DNS server as ``dns.nameservers`` and ``--dns`` write it: ``HOST[:PORT]``.

    ``127.0.0.1:5353``, ``[::1]:5353``, ``192.0.2.53`` (port 53). The host must be an IP address
    (the resolver cannot look up its own server); an IPv6 address with a port needs brackets.

    :raises ValueError: naming what was wrong and what was expected.
    """
    host, port_text = text, "53"
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :] if end > 0 else ""
        if end < 0 or (rest and not rest.startswith(":")):
            raise ValueError(f"bad name server {text!r}; expected IP[:PORT] such as [::1]:5353")
        host, port_text = text[1:end], (rest[1:] if rest else "53")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"bad name server {text!r}; expected an IP address with an optional port, "
            "such as 127.0.0.1:5353 or [::1]:5353"
        ) from None
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad port {port_text!r} in name server {text!r}; expected an integer 1-65535")
    return str(address), int(port_text)


_SCHEME: Final = re.compile(r"[a-z][a-z0-9+.-]+")


def check_store_url(url: str) -> str:
    """Validate a binding store URL and return it: ``memory:``, ``sqlite:PATH`` or ``redis://...``.

    ``memory`` (no colon, as YAML users tend to write it, since a plain ``memory:`` is a YAML syntax
    error) is accepted as ``memory:``. A relative SQLite path is relative to the server's working
    directory.

    :raises ValueError: naming what was expected.
    """
    if url in ("memory:", "memory"):
        return "memory:"
    if url.startswith("sqlite:") and len(url) > len("sqlite:"):
        return url
    if url.startswith(("redis://", "rediss://")) and len(url.partition("://")[2]) > 0:
        return url
    scheme, sep, rest = url.partition(":")
    builtin = scheme in ("memory", "sqlite", "redis", "rediss")
    if sep and rest and not builtin and _SCHEME.fullmatch(scheme):
        return url  # a plugin's store (ims_register_binding_stores), checked when the server starts
    raise ValueError(
        f"unknown store {url!r}; expected 'memory:', 'sqlite:PATH', 'redis://HOST[:PORT][/DB]' "
        "or SCHEME:... of a plugin's binding store"
    )


def check_domain(name: str) -> str:
    """Validate a served domain (a host name or an IPv4 address) and return it in lower case.

    :raises ValueError: naming what was expected.
    """
    if not _is_host_name(name):
        raise ValueError(f"{name!r} is not a domain name; expected labels of letters, digits and '-'")
    return name.lower()


class PolicyOptionError(ValueError):
    """An option of a builtin policy is unknown or has a bad value.

    :param option: the option's name (the key under ``options``).
    :param message: what was wrong and what was expected.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


def check_binding_policy_options(plugin: str, options: Mapping[str, object]) -> dict[str, OptionValue]:
    """Validate the options of a builtin binding policy and return them with every default filled in.

    ``replace-all`` and ``unlimited`` take no options. ``max-contacts`` takes ``max_contacts`` (an
    integer >= 1, default :data:`DEFAULT_MAX_CONTACTS`), ``at_limit`` (one of
    :data:`AT_LIMIT_ACTIONS`, default :data:`DEFAULT_AT_LIMIT`) and ``reject_status`` (an integer
    400-699, default :data:`DEFAULT_REJECT_STATUS`). For any other plugin name the options belong to
    that plugin and are returned unchanged.

    :raises PolicyOptionError: for the first unknown option or bad value, naming it and what was
        expected.
    """
    from .schema import describe  # schema imports this module: import at call time

    if plugin not in BUILTIN_PLUGINS["binding_policy"]:
        return cast("dict[str, OptionValue]", dict(options))  # a third-party plugin's business
    if plugin != "max-contacts":
        for key in options:
            raise PolicyOptionError(key, f"unknown option; {plugin} takes no options")
        return {}
    known = ("at_limit", "max_contacts", "reject_status")
    for key in options:
        if key not in known:
            raise PolicyOptionError(key, "unknown option; expected one of: " + ", ".join(known))
    limit = options.get("max_contacts", DEFAULT_MAX_CONTACTS)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise PolicyOptionError("max_contacts", f"expected an integer >= 1, got {describe(limit)}")
    action = options.get("at_limit", DEFAULT_AT_LIMIT)
    if not isinstance(action, str) or action not in AT_LIMIT_ACTIONS:
        raise PolicyOptionError(
            "at_limit", f"expected one of: {', '.join(AT_LIMIT_ACTIONS)}, got {describe(action)}"
        )
    status = options.get("reject_status", DEFAULT_REJECT_STATUS)
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 699:
        raise PolicyOptionError(
            "reject_status", f"expected an integer between 400 and 699, got {describe(status)}"
        )
    return {"max_contacts": limit, "at_limit": action, "reject_status": status}


#: hunt orders (``policies.forking.options.order``)
HUNT_ORDERS: Final = ("q", "newest-first", "oldest-first")
#: the options each builtin forking strategy takes
_FORKING_OPTIONS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {"parallel": ("ring_timeout",), "sequential": ("group_timeout",), "hunt": ("ring_timeout", "order")}
)


def check_forking_options(strategy: str, options: Mapping[str, object]) -> None:
    """Check the options of a builtin forking strategy (other strategies check their own).

    :raises PolicyOptionError: naming the option and what was expected.
    """
    from .schema import describe  # schema imports this module: import at call time

    known = _FORKING_OPTIONS.get(strategy)
    if known is None:
        return
    for key, value in options.items():
        if key not in known:
            raise PolicyOptionError(
                key, f"unknown option for {strategy}; expected one of: {', '.join(known)}"
            )
        if key == "order":
            if value not in HUNT_ORDERS:
                raise PolicyOptionError(
                    key, f"expected one of: {', '.join(HUNT_ORDERS)}, got {describe(value)}"
                )
        elif value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise PolicyOptionError(key, f"expected a number of seconds > 0, got {describe(value)}")


def check_auth_options(plugin: str, options: Mapping[str, object]) -> dict[str, OptionValue]:
    """Validate the options of an ``auth`` policy and return them with every default filled in.

    The keys of :data:`AUTH_OPTION_DEFAULTS`: ``digest_algorithm`` (one of
    :data:`DIGEST_ALGORITHMS`), ``aka_algorithm`` (one of :data:`AKA_ALGORITHMS`),
    ``failure_window`` (seconds > 0), ``max_failures`` (failed authentications of one IMPI from one
    source address per window), ``max_failures_per_source`` (from one source address, whatever the
    IMPI) and ``max_failures_per_impi`` (of one IMPI, whatever the source), integers >= 0 where 0
    means no limit. Other keys are left to plugins (the ``ims_auth_*`` hooks may read them) and
    returned unchanged.

    :raises PolicyOptionError: for the first unknown option or bad value, naming it and what was
        expected.
    """
    from .schema import describe  # schema imports this module: import at call time

    del plugin  # the same options for every auth plugin: the registrar's Authenticator reads them
    out = cast("dict[str, OptionValue]", dict(options))
    for key, default in AUTH_OPTION_DEFAULTS.items():
        value = options.get(key, default)
        if key in ("digest_algorithm", "aka_algorithm"):
            choices = DIGEST_ALGORITHMS if key == "digest_algorithm" else AKA_ALGORITHMS
            if not isinstance(value, str) or value not in choices:
                raise PolicyOptionError(
                    key, f"expected one of: {', '.join(choices)}, got {describe(value)}"
                )
        elif key == "failure_window":
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise PolicyOptionError(key, f"expected a number of seconds > 0, got {describe(value)}")
            value = float(value)
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PolicyOptionError(
                key, f"expected an integer >= 0 (0: no limit), got {describe(value)}"
            )
        out[key] = value
    return out


@dataclass(frozen=True)
class Timers:
    """SIP transaction timers in seconds (RFC 3261 §17.1.1.1)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


@dataclass(frozen=True)
class ConnectionSettings:
    """Limits of the stream transports (TCP, TLS) and of any one message."""

    max_connections: int = 1024
    idle_timeout: float = 600.0
    max_message_size: int = 65535
    connect_timeout: float = 5.0
    #: seconds an accepted connection has to deliver its first whole, good SIP message
    first_message_timeout: float = 20.0
    #: seconds a message has from its first octets until its header section is complete
    header_timeout: float = 10.0
    #: live accepted connections from one IP address at most (0: no limit)
    max_connections_per_source: int = 128


@dataclass(frozen=True)
class RegistrarSettings:
    """Registration lifetimes in seconds and the answer for an unknown user (401: challenged like
    a known user, see :data:`UNKNOWN_USER_STATUSES`)."""

    min_expires: int = 60
    max_expires: int = 7200
    default_expires: int = 3600
    unknown_user_status: int = 404
    #: the Service-Route returned in a 200 (RFC 3608): a SIP URI naming this S-CSCF; ``None``:
    #: ``sip:orig@<first domain>;lr``
    service_route: str | None = None


@dataclass(frozen=True)
class PolicyChoice:
    """The plugin picked for one decision and its options (validated by the plugin, not here)."""

    plugin: str
    options: dict[str, OptionValue] = field(default_factory=dict)


@dataclass(frozen=True)
class TlsSettings:
    """PEM files for TLS (paths as written; relative to the working directory).

    ``certfile``/``keyfile``/``cafile`` are the server side (listeners). ``verify_cafile`` is the
    client side: the CA bundle that certificates of peers this element connects to over TLS must chain
    to (``None``: the system's trusted CAs).
    """

    certfile: str | None = None
    keyfile: str | None = None
    cafile: str | None = None
    verify_cafile: str | None = None


#: How an originating request (From a served user) may be accepted, in the order they are tried.
ORIGINATING_AUTH: Final = ("trusted-peer", "registered-flow", "digest")


@dataclass(frozen=True)
class ProxySettings:
    """The proxy: Record-Route, who may send originating requests, where other domains go."""

    record_route: bool = False
    originating_auth: tuple[str, ...] = ORIGINATING_AUTH
    trusted_peers: tuple[str, ...] = ()
    outbound: str | None = None


@dataclass(frozen=True)
class OverloadSettings:
    """When the server refuses new work: smoothed event-loop lag above ``max_lag`` seconds, or more
    than ``max_backlog`` octets unread in the UDP listeners' receive queues (0: not watched), gets
    new out-of-dialog requests a 503 with ``Retry-After: retry_after``."""

    max_lag: float = 0.25
    retry_after: int = 5
    max_backlog: int = 262_144


@dataclass(frozen=True)
class RegEventSettings:
    """Limits of the reg event package (RFC 3680): subscriptions per watched implicit set and per
    watcher (the subscriber's source address); a SUBSCRIBE past either gets 403."""

    max_per_set: int = 16
    max_per_watcher: int = 8


@dataclass(frozen=True)
class QualifySettings:
    """Contact qualification: OPTIONS pings to registered contacts (interval 0: off)."""

    interval: float = 0.0
    max_failures: int = 3


#: Address families the DNS resolver may try first.
DNS_PREFER: Final = ("ipv4", "ipv6")


@dataclass(frozen=True)
class DnsSettings:
    """How next hops in other domains are found (RFC 3263; :mod:`imscore.routing`).

    :param nameservers: ``(ip, port)`` pairs; empty means the system's (``/etc/resolv.conf``).
    :param timeout: seconds one URI's whole resolution may take.
    :param cache_size: record sets kept (least recently used dropped first); 0 disables the cache.
    :param prefer: ``ipv4`` or ``ipv6``: which addresses of a host come first.
    :param negative_ttl: seconds a "does not exist" answer is kept when it carries no SOA.
    """

    nameservers: tuple[tuple[str, int], ...] = ()
    timeout: float = 2.0
    cache_size: int = 1024
    prefer: str = "ipv4"
    negative_ttl: int = 30


DEFAULT_LISTENERS: Final = (Listener("udp", "127.0.0.1", 5060), Listener("tcp", "127.0.0.1", 5060))
DEFAULT_POLICIES: Final[Mapping[str, PolicyChoice]] = MappingProxyType(
    {
        "binding_policy": PolicyChoice("max-contacts"),
        "forking": PolicyChoice("parallel"),
        "auth": PolicyChoice("digest-or-aka"),
    }
)


def _default_policies() -> dict[str, PolicyChoice]:
    return {d: PolicyChoice(c.plugin, dict(c.options)) for d, c in DEFAULT_POLICIES.items()}


@dataclass(frozen=True)
class Profile:
    """Everything a server runs with; built by the loader, every default filled in."""

    name: str
    domains: tuple[str, ...]
    description: str = ""
    listeners: tuple[Listener, ...] = DEFAULT_LISTENERS
    store: str = DEFAULT_STORE
    timers: Timers = field(default_factory=Timers)
    registrar: RegistrarSettings = field(default_factory=RegistrarSettings)
    policies: dict[str, PolicyChoice] = field(default_factory=_default_policies)
    tls: TlsSettings = field(default_factory=TlsSettings)
    connections: ConnectionSettings = field(default_factory=ConnectionSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    qualify: QualifySettings = field(default_factory=QualifySettings)
    reg_event: RegEventSettings = field(default_factory=RegEventSettings)
    overload: OverloadSettings = field(default_factory=OverloadSettings)
