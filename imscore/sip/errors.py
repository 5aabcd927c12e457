"""The one exception family of the SIP core.

Every error raised by :mod:`imscore.sip` is a :class:`SipError`. It carries the status code an element
should answer with and a reason phrase that names what was wrong, so the transport layer can turn any
bad input into a response (for a request) or a counted drop (for a response) without guessing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .message import Message

__all__ = [
    "BadExtension",
    "MessageTooLarge",
    "ParseError",
    "SipError",
    "TransactionError",
    "UnsupportedUriScheme",
    "VersionNotSupported",
]


class SipError(Exception):
    """Base of every error the SIP core raises.

    :param reason: a short human reason naming what was wrong (used as the response reason phrase).
    :param status: the SIP status code to answer with (400 unless a subclass says otherwise).
    :param message: the (partly) parsed message, when there is one: so a transport can copy
        Via/From/To/Call-ID/CSeq into its error response. For a request with a broken start line
        it is a stand-in whose Request-URI is a placeholder. Its headers may themselves be broken:
        building the response can raise this error again, and then nothing can be answered.
    :param fatal: ``True`` when message framing is lost (a stream must be closed).
    """

    default_status = 400

    def __init__(
        self,
        reason: str,
        status: int | None = None,
        *,
        message: Message | None = None,
        fatal: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = self.default_status if status is None else status
        self.message = message
        self.fatal = fatal
        #: set by the parser when the start line shows whether this was a request
        self.request_hint: bool | None = None
        #: for a fatal stream error: the whole events (messages, keep-alives, errors) that the same
        #: :meth:`~imscore.sip.framing.StreamFramer.feed` completed before framing was lost
        self.completed: list[object] = []

    @property
    def is_request(self) -> bool | None:
        """Whether the broken input was a request (``None`` when nothing says).

        A response in error is dropped, never answered.
        """
        if self.message is not None:
            return self.message.is_request
        return self.request_hint

    @property
    def phrase(self) -> str:
        """A reason phrase safe to put on a status line (no CR, LF or control characters)."""
        return "".join(c if " " <= c <= "~" else "?" for c in self.reason)[:200]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.reason!r})"


class ParseError(SipError):
    """Malformed input: 400 Bad Request."""


class MessageTooLarge(SipError):
    """The message, or its body, is larger than the configured maximum (513 or 413)."""

    default_status = 513


class UnsupportedUriScheme(SipError):
    """A URI scheme the element cannot handle where it has to: 416."""

    default_status = 416


class VersionNotSupported(SipError):
    """A SIP version other than SIP/2.0: 505."""

    default_status = 505


class BadExtension(SipError):
    """A required extension is not supported: 420 (the caller adds Unsupported)."""

    default_status = 420


class TransactionError(SipError):
    """Misuse of the transaction layer (e.g. a response sent on a terminated transaction): 500."""

    default_status = 500
