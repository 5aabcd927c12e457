"""The running server: asyncio transports, the sans-IO core, timers, plugins and the store, wired."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from collections.abc import Sequence
from typing import Any

from imscore import __version__
from imscore.plugin import create_plugin_manager
from imscore.profile import Listener, Profile
from imscore.registrar import FlowInfo
from imscore.registrar.authenticator import Authenticator
from imscore.registrar.register import Registrar
from imscore.registrar.store import BindingStore, open_binding_store
from imscore.sip import Request, Response
from imscore.sip.transaction import Send, TimerConfig
from imscore.store import StoreError
from imscore.subscribers import MemorySubscriberStore, SubscriberStore, demo_subscribers_path
from imscore.transport import Flow, TransportError, Transports

from .core import ServerCore

__all__ = ["Server", "ServerError", "run_until_signalled", "tls_context_for"]

log = logging.getLogger("imscore.server")


class ServerError(Exception):
    """The server cannot start; the message says what is wrong and where."""


def tls_context_for(profile: Profile, source: str) -> ssl.SSLContext:
    """The server-side TLS context from the profile's ``tls`` section."""
    tls = profile.tls
    if not tls.certfile or not tls.keyfile:
        raise ServerError(f"{source}: key 'tls': a tls listener needs tls.certfile and tls.keyfile")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.certfile, tls.keyfile)
        if tls.cafile:
            context.load_verify_locations(tls.cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ServerError(
            f"{source}: key 'tls': cannot load certificate {tls.certfile!r} / key {tls.keyfile!r}"
            f"{f' / CA {tls.cafile!r}' if tls.cafile else ''}: {exc}"
        ) from None
    return context


class Server:
    """One imscore server: listens, answers, stops.

    :param profile: the effective profile.
    :param listeners: overrides the profile's listeners (``--listen``).
    :param store_url: overrides the profile's store (``--store``).
    :param source: where the profile came from, for messages.
    :param extra_plugins: plugins to register besides the entry-point ones (tests, the lab).
    :param subscribers: the subscriber provider (default: the demo subscribers shipped with imscore).
    :param clock: the registrar's clock (seconds since the epoch; binding lifetimes use it).
    :param authenticator: the registrar's authenticator (default: built from the profile).
    """

    def __init__(
        self,
        profile: Profile,
        *,
        listeners: Sequence[Listener] | None = None,
        store_url: str | None = None,
        source: str = "profile",
        extra_plugins: Sequence[object] = (),
        subscribers: SubscriberStore | None = None,
        clock: Any = time.time,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.profile = profile
        self.listeners = tuple(listeners) if listeners else profile.listeners
        self.store_url = store_url or profile.store
        self.source = source
        timers = TimerConfig(t1=profile.timers.t1, t2=profile.timers.t2, t4=profile.timers.t4)
        self.core: ServerCore[Flow] = ServerCore(
            timers, server_name=f"imscore/{__version__}", deferred=frozenset({"REGISTER", "SUBSCRIBE"})
        )
        self.subscribers = subscribers or MemorySubscriberStore.from_file(demo_subscribers_path())
        self.clock = clock
        self.registrar: Registrar | None = None
        self.authenticator = authenticator
        self._tasks: set[asyncio.Task[None]] = set()
        self._expiry: asyncio.Task[None] | None = None
        #: seconds between two sweeps of expired bindings
        self.expiry_interval = 1.0
        self.plugins = create_plugin_manager(extra_plugins=extra_plugins)
        self.transports: Transports | None = None
        self.store: BindingStore | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- life cycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store, listen on every listener, tell the plugins. Raises :class:`ServerError`."""
        self._loop = asyncio.get_running_loop()
        try:
            self.store = open_binding_store(self.store_url)
        except StoreError as exc:
            raise ServerError(str(exc)) from None
        try:
            self.registrar = Registrar(
                self.profile,
                self.subscribers,
                self.store,
                self.plugins,
                authenticator=self.authenticator,
            )
        except ValueError as exc:
            await self.store.close()
            raise ServerError(f"{self.source}: key 'policies.auth.options': {exc}") from None
        needs_tls = any(listener.transport == "tls" for listener in self.listeners)
        context = tls_context_for(self.profile, self.source) if needs_tls else None
        limits = self.profile.connections
        self.transports = Transports(
            self._on_message,
            tls_context=context,
            max_connections=limits.max_connections,
            idle_timeout=limits.idle_timeout,
            max_message_size=limits.max_message_size,
        )
        for listener in self.listeners:
            try:
                await self.transports.listen(listener.transport, listener.host, listener.port)
            except (OSError, TransportError) as exc:
                await self.transports.close()
                await self.store.close()
                raise ServerError(f"cannot listen on {listener}: {exc}") from None
        self._expiry = asyncio.get_running_loop().create_task(self._expire_bindings())
        self.plugins.hook.ims_server_started(server=self)
        log.info("%s", self.ready_line())

    async def stop(self) -> None:
        """Tell the plugins, stop timers, close listeners, connections and the store."""
        self.plugins.hook.ims_server_stopping(server=self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)
            self._expiry = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.transports is not None:
            await self.transports.close()
        if self.store is not None:
            await self.store.close()
        log.info("imscore stopped")

    @property
    def addresses(self) -> list[tuple[str, str, int]]:
        """``(transport, host, port)`` actually bound (a port 0 listener shows its real port)."""
        return [] if self.transports is None else list(self.transports.listening)

    def ready_line(self) -> str:
        listening = " ".join(
            f"{t}:[{h}]:{p}" if ":" in h else f"{t}:{h}:{p}" for t, h, p in self.addresses
        )
        return (
            f"imscore {__version__} ready: listening on {listening} "
            f"(profile {self.profile.name}, domains {', '.join(self.profile.domains)}, "
            f"store {self.store_url})"
        )

    # -- traffic -----------------------------------------------------------------------------------
    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _on_message(self, message: Request | Response, flow: Flow) -> None:
        self._emit(self.core.receive(message, flow, flow.reliable, self._now()))
        while self.core.waiting:
            transaction, request = self.core.waiting.pop(0)
            task = asyncio.get_running_loop().create_task(self._register(transaction, request, flow))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _register(self, transaction: Any, request: Request, flow: Flow) -> None:
        """A deferred request (REGISTER or SUBSCRIBE): ask the registrar, answer, send NOTIFYs."""
        assert self.registrar is not None
        info = FlowInfo(flow.transport, flow.remote, flow.local, flow.connection)
        notes: tuple[tuple[Request, FlowInfo], ...] = ()
        try:
            if request.method == "SUBSCRIBE":
                host, port = flow.local
                host = f"[{host}]" if ":" in host else host
                contact = f"<sip:{host}:{port};transport={flow.transport}>"
                response, notes = await self.registrar.subscribe(request, info, contact, self.clock())
            else:
                outcome = await self.registrar.register(request, info, self.clock())
                response, notes = outcome.response, outcome.notifications
        except Exception:  # a provider failed: answer 500 rather than leave the UE waiting
            log.exception("%s from %s failed", request.method, flow.remote)
            response = request.make_response(500, "Registrar error", to_tag="e500")
        if not transaction.terminated:
            self._emit(self.core.respond(transaction, response, self._now()))
        self._notify(notes)

    def _notify(self, notes: Sequence[tuple[Request, FlowInfo]]) -> None:
        """Send reg-event NOTIFYs, each on the flow of its subscription (the UE's own flow)."""
        for notify, info in notes:
            flow = Flow(info.transport, info.local, info.remote, info.connection)
            try:
                self._emit(self.core.send_request(notify, flow, flow.reliable, self._now()))
            except Exception:  # the flow is gone or the request is refused: log, go on
                log.exception("cannot send NOTIFY to %s", info.remote)

    def _on_timer(self) -> None:
        self._timer = None
        self._emit(self.core.advance(self._now()))

    def _emit(self, sends: list[Send[Flow]]) -> None:
        transports = self.transports
        assert transports is not None
        for send in sends:
            try:
                if isinstance(send.message, Response):
                    transports.send_response(send.message, send.flow)
                else:
                    transports.send(send.message, send.flow)
            except TransportError as exc:
                log.info("cannot send on %s: %s", send.flow, exc)
                if send.transaction is not None:
                    self._emit(self.core.receive_transport_error(send.transaction, self._now()))
        self._schedule()

    def _schedule(self) -> None:
        deadline = self.core.next_deadline()
        if self._timer is not None:
            if deadline is not None and self._timer.when() == deadline:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._loop is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    async def _expire_bindings(self) -> None:
        """Remove bindings as they expire (RFC 3261 §10.3: a binding lives only its expires)."""
        while True:
            await asyncio.sleep(self.expiry_interval)
            if self.registrar is None:
                continue
            try:
                notes = await self.registrar.expire(self.clock())
            except Exception:  # the store failed this once: log it, keep sweeping
                log.exception("expiring bindings failed")
                continue
            self._notify(notes)

    def stats(self) -> dict[str, Any]:
        """Counters of the transports and of the core, for logs and tests."""
        transport = {} if self.transports is None else vars(self.transports.stats).copy()
        return {"transport": transport, "answered": dict(self.core.counters.answered)}


async def run_until_signalled(server: Server) -> None:
    """Start ``server``, serve until SIGINT or SIGTERM, then stop it cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await server.stop()
