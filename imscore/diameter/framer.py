"""Cut a TCP byte stream into Diameter messages (sans-IO).

Feed it what the socket gave; it hands back the octets of each whole message. The first four
octets of a message say its version and length (RFC 6733 §3), so a stream whose header is broken
(version not 1, a length under 20, not a multiple of 4, or above
:data:`~imscore.diameter.codec.MAX_MESSAGE`)
cannot be resynchronised: :meth:`StreamFramer.feed` raises :class:`FramingError` and the connection
must be closed.
"""

from __future__ import annotations

from imscore.diameter.codec import HEADER_LENGTH, MAX_MESSAGE

__all__ = ["FramingError", "StreamFramer"]


class FramingError(ValueError):
    """The stream does not hold Diameter messages any more; close the connection."""


class StreamFramer:
    """Buffers stream octets and yields whole messages.

    :param max_message: the largest message accepted, in octets.
    """

    __slots__ = ("_buffer", "max_message")

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buffer = bytearray()
        self.max_message = max_message

    @property
    def pending(self) -> int:
        """Octets held that are not a whole message yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the whole messages now available, in order.

        :raises FramingError: the next message's header is not a Diameter header.
        """
        self._buffer += data
        messages: list[bytes] = []
        while len(self._buffer) >= 4:
            version = self._buffer[0]
            length = int.from_bytes(self._buffer[1:4], "big")
            if version != 1:
                raise FramingError(f"Diameter version {version}, not 1: not a Diameter stream")
            if length < HEADER_LENGTH or length % 4:
                raise FramingError(f"message length {length} is under 20 or not a multiple of 4")
            if length > self.max_message:
                raise FramingError(f"message length {length} is above {self.max_message} octets")
            if len(self._buffer) < length:
                break
            messages.append(bytes(self._buffer[:length]))
            del self._buffer[:length]
        return messages
