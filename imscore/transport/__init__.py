"""asyncio transports (UDP, TCP, TLS) over the sans-IO SIP core in :mod:`imscore.sip`.

:class:`Transports` listens, frames, checks and stamps what arrives, hands good messages to one
handler with the :class:`Flow` they came on, and answers or drops bad input, counting it in
:class:`TransportStats`.
"""

from .flow import TRANSPORTS, Flow, MessageHandler, TransportError, TransportStats
from .provider import ReceivedCallback, TransportEndpoint, TransportProvider
from .transports import Transports, response_address, stamp_via

__all__ = [
    "TRANSPORTS",
    "Flow",
    "MessageHandler",
    "ReceivedCallback",
    "TransportEndpoint",
    "TransportError",
    "TransportProvider",
    "TransportStats",
    "Transports",
    "response_address",
    "stamp_via",
]
