"""Recognise retransmitted requests by their octets, before parsing them.

Over UDP a client retransmits a request until it gets an answer (RFC 3261 §17.1.2.2), and it sends the
very same octets each time. Under load most of what a registrar reads is such retransmissions: with
SIPp's default timers (T1 = 500 ms) and a queue of a second, every REGISTER arrives two or three
times. The server transaction absorbs them (§17.2.2: nothing while the TU works, the last response
once it has answered), but only after the datagram has been parsed, its framing headers checked, its
Via stamped and its transaction key computed — as much work as the useful part of a new request.

:class:`RetransmissionCache` remembers, for each live non-INVITE server transaction created from a
datagram, a digest of the datagram's octets (BLAKE2b, 128 bits). A datagram with the same octets from
the same source on the same socket (the transaction's flow) carries the same top Via (branch and
sent-by) and the same method, so §17.2.3 matches it to that transaction; the cache finds it with one
dictionary look-up and a comparison of flows instead. The digest rather than the octets, because an
entry lives as long as its transaction (32 s after the answer over UDP): a flood of REGISTERs would
otherwise keep every datagram; and the digest alone as the key, the flow being the transaction's
(the same octets from another flow are left to the parser, which finds the transaction just as
well). Two datagrams from one source would have to collide in 128 bits to be taken for each other.
Entries whose transaction has terminated are dropped when they are next looked up, or in a sweep
once they outnumber the live ones: :meth:`RetransmissionCache.tidy`, which the server calls after
its timers fire, sweeps when the transactions end even if no datagram arrives any more.

INVITE and ACK are left to the normal path (an ACK is not a retransmission of anything, and an INVITE
server transaction's answers to retransmissions belong to the proxy's state machine).
"""

from __future__ import annotations

from collections.abc import Callable
from hashlib import blake2b
from typing import Final

from imscore.sip import Request
from imscore.sip.transaction import ServerTransaction, TransactionLayer
from imscore.transport import Flow

__all__ = ["RetransmissionCache"]

#: entries kept at least before a sweep looks for terminated transactions
SWEEP_MIN: Final = 4096
#: terminated entries :meth:`RetransmissionCache.tidy` leaves for the next sweep
TIDY_SLACK: Final = 256


class RetransmissionCache:
    """Datagram octets and flow -> the live server transaction their request created.

    :param layer: the transaction layer whose server transactions are remembered (its size tells when
        to sweep).
    """

    def __init__(self, layer: TransactionLayer[Flow]) -> None:
        self._layer = layer
        #: digest of a datagram -> the transaction it created (on the datagram's flow)
        self._entries: dict[bytes, ServerTransaction[Flow]] = {}
        #: the digest and flow of the datagram last looked up in vain, for :meth:`remember`
        self._pending: tuple[bytes, Flow] | None = None
        self._sweep_at = SWEEP_MIN

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, data: bytes, flow: Flow) -> ServerTransaction[Flow] | None:
        """The live transaction a datagram retransmits, or ``None``; on ``None`` the datagram is kept
        as the candidate for the next :meth:`remember` (the transport parses it and hands it on)."""
        key = blake2b(data, digest_size=16).digest()
        transaction = self._entries.get(key)
        if transaction is not None:
            if transaction.terminated:
                del self._entries[key]
            elif transaction.flow == flow:
                return transaction
        self._pending = key, flow
        return None

    def remember(self, request: Request, flow: Flow, find: Callable[[Request], object]) -> None:
        """After ``request`` went through the transaction layer: if it was parsed from the datagram
        last looked up (same flow), file that datagram under the server transaction ``find`` gives,
        when that transaction is of this flow."""
        pending, self._pending = self._pending, None
        # (flows compare by their fields; the same object, as the common case is, is equal)
        if pending is None or request.method in ("ACK", "INVITE"):
            return
        if pending[1] is not flow and pending[1] != flow:
            return
        transaction = find(request)
        if not isinstance(transaction, ServerTransaction) or transaction.terminated:
            return
        if transaction.flow is not flow and transaction.flow != flow:
            return  # matched one made on another flow: the parser's case
        self._entries[pending[0]] = transaction
        if len(self._entries) >= self._sweep_at:
            self._sweep()

    def forget_pending(self) -> None:
        """Drop the candidate datagram (it turned out not to be a request to remember)."""
        self._pending = None

    def tidy(self) -> None:
        """Sweep when the entries may be mostly of terminated transactions (more than twice the
        layer's live transactions): call it after transactions ended, e.g. when timers fired. Each
        sweep drops at least half of what it looks at, so this costs O(1) per transaction."""
        if len(self._entries) > 2 * len(self._layer) + TIDY_SLACK:
            self._sweep()

    def drop_ended(self) -> None:
        """Drop every entry of a terminated transaction now (:meth:`tidy` leaves a few hundred): the
        server calls it once a burst is over, so that no ended transaction outlives the burst."""
        self._sweep()

    def _sweep(self) -> None:
        self._entries = {k: t for k, t in self._entries.items() if not t.terminated}
        self._sweep_at = max(SWEEP_MIN, 2 * len(self._entries), 2 * len(self._layer))
