"""Default handling of a request routed to an application server that does not answer
(TS 24.229 §5.4.3.2 step 4 / §5.4.3.3, TS 23.218 §6.4, TS 29.228 DefaultHandling).

An AS is *not reached* when its branch gets no response within the iFC's ``response_timeout``
(a 100 Trying counts as a response) or the transaction's Timer B/F, when the request cannot be
sent to it (no route, a transport failure), or when it answers 408 or 5xx before any
provisional response. Then the iFC's default handling applies:

* ``session-continued``: the S-CSCF goes on as if the AS had sent the request back unchanged:
  the next matching iFC of lower priority, else the request's destination (the terminating side,
  the outside, the callee's contacts) — :meth:`DefaultHandling.unreached` answers the proxy
  core's ``on_unreached`` and feeds the new decision back with ``ProxyCore.reroute``;
* ``session-terminated``: the branch's failure goes to the caller as any branch's does (408 for
  no answer, 500 for a transport failure or a 503, the AS's 5xx otherwise). The proxy core is
  not asked: routing marks only session-continued targets with a continuation.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from imscore.registrar import FlowInfo
from imscore.sip import SipError
from imscore.store import StoreError
from imscore.transport import Flow

from .odi import OdiState

if TYPE_CHECKING:
    from imscore.proxy.core import Branch
    from imscore.proxy.router import Decision
    from imscore.server.proxying import ProxyService

__all__ = ["DefaultHandling"]

log = logging.getLogger("imscore.ifc")


class DefaultHandling:
    """Routes a request on when a session-continued AS was not reached.

    :param proxying: the running server's proxy service (its router, core and iFC routing).
    """

    def __init__(self, proxying: ProxyService) -> None:
        self.proxying = proxying
        #: ASs skipped (session-continued) and what followed, for logs and tests
        self.stats = {"continued": 0}

    def unreached(self, branch: Branch[Flow]) -> bool:
        """The proxy core's ``on_unreached``: take over a branch to a session-continued AS."""
        state = branch.target.unreached
        if not isinstance(state, OdiState):
            return False
        response = branch.response
        log.info(
            "%s not reached (%s): session-continued, on to the next iFC or the destination",
            branch.target.label,
            f"{response.status} {response.reason}" if response is not None else "no answer",
        )
        self.stats["continued"] += 1
        self.proxying.server.spawn(self._continue(branch, state))
        return True

    async def _continue(self, branch: Branch[Flow], state: OdiState) -> None:
        proxying = self.proxying
        server = proxying.server
        context = branch.context
        inbound = context.inbound
        flow = (
            FlowInfo(inbound.transport, inbound.remote, inbound.local, inbound.connection)
            if isinstance(inbound, Flow)
            else None
        )
        decision: Decision
        try:
            decision = await proxying.ifc.resume(
                proxying.router, context.request, flow, server.clock(), state
            )
        except (StoreError, SipError) as exc:
            log.warning("routing on after %s: %s", branch.target.label, exc)
            from imscore.proxy.router import Decision

            decision = Decision.answer(503 if isinstance(exc, StoreError) else 500)
        except Exception:  # a provider failed: the caller still gets an answer
            log.exception("routing on after %s failed", branch.target.label)
            from imscore.proxy.router import Decision

            decision = Decision.answer(500, "Routing error")
        proxying.remember_targets(decision)
        actions = proxying.core.reroute(
            context, decision.groups, server.now(), decision.status, decision.reason
        )
        server.emit(server.core.proxied(actions))
