"""Diameter messages and AVPs as bytes (RFC 6733 §3 and §4): encode, decode, nothing else.

Sans-IO: :func:`decode_message` takes the octets of one whole message and gives a :class:`Message`;
:meth:`Message.encode` gives them back. Framing a TCP stream into messages is
:mod:`imscore.diameter.framer`'s job. Bad input raises :class:`DiameterDecodeError`, which carries
the Result-Code a peer should be answered with (RFC 6733 §7.1) and, once the header could be read,
the header, so that the answer can name the request's command and identifiers.

Header (RFC 6733 §3), 20 octets::

    version(1) | message length(3) | flags R P E T r r r r (1) | command code(3)
    application id(4) | hop-by-hop id(4) | end-to-end id(4)

AVP (RFC 6733 §4.1)::

    code(4) | flags V M P r r r r r (1) | AVP length(3) | [vendor id(4), when V] | data | padding

The AVP length counts the header and the data, not the padding to the next multiple of 4 octets;
the message length counts everything, padding included.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

__all__ = [
    "AVP_HEADER",
    "AVP_HEADER_VENDOR",
    "FLAG_E",
    "FLAG_M",
    "FLAG_P",
    "FLAG_R",
    "FLAG_T",
    "FLAG_V",
    "HEADER_LENGTH",
    "MAX_MESSAGE",
    "Avp",
    "DiameterDecodeError",
    "Header",
    "Message",
    "decode_avps",
    "decode_header",
    "decode_message",
]

VERSION: Final = 1
HEADER_LENGTH: Final = 20
AVP_HEADER: Final = 8
AVP_HEADER_VENDOR: Final = 12
#: the largest message accepted (the 24-bit length allows 16 MiB; a Cx message is a few KiB)
MAX_MESSAGE: Final = 1 << 20

# command flags (RFC 6733 §3)
FLAG_R: Final = 0x80  # request
FLAG_P: Final = 0x40  # proxiable
FLAG_E: Final = 0x20  # error (answers only)
FLAG_T: Final = 0x10  # potentially retransmitted
_CMD_RESERVED: Final = 0x0F
# AVP flags (RFC 6733 §4.1)
FLAG_V: Final = 0x80  # vendor-specific: a Vendor-ID follows
FLAG_M: Final = 0x40  # mandatory
FLAG_P_AVP: Final = 0x20  # protected (end-to-end security, deprecated)
_AVP_RESERVED: Final = 0x1F

# Result-Codes for malformed input (RFC 6733 §7.1.3, §7.1.5)
INVALID_HDR_BITS: Final = 3008
INVALID_AVP_BITS: Final = 3009
INVALID_AVP_VALUE: Final = 5004
UNSUPPORTED_VERSION: Final = 5011
INVALID_AVP_LENGTH: Final = 5014
INVALID_MESSAGE_LENGTH: Final = 5015

_HEADER = struct.Struct("!BBHBBHIII")  # version, length as 1+2 octets, flags, code as 1+2 octets, ...
_U32 = struct.Struct("!I")
_I32 = struct.Struct("!i")
_U64 = struct.Struct("!Q")


class DiameterDecodeError(ValueError):
    """Octets that are not a valid Diameter message.

    :param reason: what was wrong, for a log line and an Error-Message AVP.
    :param result_code: the RFC 6733 Result-Code to answer with (3008, 3009, 5004, 5011, 5014, 5015).
    :param header: the message header when it could be read (the answer names its identifiers).
    """

    def __init__(self, reason: str, result_code: int, header: Header | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.result_code = result_code
        self.header = header


def _pad(length: int) -> int:
    return (4 - length % 4) % 4


@dataclass(frozen=True, slots=True)
class Avp:
    """One AVP: its code, vendor (0 for IETF AVPs), flags and raw data (without padding).

    The typed constructors (:meth:`u32`, :meth:`utf8`, :meth:`group`, ...) and readers
    (:meth:`as_u32`, :meth:`as_str`, :meth:`children`, ...) convert the data per the RFC 6733 §4.2
    basic formats; the dictionary (:mod:`imscore.diameter.dictionary`) knows which is which.

    :param code: the AVP code (32 bits).
    :param data: the data octets.
    :param vendor: the Vendor-Id (0: none, the V flag is clear).
    :param mandatory: the M flag.
    :param protected: the P flag.
    """

    code: int
    data: bytes
    vendor: int = 0
    mandatory: bool = True
    protected: bool = False

    # -- constructors -----------------------------------------------------------------------------
    @classmethod
    def u32(cls, code: int, value: int, vendor: int = 0, *, mandatory: bool = True) -> Avp:
        """An Unsigned32 (or Enumerated) AVP."""
        return cls(code, _U32.pack(value), vendor, mandatory)

    @classmethod
    def i32(cls, code: int, value: int, vendor: int = 0, *, mandatory: bool = True) -> Avp:
        """An Integer32 AVP."""
        return cls(code, _I32.pack(value), vendor, mandatory)

    @classmethod
    def u64(cls, code: int, value: int, vendor: int = 0, *, mandatory: bool = True) -> Avp:
        """An Unsigned64 AVP."""
        return cls(code, _U64.pack(value), vendor, mandatory)

    @classmethod
    def utf8(cls, code: int, value: str, vendor: int = 0, *, mandatory: bool = True) -> Avp:
        """A UTF8String or DiameterIdentity AVP."""
        return cls(code, value.encode("utf-8"), vendor, mandatory)

    @classmethod
    def octets(cls, code: int, value: bytes, vendor: int = 0, *, mandatory: bool = True) -> Avp:
        """An OctetString AVP."""
        return cls(code, bytes(value), vendor, mandatory)

    @classmethod
    def group(
        cls, code: int, children: Iterable[Avp], vendor: int = 0, *, mandatory: bool = True
    ) -> Avp:
        """A Grouped AVP holding ``children`` in order (RFC 6733 §4.4)."""
        return cls(code, b"".join(child.encode() for child in children), vendor, mandatory)

    @classmethod
    def address(cls, code: int, ip: str, vendor: int = 0, *, mandatory: bool = True) -> Avp:
        """An Address AVP (RFC 6733 §4.3.1): address family 1 (IPv4) or 2 (IPv6), then the address."""
        import ipaddress

        addr = ipaddress.ip_address(ip)
        family = 1 if addr.version == 4 else 2
        return cls(code, family.to_bytes(2, "big") + addr.packed, vendor, mandatory)

    # -- readers ----------------------------------------------------------------------------------
    def as_u32(self) -> int:
        """The data as an Unsigned32/Enumerated; :class:`DiameterDecodeError` (5014) if not 4 octets."""
        if len(self.data) != 4:
            raise self._bad_length("4")
        return int(_U32.unpack(self.data)[0])

    def as_i32(self) -> int:
        """The data as an Integer32."""
        if len(self.data) != 4:
            raise self._bad_length("4")
        return int(_I32.unpack(self.data)[0])

    def as_u64(self) -> int:
        """The data as an Unsigned64."""
        if len(self.data) != 8:
            raise self._bad_length("8")
        return int(_U64.unpack(self.data)[0])

    def as_str(self) -> str:
        """The data as UTF-8 text; :class:`DiameterDecodeError` (5004) when it is not UTF-8."""
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise DiameterDecodeError(
                f"AVP {self.code} (vendor {self.vendor}) is not UTF-8", INVALID_AVP_VALUE
            ) from None

    def as_address(self) -> str:
        """The data as an Address: the IP address as text."""
        import ipaddress

        family, raw = int.from_bytes(self.data[:2], "big"), self.data[2:]
        if (family, len(raw)) not in ((1, 4), (2, 16)):
            raise DiameterDecodeError(
                f"AVP {self.code} is not an IPv4 or IPv6 Address", INVALID_AVP_VALUE
            )
        return str(ipaddress.ip_address(raw))

    def children(self) -> tuple[Avp, ...]:
        """The AVPs inside a Grouped AVP; :class:`DiameterDecodeError` when they do not parse."""
        return decode_avps(self.data)

    def find(self, code: int, vendor: int = 0) -> Avp | None:
        """The first child AVP with this code and vendor, or ``None``."""
        return _find(self.children(), code, vendor)

    def _bad_length(self, expected: str) -> DiameterDecodeError:
        return DiameterDecodeError(
            f"AVP {self.code} (vendor {self.vendor}) has {len(self.data)} data octets, expected "
            f"{expected}",
            INVALID_AVP_LENGTH,
        )

    # -- bytes ------------------------------------------------------------------------------------
    def encode(self) -> bytes:
        """The AVP's octets, padded to a multiple of 4."""
        flags = (FLAG_V if self.vendor else 0) | (FLAG_M if self.mandatory else 0)
        flags |= FLAG_P_AVP if self.protected else 0
        head = AVP_HEADER_VENDOR if self.vendor else AVP_HEADER
        length = head + len(self.data)
        if length > 0xFFFFFF:
            raise ValueError(f"AVP {self.code} is too long ({length} octets)")
        out = _U32.pack(self.code) + bytes([flags]) + length.to_bytes(3, "big")
        if self.vendor:
            out += _U32.pack(self.vendor)
        return out + self.data + bytes(_pad(length))


def _find(avps: Iterable[Avp], code: int, vendor: int) -> Avp | None:
    for avp in avps:
        if avp.code == code and avp.vendor == vendor:
            return avp
    return None


def decode_avps(data: bytes) -> tuple[Avp, ...]:
    """Decode a run of AVPs (a message body, or a Grouped AVP's data).

    :raises DiameterDecodeError: an AVP header is cut short, an AVP length is shorter than its
        header or runs past the end (5014), or reserved flag bits are set (3009).
    """
    avps: list[Avp] = []
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < AVP_HEADER:
            raise DiameterDecodeError(
                f"{end - offset} octets left at offset {offset}: too short for an AVP header",
                INVALID_AVP_LENGTH,
            )
        code = int(_U32.unpack_from(data, offset)[0])
        flags = data[offset + 4]
        length = int.from_bytes(data[offset + 5 : offset + 8], "big")
        if flags & _AVP_RESERVED:
            raise DiameterDecodeError(
                f"AVP {code} has reserved flag bits set (0x{flags:02x})", INVALID_AVP_BITS
            )
        head = AVP_HEADER_VENDOR if flags & FLAG_V else AVP_HEADER
        if length < head:
            raise DiameterDecodeError(
                f"AVP {code} length {length} is shorter than its {head}-octet header",
                INVALID_AVP_LENGTH,
            )
        if offset + length > end:
            raise DiameterDecodeError(
                f"AVP {code} length {length} at offset {offset} runs past the end ({end})",
                INVALID_AVP_LENGTH,
            )
        vendor = int(_U32.unpack_from(data, offset + 8)[0]) if flags & FLAG_V else 0
        avps.append(
            Avp(
                code,
                bytes(data[offset + head : offset + length]),
                vendor,
                bool(flags & FLAG_M),
                bool(flags & FLAG_P_AVP),
            )
        )
        offset += length + _pad(length)
    if offset != end:  # the last AVP's padding is missing: RFC 6733 §4 says it is always there
        raise DiameterDecodeError("the last AVP is not padded to 4 octets", INVALID_AVP_LENGTH)
    return tuple(avps)


@dataclass(frozen=True, slots=True)
class Header:
    """The 20-octet message header (RFC 6733 §3)."""

    length: int
    flags: int
    command: int
    application: int
    hop_by_hop: int
    end_to_end: int
    version: int = VERSION

    @property
    def is_request(self) -> bool:
        """The R flag."""
        return bool(self.flags & FLAG_R)


def decode_header(data: bytes) -> Header:
    """Read the header at the start of ``data`` (at least 20 octets).

    :raises DiameterDecodeError: version other than 1 (5011), a length under 20 or not a multiple of
        4 (5015), reserved flag bits, or E set on a request (3008).
    """
    if len(data) < HEADER_LENGTH:
        raise DiameterDecodeError(
            f"{len(data)} octets: too short for a Diameter header (20)", INVALID_MESSAGE_LENGTH
        )
    version, len_hi, len_lo, flags, code_hi, code_lo, app, hbh, e2e = _HEADER.unpack_from(data)
    header = Header(
        length=(len_hi << 16) | len_lo,
        flags=flags,
        command=(code_hi << 16) | code_lo,
        application=app,
        hop_by_hop=hbh,
        end_to_end=e2e,
        version=version,
    )
    if version != VERSION:
        raise DiameterDecodeError(f"Diameter version {version}, not 1", UNSUPPORTED_VERSION, header)
    if header.length < HEADER_LENGTH or header.length % 4:
        raise DiameterDecodeError(
            f"message length {header.length} is under 20 or not a multiple of 4",
            INVALID_MESSAGE_LENGTH,
            header,
        )
    if flags & _CMD_RESERVED or (flags & FLAG_R and flags & FLAG_E):
        raise DiameterDecodeError(
            f"invalid command flags 0x{flags:02x} (reserved bits, or E on a request)",
            INVALID_HDR_BITS,
            header,
        )
    return header


@dataclass(frozen=True, slots=True)
class Message:
    """One Diameter message: header fields and AVPs in order.

    :param command: the command code (24 bits).
    :param application: the Application-ID (0 for the base protocol).
    :param avps: the AVPs.
    :param request: the R flag; ``proxiable`` P, ``error`` E, ``retransmit`` T.
    """

    command: int
    application: int
    avps: tuple[Avp, ...] = ()
    request: bool = True
    proxiable: bool = False
    error: bool = False
    retransmit: bool = False
    hop_by_hop: int = 0
    end_to_end: int = 0

    @property
    def flags(self) -> int:
        """The command flags octet."""
        return (
            (FLAG_R if self.request else 0)
            | (FLAG_P if self.proxiable else 0)
            | (FLAG_E if self.error else 0)
            | (FLAG_T if self.retransmit else 0)
        )

    def find(self, code: int, vendor: int = 0) -> Avp | None:
        """The first top-level AVP with this code and vendor, or ``None``."""
        return _find(self.avps, code, vendor)

    def find_all(self, code: int, vendor: int = 0) -> Iterator[Avp]:
        """Every top-level AVP with this code and vendor, in order."""
        return (avp for avp in self.avps if avp.code == code and avp.vendor == vendor)

    def encode(self) -> bytes:
        """The message's octets."""
        body = b"".join(avp.encode() for avp in self.avps)
        length = HEADER_LENGTH + len(body)
        if length > 0xFFFFFF:
            raise ValueError(f"message too long ({length} octets)")
        head = (
            bytes([VERSION])
            + length.to_bytes(3, "big")
            + bytes([self.flags])
            + self.command.to_bytes(3, "big")
            + struct.pack("!III", self.application, self.hop_by_hop, self.end_to_end)
        )
        return head + body


def decode_message(data: bytes) -> Message:
    """Decode the octets of exactly one message.

    :raises DiameterDecodeError: see :func:`decode_header` and :func:`decode_avps`; also when the
        header's length is not the number of octets given (5015). The error carries the header
        when it could be read.
    """
    header = decode_header(data)
    if header.length != len(data):
        raise DiameterDecodeError(
            f"the header says {header.length} octets, {len(data)} were given",
            INVALID_MESSAGE_LENGTH,
            header,
        )
    try:
        avps = decode_avps(data[HEADER_LENGTH:])
    except DiameterDecodeError as exc:
        raise DiameterDecodeError(exc.reason, exc.result_code, header) from None
    flags = header.flags
    return Message(
        command=header.command,
        application=header.application,
        avps=avps,
        request=bool(flags & FLAG_R),
        proxiable=bool(flags & FLAG_P),
        error=bool(flags & FLAG_E),
        retransmit=bool(flags & FLAG_T),
        hop_by_hop=header.hop_by_hop,
        end_to_end=header.end_to_end,
    )
