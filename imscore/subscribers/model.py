"""The subscriber model: private identities, their credentials and their public identities.

Everything here is a frozen dataclass. Public identities (IMPUs) are parsed URIs
(:class:`~imscore.sip.uri.SipUri` or :class:`~imscore.sip.uri.TelUri`) and are compared by their
address-of-record key, :attr:`SipUri.aor <imscore.sip.uri.SipUri.aor>` /
:attr:`TelUri.aor <imscore.sip.uri.TelUri.aor>`: host in any case, escapes decoded, URI parameters
dropped, visual separators of a telephone number removed. The user part of a SIP URI stays
case-sensitive (RFC 3261 §19.1.4).

Secrets (the Digest password, K, OP and OPc) never appear in a ``repr`` or in an error message.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from imscore.ifc.model import NO_SERVICES, ServiceProfile
from imscore.plugin import types as hook_types
from imscore.sip import ParseError, SipUri, TelUri, Uri, parse_uri
from imscore.sip.uri import aor_of

__all__ = [
    "AUTH_AKA",
    "AUTH_DIGEST",
    "AkaCredentials",
    "ImplicitSet",
    "Subscriber",
    "check_impi",
    "impi_key",
    "impu_key",
    "parse_impu",
]

#: The name of the Digest scheme in :attr:`Subscriber.auth_schemes`.
AUTH_DIGEST: Final = "digest"
#: The name of the Digest-AKA scheme in :attr:`Subscriber.auth_schemes`.
AUTH_AKA: Final = "aka"

K_OCTETS: Final = 16
OP_OCTETS: Final = 16
AMF_OCTETS: Final = 2
SQN_OCTETS: Final = 6

# NAI (RFC 7542 §2.2, TS 23.003 §13.3): a user name of atext and dots, "@", a realm of DNS labels.
_NAI_USER: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+"
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NAI_RE: Final = re.compile(rf"({_NAI_USER})@({_LABEL}(?:\.{_LABEL})*)")
# The IMS realm derived from an IMSI (TS 23.003 §13.2, §13.3).
_IMS_REALM_RE: Final = re.compile(r"ims\.mnc([0-9]{3})\.mcc([0-9]{3})\.3gppnetwork\.org", re.IGNORECASE)
_GLOBAL_NUMBER_RE: Final = re.compile(r"\+[0-9]+")


def check_impi(text: str) -> str:
    """Check a private identity and return it unchanged.

    An IMPI is a NAI, ``user@realm`` (TS 23.003 §13.3). When the realm is the IMS realm of a home
    network, ``ims.mnc<MNC>.mcc<MCC>.3gppnetwork.org``, the user part must be an IMSI of 6 to 15 digits
    that starts with that MCC and MNC (a two-digit MNC is written with a leading ``0`` in the realm).

    :raises ValueError: with a message that says what was expected.
    """
    m = _NAI_RE.fullmatch(text)
    if m is None:
        raise ValueError(
            f"expected a private identity user@realm (a NAI, TS 23.003 §13.3), got {text!r}"
        )
    user, realm = m.groups()
    ims = _IMS_REALM_RE.fullmatch(realm)
    if ims is not None:
        mnc, mcc = ims.groups()
        prefixes = [mcc + mnc] + ([mcc + mnc[1:]] if mnc.startswith("0") else [])
        if not (user.isdigit() and 6 <= len(user) <= 15 and user.startswith(tuple(prefixes))):
            raise ValueError(
                f"expected <IMSI>@{realm.lower()} with an IMSI of 6 to 15 digits starting with "
                f"{' or '.join(prefixes)} (MCC {mcc}, MNC {mnc}; TS 23.003 §13.3), got {text!r}"
            )
    return text


def impi_key(impi: str) -> str:
    """The comparison key of a private identity: the user part as written, the realm in lower case."""
    user, at, realm = impi.rpartition("@")
    return f"{user}@{realm.lower()}" if at else impi


def impu_key(uri: Uri | str) -> str | None:
    """The address-of-record key of a public identity (``uri.aor``); a string is parsed first.

    :returns: the key, or ``None`` for a string that is not a URI.
    """
    if isinstance(uri, str):
        try:
            return aor_of(uri)
        except ParseError:
            return None
    return uri.aor


def parse_impu(text: str) -> SipUri | TelUri:
    """Parse a public identity as a subscriber file writes it.

    A SIP IMPU is ``sip:user@domain`` or ``sips:user@domain``: a user part, no password, no port, no
    ``?headers`` and no URI parameter other than ``user=phone``; with ``user=phone`` the user part is a
    global number without visual separators (``sip:+15551230003@ims.example.test;user=phone``). A tel
    IMPU is a global number without parameters (``tel:+15551230001``; visual separators allowed).

    :raises ValueError: with a message that says what was expected.
    """
    try:
        uri = parse_uri(text)
    except ParseError:
        raise ValueError(f"expected a sip:, sips: or tel: URI, got {text!r}") from None
    if isinstance(uri, TelUri):
        if not uri.is_global:
            raise ValueError(f"expected a global number tel:+<digits> (TS 23.003 §13.4), got {text!r}")
        if uri.params.items():
            raise ValueError(f"expected a tel IMPU without parameters, got {text!r}")
        return uri
    if not isinstance(uri, SipUri):
        raise ValueError(f"expected a sip:, sips: or tel: URI, got {text!r}")
    if not uri.user:
        raise ValueError(f"expected a SIP IMPU with a user part (sip:user@domain), got {text!r}")
    if uri.password is not None:
        raise ValueError(f"expected a SIP IMPU without a password, got {uri.scheme}:{uri.user}:...")
    if uri.port is not None:
        raise ValueError(f"expected a SIP IMPU without a port, got {text!r}")
    if uri.headers:
        raise ValueError(f"expected a SIP IMPU without ?headers, got {text!r}")
    for name, value in uri.params.items():
        if name.lower() != "user" or value is None or value.lower() != "phone":
            raise ValueError(f"expected no URI parameter other than user=phone, got {text!r}")
        if not _GLOBAL_NUMBER_RE.fullmatch(uri.user_unescaped or ""):
            raise ValueError(
                "expected a global number without visual separators before '@' with user=phone "
                f"(sip:+<digits>@domain;user=phone), got {text!r}"
            )
    return uri


def _octets(value: bytes, size: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"AKA {what} must be {size} octets")


@dataclass(frozen=True, repr=False)
class AkaCredentials:
    """The Digest-AKA (Milenage) credentials of a private identity (TS 33.102, TS 35.206).

    Exactly one of ``op`` and ``opc`` is given: OPc is derived from OP and K, so a subscriber file
    holds whichever the operator provisioned.

    :param k: the subscriber key K, 16 octets.
    :param op: the operator variant OP, 16 octets, or ``None`` when ``opc`` is given.
    :param opc: OPc, 16 octets, or ``None`` when ``op`` is given.
    :param amf: the authentication management field, 2 octets.
    :param sqn: the sequence number to start from, 48 bits.
    :raises ValueError: for a wrong length, both or neither of OP and OPc, or an SQN out of range.
    """

    k: bytes
    op: bytes | None
    opc: bytes | None
    amf: bytes
    sqn: int

    def __post_init__(self) -> None:
        _octets(self.k, K_OCTETS, "K")
        if (self.op is None) == (self.opc is None):
            raise ValueError("AKA credentials need exactly one of OP and OPc")
        if self.op is not None:
            _octets(self.op, OP_OCTETS, "OP")
        if self.opc is not None:
            _octets(self.opc, OP_OCTETS, "OPc")
        _octets(self.amf, AMF_OCTETS, "AMF")
        if isinstance(self.sqn, bool) or not isinstance(self.sqn, int) or not 0 <= self.sqn < 1 << 48:
            raise ValueError("AKA SQN must be an integer from 0 to 2**48-1")

    def __repr__(self) -> str:
        op = "<16 octets>" if self.op is not None else "None"
        opc = "<16 octets>" if self.opc is not None else "None"
        return (
            f"AkaCredentials(k=<16 octets>, op={op}, opc={opc}, amf={self.amf.hex()!r}, "
            f"sqn=0x{self.sqn:012x})"
        )


@dataclass(frozen=True)
class ImplicitSet:
    """An implicit registration set: public identities registered and deregistered together
    (TS 23.228 §4.3.3.4, TS 24.229 §5.4.1.1).

    :param impus: the identities, the default one first; at least one, no two with the same
        address-of-record key.
    :raises ValueError: for an empty set or a repeated identity.
    """

    impus: tuple[Uri, ...]
    _keys: tuple[str, ...] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.impus:
            raise ValueError("an implicit registration set needs at least one IMPU")
        keys = tuple(uri.aor for uri in self.impus)
        for i, key in enumerate(keys):
            if key in keys[:i]:
                raise ValueError(f"{self.impus[i]} is twice in one implicit registration set")
        object.__setattr__(self, "_keys", keys)

    @property
    def default(self) -> Uri:
        """The default public identity of the set: its first IMPU."""
        return self.impus[0]

    @property
    def keys(self) -> tuple[str, ...]:
        """The address-of-record keys of the IMPUs, in order."""
        return self._keys

    @property
    def aor(self) -> str:
        """The address-of-record key of the default IMPU (``default.aor``, kept from when the set
        was made, as :attr:`keys` is): the key the set's bindings are filed under."""
        return self._keys[0]

    def __contains__(self, uri: object) -> bool:
        if not isinstance(uri, str | SipUri | TelUri):
            return False
        key = impu_key(uri)
        return key is not None and key in self._keys

    def __iter__(self) -> Iterator[Uri]:
        return iter(self.impus)

    def __len__(self) -> int:
        return len(self.impus)


@dataclass(frozen=True, repr=False)
class Subscriber:
    """One private identity (IMPI) and what the HSS-lite knows about it.

    :param impi: the private identity, ``user@realm`` (see :func:`check_impi`).
    :param password: the Digest password, or ``None``.
    :param aka: the Digest-AKA credentials, or ``None``. At least one of ``password`` and ``aka``.
    :param implicit_sets: the implicit registration sets of the subscriber's public identities; no
        identity in two sets.
    :param barred: address-of-record keys (``uri.aor``) of barred public identities. A barred
        identity may also be in a set: it is then part of that set (registered with it, TS 23.228
        §4.3.3.4) but cannot be used, and :meth:`associated_uris` leaves it out. A barred identity in
        no set only stays reserved to this subscriber. The default (first) IMPU of a set cannot be
        barred.
    :param max_devices: the most devices (contacts) this subscriber may register at once, overriding
        the binding policy's limit; ``None`` leaves the policy's own.
    :param service_profile: the initial filter criteria of the subscriber's public identities
        (TS 29.228 Annex B; one profile for all of them), empty by default.
    :raises ValueError: when one of those rules is broken.
    """

    impi: str
    password: str | None = None
    aka: AkaCredentials | None = None
    implicit_sets: tuple[ImplicitSet, ...] = ()
    barred: frozenset[str] = frozenset()
    max_devices: int | None = None
    service_profile: ServiceProfile = NO_SERVICES
    # address-of-record key -> index of its implicit set (None: barred and in no set)
    _index: dict[str, int | None] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        check_impi(self.impi)
        if self.password is None and self.aka is None:
            raise ValueError(f"subscriber {self.impi}: needs a Digest password, AKA credentials or both")
        if self.password is not None and (not isinstance(self.password, str) or not self.password):
            raise ValueError(f"subscriber {self.impi}: the password must be a non-empty string")
        if self.max_devices is not None and (
            isinstance(self.max_devices, bool)
            or not isinstance(self.max_devices, int)
            or self.max_devices < 1
        ):
            raise ValueError(f"subscriber {self.impi}: max_devices must be a positive integer or None")
        index: dict[str, int | None] = {}
        for number, implicit_set in enumerate(self.implicit_sets):
            for uri, key in zip(implicit_set.impus, implicit_set.keys, strict=True):
                if key in index:
                    raise ValueError(
                        f"subscriber {self.impi}: {uri} is in two implicit registration sets"
                    )
                index[key] = number
            if implicit_set.keys[0] in self.barred:
                raise ValueError(
                    f"subscriber {self.impi}: the default IMPU {implicit_set.default} of a set is barred"
                )
        for key in sorted(self.barred):
            index.setdefault(key, None)
        object.__setattr__(self, "_index", index)

    # -- identities ------------------------------------------------------------------------------
    @property
    def impus(self) -> tuple[Uri, ...]:
        """Every IMPU of every implicit set, set by set, in file order (barred ones included)."""
        return tuple(uri for implicit_set in self.implicit_sets for uri in implicit_set.impus)

    @property
    def aors(self) -> tuple[str, ...]:
        """The address-of-record keys of every public identity of this subscriber: those of its
        sets in order, then barred ones that are in no set."""
        return tuple(self._index)

    @property
    def default_impu(self) -> Uri | None:
        """The default IMPU of the first implicit set, ``None`` without sets."""
        return self.implicit_sets[0].default if self.implicit_sets else None

    def owns(self, uri: Uri | str) -> bool:
        """Whether ``uri`` is one of this subscriber's public identities: an IMPU of one of its sets,
        or a barred IMPU listed only under ``barred``. Compared by address-of-record key."""
        key = impu_key(uri)
        return key is not None and key in self._index

    def implicit_set_of(self, uri: Uri | str) -> ImplicitSet | None:
        """The implicit registration set ``uri`` belongs to; ``None`` if it is in none of them."""
        key = impu_key(uri)
        return None if key is None else self.implicit_set_of_key(key)

    def implicit_set_of_key(self, key: str) -> ImplicitSet | None:
        """:meth:`implicit_set_of` for an address-of-record key (:func:`impu_key`'s answer)."""
        number = self._index.get(key)
        return None if number is None else self.implicit_sets[number]

    def is_barred(self, uri: Uri | str) -> bool:
        """Whether ``uri`` is a barred public identity of this subscriber."""
        key = impu_key(uri)
        return key is not None and key in self.barred

    def associated_uris(self, uri: Uri | str) -> tuple[Uri, ...]:
        """The unbarred IMPUs of the implicit set of ``uri``, default first: what a registrar lists
        in P-Associated-URI after registering ``uri`` (TS 24.229 §5.4.1.2.2). Empty if ``uri`` is
        in no set."""
        implicit_set = self.implicit_set_of(uri)
        return () if implicit_set is None else self.unbarred(implicit_set)

    def unbarred(self, implicit_set: ImplicitSet) -> tuple[Uri, ...]:
        """The IMPUs of ``implicit_set`` that are not barred, default first (P-Associated-URI)."""
        if not self.barred:  # (most subscribers): all of them, in their order
            return tuple(implicit_set.impus)
        return tuple(
            u
            for u, key in zip(implicit_set.impus, implicit_set.keys, strict=True)
            if key not in self.barred
        )

    # -- credentials -----------------------------------------------------------------------------
    @property
    def auth_schemes(self) -> tuple[str, ...]:
        """The authentication schemes this subscriber's credentials allow, preferred first:
        ``("aka", "digest")`` with both, else ``("aka",)`` or ``("digest",)``."""
        schemes: list[str] = []
        if self.aka is not None:
            schemes.append(AUTH_AKA)
        if self.password is not None:
            schemes.append(AUTH_DIGEST)
        return tuple(schemes)

    def hook_record(self) -> hook_types.Subscriber:
        """This subscriber as the plugin hooks take it (:class:`imscore.plugin.types.Subscriber`):
        the IMPI, each set's IMPUs as written, and :attr:`auth_schemes`. No secrets. (Made once:
        both are immutable, and every challenge asks for it.)"""
        record = self.__dict__.get("_hook_record")
        if record is None:
            record = hook_types.Subscriber(
                impi=self.impi,
                implicit_sets=tuple(tuple(str(uri) for uri in s.impus) for s in self.implicit_sets),
                auth_schemes=self.auth_schemes,
            )
            object.__setattr__(self, "_hook_record", record)
        return record

    def __repr__(self) -> str:
        password = "None" if self.password is None else "<hidden>"
        return (
            f"Subscriber(impi={self.impi!r}, password={password}, aka={self.aka!r}, "
            f"implicit_sets={self.implicit_sets!r}, barred={sorted(self.barred)!r}, "
            f"max_devices={self.max_devices!r}, ifcs={len(self.service_profile.ifcs)})"
        )
