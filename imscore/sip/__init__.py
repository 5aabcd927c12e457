"""The sans-IO SIP core: grammar, URIs, messages, framing and transactions.

Nothing in this package opens a socket, starts a task or reads a clock: it takes bytes and ``now`` and
gives messages, bytes to send and the next timer deadline.
"""

from .errors import (
    BadExtension,
    MessageTooLarge,
    ParseError,
    SipError,
    TransactionError,
    UnsupportedUriScheme,
    VersionNotSupported,
)
from .framing import DEFAULT_MAX_SIZE, KeepAlive, StreamEvent, StreamFramer, parse_datagram
from .headers import Address, AuthHeader, Contact, CSeq, MediaType, Via
from .message import (
    COMPACT_FORMS,
    REASON_PHRASES,
    HeaderField,
    Headers,
    Message,
    Request,
    Response,
    canonical_name,
    parse_message,
)
from .params import Params
from .uri import AbsoluteUri, SipUri, TelUri, Uri, parse_uri

__all__ = [
    "COMPACT_FORMS",
    "DEFAULT_MAX_SIZE",
    "REASON_PHRASES",
    "AbsoluteUri",
    "Address",
    "AuthHeader",
    "BadExtension",
    "CSeq",
    "Contact",
    "HeaderField",
    "Headers",
    "KeepAlive",
    "MediaType",
    "Message",
    "MessageTooLarge",
    "Params",
    "ParseError",
    "Request",
    "Response",
    "SipError",
    "SipUri",
    "StreamEvent",
    "StreamFramer",
    "TelUri",
    "TransactionError",
    "UnsupportedUriScheme",
    "Uri",
    "VersionNotSupported",
    "canonical_name",
    "parse_datagram",
    "parse_message",
    "parse_uri",
]
