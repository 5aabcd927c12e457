"""A Cx client: one TCP or SCTP connection to an HSS, capabilities exchanged, requests and answers.

:class:`CxClient` is what the S-CSCF side (and the tests) use: :meth:`CxClient.connect` opens the
connection and exchanges CER/CEA (with Vendor-Specific-Application-Id for Cx), then :meth:`uar`,
:meth:`mar`, :meth:`sar` and :meth:`lir` send the request and return the answer. Requests the HSS
sends (RTR, PPR) go to ``on_request``. ``transport="sctp"`` connects a one-to-one SCTP socket
(:mod:`imscore.diameter.sctp`) and serves it with the same streams and framer as TCP; where the
kernel has no SCTP, each attempt fails with ``SCTP not available: ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable

from imscore.diameter import dictionary as d
from imscore.diameter.codec import Avp, Message
from imscore.diameter.messages import IdSource, cx_application_avp, result_of
from imscore.diameter.peer import DiameterPeerError, PeerConnection
from imscore.diameter.sctp import TRANSPORTS, SctpSockets, SctpUnavailableError, Sockets
from imscore.diameter.server import capabilities_avps

__all__ = ["CxClient", "DiameterPeerError"]

V = d.VENDOR_3GPP
IncomingRequest = Callable[[Message], Awaitable[Message | None]]


class CxClient:
    """A Cx connection to an HSS; make one with :meth:`connect`."""

    def __init__(
        self, connection: PeerConnection, destination_realm: str, task: asyncio.Task[None]
    ) -> None:
        self.connection = connection
        self.destination_realm = destination_realm
        self._task = task
        #: the CEA the HSS sent
        self.cea: Message | None = None
        self.timeout = 5.0

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        origin_host: str,
        origin_realm: str,
        destination_realm: str,
        timeout: float = 5.0,
        on_request: IncomingRequest | None = None,
        transport: str = "tcp",
        sockets: Sockets | None = None,
    ) -> CxClient:
        """Connect and exchange capabilities.

        :param transport: ``tcp``, or ``sctp`` (a one-to-one SCTP socket from ``sockets``).
        :param sockets: where the SCTP socket comes from (default :class:`SctpSockets`).
        :raises DiameterPeerError: the HSS cannot be reached, does not answer in time, or its CEA
            is not 2001; ``SCTP not available: ...`` where the kernel has no SCTP.
        :raises ValueError: an unknown transport.
        """
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        try:
            if transport == "tcp":
                opening = asyncio.open_connection(host, port)
            else:
                opening = _open_sctp(host, port, sockets or SctpSockets())
            reader, writer = await asyncio.wait_for(opening, timeout)
        except SctpUnavailableError as exc:
            raise DiameterPeerError(str(exc)) from None
        except (OSError, TimeoutError) as exc:
            raise DiameterPeerError(
                f"HSS {host}:{port} unreachable{' over SCTP' if transport == 'sctp' else ''}: "
                f"{exc or 'timed out'}"
            ) from None

        async def handle(_: PeerConnection, request: Message) -> Message | None:
            return None if on_request is None else await on_request(request)

        connection = PeerConnection(reader, writer, IdSource(origin_host), origin_realm, handle)
        task = asyncio.get_running_loop().create_task(connection.run())
        client = cls(connection, destination_realm, task)
        client.timeout = timeout
        sock = writer.get_extra_info("sockname")
        ip = sock[0] if isinstance(sock, tuple) else "127.0.0.1"
        try:
            cea = await connection.request(
                d.CER,
                0,
                capabilities_avps(origin_host, origin_realm, ip),
                timeout=timeout,
                proxiable=False,
            )
        except DiameterPeerError:
            await client.close(disconnect=False)
            raise
        result = result_of(cea)
        if result != (d.SUCCESS, 0):
            await client.close(disconnect=False)
            raise DiameterPeerError(f"HSS {host}:{port} refused the capabilities exchange: {result}")
        client.cea = cea
        host_avp = cea.find(d.ORIGIN_HOST)
        connection.peer_host = None if host_avp is None else host_avp.as_str()
        return client

    @property
    def closed(self) -> bool:
        """Whether the connection is closed."""
        return self.connection.closed

    async def close(self, *, disconnect: bool = True) -> None:
        """Send DPR (when ``disconnect``), then close."""
        if disconnect and not self.connection.closed:
            with contextlib.suppress(DiameterPeerError):
                await self.connection.request(
                    d.DPR,
                    0,
                    [*self.connection.origin_avps(), Avp.u32(d.DISCONNECT_CAUSE, 0)],
                    timeout=self.timeout,
                    proxiable=False,
                )
        await self.connection.close()
        await asyncio.gather(self._task, return_exceptions=True)

    async def watchdog(self) -> Message:
        """Send a DWR; the DWA."""
        return await self.connection.request(
            d.DWR, 0, self.connection.origin_avps(), timeout=self.timeout, proxiable=False
        )

    async def cx(self, command: int, avps: Iterable[Avp]) -> Message:
        """Send a Cx request with Session-Id, Vendor-Specific-Application-Id, Auth-Session-State,
        origin and destination first; the answer."""
        head = [
            Avp.utf8(d.SESSION_ID, self.connection.ids.session_id()),
            cx_application_avp(),
            Avp.u32(d.AUTH_SESSION_STATE, d.NO_STATE_MAINTAINED),
            *self.connection.origin_avps(),
            Avp.utf8(d.DESTINATION_REALM, self.destination_realm),
        ]
        return await self.connection.request(
            command, d.CX_APPLICATION, [*head, *avps], timeout=self.timeout
        )

    async def uar(
        self, impu: str, impi: str, *, kind: int = d.UAT_REGISTRATION, visited: str | None = None
    ) -> Message:
        """User-Authorization-Request."""
        avps = [Avp.utf8(d.USER_NAME, impi), Avp.utf8(d.PUBLIC_IDENTITY, impu, V)]
        avps.append(
            Avp.octets(d.VISITED_NETWORK_IDENTIFIER, (visited or self.destination_realm).encode(), V)
        )
        avps.append(Avp.u32(d.USER_AUTHORIZATION_TYPE, kind, V))
        return await self.cx(d.UAR, avps)

    async def mar(
        self,
        impu: str,
        impi: str,
        server_name: str,
        *,
        scheme: str = d.SCHEME_UNKNOWN,
        count: int = 1,
        resync: bytes | None = None,
    ) -> Message:
        """Multimedia-Auth-Request; ``resync`` is RAND || AUTS (30 octets)."""
        item = [Avp.utf8(d.SIP_AUTHENTICATION_SCHEME, scheme, V)]
        if resync is not None:
            item.append(Avp.octets(d.SIP_AUTHORIZATION, resync, V))
        return await self.cx(
            d.MAR,
            [
                Avp.utf8(d.USER_NAME, impi),
                Avp.utf8(d.PUBLIC_IDENTITY, impu, V),
                Avp.u32(d.SIP_NUMBER_AUTH_ITEMS, count, V),
                Avp.group(d.SIP_AUTH_DATA_ITEM, item, V),
                Avp.utf8(d.SERVER_NAME, server_name, V),
            ],
        )

    async def sar(self, impu: str, server_name: str, kind: int, *, impi: str | None = None) -> Message:
        """Server-Assignment-Request."""
        avps = [] if impi is None else [Avp.utf8(d.USER_NAME, impi)]
        avps += [
            Avp.utf8(d.PUBLIC_IDENTITY, impu, V),
            Avp.utf8(d.SERVER_NAME, server_name, V),
            Avp.u32(d.SERVER_ASSIGNMENT_TYPE, kind, V),
            Avp.u32(d.USER_DATA_ALREADY_AVAILABLE, 0, V),
        ]
        return await self.cx(d.SAR, avps)

    async def lir(self, impu: str) -> Message:
        """Location-Info-Request."""
        return await self.cx(d.LIR, [Avp.utf8(d.PUBLIC_IDENTITY, impu, V)])


async def _open_sctp(
    host: str, port: int, sockets: Sockets
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect a socket of ``sockets`` to ``host``:``port`` and wrap it in asyncio streams."""
    sock, address = sockets.connector(host, port)
    try:
        await asyncio.get_running_loop().sock_connect(sock, address)
        return await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
