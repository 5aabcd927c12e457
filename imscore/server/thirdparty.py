"""Third-party registration (TS 24.229 §5.4.1.7): the S-CSCF tells application servers of a
registration, a re-registration, a de-registration and an expiry.

For each :class:`~imscore.registrar.change.RegistrationChange` the registrar reports, the served
user's iFCs are asked (``ims_ifc_match``, session case originating, with the registration type)
which match the REGISTER; each matching AS gets a REGISTER of our own, sent through the server's
transaction layer as reg-event NOTIFYs and qualification OPTIONS are:

* Request-URI the AS's URI; From the S-CSCF's URI (``sip:scscf@<domain>``); To the public identity
  (the one the UE registered, else the set's default); Contact our address on the flow to the AS;
  Expires the registration's lifetime (0 for a de-registration or an expiry);
* a body when the iFC's AS asks for one: its service info as ``application/3gpp-ims+xml``
  (``<ims-3gpp version="1"><service-info>…``), the UE's REGISTER and our 200 OK to it as
  ``message/sip``; several parts travel as ``multipart/mixed``.

An AS that does not answer (a timeout, a transport failure), or answers 408 or 5xx, gets its
iFC's default handling: ``session-continued`` leaves the registration as it is; with
``session-terminated`` the S-CSCF de-registers the implicit set (network-initiated, §5.4.1.5): its
bindings are removed, reg-event watchers hear of it, and the ASs are told with a third-party
de-registration (whose own failures change nothing further).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from imscore.ifc import SESSION_TERMINATED, Ifc, IfcFacts
from imscore.proxy.core import Destination
from imscore.registrar.change import DEREGISTRATION, RegistrationChange
from imscore.registrar.versioned import MAX_ATTEMPTS, BindingConflict, load_for_update, save_checked
from imscore.routing import RoutingError
from imscore.sip import Request, SipError
from imscore.sip.transaction import new_branch
from imscore.store import StoreError
from imscore.subscribers import ImplicitSet, Subscriber
from imscore.transport import TransportError

if TYPE_CHECKING:
    from .runtime import Server

__all__ = ["ThirdPartyRegistration", "failed_status", "register_body"]

log = logging.getLogger("imscore.thirdparty")

_XML_TYPE = "application/3gpp-ims+xml"


def failed_status(status: int) -> bool:
    """Whether an AS's answer to a third-party REGISTER counts as "not reached": no answer (0),
    408 or 5xx (TS 24.229 §5.4.1.7)."""
    return status == 0 or status == 408 or status >= 500


def register_body(ifc: Ifc, change: RegistrationChange) -> tuple[bytes, str | None]:
    """The body of a third-party REGISTER and its Content-Type (``b""``, ``None`` for none)."""
    server = ifc.server
    parts: list[tuple[str, bytes]] = []
    if server.service_info is not None:
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\r\n<ims-3gpp version="1"><service-info>'
            f"{server.service_info}</service-info></ims-3gpp>\r\n"
        )
        parts.append((_XML_TYPE, xml.encode()))
    if server.include_register_request and change.request is not None:
        parts.append(("message/sip", change.request.to_bytes()))
    if server.include_register_response and change.response is not None:
        parts.append(("message/sip", change.response.to_bytes()))
    if not parts:
        return b"", None
    if len(parts) == 1:
        return parts[0][1], parts[0][0]
    boundary = "imscore-" + secrets.token_hex(8)
    chunks = [
        f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n" for kind, data in parts
    ]
    return b"".join(chunks) + f"--{boundary}--\r\n".encode(), f"multipart/mixed;boundary={boundary}"


class ThirdPartyRegistration:
    """Sends the third-party REGISTERs of one server.

    :param server: the running server (its subscribers, plugins, store, registrar, core, proxy).
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self._cseq = itertools.count(1)
        #: REGISTERs sent, answered, failed, and de-registrations they caused (logs and tests)
        self.stats = {"sent": 0, "answered": 0, "failed": 0, "deregistered": 0}

    def changed(self, change: RegistrationChange) -> None:
        """The registrar's ``on_registration``: send in the background (the UE's 200 OK went out
        first: the registrar answers before any task runs). A subscriber known to have no iFCs
        gets none, as :meth:`notify` would find, without a task for it (the common case: a task
        per registration cost about 4 % of a registration's CPU)."""
        subscriber = change.subscriber
        if subscriber is not None and not subscriber.service_profile.ifcs:
            return
        self.server.spawn(self._changed(change))

    async def _changed(self, change: RegistrationChange) -> None:
        try:
            await self.notify(change)
        except (StoreError, SipError) as exc:
            log.warning("third-party registration for %s: %s", change.aor, exc)
        except Exception:  # a provider failed: log it, the registration itself stands
            log.exception("third-party registration for %s failed", change.aor)

    async def notify(self, change: RegistrationChange) -> list[tuple[Ifc, int]]:
        """Send the REGISTERs for one change; the iFCs and the final status each AS gave."""
        server = self.server
        subscriber = change.subscriber or await server.subscribers.get_by_impi(change.impi)
        if subscriber is None or not subscriber.service_profile.ifcs:
            return []
        implicit_set = change.implicit_set or next(
            (s for s in subscriber.implicit_sets if s.default.aor == change.aor), None
        )
        if implicit_set is None:
            return []
        impu = change.impu if change.impu is not None else implicit_set.default
        probe = change.request or self._probe(str(impu))
        facts = IfcFacts(
            "originating",
            registered=change.kind != DEREGISTRATION,
            registration_type=change.kind,
            interface=change.interface,
        )
        matched: Sequence[Ifc] = (
            server.plugins.hook.ims_ifc_match(
                request=probe, ifcs=subscriber.service_profile.ifcs, facts=facts
            )
            or ()
        )
        results = await asyncio.gather(*(self._send(ifc, str(impu), change) for ifc in matched))
        outcome = list(zip(matched, results, strict=True))
        if change.kind != DEREGISTRATION and any(
            failed_status(status) and ifc.server.default_handling == SESSION_TERMINATED
            for ifc, status in outcome
        ):
            await self._deregister(subscriber, implicit_set)
        return outcome

    def _probe(self, impu: str) -> Request:
        """A REGISTER standing for one the UE did not send (an expiry, a network de-registration):
        what the iFCs are matched against."""
        domain = self.server.profile.domains[0]
        return Request(
            "REGISTER",
            f"sip:{domain}",
            [
                ("Via", f"SIP/2.0/UDP {domain};branch={new_branch()}"),
                ("Max-Forwards", 70),
                ("From", f"<{impu}>;tag={secrets.token_hex(4)}"),
                ("To", f"<{impu}>"),
                ("Call-ID", f"{secrets.token_hex(8)}@{domain}"),
                ("CSeq", "1 REGISTER"),
                ("Contact", "*"),
                ("Expires", 0),
            ],
        )

    async def _send(self, ifc: Ifc, impu: str, change: RegistrationChange) -> int:
        """One third-party REGISTER; its final status (0: no answer)."""
        server = self.server
        proxying = server.proxying
        assert proxying is not None
        uri = ifc.server.uri
        try:
            flow = await proxying.flow_for(Destination(uri))
        except (TransportError, SipError, LookupError, RoutingError) as exc:
            log.info("third-party REGISTER to %s: no route: %s", uri, exc)
            self.stats["failed"] += 1
            return 0
        transport, host, port = proxying.sent_by(flow)
        domain = server.profile.domains[0]
        body, content_type = register_body(ifc, change)
        request = Request(
            "REGISTER",
            uri,
            [
                ("Via", f"SIP/2.0/{transport.upper()} {host}:{port};branch={new_branch()};rport"),
                ("Max-Forwards", 70),
                ("From", f"<sip:scscf@{domain}>;tag={secrets.token_hex(4)}"),
                ("To", f"<{impu}>"),
                ("Call-ID", f"{secrets.token_hex(8)}@{domain}"),
                ("CSeq", f"{next(self._cseq)} REGISTER"),
                ("Contact", f"<sip:scscf@{host}:{port};transport={transport}>"),
                ("Expires", change.expires if change.kind != DEREGISTRATION else 0),
            ],
        )
        if content_type is not None:
            request.set_body(body, content_type)
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def finished(status: int) -> None:
            if not done.done():
                done.set_result(status)

        self.stats["sent"] += 1
        server.emit(
            server.core.send_request(request, flow, flow.reliable, server.now(), on_final=finished)
        )
        status = await done
        if failed_status(status):
            self.stats["failed"] += 1
            log.info(
                "third-party REGISTER (%s of %s) to %s: %s (default handling %s)",
                change.kind,
                impu,
                uri,
                status or "no answer",
                ifc.server.default_handling,
            )
        else:
            self.stats["answered"] += 1
            log.info("third-party REGISTER (%s of %s) to %s: %s", change.kind, impu, uri, status)
        return status

    async def _deregister(self, subscriber: Subscriber, implicit_set: ImplicitSet) -> None:
        """Network-initiated de-registration of a set (TS 24.229 §5.4.1.5) after an AS whose
        default handling is session-terminated could not be reached."""
        server = self.server
        store, registrar = server.store, server.registrar
        assert store is not None and registrar is not None
        aor = implicit_set.default.aor
        # read, decide, write as a REGISTER does: on a store shared by several nodes another node
        # may write the set between the read and the write (.versioned), and then it is read again
        for attempt in range(MAX_ATTEMPTS):
            removed, version = await load_for_update(store, aor)
            if not removed:
                return
            try:
                await save_checked(store, aor, [], version)
                break
            except BindingConflict:
                if attempt == MAX_ATTEMPTS - 1:
                    raise
                log.info("%s: written by another node meanwhile, de-registering again", aor)
        self.stats["deregistered"] += 1
        log.info("%s de-registered: an AS with default handling session-terminated failed", aor)
        if registrar.on_change is not None:
            registrar.on_change(aor)
        server.notify(registrar.regevent.changed(aor, [], server.clock(), deregistered=True))
        await self.notify(
            RegistrationChange(
                DEREGISTRATION,
                aor,
                subscriber.impi,
                0,
                "network",
                subscriber=subscriber,
                implicit_set=implicit_set,
            )
        )
