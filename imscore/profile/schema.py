"""A small schema-driven validator for YAML data, and the profile schema.

Each :class:`Node` knows what it expects (a phrase such as ``a number > 0`` used in messages), checks
a value found at a key path, and returns it normalised. :class:`Record` fills defaults, so validating
a document gives the effective settings as plain data. The first problem raises :class:`SchemaError`
with the key path and one message; the loader adds the file name.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NoReturn

from .model import (
    DECISIONS,
    DEFAULT_POLICIES,
    DEFAULT_STORE,
    DNS_PREFER,
    ORIGINATING_AUTH,
    UNKNOWN_USER_STATUSES,
    ConnectionSettings,
    DnsSettings,
    OverloadSettings,
    ProxySettings,
    QualifySettings,
    RegEventSettings,
    RegistrarSettings,
    Timers,
    TlsSettings,
    check_domain,
    check_store_url,
    parse_listen,
    parse_nameserver,
)

__all__ = [
    "PROFILE_SCHEMA",
    "REQUIRED",
    "Bool",
    "Field",
    "FreeMapping",
    "Int",
    "KeyPath",
    "ListOf",
    "Node",
    "NonNegative",
    "Number",
    "OneOf",
    "Optional",
    "Parsed",
    "Record",
    "SchemaError",
    "Str",
    "describe",
    "format_path",
]

KeyPath = tuple[str | int, ...]


def format_path(path: KeyPath) -> str:
    """``("policies", "auth", "plugin")`` -> ``policies.auth.plugin``; ints become ``[i]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def describe(value: object) -> str:
    """A short phrase for a value found in a document: ``'fast' (str)``, ``a list``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


class SchemaError(Exception):
    """The first problem found: where (key path) and what (one message naming the expectation)."""

    def __init__(self, path: KeyPath, message: str) -> None:
        super().__init__(f"{format_path(path)}: {message}")
        self.path = path
        self.message = message


class Node:
    """A schema node. Subclasses set :attr:`expected` and implement :meth:`validate`."""

    expected: str = "a value"

    def validate(self, value: object, path: KeyPath) -> object:
        raise NotImplementedError

    def fail(self, value: object, path: KeyPath) -> NoReturn:
        raise SchemaError(path, f"expected {self.expected}, got {describe(value)}")


class Str(Node):
    """A non-empty string (or any string with ``allow_empty``)."""

    def __init__(self, *, allow_empty: bool = False) -> None:
        self.allow_empty = allow_empty
        self.expected = "a string" if allow_empty else "a non-empty string"

    def validate(self, value: object, path: KeyPath) -> object:
        if not isinstance(value, str) or (not value and not self.allow_empty):
            self.fail(value, path)
        return value


class Number(Node):
    """A number (int or float, never a boolean) greater than ``gt``; returned as ``float``."""

    def __init__(self, *, gt: float = 0) -> None:
        self.gt = gt
        self.expected = f"a number > {gt:g}"

    def validate(self, value: object, path: KeyPath) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > self.gt:
            self.fail(value, path)
        return float(value)


class Int(Node):
    """An integer (never a boolean) within ``[minimum, maximum]``."""

    def __init__(self, *, minimum: int | None = None, maximum: int | None = None) -> None:
        self.minimum, self.maximum = minimum, maximum
        if minimum is not None and maximum is not None:
            self.expected = f"an integer between {minimum} and {maximum}"
        elif minimum is not None:
            self.expected = f"an integer >= {minimum}"
        elif maximum is not None:
            self.expected = f"an integer <= {maximum}"
        else:
            self.expected = "an integer"

    def validate(self, value: object, path: KeyPath) -> object:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(value, path)
        if (self.minimum is not None and value < self.minimum) or (
            self.maximum is not None and value > self.maximum
        ):
            self.fail(value, path)
        return value


class OneOf(Node):
    """One of a fixed set of scalars (compared by type and value, so ``'404'`` is not ``404``)."""

    def __init__(self, choices: Sequence[str | int]) -> None:
        self.choices = tuple(choices)
        self.expected = "one of: " + ", ".join(str(c) for c in choices)

    def validate(self, value: object, path: KeyPath) -> object:
        if isinstance(value, bool) or not any(
            type(value) is type(c) and value == c for c in self.choices
        ):
            self.fail(value, path)
        return value


class Bool(Node):
    """``true`` or ``false``."""

    expected = "true or false"

    def validate(self, value: object, path: KeyPath) -> object:
        if not isinstance(value, bool):
            self.fail(value, path)
        return value


class NonNegative(Node):
    """A number (never a boolean) >= 0; returned as ``float``."""

    expected = "a number >= 0"

    def validate(self, value: object, path: KeyPath) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            self.fail(value, path)
        return float(value)


class Parsed(Node):
    """A string turned into a value by ``parse``, whose :class:`ValueError` message is reported."""

    def __init__(self, expected: str, parse: Callable[[str], object]) -> None:
        self.expected = expected
        self.parse = parse

    def validate(self, value: object, path: KeyPath) -> object:
        if not isinstance(value, str):
            self.fail(value, path)
        try:
            return self.parse(value)
        except ValueError as exc:
            raise SchemaError(path, str(exc)) from None


class Optional(Node):
    """``null`` or a value of ``inner``."""

    def __init__(self, inner: Node) -> None:
        self.inner = inner
        self.expected = f"{inner.expected} or null"

    def validate(self, value: object, path: KeyPath) -> object:
        if value is None:
            return None
        try:
            return self.inner.validate(value, path)
        except SchemaError as exc:
            if exc.path == path and exc.message.startswith(f"expected {self.inner.expected}, got "):
                self.fail(value, path)  # say that null would do too
            raise


class ListOf(Node):
    """A list of ``item``, ``min_items`` long at least; ``unique`` rejects repeated items."""

    def __init__(self, item: Node, *, min_items: int = 0, unique: bool = False) -> None:
        self.item, self.min_items, self.unique = item, min_items, unique
        self.expected = f"a list of {item.expected}" + (
            f" ({min_items} at least)" if min_items > 1 else " (one at least)" if min_items == 1 else ""
        )

    def validate(self, value: object, path: KeyPath) -> object:
        if not isinstance(value, list) or len(value) < self.min_items:
            self.fail(value, path)
        out: list[object] = []
        for index, element in enumerate(value):
            item = self.item.validate(element, (*path, index))
            if self.unique and item in out:
                raise SchemaError(
                    (*path, index), f"repeats {describe(element)}; expected each entry once"
                )
            out.append(item)
        return out


_SCALARS = (str, int, float, bool, type(None))


class FreeMapping(Node):
    """Plugin options: a mapping with string keys and YAML values (scalars, lists, mappings)."""

    expected = "a mapping of option names to values"

    def validate(self, value: object, path: KeyPath) -> object:
        if not isinstance(value, dict):
            self.fail(value, path)
        return self._value(value, path)

    def _value(self, value: object, path: KeyPath) -> object:
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    raise SchemaError(path, f"expected string keys, got {describe(key)}")
            return {k: self._value(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self._value(v, (*path, i)) for i, v in enumerate(value)]
        if not isinstance(value, _SCALARS):
            raise SchemaError(
                path, f"expected a string, number, boolean, null, list or mapping, got {describe(value)}"
            )
        return value


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: Marks a :class:`Field` without a default.
REQUIRED: Final = _Required()


@dataclass(frozen=True)
class Field:
    """One key of a :class:`Record`: its node and its default (:data:`REQUIRED` for none)."""

    node: Node
    default: object = REQUIRED


Check = Callable[[dict[str, object], KeyPath], None]


class Record(Node):
    """A mapping with known keys. Unknown keys fail; missing keys take their default.

    ``checks`` run after every field validated, over the normalised values, to relate fields.
    """

    def __init__(self, fields: Mapping[str, Field], *, checks: Sequence[Check] = ()) -> None:
        self.fields = dict(fields)
        self.checks = tuple(checks)
        self.expected = "a mapping with keys: " + ", ".join(sorted(self.fields))

    def validate(self, value: object, path: KeyPath) -> object:
        if value is None and all(f.default is not REQUIRED for f in self.fields.values()):
            value = {}  # an empty section (``timers:``) means "all defaults"
        if not isinstance(value, dict):
            self.fail(value, path)
        for key in value:
            if key not in self.fields:
                raise SchemaError(
                    (*path, str(key)), "unknown key; expected one of: " + ", ".join(sorted(self.fields))
                )
        out: dict[str, object] = {}
        for name, spec in self.fields.items():
            if name in value:
                out[name] = spec.node.validate(value[name], (*path, name))
            elif spec.default is REQUIRED:
                raise SchemaError((*path, name), f"required key missing; expected {spec.node.expected}")
            elif spec.default is None:
                out[name] = None
            else:  # defaults go through the node too, so they come out normalised
                out[name] = spec.node.validate(copy.deepcopy(spec.default), (*path, name))
        for check in self.checks:
            check(out, path)
        return out


# --------------------------------------------------------------------------------------------------
# The profile schema.


def _parse_listener(text: str) -> object:
    return parse_listen(text, any_transport=True)


def _check_timers(values: dict[str, object], path: KeyPath) -> None:
    t1, t2 = values["t1"], values["t2"]
    assert isinstance(t1, float) and isinstance(t2, float)
    if t2 < t1:
        raise SchemaError((*path, "t2"), f"expected a number >= timers.t1 ({t1:g}), got {t2:g}")


def _check_registrar(values: dict[str, object], path: KeyPath) -> None:
    low, high, default = values["min_expires"], values["max_expires"], values["default_expires"]
    assert isinstance(low, int) and isinstance(high, int) and isinstance(default, int)
    if high < low:
        raise SchemaError(
            (*path, "max_expires"), f"expected an integer >= registrar.min_expires ({low}), got {high}"
        )
    if not low <= default <= high:
        raise SchemaError(
            (*path, "default_expires"),
            f"expected an integer between registrar.min_expires ({low}) "
            f"and registrar.max_expires ({high}), got {default}",
        )


def _check_tls(values: dict[str, object], path: KeyPath) -> None:
    listeners = values["listeners"]
    tls = values["tls"]
    assert isinstance(listeners, list) and isinstance(tls, dict)
    uses_tls = [str(lst) for lst in listeners if getattr(lst, "transport", None) == "tls"]
    for key in ("certfile", "keyfile"):
        if uses_tls and tls[key] is None:
            raise SchemaError(
                (*path, "tls", key),
                f"required by listener {uses_tls[0]!r}; expected a path to a PEM file",
            )


_T = Timers()
_R = RegistrarSettings()
_TLS = TlsSettings()
_C = ConnectionSettings()
_D = DnsSettings()
_P = ProxySettings()
_Q = QualifySettings()
_E = RegEventSettings()
_O = OverloadSettings()


def _check_ip_literal(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise ValueError(f"expected an IPv4 or IPv6 address, got {text!r}") from None


def _check_sip_uri(text: str) -> str:
    from imscore.sip import SipError, SipUri

    try:
        SipUri.parse(text)
    except SipError as exc:
        raise ValueError(f"expected a sip: or sips: URI, got {text!r} ({exc.reason})") from None
    return text


_POLICY_FIELDS = {"plugin": Field(Str()), "options": Field(FreeMapping(), {})}

PROFILE_SCHEMA: Final = Record(
    {
        "name": Field(Str(), None),  # None: the loader uses the file name
        "description": Field(Str(allow_empty=True), ""),
        "domains": Field(ListOf(Parsed("a domain name", check_domain), min_items=1, unique=True)),
        "listeners": Field(
            ListOf(
                # any transport name passes here; the loader checks it is built in or offered
                Parsed("a listener as TRANSPORT:HOST[:PORT]", _parse_listener),
                min_items=1,
                unique=True,
            ),
            ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"],
        ),
        "store": Field(
            Parsed("a store URL ('memory:', 'sqlite:PATH' or 'redis://...')", check_store_url),
            DEFAULT_STORE,
        ),
        "timers": Field(
            Record(
                {
                    "t1": Field(Number(), _T.t1),
                    "t2": Field(Number(), _T.t2),
                    "t4": Field(Number(), _T.t4),
                },
                checks=[_check_timers],
            ),
            {},
        ),
        "registrar": Field(
            Record(
                {
                    "min_expires": Field(Int(minimum=1), _R.min_expires),
                    "max_expires": Field(Int(minimum=1), _R.max_expires),
                    "default_expires": Field(Int(minimum=1), _R.default_expires),
                    "unknown_user_status": Field(OneOf(UNKNOWN_USER_STATUSES), _R.unknown_user_status),
                    "service_route": Field(
                        Optional(Parsed("a sip: URI", _check_sip_uri)), _R.service_route
                    ),
                },
                checks=[_check_registrar],
            ),
            {},
        ),
        "policies": Field(
            Record(
                {
                    decision: Field(
                        Record(_POLICY_FIELDS),
                        {
                            "plugin": DEFAULT_POLICIES[decision].plugin,
                            "options": dict(DEFAULT_POLICIES[decision].options),
                        },
                    )
                    for decision in DECISIONS
                }
            ),
            {},
        ),
        "tls": Field(
            Record(
                {
                    "certfile": Field(Optional(Str()), _TLS.certfile),
                    "keyfile": Field(Optional(Str()), _TLS.keyfile),
                    "cafile": Field(Optional(Str()), _TLS.cafile),
                    "verify_cafile": Field(Optional(Str()), _TLS.verify_cafile),
                }
            ),
            {},
        ),
        "connections": Field(
            Record(
                {
                    "max_connections": Field(Int(minimum=1), _C.max_connections),
                    "idle_timeout": Field(Number(), _C.idle_timeout),
                    "max_message_size": Field(Int(minimum=1024), _C.max_message_size),
                    "connect_timeout": Field(Number(), _C.connect_timeout),
                    "first_message_timeout": Field(Number(), _C.first_message_timeout),
                    "header_timeout": Field(Number(), _C.header_timeout),
                    "max_connections_per_source": Field(Int(minimum=0), _C.max_connections_per_source),
                }
            ),
            {},
        ),
        "dns": Field(
            Record(
                {
                    "nameservers": Field(
                        ListOf(Parsed("a name server as IP[:PORT]", parse_nameserver), unique=True), []
                    ),
                    "timeout": Field(Number(), _D.timeout),
                    "cache_size": Field(Int(minimum=0), _D.cache_size),
                    "prefer": Field(OneOf(DNS_PREFER), _D.prefer),
                    "negative_ttl": Field(Int(minimum=0), _D.negative_ttl),
                }
            ),
            {},
        ),
        "proxy": Field(
            Record(
                {
                    "record_route": Field(Bool(), _P.record_route),
                    "originating_auth": Field(
                        ListOf(OneOf(list(ORIGINATING_AUTH)), unique=True),
                        list(_P.originating_auth),
                    ),
                    "trusted_peers": Field(
                        ListOf(Parsed("an IP address", _check_ip_literal), unique=True), []
                    ),
                    "outbound": Field(Optional(Parsed("a sip: URI", _check_sip_uri)), _P.outbound),
                }
            ),
            {},
        ),
        "reg_event": Field(
            Record(
                {
                    "max_per_set": Field(Int(minimum=1), _E.max_per_set),
                    "max_per_watcher": Field(Int(minimum=1), _E.max_per_watcher),
                }
            ),
            {},
        ),
        "qualify": Field(
            Record(
                {
                    "interval": Field(NonNegative(), _Q.interval),
                    "max_failures": Field(Int(minimum=1), _Q.max_failures),
                }
            ),
            {},
        ),
        "overload": Field(
            Record(
                {
                    "max_lag": Field(NonNegative(), _O.max_lag),
                    "retry_after": Field(Int(minimum=0, maximum=86400), _O.retry_after),
                    "max_backlog": Field(Int(minimum=0), _O.max_backlog),
                }
            ),
            {},
        ),
    },
    checks=[_check_tls],
)
"""The schema of a profile document. Validating gives plain data with defaults filled in."""
