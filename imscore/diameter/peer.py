"""One Diameter connection over an asyncio stream: framing, answers matched to requests, the base
protocol's watchdog and disconnect (RFC 6733 §5.5, §5.4), and requests handed to a handler.

Both sides use it: the HSS (:mod:`imscore.diameter.server`) for each accepted connection, the Cx
client (:mod:`imscore.diameter.client`) for its one. Bad octets never end the process: a message
whose header could be read but whose AVPs could not is answered with the E flag and the Result-Code
of the error (RFC 6733 §7.2); a stream whose header is broken is closed, and both are logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from imscore.diameter import dictionary as d
from imscore.diameter.codec import Avp, DiameterDecodeError, Message, decode_message
from imscore.diameter.framer import FramingError, StreamFramer
from imscore.diameter.messages import IdSource, answer, error_answer, result_code

__all__ = ["DiameterPeerError", "PeerConnection", "RequestHandler"]

log = logging.getLogger("imscore.diameter")

#: what handles a request that is not DWR or DPR: returns the answer, or None to send none
RequestHandler = Callable[["PeerConnection", Message], Awaitable[Message | None]]
#: the most octets read at once
_READ = 65536


class DiameterPeerError(ConnectionError):
    """The peer is gone, did not answer in time, or the connection is closed."""


class PeerConnection:
    """A Diameter connection.

    :param reader: the stream's reader.
    :param writer: the stream's writer.
    :param ids: the node's identifier source (its Origin-Host too).
    :param origin_realm: the node's Origin-Realm.
    :param handler: called for each request other than DWR and DPR.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ids: IdSource,
        origin_realm: str,
        handler: RequestHandler,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.ids = ids
        self.origin_realm = origin_realm
        self.handler = handler
        #: the peer's Origin-Host once its CER or CEA was read
        self.peer_host: str | None = None
        self.peer_realm: str | None = None
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._framer = StreamFramer()
        self._closed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        #: the loop's time when octets last came from the peer (RFC 3539's watchdog resets on them)
        self.last_received = asyncio.get_running_loop().time()
        peer = writer.get_extra_info("peername")
        self.peer_address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    @property
    def origin_host(self) -> str:
        """This node's Origin-Host."""
        return self.ids.origin_host

    def origin_avps(self) -> list[Avp]:
        """Origin-Host and Origin-Realm of this node."""
        return [Avp.utf8(d.ORIGIN_HOST, self.origin_host), Avp.utf8(d.ORIGIN_REALM, self.origin_realm)]

    @property
    def closed(self) -> bool:
        """Whether the connection is closed."""
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed."""
        await self._closed.wait()

    # -- sending ----------------------------------------------------------------------------------
    def send(self, message: Message) -> None:
        """Write one message (no wait)."""
        if self.closed:
            raise DiameterPeerError(f"connection to {self.peer_address} is closed")
        self.writer.write(message.encode())

    async def request(
        self,
        command: int,
        application: int,
        avps: Iterable[Avp],
        *,
        timeout: float = 5.0,
        proxiable: bool = True,
    ) -> Message:
        """Send a request and wait for its answer (matched by hop-by-hop identifier).

        :raises DiameterPeerError: the connection closed or no answer came within ``timeout``.
        """
        message = Message(
            command=command,
            application=application,
            avps=tuple(avps),
            request=True,
            proxiable=proxiable,
            hop_by_hop=self.ids.hop_by_hop(),
            end_to_end=self.ids.end_to_end(),
        )
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[message.hop_by_hop] = future
        try:
            self.send(message)
            await self.writer.drain()
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise DiameterPeerError(
                f"no {d.command_name(command, False)} from {self.peer_address} within {timeout} s"
            ) from None
        except (ConnectionError, OSError) as exc:
            raise DiameterPeerError(f"connection to {self.peer_address}: {exc}") from None
        finally:
            self._pending.pop(message.hop_by_hop, None)

    # -- receiving --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Read and dispatch messages until the peer closes, a DPR is answered, or the stream
        breaks; then close."""
        discarded = False
        try:
            while not self.closed:
                data = await self.reader.read(_READ)
                if not data:
                    break
                self.last_received = asyncio.get_running_loop().time()
                try:
                    frames = self._framer.feed(data)
                except FramingError as exc:
                    log.warning("diameter %s: closing, %s", self.peer_address, exc)
                    break
                for frame in frames:
                    self._dispatch(frame)
        except (ConnectionError, OSError) as exc:
            log.info("diameter %s: connection lost: %s", self.peer_address, exc)
        except GeneratorExit:
            # the coroutine is being thrown away (its event loop is gone): nothing may be awaited
            discarded = True
            raise
        finally:
            if not discarded:
                await self.close()

    def _dispatch(self, frame: bytes) -> None:
        try:
            message = decode_message(frame)
        except DiameterDecodeError as exc:
            log.warning("diameter %s: bad message: %s", self.peer_address, exc)
            header = exc.header
            if header is not None and header.is_request:
                stub = Message(
                    command=header.command,
                    application=header.application,
                    hop_by_hop=header.hop_by_hop,
                    end_to_end=header.end_to_end,
                )
                self.send(error_answer(stub, exc.result_code, self.origin_avps(), exc.reason))
            return
        if not message.request:
            future = self._pending.get(message.hop_by_hop)
            if future is not None and not future.done():
                future.set_result(message)
            else:
                log.info("diameter %s: answer to no request, dropped", self.peer_address)
            return
        if message.command == d.DWR:
            self.send(answer(message, [result_code(d.SUCCESS), *self.origin_avps()]))
            return
        work = self._disconnect(message) if message.command == d.DPR else self._handle(message)
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _disconnect(self, message: Message) -> None:
        """Answer a DPR once the requests before it are answered, then close (RFC 6733 §5.4)."""
        earlier = [task for task in self._tasks if task is not asyncio.current_task()]
        await asyncio.gather(*earlier, return_exceptions=True)
        if not self.closed:
            self.send(answer(message, [result_code(d.SUCCESS), *self.origin_avps()]))
            await self.close()

    async def _handle(self, message: Message) -> None:
        try:
            reply = await self.handler(self, message)
        except DiameterDecodeError as exc:  # a handler reading an AVP of the wrong format
            log.warning(
                "diameter %s: bad %s: %s", self.peer_address, d.command_name(message.command, True), exc
            )
            reply = error_answer(message, exc.result_code, self.origin_avps(), exc.reason)
        except Exception:  # a handler's bug: answer UNABLE_TO_COMPLY, keep serving
            log.exception("diameter %s: handling %s failed", self.peer_address, message.command)
            reply = answer(message, [result_code(d.UNABLE_TO_COMPLY), *self.origin_avps()])
        if reply is not None and not self.closed:
            self.send(reply)

    async def close(self) -> None:
        """Close the connection; pending requests fail with :class:`DiameterPeerError`."""
        self._closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(DiameterPeerError(f"connection to {self.peer_address} closed"))
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        try:
            if not self.writer.is_closing():
                await self.writer.drain()
            self.writer.close()
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
