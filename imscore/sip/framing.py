"""Framing: whole messages out of datagrams (RFC 3261 §18.3) and out of byte streams (TCP, TLS).

:func:`parse_datagram` takes one datagram. :class:`StreamFramer` takes bytes in any chunking and gives
whole messages, keep-alives (RFC 5626 §3.5.1: CRLFCRLF ping, CRLF pong) and per-message errors; when
framing itself is lost it raises a :class:`SipError` with ``fatal=True`` and the stream must be closed.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Final, NoReturn

from .errors import MessageTooLarge, ParseError, SipError
from .message import Request, Response, parse_message

__all__ = ["DEFAULT_MAX_SIZE", "KeepAlive", "StreamEvent", "StreamFramer", "parse_datagram"]

DEFAULT_MAX_SIZE: Final = 65535

# a Content-Length header line (long or compact name, any case) anywhere after the start line
_CONTENT_LENGTH_RE: Final = re.compile(
    rb"\n(?:[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Ll][Ee][Nn][Gg][Tt][Hh]|[Ll])[ \t]*:([^\r\n]*)"
)


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A keep-alive on a stream: ``ping`` for CRLFCRLF (answer with CRLF), else a CRLF pong."""

    ping: bool


StreamEvent = Request | Response | KeepAlive | SipError


def _head_end(data: bytes | bytearray, start: int = 0) -> tuple[int, int]:
    """Index of the empty line that ends the header section and its length (CRLFCRLF or LFLF)."""
    crlf = data.find(b"\r\n\r\n", start)
    lf = data.find(b"\n\n", start) if crlf < 0 else data.find(b"\n\n", start, crlf)
    if lf >= 0:
        return lf, 2
    return crlf, 4


def _content_length(head: bytes, message: Request | Response) -> int | None:
    """Content-Length of a parsed message, read straight off its header bytes when that is plain
    (one value, or equal values, all digits), else through the header index; the value is cached
    in the message so its accessor agrees."""
    try:
        return _read_content_length(head, message)
    except SipError as error:
        error.message = message
        raise


def _read_content_length(head: bytes, message: Request | Response) -> int | None:
    found = [v.strip(b" \t") for v in _CONTENT_LENGTH_RE.findall(head)]
    if not found:
        message.headers.cache["content-length"] = None
        return None
    first = found[0]
    if first.isdigit() and all(v == first for v in found) and len(first) < 10:
        length = int(first)
        message.headers.cache["content-length"] = length
        return length
    return message.content_length


def parse_datagram(data: bytes, max_size: int = DEFAULT_MAX_SIZE) -> Request | Response | None:
    """Parse one datagram; ``None`` for a keep-alive (only CR/LF octets).

    Octets beyond Content-Length are discarded; a body shorter than Content-Length is an error
    (400 for a request; a response in error is to be dropped, see :attr:`SipError.is_request`).
    Without Content-Length the body is the rest of the datagram. Header values are parsed lazily:
    call :meth:`~imscore.sip.message.Message.check_framing_headers` before using the message.
    """
    if len(data) > max_size:
        error = MessageTooLarge(f"datagram of {len(data)} octets is larger than {max_size}")
        end, _ = _head_end(data)
        if 0 < end <= max_size:
            with contextlib.suppress(SipError):  # else there is nothing to answer from
                error.message = parse_message(data[:end].lstrip(b"\r\n"))
        raise error
    start = 0
    while start < len(data) and data[start] in b"\r\n":
        start += 1
    if start == len(data):
        return None
    end, sep = _head_end(data, start)
    if end < 0:
        if data.endswith(b"\n"):
            end = len(data) - (2 if data.endswith(b"\r\n") else 1)
            sep = len(data) - end  # liberal: the empty line after the headers is missing
        else:
            raise ParseError("no empty line ends the header section")
    head = data[start:end] if start or end < len(data) else data
    rest = data[end + sep :]
    message = parse_message(head, b"")
    try:
        length = _content_length(head, message)
    except SipError as error:
        error.message = message
        raise
    if length is None:
        message._body = rest
    elif length > len(rest):
        raise ParseError(
            f"Content-Length {length} is larger than the {len(rest)} octets of body",
            message=message,
        )
    else:
        message._body = rest[:length] if length < len(rest) else rest
    return message


class StreamFramer:
    """An incremental framer for one stream connection.

    Feed it bytes as they arrive; it returns the events completed by them, in order. A message whose
    headers are broken but whose length is known comes out as a :class:`SipError` event (answer it and
    keep the connection); a framing failure (no or unreadable Content-Length on a broken message,
    disagreeing Content-Lengths, too large) raises a fatal :class:`SipError`: answer if you can, then
    close. After a fatal error every further :meth:`feed` raises it again.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._scan = 0
        self._error: SipError | None = None
        self._in_header = False

    @property
    def buffered(self) -> int:
        """Octets received but not yet part of a whole message."""
        return len(self._buf)

    @property
    def in_header(self) -> bool:
        """Whether the octets buffered begin a message whose header section is not complete yet
        (not a keep-alive, not a body still arriving): what a header timeout measures."""
        return self._in_header

    def feed(self, data: bytes) -> list[StreamEvent]:
        """The events completed by ``data``, in order.

        A fatal :class:`SipError` carries in ``completed`` the events completed before it.
        """
        if self._error is not None:
            raise self._error
        events: list[StreamEvent] = []
        try:
            self._frame(data, events)
        except SipError as error:
            error.completed = list(events)
            raise
        return events

    def _frame(self, data: bytes, events: list[StreamEvent]) -> None:
        buf = self._buf
        buf += data
        self._in_header = False
        while buf:
            c = buf[0]
            if c == 0x0D or c == 0x0A:
                if buf.startswith(b"\r\n\r\n"):
                    events.append(KeepAlive(ping=True))
                    del buf[:4]
                    continue
                if len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                    break  # maybe the start of a ping
                if buf.startswith(b"\r\n"):
                    events.append(KeepAlive(ping=False))
                    del buf[:2]
                else:
                    del buf[:1]
                self._scan = 0
                continue
            end, sep = _head_end(buf, self._scan)
            if end < 0:
                if len(buf) > self.max_size:
                    self._fail(MessageTooLarge(f"header section longer than {self.max_size} octets"))
                self._scan = max(0, len(buf) - 3)
                self._in_header = True
                break
            head = bytes(buf[:end])
            message: Request | Response | None = None
            error: SipError | None = None
            try:
                message = parse_message(head, b"")
                length = _content_length(head, message) or 0
            except SipError as exc:
                error = exc
                length = self._length_of_broken(head, exc)
            total = end + sep + length
            if total > self.max_size:
                self._fail(
                    MessageTooLarge(
                        f"message of {total} octets is larger than {self.max_size}",
                        413,
                        message=message if message is not None or error is None else error.message,
                    )
                )
            if len(buf) < total:
                break
            body = bytes(buf[end + sep : total])
            del buf[:total]
            self._scan = 0
            if message is not None:
                message._body = body
                events.append(message)
            elif error is not None:
                events.append(error)

    def _length_of_broken(self, head: bytes, error: SipError) -> int:
        """Content-Length of a message that did not parse, if framing can still be trusted."""
        values = {v.strip() for v in _CONTENT_LENGTH_RE.findall(head)}
        if not values:
            return 0
        if len(values) > 1:
            self._fail(ParseError("Content-Length headers disagree", message=error.message))
        value = values.pop()
        if not value.isdigit():
            self._fail(ParseError("unreadable Content-Length", message=error.message))
        return int(value)

    def _fail(self, error: SipError) -> NoReturn:
        error.fatal = True
        self._error = error
        raise error
