"""STUN Binding on SIP UDP ports, as a keep-alive (RFC 5626 §4.4.2 and §8, RFC 5389), sans-IO.

A UA that registered with outbound over UDP keeps its NAT binding open by sending STUN Binding
Requests to the SIP port it registered through; the answer tells it its address as we see it, and
a change of that address tells it that the NAT rebooted (the flow is gone, it re-registers).

SIP and STUN share the port: a SIP message starts with a letter, a STUN message with two zero bits
(first octet ``0x00`` or ``0x01``) and carries the magic cookie at offset 4 (RFC 5389 §6, §8). This
module recognises such a datagram (:func:`looks_like_stun`), parses it (:func:`parse`) and builds
the answer (:func:`answer`): a Binding Success Response with XOR-MAPPED-ADDRESS (IPv4 or IPv6),
FINGERPRINT when the request had one, or a 420 error response naming unknown comprehension-required
attributes (RFC 5389 §7.3.1). No authentication is asked for (RFC 5626 §8: the keep-alive needs
none); USERNAME and MESSAGE-INTEGRITY are accepted and ignored. Indications and responses get no
answer. A malformed message raises :class:`StunError`: the transport drops and counts it.
"""

from __future__ import annotations

import binascii
import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "BINDING_REQUEST",
    "BINDING_SUCCESS",
    "MAGIC_COOKIE",
    "StunError",
    "StunMessage",
    "answer",
    "binding_request",
    "decode_xor_mapped_address",
    "looks_like_stun",
    "parse",
    "xor_mapped_address",
]

MAGIC_COOKIE: Final = 0x2112A442
_COOKIE_BYTES: Final = MAGIC_COOKIE.to_bytes(4, "big")
HEADER_SIZE: Final = 20

BINDING_REQUEST: Final = 0x0001
BINDING_SUCCESS: Final = 0x0101
BINDING_ERROR: Final = 0x0111

ATTR_MAPPED_ADDRESS: Final = 0x0001
ATTR_USERNAME: Final = 0x0006
ATTR_MESSAGE_INTEGRITY: Final = 0x0008
ATTR_ERROR_CODE: Final = 0x0009
ATTR_UNKNOWN_ATTRIBUTES: Final = 0x000A
ATTR_REALM: Final = 0x0014
ATTR_NONCE: Final = 0x0015
ATTR_XOR_MAPPED_ADDRESS: Final = 0x0020
ATTR_SOFTWARE: Final = 0x8022
ATTR_FINGERPRINT: Final = 0x8028
#: comprehension-required attributes (below 0x8000) we understand
_KNOWN_REQUIRED: Final = frozenset(
    {
        ATTR_MAPPED_ADDRESS,
        ATTR_USERNAME,
        ATTR_MESSAGE_INTEGRITY,
        ATTR_ERROR_CODE,
        ATTR_UNKNOWN_ATTRIBUTES,
        ATTR_REALM,
        ATTR_NONCE,
        ATTR_XOR_MAPPED_ADDRESS,
    }
)
_FINGERPRINT_XOR: Final = 0x5354554E
_FAMILY_IPV4: Final = 0x01
_FAMILY_IPV6: Final = 0x02


class StunError(ValueError):
    """A datagram that looks like STUN but is not a well-formed STUN message."""


@dataclass(frozen=True, slots=True)
class StunMessage:
    """One parsed STUN message.

    :param type: the message type (method and class), e.g. :data:`BINDING_REQUEST`.
    :param transaction_id: the 96-bit transaction id.
    :param attributes: ``(type, value)`` pairs in order (values without padding).
    :param fingerprint: whether it ended with a (checked) FINGERPRINT.
    """

    type: int
    transaction_id: bytes
    attributes: tuple[tuple[int, bytes], ...]
    fingerprint: bool = False

    @property
    def is_request(self) -> bool:
        """Class bits (C1, C0) = request."""
        return self.type & 0x0110 == 0x0000

    @property
    def method(self) -> int:
        """The method bits without the class bits (``1``: Binding)."""
        return (self.type & 0x000F) | ((self.type & 0x00E0) >> 1) | ((self.type & 0x3E00) >> 2)


def looks_like_stun(data: bytes) -> bool:
    """Whether a datagram is STUN and not SIP: first octet 0x00 or 0x01, magic cookie at offset 4."""
    return len(data) >= 8 and data[0] < 2 and data[4:8] == _COOKIE_BYTES


def _crc(data: bytes) -> int:
    return (binascii.crc32(data) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF


def parse(data: bytes) -> StunMessage:
    """Parse one STUN message (RFC 5389 §6, §15).

    :raises StunError: too short, a length that does not match, a bad attribute, or a FINGERPRINT
        that is wrong or not last.
    """
    if len(data) < HEADER_SIZE:
        raise StunError(f"{len(data)} octets, shorter than a STUN header")
    kind, length = struct.unpack_from("!HH", data)
    if kind & 0xC000 or data[4:8] != _COOKIE_BYTES:
        raise StunError("not a STUN header (leading bits or magic cookie)")
    if length % 4 or HEADER_SIZE + length != len(data):
        raise StunError(f"message length {length} does not match the {len(data)} octets read")
    attributes: list[tuple[int, bytes]] = []
    fingerprint = False
    offset = HEADER_SIZE
    while offset < len(data):
        if fingerprint:
            raise StunError("an attribute after FINGERPRINT")
        if offset + 4 > len(data):
            raise StunError("truncated attribute header")
        attr, size = struct.unpack_from("!HH", data, offset)
        start = offset + 4
        end = start + size
        if end > len(data):
            raise StunError(f"attribute 0x{attr:04x} runs past the message")
        value = data[start:end]
        if attr == ATTR_FINGERPRINT:
            if size != 4 or struct.unpack("!I", value)[0] != _crc(data[:offset]):
                raise StunError("FINGERPRINT does not match")
            fingerprint = True
        else:
            attributes.append((attr, value))
        offset = start + (size + 3) // 4 * 4
    if offset != len(data):
        raise StunError("attribute padding runs past the message")
    return StunMessage(kind, data[8:HEADER_SIZE], tuple(attributes), fingerprint)


def _encode(
    kind: int, transaction_id: bytes, attributes: list[tuple[int, bytes]], fingerprint: bool
) -> bytes:
    body = b"".join(
        struct.pack("!HH", attr, len(value)) + value + b"\0" * (-len(value) % 4)
        for attr, value in attributes
    )
    length = len(body) + (8 if fingerprint else 0)
    message = struct.pack("!HH", kind, length) + _COOKIE_BYTES + transaction_id + body
    if fingerprint:
        message += struct.pack("!HHI", ATTR_FINGERPRINT, 4, _crc(message))
    return message


def binding_request(transaction_id: bytes, *, fingerprint: bool = False) -> bytes:
    """A Binding Request with no attributes (a client's keep-alive; tests use it)."""
    if len(transaction_id) != 12:
        raise ValueError("a STUN transaction id is 12 octets")
    return _encode(BINDING_REQUEST, transaction_id, [], fingerprint)


def xor_mapped_address(address: tuple[str, int], transaction_id: bytes) -> bytes:
    """The XOR-MAPPED-ADDRESS value for ``address`` (RFC 5389 §15.2)."""
    host, port = address
    ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    xport = port ^ (MAGIC_COOKIE >> 16)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        return struct.pack("!BBH", 0, _FAMILY_IPV4, xport) + (int(ip) ^ MAGIC_COOKIE).to_bytes(4, "big")
    mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
    return struct.pack("!BBH", 0, _FAMILY_IPV6, xport) + (int(ip) ^ mask).to_bytes(16, "big")


def decode_xor_mapped_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    """The address an XOR-MAPPED-ADDRESS value carries.

    :raises StunError: a bad family or length.
    """
    if len(value) < 4:
        raise StunError("XOR-MAPPED-ADDRESS too short")
    _, family, xport = struct.unpack_from("!BBH", value)
    port = xport ^ (MAGIC_COOKIE >> 16)
    if family == _FAMILY_IPV4 and len(value) == 8:
        return str(ipaddress.IPv4Address(int.from_bytes(value[4:], "big") ^ MAGIC_COOKIE)), port
    if family == _FAMILY_IPV6 and len(value) == 20:
        mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
        return str(ipaddress.IPv6Address(int.from_bytes(value[4:], "big") ^ mask)), port
    raise StunError(f"XOR-MAPPED-ADDRESS family {family} with {len(value)} octets")


def answer(data: bytes, source: tuple[str, int]) -> bytes | None:
    """The answer to a STUN datagram from ``source``: a Binding Success Response with its
    XOR-MAPPED-ADDRESS; a 420 error response when it carries comprehension-required attributes we
    do not know; ``None`` for anything that gets no answer (indications, responses, other methods).

    :raises StunError: the message is malformed (drop it).
    """
    message = parse(data)
    if not message.is_request:
        return None
    if message.method != 1:
        return None  # RFC 5389 §7.3: only Binding here; an unknown method's request could get 400
    unknown = sorted({a for a, _ in message.attributes if a < 0x8000 and a not in _KNOWN_REQUIRED})
    if unknown:
        reason = b"Unknown Attribute"
        error = struct.pack("!HBB", 0, 4, 20) + reason
        listing = b"".join(struct.pack("!H", a) for a in unknown)
        attributes = [(ATTR_ERROR_CODE, error), (ATTR_UNKNOWN_ATTRIBUTES, listing)]
        return _encode(BINDING_ERROR, message.transaction_id, attributes, message.fingerprint)
    mapped = xor_mapped_address(source, message.transaction_id)
    return _encode(
        BINDING_SUCCESS, message.transaction_id, [(ATTR_XOR_MAPPED_ADDRESS, mapped)], message.fingerprint
    )
