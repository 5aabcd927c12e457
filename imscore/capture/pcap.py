"""SIP messages as a classic libpcap file, for Wireshark, tshark and sngrep.

The file is classic libpcap: magic ``a1b2c3d4`` (written little-endian), version 2.4, microsecond
timestamps, link type 1 (Ethernet). Each record becomes synthetic frames:

- **Ethernet** with made-up, locally administered MAC addresses derived from the IP address
  (``02:00:`` and the four IPv4 octets; ``02:`` and five octets of a SHA-256 of an IPv6 address), so
  one host keeps one MAC across the file.
- **IPv4** (header checksum computed, identification counting up from 1, DF set, TTL 64) or **IPv6**
  (hop limit 64). A record whose two addresses are of different families (a dual-stack socket
  sending to an IPv4 peer) is written as IPv6 with the IPv4 address mapped (``::ffff:a.b.c.d``).
- **UDP** for ``udp`` records, with the checksum computed over the pseudo-header (for IPv4 too,
  although 0 would be allowed). A message that does not fit one UDP datagram (more than 65,507
  octets over IPv4, 65,527 over IPv6: the IP and UDP length fields are 16 bits) could never have
  been on the wire as one datagram; it is **skipped**, counted in :attr:`PcapWriter.skipped` and
  logged at WARNING on the ``imscore.capture`` logger. (Live, the kernel refuses such a datagram
  with ``EMSGSIZE``; only a virtual-time scenario can produce one.)
- **TCP** for ``tcp``, ``tls`` and ``sctp`` records: segments flagged PSH|ACK with no SYN (a capture
  that starts mid-connection, which Wireshark handles), one sequence number per direction that grows
  with every octet written, the acknowledgement being what the other direction has sent so far,
  checksums computed. A message longer than one segment (65,495 octets of payload over IPv4) is
  split over several, and Wireshark's SIP dissector reassembles it. ``tls`` records are written as
  plain SIP over TCP on their own ports (usually 5061): **what is recorded is the decrypted message**,
  the TLS records themselves are not kept. ``sctp`` records (and those of any other transport a
  plugin brings) are written as TCP too: SCTP chunks are not written by this writer.

The output is deterministic: the same records, in the same order, give byte-identical files (no
clock is read; initial sequence numbers come from a CRC of the addresses).

:func:`read_pcap` reads such files back (and plain Ethernet/IPv4/IPv6 UDP/TCP captures generally),
for tests and for loading a capture into :mod:`imscore.capture.ladder`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Final

from .record import CaptureError, MessageRecord

__all__ = [
    "LINKTYPE_ETHERNET",
    "MAX_UDP_PAYLOAD_V4",
    "MAX_UDP_PAYLOAD_V6",
    "PcapWriter",
    "read_pcap",
    "write_pcap",
]

logger = logging.getLogger("imscore.capture")

PCAP_MAGIC: Final = 0xA1B2C3D4
LINKTYPE_ETHERNET: Final = 1
SNAPLEN: Final = 262144
#: the largest SIP message one UDP datagram can carry over IPv4 (65,535 - 20 IP - 8 UDP)
MAX_UDP_PAYLOAD_V4: Final = 65535 - 20 - 8
#: the same over IPv6 (the payload length field counts the 8 UDP octets but not the 40 IPv6 ones)
MAX_UDP_PAYLOAD_V6: Final = 65535 - 8
_MAX_TCP_PAYLOAD_V4: Final = 65535 - 20 - 20
_MAX_TCP_PAYLOAD_V6: Final = 65535 - 20
_ETHERTYPE_IPV4: Final = 0x0800
_ETHERTYPE_IPV6: Final = 0x86DD
_PROTO_TCP: Final = 6
_PROTO_UDP: Final = 17
_TCP_PSH_ACK: Final = 0x18
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): one's complement of the one's complement sum of 16-bit words.

    The sum is taken as one big number modulo 0xFFFF (2**16 is 1 modulo 0xFFFF, so the carries fold
    in by themselves); a non-zero number that is a multiple of 0xFFFF sums to 0xFFFF, not 0.
    """
    if len(data) % 2:
        data += b"\x00"
    number = int.from_bytes(data, "big")
    total = number % 0xFFFF
    if total == 0 and number:
        total = 0xFFFF
    return ~total & 0xFFFF


def _mac(ip: _IP) -> bytes:
    """A locally administered unicast MAC address made from an IP address."""
    if ip.version == 4:
        return b"\x02\x00" + ip.packed
    return b"\x02" + hashlib.sha256(ip.packed).digest()[:5]


def _ips(src: str, dst: str) -> tuple[_IP, _IP]:
    """Both addresses in one family (IPv4 mapped into IPv6 when the families differ)."""
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version != b.version:
        if a.version == 4:
            a = ipaddress.IPv6Address(f"::ffff:{a}")
        else:
            b = ipaddress.IPv6Address(f"::ffff:{b}")
    return a, b


class PcapWriter:
    """Writes records to a binary file as they come (the global header first).

    :param file: a binary file object opened for writing; it is not closed by :meth:`close` unless
        ``close_file`` is true.
    :param flush: flush after every packet, so that a reader (``tail -f``, sngrep) sees each message
        at once.
    :param close_file: whether :meth:`close` closes ``file``.
    """

    def __init__(self, file: BinaryIO, *, flush: bool = False, close_file: bool = False) -> None:
        self._file = file
        self._flush = flush
        self._close_file = close_file
        self._ident = 0
        self._seq: dict[tuple[_IP, int, _IP, int], int] = {}
        self.closed = False
        #: packets written so far (a long TCP message may take several)
        self.packets = 0
        #: records written so far
        self.written = 0
        #: UDP records skipped because they cannot fit one datagram
        self.skipped = 0
        file.write(struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))
        if flush:
            file.flush()

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, flush: bool = False) -> PcapWriter:
        """A writer on a new file at ``path`` (replaced if it exists); :meth:`close` closes it.

        :raises OSError: when the file cannot be opened for writing.
        """
        return cls(open(path, "wb"), flush=flush, close_file=True)  # closed by close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write(self, record: MessageRecord) -> None:
        """Write one record as one packet (UDP) or as many TCP segments as it needs.

        :raises CaptureError: when the writer is closed.
        """
        if self.closed:
            raise CaptureError("the pcap writer is closed")
        src, dst = _ips(record.src[0], record.dst[0])
        data = record.data
        if record.transport == "udp":
            limit = MAX_UDP_PAYLOAD_V4 if src.version == 4 else MAX_UDP_PAYLOAD_V6
            if len(data) > limit:
                self.skipped += 1
                logger.warning(
                    "pcap: skipped a %d-octet UDP message from %s to %s: larger than one datagram",
                    len(data),
                    record.src,
                    record.dst,
                )
                return
            segment = self._udp(src, record.src[1], dst, record.dst[1], data)
            self._packet(record.time, src, dst, _PROTO_UDP, segment)
        else:
            size = _MAX_TCP_PAYLOAD_V4 if src.version == 4 else _MAX_TCP_PAYLOAD_V6
            for start in range(0, max(len(data), 1), size):
                chunk = data[start : start + size]
                segment = self._tcp(src, record.src[1], dst, record.dst[1], chunk)
                self._packet(record.time, src, dst, _PROTO_TCP, segment)
        self.written += 1
        if self._flush:
            self._file.flush()

    def close(self) -> None:
        """Flush; close the file if this writer opened it. Closing twice does nothing."""
        if self.closed:
            return
        self.closed = True
        if self._close_file:
            self._file.close()
        else:
            self._file.flush()

    # -- layers ----------------------------------------------------------------------------------------
    @staticmethod
    def _pseudo(src: _IP, dst: _IP, proto: int, length: int) -> bytes:
        if src.version == 4:
            return src.packed + dst.packed + struct.pack("!BBH", 0, proto, length)
        return src.packed + dst.packed + struct.pack("!I3xB", length, proto)

    def _udp(self, src: _IP, sport: int, dst: _IP, dport: int, data: bytes) -> bytes:
        length = 8 + len(data)
        header = struct.pack("!HHHH", sport, dport, length, 0)
        checksum = _checksum(self._pseudo(src, dst, _PROTO_UDP, length) + header + data) or 0xFFFF
        return struct.pack("!HHHH", sport, dport, length, checksum) + data

    def _isn(self, key: tuple[_IP, int, _IP, int]) -> int:
        text = f"{key[0]}|{key[1]}|{key[2]}|{key[3]}".encode()
        return zlib.crc32(text) & 0x7FFFFFFF

    def _tcp(self, src: _IP, sport: int, dst: _IP, dport: int, data: bytes) -> bytes:
        forward = (src, sport, dst, dport)
        backward = (dst, dport, src, sport)
        seq = self._seq.get(forward)
        if seq is None:
            seq = self._isn(forward)
        ack = self._seq.get(backward)
        if ack is None:
            ack = self._isn(backward)
        self._seq[forward] = (seq + len(data)) & 0xFFFFFFFF
        header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, _TCP_PSH_ACK, 65535, 0, 0)
        pseudo = self._pseudo(src, dst, _PROTO_TCP, len(header) + len(data))
        checksum = _checksum(pseudo + header + data)
        return header[:16] + struct.pack("!H", checksum) + header[18:] + data

    def _packet(self, when: float, src: _IP, dst: _IP, proto: int, segment: bytes) -> None:
        if src.version == 4:
            self._ident = (self._ident + 1) & 0xFFFF
            total = 20 + len(segment)
            header = struct.pack(
                "!BBHHHBBH4s4s",
                0x45,
                0,
                total,
                self._ident,
                0x4000,
                64,
                proto,
                0,
                src.packed,
                dst.packed,
            )
            header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
            ethertype = _ETHERTYPE_IPV4
        else:
            header = struct.pack("!IHBB16s16s", 6 << 28, len(segment), proto, 64, src.packed, dst.packed)
            ethertype = _ETHERTYPE_IPV6
        frame = _mac(dst) + _mac(src) + struct.pack("!H", ethertype) + header + segment
        micros = round(when * 1_000_000)
        seconds, fraction = divmod(micros, 1_000_000)
        self._file.write(struct.pack("<IIII", seconds & 0xFFFFFFFF, fraction, len(frame), len(frame)))
        self._file.write(frame)
        self.packets += 1


def write_pcap(path: str | os.PathLike[str], records: Iterable[MessageRecord]) -> int:
    """Write ``records`` to a new pcap file at ``path``; returns how many records were written.

    UDP records too large for one datagram are skipped (see the module documentation).

    :raises OSError: when the file cannot be written.
    """
    with PcapWriter.open(path) as writer:
        for record in records:
            writer.write(record)
        return writer.written


# --- reading ------------------------------------------------------------------------------------------
def _packets(data: bytes, source: str) -> Iterator[tuple[float, bytes, int]]:
    """``(time, frame, linktype)`` of every packet of a classic pcap file."""
    if len(data) < 24:
        raise CaptureError(f"{source}: not a pcap file (only {len(data)} octets)")
    magic_le = struct.unpack("<I", data[:4])[0]
    if magic_le in (PCAP_MAGIC, 0xA1B23C4D):
        order = "<"
    elif struct.unpack(">I", data[:4])[0] in (PCAP_MAGIC, 0xA1B23C4D):
        order = ">"
    else:
        raise CaptureError(f"{source}: not a classic pcap file (magic {data[:4].hex()})")
    nano = struct.unpack(order + "I", data[:4])[0] == 0xA1B23C4D
    linktype = struct.unpack(order + "I", data[20:24])[0] & 0x0FFFFFFF
    offset = 24
    while offset < len(data):
        if offset + 16 > len(data):
            raise CaptureError(f"{source}: truncated packet header at offset {offset}")
        seconds, fraction, included, _ = struct.unpack(order + "IIII", data[offset : offset + 16])
        offset += 16
        if offset + included > len(data):
            raise CaptureError(f"{source}: truncated packet at offset {offset}")
        when = seconds + fraction / (1e9 if nano else 1e6)
        yield when, data[offset : offset + included], linktype
        offset += included


def _split_stream(buffer: bytearray) -> list[bytes]:
    """Whole SIP messages at the front of a stream buffer (removed from it)."""
    messages: list[bytes] = []
    while True:
        while buffer[:2] == b"\r\n":
            del buffer[:2]
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return messages
        head = bytes(buffer[:end]).lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip() in (b"content-length", b"l") and value.strip().isdigit():
                length = int(value.strip())
                break
        total = end + 4 + length
        if len(buffer) < total:
            return messages
        messages.append(bytes(buffer[:total]))
        del buffer[:total]


def read_pcap(path: str | os.PathLike[str]) -> list[MessageRecord]:
    """The SIP messages of a classic pcap file with Ethernet framing, as records.

    A UDP datagram is one record (keep-alives of CR/LF only are left out). TCP payloads are joined
    per direction and cut into messages at the empty line plus ``Content-Length``; such records have
    transport ``tls`` when either port is 5061, else ``tcp``. Frames that are not Ethernet
    IPv4/IPv6 carrying UDP or TCP are ignored.

    :raises CaptureError: when the file is not a classic pcap file or is truncated.
    :raises OSError: when it cannot be read.
    """
    source = str(path)
    content = Path(path).read_bytes()
    records: list[MessageRecord] = []
    streams: dict[tuple[str, int, str, int], bytearray] = {}
    for when, frame, linktype in _packets(content, source):
        if linktype != LINKTYPE_ETHERNET or len(frame) < 14:
            continue
        ethertype = struct.unpack("!H", frame[12:14])[0]
        ip = frame[14:]
        if ethertype == _ETHERTYPE_IPV4 and len(ip) >= 20:
            header_length = (ip[0] & 0x0F) * 4
            total, proto = struct.unpack("!H", ip[2:4])[0], ip[9]
            src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
            payload = ip[header_length:total]
        elif ethertype == _ETHERTYPE_IPV6 and len(ip) >= 40:
            length, proto = struct.unpack("!H", ip[4:6])[0], ip[6]
            src, dst = str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40]))
            payload = ip[40 : 40 + length]
        else:
            continue
        if proto == _PROTO_UDP and len(payload) >= 8:
            sport, dport, length = struct.unpack("!HHH", payload[:6])
            body = payload[8:length]
            if body.strip(b"\r\n"):
                records.append(MessageRecord(when, "udp", (src, sport), (dst, dport), body))
        elif proto == _PROTO_TCP and len(payload) >= 20:
            sport, dport = struct.unpack("!HH", payload[:4])
            body = payload[(payload[12] >> 4) * 4 :]
            key = (src, sport, dst, dport)
            buffer = streams.setdefault(key, bytearray())
            buffer += body
            transport = "tls" if 5061 in (sport, dport) else "tcp"
            for message in _split_stream(buffer):
                records.append(MessageRecord(when, transport, (src, sport), (dst, dport), message))
    return records
