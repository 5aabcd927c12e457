"""The running server: asyncio transports, the sans-IO core, timers, plugins and the store, wired."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from imscore import __version__
from imscore.build_info import describe
from imscore.capture.pcap import PcapWriter
from imscore.plugin import create_plugin_manager
from imscore.profile import Listener, Profile
from imscore.profile.loader import unknown_transport
from imscore.registrar import FlowInfo
from imscore.registrar.authenticator import Authenticator
from imscore.registrar.register import Registrar
from imscore.registrar.sqn import SqliteSqnStore
from imscore.registrar.store import BindingStore, SqliteBindingStore, open_binding_store
from imscore.sip import Request, Response, SipError
from imscore.sip.headers import forget_recent_texts
from imscore.sip.transaction import Send, TimerConfig
from imscore.store import StoreError
from imscore.subscribers import MemorySubscriberStore, SubscriberStore, demo_subscribers_path
from imscore.transport import Flow, TransportError, TransportProvider, Transports
from imscore.transport.registry import collect_transports, known_transports

from .core import ServerCore
from .eager import start_eagerly
from .fastreg import FastRegister, fast_register_for
from .gctune import return_freed_memory
from .metrics import Metrics, MetricsError, MetricsServer, timed_resolver, timed_store
from .outcomes import OutcomeLog, proxy_outcome, registrar_outcome, source_of
from .overload import LoadMonitor, socket_receive_queue, udp_receive_queue
from .providers import BUILTIN_STORES, ProviderError, collect, open_provided, scheme_of
from .proxying import ProxyService
from .qualify import Qualifier
from .retransmit import RetransmissionCache
from .thirdparty import ThirdPartyRegistration

if TYPE_CHECKING:
    from imscore.registrar.register import RegisterOutcome

    from .workers import WorkerSetup

#: decides a REGISTER as ``Registrar.register`` does (request, flow, now -> its outcome)
Decide = Callable[[Request, FlowInfo, float], Coroutine[Any, Any, "RegisterOutcome"]]

__all__ = ["Server", "ServerError", "client_tls_context_for", "run_until_signalled", "tls_context_for"]

log = logging.getLogger("imscore.server")

#: seconds a subscriber store's ``close()`` may take as the server stops (an HSS's DPA)
SUBSCRIBERS_CLOSE_WAIT = 5.0


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


def client_tls_context_for(profile: Profile, source: str) -> ssl.SSLContext | None:
    """The client-side TLS context (connections this server opens) from the profile's ``tls`` section.

    It verifies the peer's certificate and host name against the CA bundle ``tls.verify_cafile``.
    ``None`` when that is not set: :class:`~imscore.transport.Transports` then trusts the system's
    CAs (the context is made when a TLS connection is first opened).
    """
    cafile = profile.tls.verify_cafile
    if not cafile:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    try:
        context.load_verify_locations(cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ServerError(
            f"{source}: key 'tls.verify_cafile': cannot load CA file {cafile!r}: {exc}"
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
    :param subscriber_source: a URL whose scheme names a subscriber store a plugin offers
        (``ims_register_subscriber_stores``); it replaces ``subscribers`` at start.
    :param clock: the registrar's clock (seconds since the epoch; binding lifetimes use it).
    :param authenticator: the registrar's authenticator (default: built from the profile).
    :param transports_factory: makes the :class:`~imscore.transport.Transports` (called with the
        same arguments); the lab passes one bound to its in-process network.
    :param pcap_path: write every message received and sent to this pcap file (``--pcap``), from
        start to stop; it is replaced if it exists.
    :param worker: in a worker process of ``serve --workers N``, what the parent handed over (the
        UDP listeners are then served through it; see :mod:`imscore.server.workers`).
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
        subscriber_source: str | None = None,
        clock: Any = time.time,
        authenticator: Authenticator | None = None,
        pcap_path: str | os.PathLike[str] | None = None,
        transports_factory: Callable[..., Transports] | None = None,
        worker: WorkerSetup | None = None,
        metrics_address: tuple[str, int] | None = None,
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
        #: a subscriber store URL for a plugin's provider (``ims_register_subscriber_stores``)
        self.subscriber_source = subscriber_source
        self.clock = clock
        self.registrar: Registrar | None = None
        self.authenticator = authenticator
        self._tasks: set[asyncio.Task[None]] = set()
        #: retransmitted datagrams recognised by their octets (see imscore.server.retransmit)
        self._retransmissions = RetransmissionCache(self.core.layer)
        self._expiry: asyncio.Task[None] | None = None
        #: seconds between two sweeps of expired bindings
        self.expiry_interval = 1.0
        from imscore.diameter import plugin as cx_provider  # the builtin cx:// subscriber store
        from imscore.registrar import redis_provider  # the builtin redis:// store provider

        self.plugins = create_plugin_manager(
            extra_plugins=(*extra_plugins, redis_provider, cx_provider)
        )
        #: this node's name in a pool (``--node-id``): written into the bindings it stores
        self.node_id: str | None = None
        #: the pool side of a node on a shared store: reg-event news, flows of other nodes
        self.pool: Any = None
        self.transports: Transports | None = None
        self.store: BindingStore | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: makes the transports (the lab passes one bound to its in-process network)
        self.transports_factory = transports_factory or Transports
        #: the proxy side of the server, made at start
        self.proxying: ProxyService | None = None
        #: contact qualification (OPTIONS pings), when the profile's qualify.interval > 0
        self.qualifier: Qualifier | None = None
        #: watches the event loop's lag (overload control, made at start)
        self.load: LoadMonitor | None = None
        self.pcap_path = pcap_path
        self._pcap: PcapWriter | None = None
        #: set in a worker process of ``serve --workers N`` (see imscore.server.workers)
        self.worker = worker
        #: where ``/metrics`` and ``/healthz`` are served (``--metrics``), or ``None``
        self.metrics_address = metrics_address
        self.metrics: Metrics | None = None
        self._metrics_server: MetricsServer | None = None
        #: one line (and metric observations) per finished transaction
        self.outcomes = OutcomeLog()
        #: retransmitted requests absorbed by their transaction before parsing
        self.retransmissions = 0
        #: whether the common REGISTER datagram may take the specialised path
        #: (:mod:`imscore.server.fastreg`; set before :meth:`start`)
        self.fast_register = True
        self._fastreg: FastRegister | None = None
        self._state = "starting"

    # -- life cycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store, listen on every listener, tell the plugins. Raises :class:`ServerError`.

        A start that fails leaves no SQLite store file behind that it created itself."""
        path = self.store_url[len("sqlite:") :] if self.store_url.startswith("sqlite:") else None
        created = path is not None and not os.path.exists(path)
        try:
            await self._start()
        except ServerError:
            if created and path is not None:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    with contextlib.suppress(OSError):
                        os.unlink(path + suffix)
            raise

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        from imscore.routing import ROUTING_TRANSPORTS, Resolver  # RFC 3263 next hops (docs/routing.rst)

        #: finds the targets of other domains' URIs; the proxy calls ``await self.resolver.resolve(uri)``
        self.resolver = Resolver.from_settings(
            self.profile.dns, [t.transport for t in self.listeners if t.transport in ROUTING_TRANSPORTS]
        )
        try:
            if self.subscriber_source is not None:  # an HSS, LDAP … offered by a plugin
                offered = collect(self.plugins, "ims_register_subscriber_stores", "subscriber store")
                self.subscribers = open_provided(offered, self.subscriber_source, "subscribers")
            if scheme_of(self.store_url) in BUILTIN_STORES or self.store_url == "memory":
                self.store = open_binding_store(self.store_url)
            else:  # e.g. redis://: a plugin's binding store
                offered = collect(self.plugins, "ims_register_binding_stores", "binding store")
                self.store = open_provided(offered, self.store_url, "store")
        except (StoreError, ProviderError) as exc:
            raise ServerError(str(exc)) from None
        sqn_store = (  # AKA SQNs in the store file: they survive restarts, workers share them
            SqliteSqnStore(self.store.connection, self.store.url)
            if isinstance(self.store, SqliteBindingStore)
            else None
        )
        nonce_secret = None if self.worker is None else self.worker.nonce_secret
        pool = getattr(self.store, "pool", None)  # a store a pool of nodes shares (Redis)
        if pool is not None:
            self.store.node_id = self.node_id  # type: ignore[union-attr]
            try:
                sqn_store, nonce_secret = pool.sqn_store(), pool.secret("nonce")
            except StoreError as exc:
                await self.store.close()
                raise ServerError(str(exc)) from None
        try:
            self.registrar = Registrar(
                self.profile,
                self.subscribers,
                self.store,
                self.plugins,
                authenticator=self.authenticator,
                nonce_secret=nonce_secret,
                sqn_store=sqn_store,
            )
        except ValueError as exc:
            await self.store.close()
            raise ServerError(f"{self.source}: key 'policies.auth.options': {exc}") from None
        if pool is not None and self.authenticator is None:  # nonce-counts shared by the pool
            auth = self.registrar.authenticator
            auth.counter = pool.nonce_counter(auth.nonces.lifetime)
        self.proxying = ProxyService(self)  # the forking proxy (RFC 3261 §16), see docs/proxy.rst
        self.registrar.names_us = self.proxying.router.is_ours  # a REGISTER an I-CSCF sent us
        self.registrar.resolve = self.resolver.resolve  # an AS named by a DNS name may watch
        self.proxying.core.on_final = self._forked
        #: third-party REGISTERs to the application servers of the users' iFCs (docs/ifc.rst)
        self.thirdparty = ThirdPartyRegistration(self)
        self.registrar.on_registration = self.thirdparty.changed
        if self.metrics_address is not None:
            try:
                await self._start_metrics(*self.metrics_address)
            except (MetricsError, OSError) as exc:
                await self.store.close()
                where = ":".join(str(part) for part in self.metrics_address)
                raise ServerError(f"--metrics {where}: {exc}") from None
        qualify = self.profile.qualify
        if qualify.interval > 0 and (self.worker is None or self.worker.index == 0):
            self.qualifier = Qualifier(self, qualify.interval, qualify.max_failures)
        needs_tls = any(listener.transport == "tls" for listener in self.listeners)
        try:
            context = tls_context_for(self.profile, self.source) if needs_tls else None
            providers = self._transport_providers()
            client_context = client_tls_context_for(self.profile, self.source)
        except ServerError:
            await self.store.close()
            raise
        limits = self.profile.connections
        if self.pcap_path is not None:
            try:
                self._pcap = PcapWriter.open(self.pcap_path, flush=True)
            except OSError as exc:
                await self.store.close()
                raise ServerError(
                    f"pcap file {str(self.pcap_path)!r}: cannot open for writing: {exc.strerror or exc}"
                ) from None
        self.transports = self.transports_factory(
            self._on_message,
            tls_context=context,
            max_connections=limits.max_connections,
            idle_timeout=limits.idle_timeout,
            max_message_size=limits.max_message_size,
            client_tls_context=client_context,
            connect_timeout=limits.connect_timeout,
            providers=providers,
            first_message_timeout=limits.first_message_timeout,
            header_timeout=limits.header_timeout,
            max_connections_per_source=limits.max_connections_per_source,
        )
        if self._pcap is not None:
            self.transports.tap = self._pcap.write
        self.transports.datagram_shortcut = self._retransmitted
        for position, listener in enumerate(self.listeners):
            try:
                if self.worker is not None:  # every worker reads the shared socket (udp only)
                    self.worker.adopt(self.transports, position)
                    continue
                await self.transports.listen(listener.transport, listener.host, listener.port)
            except (OSError, TransportError) as exc:
                await self.transports.close()
                await self.store.close()
                self._close_pcap()
                why = str(exc)
                if why.startswith("cannot listen on ") and ": " in why:  # said once, not twice
                    why = why.split(": ", 1)[1]
                raise ServerError(f"cannot listen on {listener}: {why}") from None
        self._expiry = asyncio.get_running_loop().create_task(self._expire_bindings())
        self.core.retry_after = self.profile.overload.retry_after
        udp_ports = {port for transport, _, port in self.addresses if transport == "udp"}
        transports = self.transports
        waiting = transports.backlog

        def queued() -> int:
            # the kernel's queues, asked of the sockets (cheap), else read from /proc (a table)
            sockets = transports.udp_sockets()
            octets = None if sockets is None else socket_receive_queue(sockets)
            return (udp_receive_queue(udp_ports) if octets is None else octets) + waiting.octets

        self.load = LoadMonitor(
            self.profile.overload.max_lag,
            on_change=self._overload,
            backlog=queued,
            max_backlog=self.profile.overload.max_backlog,
        )
        self.load.start()
        if self.qualifier is not None:
            self.transports.on_keepalive = self.qualifier.keepalive
            self.spawn(self.qualifier.run())
        from .pool import start_pool  # a pool's store (Redis): docs/deployment.rst

        self.pool = start_pool(self)
        self.plugins.hook.ims_server_started(server=self)
        self._fastreg = fast_register_for(self)
        self._state = "ready"
        log.info("subscribers: %s", self.subscriber_source or self.subscribers)
        log.info("%s", self.ready_line())
        if self.worker is not None:
            self.worker.attach(self)

    async def _start_metrics(self, host: str, port: int) -> None:
        """Metrics (``--metrics``): the registrar's and the router's store calls and the resolver's
        look-ups are timed, every finished transaction observed, ``/metrics`` and ``/healthz``
        served over HTTP."""
        metrics = self.metrics = Metrics(self)
        self.outcomes.observe = metrics.observe
        assert self.registrar is not None and self.proxying is not None
        self.registrar.bindings = timed_store(self.registrar.bindings, metrics)
        self.proxying.router.bindings = timed_store(self.proxying.router.bindings, metrics)
        self.resolver = timed_resolver(self.resolver, metrics)
        self._metrics_server = MetricsServer(metrics, self.health)
        await self._metrics_server.start(host, port)

    def health(self) -> tuple[int, str]:
        """``/healthz``: 200 ``ready`` while serving normally, 503 ``overloaded`` while overload
        control refuses new requests, 503 ``starting`` / ``stopping`` around those."""
        if self._state != "ready":
            return 503, self._state
        if self.core.overloaded:
            return 503, "overloaded"
        return 200, "ready"

    def binding_counts(self) -> tuple[int, int] | None:
        """Live bindings and AORs in the store, when the store can count them."""
        counts = getattr(self.store, "counts", None)
        if counts is None:
            return None
        try:
            result: tuple[int, int] = counts(self.clock())
        except StoreError as exc:
            log.warning("metrics: %s", exc)
            return None
        return result

    @property
    def metrics_url(self) -> str | None:
        """``http://HOST:PORT`` of ``/metrics`` once started, else ``None``."""
        server = self._metrics_server
        if server is None or server.address is None:
            return None
        host, port = server.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def _transport_providers(self) -> dict[str, TransportProvider]:
        """The transports plugins offer (``ims_register_transports``); every listener's must be known."""
        try:
            offered = collect_transports(self.plugins)
        except TransportError as exc:
            raise ServerError(f"plugins: {exc}") from None
        known = known_transports(offered)
        for listener in self.listeners:
            problem = unknown_transport(listener.transport, known)
            if problem is not None:
                raise ServerError(f"cannot listen on {listener}: {problem}")
        return {name: entry.provider for name, entry in offered.items()}

    def _overload(self, overloaded: bool) -> None:
        """The load monitor's verdict changed: new out-of-dialog requests get 503 while it lasts."""
        self.core.overloaded = overloaded
        if overloaded and self.load is not None:
            log.warning(
                "overloaded (event loop %.0f ms late, %d octets unread): new requests get 503 "
                "Retry-After %d",
                self.load.lag * 1000,
                self.load.queued,
                self.core.retry_after,
            )
        else:
            log.warning("load back to normal: %d requests were refused so far", self.core.counters.shed)

    async def _close_subscribers(self) -> None:
        """Close a subscriber store that has a ``close()`` (an HSS connection says DPR and waits
        for the DPA), before the tasks are cancelled; bounded, and a failure is only logged."""
        close = getattr(self.subscribers, "close", None)
        if not callable(close):
            return
        try:
            result = close()
            if inspect.isawaitable(result):
                await asyncio.wait_for(result, SUBSCRIBERS_CLOSE_WAIT)
        except Exception:  # the store's own problem: the server still stops
            log.exception("closing the subscriber store %s failed", self.subscribers)

    async def stop(self) -> None:
        """Tell the plugins, stop timers, close listeners, connections and the store."""
        self.plugins.hook.ims_server_stopping(server=self)
        self._state = "stopping"
        if self._metrics_server is not None:
            await self._metrics_server.stop()
            self._metrics_server = None
        if self.worker is not None:
            self.worker.detach()
        if self.load is not None:
            self.load.stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)
            self._expiry = None
        await self._close_subscribers()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.transports is not None:
            await self.transports.close()
        if self.pool is not None:  # its flows are gone: the other nodes answer 430 at once
            await self.pool.leave()
        if self.store is not None:
            await self.store.close()
        self._close_pcap()
        if self.transports is not None:
            counted = self.stats()["transport"]
            log.info(
                "imscore stopped: %s",
                ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in counted.items()),
            )
        else:
            log.info("imscore stopped")

    def _close_pcap(self) -> None:
        if self._pcap is not None:
            if self.transports is not None:
                self.transports.tap = None
            self._pcap.close()
            log.info("pcap: %d messages written to %s", self._pcap.written, self.pcap_path)
            self._pcap = None

    @property
    def addresses(self) -> list[tuple[str, str, int]]:
        """``(transport, host, port)`` actually bound (a port 0 listener shows its real port)."""
        return [] if self.transports is None else list(self.transports.listening)

    def ready_line(self) -> str:
        listening = " ".join(
            f"{t}:[{h}]:{p}" if ":" in h else f"{t}:{h}:{p}" for t, h, p in self.addresses
        )
        metrics = f", metrics {self.metrics_url}/metrics" if self.metrics_url else ""
        return (
            f"imscore {__version__} ready: listening on {listening} "
            f"(profile {self.profile.name}, domains {', '.join(self.profile.domains)}, "
            f"store {self.store_url}{metrics}; {describe()})"
        )

    # -- traffic -----------------------------------------------------------------------------------
    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def now(self) -> float:
        """The event loop's clock (transaction and ring timers run on it)."""
        return self._now()

    def emit(self, sends: list[Send[Flow]]) -> None:
        """Send what the core gave, then start whatever the proxy queued."""
        self._emit(sends)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine as a task the server cancels when it stops."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_message(self, message: Request | Response, flow: Flow) -> None:
        if self.qualifier is not None:
            self.qualifier.seen(flow)
        self._emit(self.core.receive(message, flow, flow.reliable, self._now()))
        if isinstance(message, Request):
            self._retransmissions.remember(message, flow, self.core.layer.find_server)
        while self.core.waiting:
            transaction, request = self.core.waiting.pop(0)
            self.defer(transaction, request, flow)

    def defer(
        self, transaction: Any, request: Request, flow: Flow, decide: Decide | None = None
    ) -> None:
        """Answer a deferred request (the registrar's, or one the proxy takes); ``decide`` stands
        for ``Registrar.register`` (imscore.server.fastreg passes what it made sure of)."""
        # started on this stack, a task only if it waits: the built-in stores never do, so a
        # REGISTER is answered without a task per request (see imscore.server.eager)
        answer = self._register(transaction, request, flow, decide)
        task = start_eagerly(answer, asyncio.get_running_loop())
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def remember_datagram(
        self, request: Request, flow: Flow, find: Callable[[Request], object]
    ) -> None:
        """File the datagram last looked up in the retransmission cache under the server
        transaction ``find`` gives for its ``request`` (see imscore.server.retransmit)."""
        self._retransmissions.remember(request, flow, find)

    def _retransmitted(self, data: bytes, flow: Flow) -> bool:
        """The transport's shortcut: a datagram that repeats the request of a live server
        transaction is absorbed by it without being parsed again; the common REGISTER datagram
        takes the specialised path (imscore.server.fastreg) when it is on."""
        transaction = self._retransmissions.lookup(data, flow)
        if transaction is None:
            fast = self._fastreg
            return fast is not None and fast.take(data, flow)
        if self.qualifier is not None:
            self.qualifier.seen(flow)
        self.retransmissions += 1
        self._emit(self.core.receive_retransmission(transaction, self._now()))
        return True

    async def _register(
        self, transaction: Any, request: Request, flow: Flow, decide: Decide | None = None
    ) -> None:
        """A deferred request: REGISTER and reg-event SUBSCRIBE go to the registrar (answer, send
        NOTIFYs); the proxy takes every other one."""
        started = self._now()
        try:
            response = await self._handle_deferred(transaction, request, flow, decide)
        except SipError as error:  # one guard: a header first read deep inside is still a status
            response = self._refuse(transaction, request, error)
        if response is not None and self.outcomes.active:
            source = source_of(flow.transport, flow.remote)
            now = self._now()
            self.outcomes.finished(registrar_outcome(request, response, source, now - started), now)

    def _forked(self, context: Any, response: Response) -> None:
        """The proxy sent the final response of a request it forked: its outcome."""
        if not self.outcomes.active:
            return
        now = self._now()
        request, server = context.request, context.server
        branches = len(context.branches)
        kind = "cancelled" if context.cancelled else ("fork" if branches > 1 else "routed")
        detail = f"{branches} branch{'es' if branches != 1 else ''}"
        source = source_of(server.flow.transport, server.flow.remote)
        outcome = proxy_outcome(
            request, response.status, response.reason, source, now - server.created_at, kind, detail
        )
        self.outcomes.finished(outcome, now)

    def proxy_answered(self, request: Request, response: Response, flow: Flow, started: float) -> None:
        """The proxy answered a request itself (refused it, or the server answered it as a UAS)."""
        if self.outcomes.active:
            now = self._now()
            kind = "answered" if response.status < 300 else "refused"
            outcome = proxy_outcome(
                request,
                response.status,
                response.reason,
                source_of(flow.transport, flow.remote),
                now - started,
                kind,
            )
            self.outcomes.finished(outcome, now)

    def _refuse(self, transaction: Any, request: Request, error: SipError) -> Response | None:
        """Answer a request whose handling raised ``error`` (a header that does not parse) with the
        error's status; when not even the response can be built, the request is dropped."""
        log.debug("%s from %s: %s", request.method, transaction.flow, error)
        if transaction.terminated:
            self.core.counters.parse_errors += 1
            return None
        response = self.core.refusal(request, error)
        if response is not None:
            self._emit(self.core.respond(transaction, response, self._now()))
        return response

    async def _handle_deferred(
        self, transaction: Any, request: Request, flow: Flow, decide: Decide | None = None
    ) -> Response | None:
        """Answer (or hand to the proxy) one deferred request; the registrar's final response,
        ``None`` when the proxy took the request (it reports its own outcomes). A REGISTER is
        decided by ``decide`` when given, else by ``Registrar.register``."""
        assert self.registrar is not None
        if self.proxying is not None and not self.proxying.is_registrar_request(request):
            await self.proxying.handle(transaction, request, flow)
            return None
        info = FlowInfo(flow.transport, flow.remote, flow.local, flow.connection)
        notes: tuple[tuple[Request, FlowInfo], ...] = ()
        try:
            if request.method == "SUBSCRIBE":
                host, port = flow.local
                host = f"[{host}]" if ":" in host else host
                contact = f"<sip:{host}:{port};transport={flow.transport}>"
                response, notes = await self.registrar.subscribe(request, info, contact, self.clock())
            else:
                register = self.registrar.register if decide is None else decide
                outcome = await register(request, info, self.clock())
                response, notes = outcome.response, outcome.notifications
        except SipError:
            raise  # the request's fault: its status (the guard in _register answers it)
        except StoreError as exc:  # the store is unreachable (Redis down): come back later
            log.warning("%s from %s: %s", request.method, flow.remote, exc)
            retry = ("Retry-After", self.core.retry_after)
            response = request.make_response(503, "Store unavailable", [retry], to_tag="e503")
        except Exception:  # a provider failed: answer 500 rather than leave the UE waiting
            log.exception("%s from %s failed", request.method, flow.remote)
            response = request.make_response(500, "Registrar error", to_tag="e500")
        if not transaction.terminated:
            self._emit(self.core.respond(transaction, response, self._now()))
        self._notify(notes)
        return response

    def notify(self, notes: Sequence[tuple[Request, FlowInfo]]) -> None:
        """Send reg-event NOTIFYs (a worker process's, for a change another one made)."""
        self._notify(notes)

    def _notify(self, notes: Sequence[tuple[Request, FlowInfo]]) -> None:
        """Send reg-event NOTIFYs, each on the flow of its subscription (the UE's own flow)."""
        registrar = self.registrar
        for notify, info in notes:
            flow = Flow(info.transport, info.local, info.remote, info.connection)

            def failed(status: int, notify: Request = notify) -> None:
                if registrar is not None and registrar.regevent.notify_failed(notify, status):
                    log.info("reg-event subscription %s ended: its NOTIFY got %s", notify.call_id,
                             status or "no answer")

            try:
                self._emit(
                    self.core.send_request(notify, flow, flow.reliable, self._now(), on_final=failed)
                )
            except Exception:  # the flow is gone or the request is refused: log, go on
                log.exception("cannot send NOTIFY to %s", info.remote)

    def _on_timer(self) -> None:
        self._timer = None
        self._emit(self.core.advance(self._now()))
        self._retransmissions.tidy()  # Timer J ended transactions: let their entries go
        # after a flood, give the memory back (once it is over: no cache entry of it left, no
        # text it parsed remembered)
        return_freed_memory(
            len(self.core.layer), (self._retransmissions.drop_ended, forget_recent_texts)
        )

    def _emit(self, sends: list[Send[Flow]]) -> None:
        transports = self.transports
        assert transports is not None
        for send in sends:
            try:
                if isinstance(send.message, Request):
                    transports.send(send.message, send.flow)
                else:  # a Response, or the SentResponse a server transaction re-sends
                    transports.send_response(send.message, send.flow)
            except TransportError as exc:
                log.info("cannot send on %s: %s", send.flow, exc)
                if send.transaction is not None:
                    self._emit(self.core.receive_transport_error(send.transaction, self._now()))
        if self.proxying is not None:
            self.proxying.drain()
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
            self.outcomes.flush(self._now())  # the summary of a flood of refusals that stopped
            try:
                notes = await self.registrar.expire(self.clock())
            except StoreError as exc:  # unreachable: the next sweep tries again
                log.warning("expiring bindings: %s", exc)
                continue
            except Exception:  # the store failed this once: log it, keep sweeping
                log.exception("expiring bindings failed")
                continue
            self._notify(notes)

    def stats(self) -> dict[str, Any]:
        """Counters of the transports and of the core, for logs and tests."""
        transport: dict[str, int] = {}
        if self.transports is not None:
            transport = self.transports.stats.as_dict()
            backlog = self.transports.backlog
            transport["udp_duplicates_dropped"] = backlog.duplicates
            transport["udp_backlog_dropped"] = backlog.dropped
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
