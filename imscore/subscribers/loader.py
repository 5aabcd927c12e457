"""Read and validate a subscriber file.

Every failure is one :class:`~imscore.subscribers.errors.SubscriberError` whose message names the
file, the entry (its index and IMPI), the key inside the entry and what was expected::

    subs.yaml: subscribers[1] (bob@ims.example.test): key 'aka.amf': expected 4 hex digits
    (2 octets), got 'b9b'

(one line in fact).

Passwords and keys never appear in a message: for those the loader says what it found (a number, a
string of so many characters), not the value.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, NoReturn, Protocol

import yaml

from imscore.sip import SipUri, TelUri, Uri
from imscore.yamlload import UniqueKeyLoader, YamlReadError, read_yaml

from .directory import SubscriberDirectory
from .errors import SubscriberError
from .model import (
    AMF_OCTETS,
    K_OCTETS,
    OP_OCTETS,
    SQN_OCTETS,
    AkaCredentials,
    ImplicitSet,
    Subscriber,
    check_impi,
    impi_key,
    parse_impu,
)
from .service_profile import parse_service_profile

__all__ = ["ENTRY_KEYS", "demo_subscribers_path", "load_subscribers", "subscribers_from_data"]

#: The keys of one entry of the ``subscribers`` list.
ENTRY_KEYS: Final = (
    "impi",
    "password",
    "aka",
    "implicit_sets",
    "barred",
    "max_devices",
    "service_profile",
)
#: The file name ending of a bulk subscriber file (JSON Lines, :mod:`imscore.subscribers.bulk`).
BULK_SUFFIX: Final = ".jsonl"
_AKA_KEYS: Final = ("k", "op", "opc", "amf", "sqn")
_TOP_KEYS: Final = ("subscribers",)
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


# --------------------------------------------------------------------------------------------------
# Reading YAML


class _RawInt(int):
    """An integer YAML read from a plain scalar, with the text as written (``0042`` stays ``0042``).

    Hex fields such as ``amf: 8000`` or ``sqn: 000000000001`` are plain numbers to YAML; the loader
    reads them back as written instead of asking for quotes.
    """

    raw: str

    def __new__(cls, value: int, raw: str) -> _RawInt:
        self = super().__new__(cls, value)
        self.raw = raw
        return self


class _Loader(UniqueKeyLoader):
    """The shared loader (repeated keys refused) that also keeps integers as written."""


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    value = loader.construct_yaml_int(node)
    return _RawInt(value, str(node.value))


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _read_yaml(path: Path, source: str) -> object:
    try:
        # a YAML error without a position names only its type: the file holds secrets
        return read_yaml(path, _Loader, "the subscriber file", quote_errors=False)
    except YamlReadError as exc:
        raise SubscriberError(source, exc.detail) from None


# --------------------------------------------------------------------------------------------------
# Validating


def demo_subscribers_path() -> Path:
    """The demo subscriber file shipped with the package (``profiles/subscribers.demo.yaml`` of
    the repository, installed as ``imscore/profiles/``)."""
    from importlib import resources

    return Path(str(resources.files("imscore").joinpath("profiles", "subscribers.demo.yaml")))


def load_subscribers(path: str | os.PathLike[str]) -> SubscriberDirectory:
    """Read a subscriber file, validate every entry, and return the subscribers.

    A file whose name ends in ``.jsonl`` is a bulk file, one subscriber per line
    (:func:`imscore.subscribers.bulk.load_bulk`); any other is YAML.

    :param path: the YAML or bulk file; messages name it as given.
    :raises SubscriberError: one message: the file, the entry, the key and what was expected.
    """
    source = os.fspath(path)
    if source.endswith(BULK_SUFFIX):
        from .bulk import load_bulk

        return load_bulk(path)
    return subscribers_from_data(_read_yaml(Path(path), source), source=source)


def subscribers_from_data(data: object, *, source: str) -> SubscriberDirectory:
    """Validate an already parsed document and build the subscriber directory.

    :param data: the document: a mapping with a ``subscribers`` list.
    :param source: the file (or other origin) that messages start with.
    :raises SubscriberError: as :func:`load_subscribers`.
    """
    if not isinstance(data, dict):
        got = "an empty document" if data is None else _describe(data)
        raise SubscriberError(source, f"expected a mapping with the key 'subscribers', got {got}")
    for key in data:
        if key not in _TOP_KEYS:
            raise SubscriberError(
                source, "unknown key; expected: " + ", ".join(_TOP_KEYS), key=_key_text(key)
            )
    if "subscribers" not in data:
        raise SubscriberError(
            source, "required key missing; expected a list of subscribers", key="subscribers"
        )
    entries = data["subscribers"]
    if not isinstance(entries, list):
        raise SubscriberError(
            source, f"expected a list of subscribers, got {_describe(entries)}", key="subscribers"
        )
    owners: dict[str, tuple[int, str, str]] = {}  # IMPU key -> (entry index, impi, key path)
    impis: dict[str, tuple[int, str]] = {}
    subscribers = [
        _Entry(source, index, entry, owners, impis).build() for index, entry in enumerate(entries)
    ]
    return SubscriberDirectory(subscribers, source=source)


def _list_label(index: int) -> str:
    """How a YAML file's messages name entry ``index``."""
    return f"subscribers[{index}]"


class Owners(Protocol):
    """Who already holds a public identity: address-of-record key -> (entry index, IMPI, key path).

    A plain dict is one; the bulk loader passes a compact index that answers the same.
    """

    def get(self, aor: str, /) -> tuple[int, str, str] | None: ...

    def __setitem__(self, aor: str, owner: tuple[int, str, str], /) -> None: ...

    def setdefault(self, aor: str, owner: tuple[int, str, str], /) -> tuple[int, str, str]: ...


class Impis(Protocol):
    """Which entry holds a private identity: IMPI key -> (entry index, IMPI as written)."""

    def setdefault(self, key: str, first: tuple[int, str], /) -> tuple[int, str]: ...


class _Entry:
    """Validates one entry of the ``subscribers`` list (or one line of a bulk file)."""

    def __init__(
        self,
        source: str,
        index: int,
        data: object,
        owners: Owners,
        impis: Impis,
        label: Callable[[int], str] = _list_label,
    ) -> None:
        self.source = source
        self.index = index
        self.data = data
        self.owners = owners
        self.impis = impis
        self.label = label
        self.impi: str | None = None

    def fail(self, detail: str, key: str | None = None) -> NoReturn:
        raise SubscriberError(
            self.source,
            detail,
            index=self.index,
            impi=self.impi,
            key=key,
            entry=None if self.label is _list_label else self.label(self.index),
        )

    def build(self) -> Subscriber:
        data = self.data
        if not isinstance(data, dict):
            self.fail(f"expected a mapping with keys: {', '.join(ENTRY_KEYS)}, got {_describe(data)}")
        impi = data.get("impi")
        problem = None
        if isinstance(impi, str):
            try:
                self.impi = check_impi(impi)
            except ValueError as exc:
                problem = str(exc)
        for key in data:
            if key not in ENTRY_KEYS:
                self.fail("unknown key; expected one of: " + ", ".join(ENTRY_KEYS), _key_text(key))
        if impi is None:
            self.fail("required key missing; expected a private identity user@realm", "impi")
        if problem is not None:
            self.fail(problem, "impi")
        if self.impi is None:
            self.fail(f"expected a private identity user@realm, got {_describe(impi)}", "impi")
        first, spelling = self.impis.setdefault(impi_key(self.impi), (self.index, self.impi))
        if first != self.index:
            self.fail(f"expected each IMPI once, already {self.label(first)} ({spelling})", "impi")

        password = self.password(data.get("password"))
        aka = self.aka(data.get("aka"))
        if password is None and aka is None:
            self.fail(
                "required unless 'aka' is given; expected a Digest password, AKA credentials or both",
                "password",
            )
        sets = self.implicit_sets(data.get("implicit_sets"), "implicit_sets" in data)
        barred = self.barred(data.get("barred"), sets)
        max_devices = self.max_devices(data.get("max_devices"))
        service_profile = parse_service_profile(data.get("service_profile"), self.fail, _describe)
        problem = None
        try:
            return Subscriber(
                impi=self.impi,
                password=password,
                aka=aka,
                implicit_sets=sets,
                barred=barred,
                max_devices=max_devices,
                service_profile=service_profile,
            )
        except ValueError as exc:  # the checks above should have caught it; the model has the last word
            problem = str(exc)
        self.fail(problem)

    # -- credentials -------------------------------------------------------------------------------
    def password(self, value: object) -> str | None:
        if value is None:
            return None
        if isinstance(value, _RawInt):
            return value.raw
        if not isinstance(value, str) or not value:
            self.fail(f"expected a non-empty string, got {_describe(value, secret=True)}", "password")
        return value

    def aka(self, value: object) -> AkaCredentials | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            self.fail(
                f"expected a mapping with keys: {', '.join(_AKA_KEYS)}, got {_describe(value)}", "aka"
            )
        for key in value:
            if key not in _AKA_KEYS:
                self.fail(
                    "unknown key; expected one of: " + ", ".join(_AKA_KEYS), f"aka.{_key_text(key)}"
                )
        for key in ("k", "amf", "sqn"):
            if value.get(key) is None:
                octets = {"k": K_OCTETS, "amf": AMF_OCTETS, "sqn": SQN_OCTETS}[key]
                self.fail(
                    f"required key missing; expected {2 * octets} hex digits ({octets} octets)",
                    f"aka.{key}",
                )
        has_op, has_opc = value.get("op") is not None, value.get("opc") is not None
        if has_op == has_opc:
            self.fail(
                f"expected exactly one of 'op' and 'opc', got {'both' if has_op else 'neither'}", "aka"
            )
        k = self.hex(value["k"], K_OCTETS, "aka.k", secret=True)
        op = self.hex(value["op"], OP_OCTETS, "aka.op", secret=True) if has_op else None
        opc = self.hex(value["opc"], OP_OCTETS, "aka.opc", secret=True) if has_opc else None
        amf = self.hex(value["amf"], AMF_OCTETS, "aka.amf")
        sqn = self.hex(value["sqn"], SQN_OCTETS, "aka.sqn")
        return AkaCredentials(k=k, op=op, opc=opc, amf=amf, sqn=int.from_bytes(sqn, "big"))

    def hex(self, value: object, octets: int, key: str, *, secret: bool = False) -> bytes:
        expected = f"expected {2 * octets} hex digits ({octets} octets)"
        text = value.raw if isinstance(value, _RawInt) else value
        if not isinstance(text, str):
            self.fail(f"{expected}, got {_describe(value, secret=secret)}", key)
        if len(text) == 2 * octets and set(text) <= _HEX_DIGITS:
            return bytes.fromhex(text)
        if not secret:
            self.fail(f"{expected}, got {text!r}", key)
        if len(text) != 2 * octets:
            self.fail(f"{expected}, got {_count(len(text))} (value not shown)", key)
        self.fail(
            f"{expected}, got {_count(len(text))} that are not all hex digits (value not shown)", key
        )

    # -- identities --------------------------------------------------------------------------------
    def impu(self, value: object, key: str, *, in_set: bool) -> tuple[SipUri | TelUri, str]:
        """Parse one IMPU; return it and its address-of-record key, checking it is nobody else's."""
        if not isinstance(value, str):
            self.fail(f"expected a sip:, sips: or tel: URI, got {_describe(value)}", key)
        problem: str | None = None
        try:
            uri = parse_impu(value)
        except ValueError as exc:
            problem = str(exc)
        if problem is not None:
            self.fail(problem, key)
        aor = uri.aor
        owner = self.owners.get(aor)
        if owner is not None:
            index, impi, where = owner
            if index != self.index:
                self.fail(
                    f"{value} is already an IMPU of {self.label(index)} ({impi}), at {where!r}", key
                )
            if in_set:
                self.fail(f"{value} is already in {where}; expected each IMPU in one implicit set", key)
        return uri, aor

    def implicit_sets(self, value: object, present: bool) -> tuple[ImplicitSet, ...]:
        key = "implicit_sets"
        expected = "a list of implicit registration sets, each a list of IMPUs"
        if not present:
            self.fail(f"required key missing; expected {expected}", key)
        if not isinstance(value, list) or not value:
            got = "an empty list" if value == [] else _describe(value)
            self.fail(f"expected {expected}, got {got}", key)
        sets: list[ImplicitSet] = []
        for number, members in enumerate(value):
            where = f"{key}[{number}]"
            if not isinstance(members, list) or not members:
                got = "an empty list" if members == [] else _describe(members)
                hint = f" (write [{members}] for a set of one)" if isinstance(members, str) else ""
                self.fail(f"expected a list of IMPUs, the default one first, got {got}{hint}", where)
            uris: list[Uri] = []
            for position, member in enumerate(members):
                member_key = f"{where}[{position}]"
                uri, aor = self.impu(member, member_key, in_set=True)
                uris.append(uri)
                self.owners[aor] = (self.index, self.impi or "", member_key)
            sets.append(ImplicitSet(tuple(uris)))
        return tuple(sets)

    def barred(self, value: object, sets: tuple[ImplicitSet, ...]) -> frozenset[str]:
        if value is None:
            return frozenset()
        if not isinstance(value, list):
            self.fail(f"expected a list of IMPUs, got {_describe(value)}", "barred")
        defaults = {s.keys[0]: f"implicit_sets[{number}][0]" for number, s in enumerate(sets)}
        keys: dict[str, int] = {}
        for position, member in enumerate(value):
            key = f"barred[{position}]"
            _, aor = self.impu(member, key, in_set=False)
            if aor in keys:
                self.fail(f"{member} is already barred[{keys[aor]}]; expected each IMPU once", key)
            if aor in defaults:
                self.fail(
                    f"{member} is the default IMPU, at {defaults[aor]!r}; expected the default IMPU "
                    "of a set to be unbarred (put another IMPU first)",
                    key,
                )
            keys[aor] = position
            self.owners.setdefault(aor, (self.index, self.impi or "", key))
        return frozenset(keys)

    def max_devices(self, value: object) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(
                f"expected a positive integer (1 or more) or null, got {_describe(value)}", "max_devices"
            )
        return int(value)


# --------------------------------------------------------------------------------------------------
# Messages


def _key_text(key: object) -> str:
    return key if isinstance(key, str) else repr(key)


def _count(n: int) -> str:
    return f"{n} character" + ("" if n == 1 else "s")


def _describe(value: object, *, secret: bool = False) -> str:
    """A short phrase for a value found in the file; with ``secret`` it never shows the value."""
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean" if secret else f"{str(value).lower()} (a boolean)"
    if isinstance(value, int | float):
        if secret:
            return "a number (value not shown)"
        return f"{value.raw if isinstance(value, _RawInt) else value} (a number)"
    if isinstance(value, str):
        if secret:
            return "an empty string" if not value else f"{_count(len(value))} (value not shown)"
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return f"a {type(value).__name__}"
