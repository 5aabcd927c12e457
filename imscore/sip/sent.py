"""What a Completed non-INVITE server transaction keeps of its final response: its octets.

A module of its own because :class:`SentResponse` subclasses :class:`bytes`, which mypyc does not
compile; :mod:`imscore.sip.transaction` (compiled) uses it and exports it under its own name.
"""

from __future__ import annotations

from typing import ClassVar

from .headers import Via
from .message import Headers, Response

__all__ = ["SentResponse"]


class SentResponse(bytes):
    """A response as it went out: its octets (status line, header section, empty line, body).

    What a Completed non-INVITE server transaction keeps of its final response once the transport
    has sent it, to answer retransmitted requests with the very same octets (RFC 3261 §17.2.2):
    the octets alone, with no :class:`Response` and header objects around them (tens of thousands
    of transactions wait for Timer J under load). It is a :class:`bytes` (equal to the octets); the
    transport sends it as it sends a :class:`Response`: :meth:`to_bytes` is what goes on the wire
    and :attr:`top_via` (read from the octets on each use) says where a response over UDP goes
    (§18.2.2). :meth:`parse` gives the response back as a receiver would read it.
    """

    __slots__ = ()

    is_request: ClassVar[bool] = False

    @property
    def status(self) -> int:
        """The status code (the octets after ``SIP/2.0``)."""
        return int(self[8:11])

    def to_bytes(self) -> bytes:
        """The octets, as they went out the first time."""
        return self

    def parse(self) -> Response:
        """The response these octets are (read again on each call; its header fields are split on
        first use, as those of a response read off the wire)."""
        end = self.index(b"\r\n")  # the status line's (it holds no line break: see _as_sent)
        head = self.index(b"\r\n\r\n", end)  # the header section's (it holds no empty line)
        _, code, reason = self[:end].decode("utf-8", "surrogateescape").split(" ", 2)
        section = Headers._from_section(self[end + 2 : head + 2])
        return Response(int(code), reason, section, self[head + 4 :], received=True)

    @property
    def top_via(self) -> Via:
        """The top Via (parsed from the octets on each use)."""
        return self.parse().top_via

    def __repr__(self) -> str:
        return f"<SentResponse {self.status}, {len(self)} octets>"
