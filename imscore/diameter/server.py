"""``imscore hss``: the Cx application of :mod:`imscore.diameter.hss` served over TCP or SCTP.

Each accepted connection is a :class:`~imscore.diameter.peer.PeerConnection`. The first request
must be a CER (RFC 6733 §5.3); the CEA says Result-Code 2001 and advertises Cx as
Vendor-Specific-Application-Id { Vendor-Id 10415, Auth-Application-Id 16777216 } when the peer
offers Cx (in an Auth-Application-Id, a Vendor-Specific-Application-Id, or the relay application),
else 5010 DIAMETER_NO_COMMON_APPLICATION and the connection is closed. Another request before the
CER is answered 3010 DIAMETER_UNKNOWN_PEER and the connection is closed. A Cx request for a
command the HSS does not serve is answered 3001, one for another application 3007.

Over SCTP (:mod:`imscore.diameter.sctp`) the listening socket comes from a socket factory and is
served by the same asyncio streams, framer and connection logic as TCP.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Final

from imscore import __version__
from imscore.diameter import dictionary as d
from imscore.diameter.codec import Avp, Message
from imscore.diameter.hss import CxHss
from imscore.diameter.messages import IdSource, answer, cx_application_avp, error_answer, result_code
from imscore.diameter.peer import PeerConnection
from imscore.diameter.sctp import TRANSPORTS, SctpSockets, Sockets

__all__ = ["HssServer", "offers_cx"]

log = logging.getLogger("imscore.diameter.server")

UNKNOWN_PEER: Final = 3010
PRODUCT: Final = "imscore"


def offers_cx(cer: Message) -> bool:
    """Whether a CER (or CEA) lists the Cx application, or the relay application."""
    wanted = {d.CX_APPLICATION, d.RELAY_APPLICATION}
    for avp in cer.find_all(d.AUTH_APPLICATION_ID):
        if avp.as_u32() in wanted:
            return True
    for group in cer.find_all(d.VENDOR_SPECIFIC_APPLICATION_ID):
        app = group.find(d.AUTH_APPLICATION_ID)
        if app is not None and app.as_u32() in wanted:
            return True
    return False


def capabilities_avps(origin_host: str, origin_realm: str, host_ip: str) -> list[Avp]:
    """What a CER or CEA of ours carries after the Result-Code (RFC 6733 §5.3.1/§5.3.2)."""
    return [
        Avp.utf8(d.ORIGIN_HOST, origin_host),
        Avp.utf8(d.ORIGIN_REALM, origin_realm),
        Avp.address(d.HOST_IP_ADDRESS, host_ip),
        Avp.u32(d.VENDOR_ID, 0),
        Avp.utf8(d.PRODUCT_NAME, PRODUCT, mandatory=False),
        Avp.u32(d.ORIGIN_STATE_ID, os.getpid()),
        Avp.u32(d.SUPPORTED_VENDOR_ID, d.VENDOR_3GPP),
        Avp.u32(d.AUTH_APPLICATION_ID, d.CX_APPLICATION),
        cx_application_avp(),
        Avp.u32(d.FIRMWARE_REVISION, _firmware(), mandatory=False),
    ]


def _firmware() -> int:
    """Firmware-Revision: the package version's major and minor, ``0.4`` as 4, ``1.2`` as 102."""
    parts = [int(p) if p.isdigit() else 0 for p in __version__.split(".")[:2]] + [0, 0]
    return parts[0] * 100 + parts[1]


class HssServer:
    """A Diameter server (TCP or SCTP) for a :class:`~imscore.diameter.hss.CxHss`."""

    def __init__(self, hss: CxHss) -> None:
        self.hss = hss
        self.ids = IdSource(hss.origin_host)
        self.connections: set[PeerConnection] = set()
        self._server: asyncio.Server | None = None
        self._ready: set[PeerConnection] = set()
        #: the tasks serving connections (close() waits for them, so none outlives the loop)
        self._serving: set[asyncio.Task[None]] = set()
        #: ``tcp`` or ``sctp``, once started
        self.transport = "tcp"
        self._asked: tuple[str, int] = ("", 0)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) pairs (the asked ones for a socket with no IP address)."""
        if self._server is None:
            return []
        bound: list[tuple[str, int]] = []
        for sock in self._server.sockets:
            name = sock.getsockname()
            bound.append((name[0], name[1]) if isinstance(name, tuple) else self._asked)
        return bound

    async def start(
        self, host: str, port: int, transport: str = "tcp", sockets: Sockets | None = None
    ) -> None:
        """Listen on ``host``:``port`` (port 0: any free one; see :attr:`addresses`).

        :param transport: ``tcp``, or ``sctp`` (a one-to-one SCTP socket from ``sockets``).
        :param sockets: where the SCTP listener comes from (default :class:`SctpSockets`).
        :raises OSError: the address cannot be bound; ``SctpUnavailableError`` where the kernel
            has no SCTP.
        :raises ValueError: an unknown transport.
        """
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        self.transport = transport
        self._asked = (host, port)
        if transport == "tcp":
            self._server = await asyncio.start_server(self._accept, host, port)
            return
        sock = (sockets or SctpSockets()).listener(host, port)
        try:
            self._server = await asyncio.start_server(self._accept, sock=sock)
        except BaseException:
            sock.close()
            raise

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            await connection.close()
        if self._serving:
            await asyncio.wait(list(self._serving), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    async def push(self, peer_host: str, command: int, avps: list[Avp], timeout: float = 5.0) -> Message:
        """Send an HSS-initiated Cx request (RTR, PPR) to the connected peer ``peer_host`` with
        Session-Id, Origin-Host/Realm and Destination-Realm added; its answer.

        :raises DiameterPeerError: no connection from that peer, or no answer in time.
        """
        from imscore.diameter.peer import DiameterPeerError

        for connection in self._ready:
            if connection.peer_host == peer_host and not connection.closed:
                head = [
                    Avp.utf8(d.SESSION_ID, self.ids.session_id()),
                    *connection.origin_avps(),
                    Avp.utf8(d.DESTINATION_REALM, connection.peer_realm or self.hss.origin_realm),
                ]
                return await connection.request(
                    command,
                    d.CX_APPLICATION,
                    [head[0], *avps[:1], *head[1:], *avps[1:]],
                    timeout=timeout,
                )
        raise DiameterPeerError(f"no Diameter connection from {peer_host}")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = PeerConnection(reader, writer, self.ids, self.hss.origin_realm, self._request)
        self.connections.add(connection)
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
        log.info("diameter: connection from %s", connection.peer_address)
        try:
            await connection.run()
        finally:
            if task is not None:
                self._serving.discard(task)
            self.connections.discard(connection)
            self._ready.discard(connection)
            log.info("diameter: %s (%s) closed", connection.peer_address, connection.peer_host)

    async def _request(self, connection: PeerConnection, request: Message) -> Message | None:
        if request.command == d.CER:
            return await self._cer(connection, request)
        if connection not in self._ready:
            reply = error_answer(request, UNKNOWN_PEER, connection.origin_avps(), "no CER yet")
            connection.send(reply)
            await connection.close()
            return None
        if request.application != d.CX_APPLICATION:
            return error_answer(request, d.APPLICATION_UNSUPPORTED, connection.origin_avps())
        return await self.hss.handle(request)

    async def _cer(self, connection: PeerConnection, request: Message) -> Message | None:
        host = request.find(d.ORIGIN_HOST)
        realm = request.find(d.ORIGIN_REALM)
        connection.peer_host = None if host is None else host.as_str()
        connection.peer_realm = None if realm is None else realm.as_str()
        sock = connection.writer.get_extra_info("sockname")
        ip = sock[0] if isinstance(sock, tuple) else "127.0.0.1"
        caps = capabilities_avps(self.hss.origin_host, self.hss.origin_realm, ip)
        if not offers_cx(request):
            log.warning("diameter: CER from %s offers no Cx application", connection.peer_host)
            connection.send(answer(request, [result_code(d.NO_COMMON_APPLICATION), *caps]))
            await connection.close()
            return None
        self._ready.add(connection)
        log.info("diameter: CER from %s (%s)", connection.peer_host, connection.peer_realm)
        return answer(request, [result_code(d.SUCCESS), *caps])
