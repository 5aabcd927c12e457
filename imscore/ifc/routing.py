"""Routing a request through the application servers of matching iFCs (TS 24.229 §5.4.3.2-3).

:class:`ServiceRouting` is what the router (:class:`imscore.proxy.router.Router`) asks:

* an originating request from a served caller it accepted, and a terminating request to a served
  identity, are matched against the served user's iFCs (``ims_ifc_match``, session case
  ``originating``, ``terminating_registered`` or ``terminating_unregistered``); the first match
  sends the request to its AS with ``Route: <AS;lr>, <us;lr;odi=…>`` (:mod:`.odi`);
* a request that comes back with our ``odi`` Route carries on with the iFCs of lower priority
  than the one executed, as the AS sent it; when none is left it goes on to its destination:
  after the originating side the terminating side (a served identity, with its own iFCs) or the
  outside, after the terminating side the user's registered contacts;
* on the terminating side an AS that changed the Request-URI has retargeted the request: the
  rest of the old user's iFCs is skipped and the request is routed to the new Request-URI;
* an AS may also answer the request itself: its response goes back to the caller as any
  branch's would.

The router does the I/O-free parts; the store look-ups are the router's own (this module awaits
them through it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from imscore.proxy.core import Destination, Target
from imscore.registrar.identity import find_identity, resolve_identity
from imscore.sip import ParseError, Request, SipUri, TelUri, parse_uri
from imscore.subscribers import Subscriber

from .model import (
    ORIGINATING,
    ORIGINATING_CDIV,
    ORIGINATING_UNREGISTERED,
    SESSION_CONTINUED,
    TERMINATING_REGISTERED,
    TERMINATING_UNREGISTERED,
    Ifc,
    IfcFacts,
)
from .odi import OdiStamp, OdiState, uri_digest

if TYPE_CHECKING:
    from imscore.proxy.router import Decision, Router
    from imscore.registrar.model import FlowInfo

__all__ = ["ServiceRouting"]


def interface_of(flow: FlowInfo | None) -> str:
    """``transport:host:port`` of our end of a flow (``""`` for none)."""
    if flow is None:
        return ""
    host, port = flow.local
    return f"{flow.transport}:{host}:{port}"


class ServiceRouting:
    """Sends requests through application servers.

    :param plugins: the plugin manager (``ims_ifc_match``).
    :param stamp: makes and reads the ``odi`` tokens.
    :param route_back: our Route URI (in angle brackets) carrying a token, for the AS to send the
        request back along.
    """

    def __init__(self, plugins: Any, stamp: OdiStamp, route_back: Callable[[str], str]) -> None:
        self.plugins = plugins
        self.stamp = stamp
        self.route_back = route_back

    # -- matching ----------------------------------------------------------------------------------
    def next_ifc(
        self,
        request: Request,
        subscriber: Subscriber,
        facts: IfcFacts,
        after: int | None,
    ) -> Ifc | None:
        """The first iFC of lower priority than ``after`` that applies to ``request``."""
        candidates = subscriber.service_profile.after(after)
        if not candidates:
            return None
        matched: Sequence[Ifc] | None = self.plugins.hook.ims_ifc_match(
            request=request, ifcs=candidates, facts=facts
        )
        return matched[0] if matched else None

    def returning(self, request: Request) -> bool:
        """The request's top Route carries one of our ``odi`` tokens (it comes back from an AS:
        the same request again is a spiral, not a loop)."""
        routes = request.route
        if not routes:
            return False
        uri = routes[0].uri
        return isinstance(uri, SipUri) and self.stamp.valid(uri.params.get("odi"))

    def _to_as(self, request: Request, ifc: Ifc, state: OdiState) -> Decision:
        from imscore.proxy.router import Decision

        back = self.route_back(self.stamp.make(state))
        server = ifc.server
        target = Target(
            str(request.uri),
            (f"<{server.uri};lr>", back),
            Destination(server.uri),
            label=f"AS {server.uri}",
            answer_timeout=server.response_timeout,
            # session-continued: an AS not reached is skipped (imscore.ifc.defaults)
            unreached=state if server.default_handling == SESSION_CONTINUED else None,
        )
        return Decision(groups=[((target,), None)], kind="as")

    # -- the session cases -------------------------------------------------------------------------
    async def originate(
        self,
        router: Router,
        request: Request,
        caller: Subscriber,
        flow: FlowInfo | None,
        now: float,
        after: int | None = None,
        served: str | None = None,
    ) -> Decision | None:
        """Route an originating request of ``caller`` to the next AS, or ``None`` (no iFC left):
        session case ``originating`` while the served identity has a live binding, else
        ``originating_unregistered`` (e.g. an AS that originates on behalf of the user)."""
        if not caller.service_profile.after(after):
            return None
        user = served or str(request.from_.uri)
        registered = await self._registered(router, caller, user, now)
        return self.originating(request, caller, flow, now, after, user, registered)

    def originating(
        self,
        request: Request,
        caller: Subscriber,
        flow: FlowInfo | None,
        now: float,
        after: int | None = None,
        served: str | None = None,
        registered: bool = True,
    ) -> Decision | None:
        """Route an originating request of ``caller`` to the next AS, or ``None`` (no iFC left)."""
        case = ORIGINATING if registered else ORIGINATING_UNREGISTERED
        facts = IfcFacts(case, registered=registered, interface=interface_of(flow))
        ifc = self.next_ifc(request, caller, facts, after)
        if ifc is None:
            return None
        user = served or str(request.from_.uri)
        state = OdiState("orig", ifc.priority, user, uri_digest(str(request.uri)), int(now))
        return self._to_as(request, ifc, state)

    def diverting(
        self,
        request: Request,
        diverting: Subscriber,
        served: str,
        registered: bool,
        flow: FlowInfo | None,
        now: float,
        after: int | None = None,
    ) -> Decision | None:
        """A terminating AS retargeted the request away from ``served`` (TS 24.229 §5.4.3.3):
        the next of that user's iFCs for session case ``originating_cdiv``, or ``None``."""
        facts = IfcFacts(ORIGINATING_CDIV, registered=registered, interface=interface_of(flow))
        ifc = self.next_ifc(request, diverting, facts, after)
        if ifc is None:
            return None
        state = OdiState("cdiv", ifc.priority, served, uri_digest(str(request.uri)), int(now))
        return self._to_as(request, ifc, state)

    def terminating(
        self,
        request: Request,
        callee: Subscriber,
        registered: bool,
        flow: FlowInfo | None,
        now: float,
        after: int | None = None,
    ) -> Decision | None:
        """Route a terminating request to ``callee`` to the next AS, or ``None``."""
        case = TERMINATING_REGISTERED if registered else TERMINATING_UNREGISTERED
        facts = IfcFacts(case, registered=registered, interface=interface_of(flow))
        ifc = self.next_ifc(request, callee, facts, after)
        if ifc is None:
            return None
        state = OdiState("term", ifc.priority, str(request.uri), uri_digest(str(request.uri)), int(now))
        return self._to_as(request, ifc, state)

    # -- back from an AS ---------------------------------------------------------------------------
    def read(self, token: str | None, now: float) -> OdiState | None:
        """The state of a valid, unexpired token, else ``None``."""
        return self.stamp.read(token, now)

    async def resume(
        self, router: Router, request: Request, flow: FlowInfo | None, now: float, state: OdiState
    ) -> Decision:
        """Go on with a request an AS sent back (its ``odi`` Route already removed), or one an AS
        did not answer with the default handling session-continued (as if sent back unchanged)."""
        if state.case in ("orig", "cdiv"):
            user = await self._subscriber(router, state.served)
            if user is not None:
                routed: Decision | None
                if state.case == "orig":
                    routed = await self.originate(
                        router, request, user, flow, now, state.priority, state.served
                    )
                else:
                    registered = await self._registered(router, user, state.served, now)
                    routed = self.diverting(
                        request, user, state.served, registered, flow, now, state.priority
                    )
                if routed is not None:
                    return routed
            return await self._destination(router, request, flow, now)
        if uri_digest(str(request.uri)) != state.uri:  # retargeted by the AS (§5.4.3.3)
            # the diverting user's originating-cdiv iFCs first, then the new Request-URI
            user = await self._subscriber(router, state.served)
            if user is not None and user.service_profile.ifcs:
                registered = await self._registered(router, user, state.served, now)
                routed = self.diverting(request, user, state.served, registered, flow, now)
                if routed is not None:
                    return routed
            return await self._destination(router, request, flow, now)
        return await router.terminating(request, now, flow, after=state.priority)

    @staticmethod
    async def _destination(
        router: Router, request: Request, flow: FlowInfo | None, now: float
    ) -> Decision:
        """Where a request goes once no originating iFC is left: a served identity's terminating
        side, else out of the domain."""
        if router.serves(request.uri):
            return await router.terminating(request, now, flow)
        return router.onward(request)

    @staticmethod
    async def _registered(router: Router, user: Subscriber, served: str, now: float) -> bool:
        """Whether the served identity's implicit set has a live binding (every set of the
        subscriber when the identity names none of them)."""
        implicit_set = user.implicit_set_of(served)
        aors = (implicit_set.default.aor,) if implicit_set is not None else user.aors
        for aor in aors:
            if any(not b.expired(now) for b in await router.bindings.load(aor)):
                return True
        return False

    @staticmethod
    async def _subscriber(router: Router, served: str) -> Subscriber | None:
        try:
            uri = parse_uri(served)
        except ParseError:
            return None
        if not isinstance(uri, SipUri | TelUri):
            return None
        uri, candidate = await find_identity(router.subscribers, uri)
        resolved = await resolve_identity(router.plugins, router.subscribers, uri, candidate)
        return candidate if resolved is None else resolved[0]
