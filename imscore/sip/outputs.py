"""What the transaction layer (:mod:`imscore.sip.transaction`) returns: its outputs.

A module of its own because they are generic dataclasses, which mypyc does not compile;
:mod:`imscore.sip.transaction` (compiled) makes them and exports them under its own names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from .message import Request, Response
from .sent import SentResponse

if TYPE_CHECKING:
    from .transaction import (
        ClientTransaction,
        InviteServerTransaction,
        ServerTransaction,
        Transaction,
    )

__all__ = [
    "AckReceived",
    "FlowT",
    "Output",
    "RequestReceived",
    "ResponseReceived",
    "Send",
    "StrayResponse",
    "TransactionTerminated",
    "TransactionTimeout",
    "TransportFailed",
]

#: the transport's flow type the layer carries through untouched
FlowT = TypeVar("FlowT")


# --- outputs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Send(Generic[FlowT]):
    """Hand ``message`` to the transport, to be sent on ``flow``.

    ``transaction`` is the transaction that sends it; a transport that fails to send reports
    that with :meth:`TransactionLayer.transport_error`. A response is a :class:`Response`, or the
    :class:`SentResponse` a Completed non-INVITE server transaction re-sends to a retransmitted
    request (send either to the response's top Via, RFC 3261 §18.2.2).
    """

    message: Request | Response | SentResponse
    flow: FlowT
    transaction: Transaction[FlowT] | None = None


@dataclass(frozen=True)
class RequestReceived(Generic[FlowT]):
    """A request that created a new server transaction: the TU answers it with
    :meth:`TransactionLayer.respond`. Retransmissions of it are absorbed and never reported."""

    request: Request
    transaction: ServerTransaction[FlowT]


@dataclass(frozen=True)
class AckReceived(Generic[FlowT]):
    """An ACK for the TU: one that matched no transaction (the ACK for a 2xx, which the TU routes),
    or one that matched an INVITE server transaction in the Accepted state (RFC 6026 §7.1), which is
    then ``transaction``."""

    request: Request
    flow: FlowT
    transaction: InviteServerTransaction[FlowT] | None = None


@dataclass(frozen=True)
class StrayResponse(Generic[FlowT]):
    """A response that matched no client transaction (RFC 3261 §18.1.2). A UA core drops it
    (RFC 6026 §7.2); a stateless proxy forwards it (§16.11)."""

    response: Response
    flow: FlowT


@dataclass(frozen=True)
class ResponseReceived(Generic[FlowT]):
    """A response a client transaction passes up to the TU."""

    response: Response
    transaction: ClientTransaction[FlowT]


@dataclass(frozen=True)
class TransactionTimeout(Generic[FlowT]):
    """Timer B or F fired on a client transaction (no final response), or Timer H on an INVITE
    server transaction (no ACK for its non-2xx final response). A TransactionTerminated follows."""

    transaction: Transaction[FlowT]


@dataclass(frozen=True)
class TransportFailed(Generic[FlowT]):
    """The transport could not send for this transaction (RFC 3261 §17.1.4, §17.2.4 / RFC 6026
    §8.8). A client transaction then terminates; a server transaction stays in its state."""

    transaction: Transaction[FlowT]


@dataclass(frozen=True)
class TransactionTerminated(Generic[FlowT]):
    """The transaction reached the Terminated state and was removed from the layer."""

    transaction: Transaction[FlowT]


Output = (
    Send[FlowT]
    | RequestReceived[FlowT]
    | AckReceived[FlowT]
    | StrayResponse[FlowT]
    | ResponseReceived[FlowT]
    | TransactionTimeout[FlowT]
    | TransportFailed[FlowT]
    | TransactionTerminated[FlowT]
)
"""Anything the layer returns."""
