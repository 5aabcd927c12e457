"""One UDP server spread over worker processes (``imscore serve --workers N``).

A Python process uses one core. With ``--workers N`` the parent process binds the UDP sockets and
starts ``N`` workers (each a whole :class:`~imscore.server.runtime.Server`), which inherit them. Every
worker reads the shared sockets itself, as Kamailio's UDP children do, and answers on them; each
datagram belongs to the one worker its Call-ID names (:func:`worker_for`, :func:`worker_of_datagram`),
and a worker that reads another's datagram hands it to that worker over a local datagram socket,
with its source address (see :mod:`imscore.transport.relay`). Everything that belongs to one
Call-ID therefore meets in one process: a request, its retransmissions, its CANCEL and ACK, the
responses to what a worker sent on that call, the challenge and the REGISTER that answers it. The
parent reads no datagram: once every worker is ready it tells them to serve and closes its copies of
the sockets; from then on it passes reg-event news on, and watches signals and its workers.
(``SO_REUSEPORT`` alone would not do: the kernel spreads datagrams by their addresses, and a load
generator that sends every user's REGISTERs from one port would land all of them on one worker.)

What the workers share, and how:

- **bindings**: the store, which must be one every process can open (the SQLite file, or a plugin's
  store): ``memory:`` is refused at start-up;
- **nonces**: one secret drawn by the parent; each worker binds its nonces to its number, so the
  nonce-count of a nonce (RFC 2617 replay protection) is always checked by the worker that made it. A
  UE that reuses a nonce under another Call-ID is simply challenged again;
- **reg-event**: a worker that changes an AOR's bindings tells the parent, which tells the others; a
  worker holding a subscription for that AOR reads the store and sends the NOTIFY. The line says
  why when the store cannot (an HSS's RTR: ``ended rejected AOR``, :mod:`imscore.registrar.news`),
  so the NOTIFY is the one the worker that made the change would have sent;
- **qualification**: only worker 0 pings contacts, with Call-IDs that come back to it;
- **an HSS** (``--subscribers cx://``): each worker is a Diameter peer of its own (Origin-Host
  ``w<index>.<origin_host>``, one Server-Name), and reads whether a set is registered from the
  binding store (:mod:`imscore.diameter.sharing`), so Cx is not refused here.

A worker never outlives its parent: it asks the kernel for SIGTERM when the parent dies
(:func:`die_with_parent`, Linux's ``PR_SET_PDEATHSIG``), and, on every platform, takes the end of its
control channel (the parent's end is closed by the kernel when the parent dies, even by SIGKILL) as
SIGTERM: it stops as on SIGTERM, closing its store, and releases the shared UDP ports.

Limits, checked at start-up where they can be: only UDP listeners (a TCP or TLS connection lives in
one process), no ``--pcap``. Digest-AKA sequence numbers are kept per worker, so a SIM may answer a
worker's challenge with a synchronisation failure (AUTS), after which that worker re-synchronises.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import secrets
import selectors
import signal
import socket
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from imscore.profile import Listener
from imscore.registrar.news import ORDINARY, SetNews, parse_worker_line, worker_line
from imscore.transport.relay import INBOX_BUFFER, SharedUdp

if TYPE_CHECKING:
    from imscore.transport import Transports

    from .runtime import Server

__all__ = ["WorkerSetup", "die_with_parent", "serve_workers", "worker_for", "worker_of_datagram"]

log = logging.getLogger("imscore.server")

#: the Call-ID header line in a header section (long or compact form, any case)
_CALL_ID_RE: Final = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
#: receive buffer of each shared UDP socket (the kernel caps it at net.core.rmem_max)
UDP_RECEIVE_BUFFER: Final = 8 * 1024 * 1024
#: the line the parent sends every worker once all are ready: read the shared sockets from now on
SERVE: Final = b"serve"
#: octets of control lines held for a channel that is full, beyond which further lines are dropped
MAX_UNSENT: Final = 1024 * 1024
#: seconds the workers have to start, and to stop before they are killed
START_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 5.0
#: prctl(2) option: the signal the kernel sends this process when its parent ends (Linux)
PR_SET_PDEATHSIG: Final = 1


def die_with_parent(parent: int, signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent ends (Linux's
    ``prctl(PR_SET_PDEATHSIG)``), then make sure the parent (pid ``parent``) has not already ended
    before the request took effect. Returns whether the kernel took the request: ``False`` on other
    platforms, where the control channel's end alone tells a worker its parent is gone.
    """
    taken = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            taken = libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
        except (OSError, AttributeError):
            taken = False
    if os.getppid() != parent:  # the parent died between fork and prctl: no signal will come
        os.kill(os.getpid(), signum)
    return taken


def worker_for(call_id: bytes, workers: int) -> int:
    """The worker (0 … workers-1) that serves a Call-ID."""
    return zlib.crc32(call_id.strip()) % workers


def worker_of_datagram(data: bytes, workers: int) -> int:
    """The worker a datagram goes to: by its Call-ID, read straight off the octets; worker 0 for
    anything without one (keep-alives, garbage: it answers or drops them as one process would)."""
    end = data.find(b"\r\n\r\n")
    found = _CALL_ID_RE.search(data, 0, len(data) if end < 0 else end)
    return 0 if found is None else worker_for(found.group(1), workers)


def send_lines(sock: socket.socket, unsent: bytearray, lines: bytes) -> bool:
    """Write whole lines on a non-blocking control channel, after what an earlier call could not
    write (``unsent``, which keeps what this one cannot, up to :data:`MAX_UNSENT` octets: beyond that
    ``lines`` are dropped whole, never cut). Returns ``False`` when the channel is gone."""
    if len(unsent) + len(lines) > MAX_UNSENT:
        lines = b""  # (the channel has been full for a long while: these news are lost)
    unsent += lines
    if not unsent:
        return True
    try:
        sent = sock.send(unsent)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        unsent.clear()
        return False
    del unsent[:sent]
    return True


def read_lines(sock: socket.socket, partial: bytearray) -> list[bytes] | None:
    """The whole lines a non-blocking control channel has for us (``partial`` keeps the end of an
    unfinished one); ``None`` when the other side has closed it."""
    try:
        chunk = sock.recv(65536)
    except (BlockingIOError, InterruptedError):
        return []
    except OSError:
        chunk = b""
    if not chunk:
        return None
    partial += chunk
    *lines, rest = bytes(partial).split(b"\n")
    partial[:] = rest
    return lines


@dataclass
class WorkerSetup:
    """What a worker process gets from its parent.

    :param index: its number, 0 … ``count`` - 1.
    :param count: how many workers there are.
    :param udp: the shared UDP sockets, one per listener, in the listeners' order.
    :param inbox: its end of its inbox (datagrams of its Call-IDs the other workers read).
    :param outboxes: per worker, the sending end of that worker's inbox (``None`` for its own).
    :param control: its end of the line-based channel to the parent (``ready``, ``serve``,
        ``changed AOR``, ``ended EVENT AOR``).
    :param nonce_secret: the Digest nonce secret all workers share.
    :param parent_death_signal: whether the kernel sends this worker SIGTERM when its parent ends
        (set in the worker by :func:`die_with_parent`).
    """

    index: int
    count: int
    udp: Sequence[socket.socket]
    inbox: socket.socket
    outboxes: Sequence[socket.socket | None]
    control: socket.socket
    nonce_secret: bytes
    parent_death_signal: bool = False
    _stopping: bool = False
    _shared: SharedUdp | None = None

    def accepts(self, call_id: str) -> bool:
        """Whether answers on this Call-ID come back to this worker."""
        return worker_for(call_id.encode("utf-8", "surrogateescape"), self.count) == self.index

    # -- in the worker's event loop ---------------------------------------------------------------
    def adopt(self, transports: Transports, position: int) -> None:
        """Serve the ``position``-th listener (a UDP one) on its shared socket; it is read once the
        parent says every worker is ready (``serve``)."""
        if self._shared is None:
            count = self.count
            self._shared = SharedUdp(
                self.index, lambda data: worker_of_datagram(data, count), self.inbox, self.outboxes
            )
        self._shared.adopt(transports, position, self.udp[position])

    def attach(self, server: Server) -> None:
        """Wire a started server to the others: nonce binding, reg-event news, qualification's
        Call-IDs; then tell the parent this worker is ready."""
        registrar = server.registrar
        if registrar is not None:
            registrar.authenticator.nonce_extra = f"worker {self.index}".encode()
            registrar.on_change = self._tell_changed
        if server.qualifier is not None:
            server.qualifier.accept_call_id = self.accepts
        self.control.setblocking(False)
        self._server = server
        self._lines = bytearray()
        self._unsent = bytearray()
        self._news: list[bytes] = []
        asyncio.get_running_loop().add_reader(self.control.fileno(), self._control_readable)
        self._send(b"ready\n")

    def detach(self) -> None:
        """Stop listening to the parent (the server is stopping). A further SIGTERM or SIGINT (the
        parent's, the kernel's on the parent's death) is ignored from now on: it would end the
        worker half-way through closing its store."""
        self._stopping = True
        with contextlib.suppress(ValueError):  # (not in the main thread: nothing to protect)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.control.fileno())
            asyncio.get_running_loop().remove_writer(self.control.fileno())
        if self._shared is not None:
            self._shared.stop()
            log.info(
                "worker %d: %d datagrams handed to the workers they belong to, %d taken from them; "
                "woken %d times for a datagram another worker read",
                self.index,
                self._shared.handed_over,
                self._shared.taken_in,
                self._shared.empty_wakeups,
            )

    def _orphaned(self) -> None:
        if not self._stopping:
            os.kill(os.getpid(), signal.SIGTERM)

    def _tell_changed(self, aor: str, news: SetNews = ORDINARY) -> None:
        # the news of one turn of the loop goes in one write (one wake-up of the parent for a
        # batch of registrations, not one each)
        self._news.append(worker_line(aor, news) + b"\n")
        if len(self._news) == 1:
            asyncio.get_running_loop().call_soon(self._flush_news)

    def _flush_news(self) -> None:
        news, self._news = self._news, []
        self._send(b"".join(news))

    def _send(self, lines: bytes) -> None:
        waiting = bool(self._unsent)
        if not send_lines(self.control, self._unsent, lines):  # news lost, serving goes on
            log.info("worker %d: cannot tell the parent %r: it is gone", self.index, lines[:60])
        elif self._unsent and not waiting:  # the channel is full: the rest once it has room
            asyncio.get_running_loop().add_writer(self.control.fileno(), self._writable)

    def _writable(self) -> None:
        if not send_lines(self.control, self._unsent, b"") or not self._unsent:
            asyncio.get_running_loop().remove_writer(self.control.fileno())

    def _control_readable(self) -> None:
        lines = read_lines(self.control, self._lines)
        if lines is None:  # the parent has ended (killed, maybe): stop as on SIGTERM
            log.warning("worker %d: the parent process is gone: stopping", self.index)
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.control.fileno())
            # the kernel's parent-death signal is on its way (one SIGTERM is enough); without it,
            # or should it not come, the worker sends itself one
            delay = 1.0 if self.parent_death_signal else 0.0
            asyncio.get_running_loop().call_later(delay, self._orphaned)
            return
        registrar = self._server.registrar
        for line in lines:
            if line == SERVE:
                if self._shared is not None:
                    self._shared.start()
                continue
            found = parse_worker_line(line)
            if found is not None and registrar is not None:
                aor, news = found
                if registrar.regevent.watches(aor):  # (most changes concern nobody watching here)
                    self._server.spawn(self._changed_elsewhere(aor, news))

    async def _changed_elsewhere(self, aor: str, news: SetNews) -> None:
        registrar = self._server.registrar
        if registrar is None:
            return
        try:
            notes = await registrar.changed_elsewhere(aor, self._server.clock(), news)
        except Exception:  # the store failed this once: the next change will tell again
            log.exception("worker %d: reading %s after another worker's change failed", self.index, aor)
            return
        self._server.notify(notes)


# --------------------------------------------------------------------------------------------------
# The parent
# --------------------------------------------------------------------------------------------------
def check_workers(
    workers: int, listeners: Sequence[Listener], store_url: str, pcap: object
) -> str | None:
    """Why these settings cannot be served by ``workers`` processes, or ``None`` when they can."""
    if workers < 1:
        return f"expected a number of worker processes >= 1, got {workers}"
    if workers == 1:
        return None
    shared = [f"{lst.transport}:{lst.host}:{lst.port}" for lst in listeners if lst.transport != "udp"]
    if shared:
        return (
            f"only UDP listeners can be shared by worker processes; {', '.join(shared)} cannot "
            "(a connection lives in one process): listen on UDP only (e.g. --listen "
            "udp:127.0.0.1:5060), or run one process"
        )
    if store_url == "memory:" or store_url == "memory":
        return (
            "the memory: store lives in one process and the workers must share their bindings: use "
            "the SQLite store (the default, or --store sqlite:PATH) or a plugin's shared store"
        )
    if pcap is not None:
        return "--pcap records one process: run without --workers to capture"
    return None


@dataclass
class _Worker:
    index: int
    pid: int
    control: socket.socket
    lines: bytearray
    ready: bool = False
    #: control lines not yet written to it (its channel was full)
    unsent: bytearray = field(default_factory=bytearray)


def _bind(listener: Listener) -> socket.socket:
    host = listener.host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        sock.bind((host, listener.port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def serve_workers(
    workers: int,
    listeners: Sequence[Listener],
    build: Callable[[WorkerSetup], Server],
) -> int:
    """Bind the UDP listeners, fork ``workers`` processes that each run ``build(setup)`` and read
    them, tell them to serve once all are ready, and pass reg-event news between them until SIGTERM
    or SIGINT. Returns the exit status: 0 after a clean stop, that of a worker which failed to start
    (its error is on stderr), 1 when a worker died while serving.

    :raises OSError: a listener cannot be bound.
    """
    udp: list[socket.socket] = []
    try:
        for listener in listeners:
            udp.append(_bind(listener))
    except OSError as exc:
        for sock in udp:
            sock.close()
        raise OSError(f"cannot listen on {listener}: {exc.strerror or exc}") from None
    secret = secrets.token_bytes(32)
    # per worker, its inbox: (the end every other worker sends on, the end it reads)
    inboxes = [_inbox_pair() for _ in range(workers)]
    addresses = [_spelled(sock) for sock in udp]
    family: list[_Worker] = []
    for index in range(workers):
        control_parent, control_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        outboxes = [None if i == index else sending for i, (sending, _) in enumerate(inboxes)]
        setup = WorkerSetup(
            index, workers, udp, inboxes[index][1], outboxes, control_child, secret
        )
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            setup.parent_death_signal = die_with_parent(parent)
            for other in family:
                other.control.close()
            control_parent.close()
            for i, (sending, reading) in enumerate(inboxes):
                if i != index:
                    reading.close()
                else:
                    sending.close()
            os._exit(_worker_main(setup, build))
        control_child.close()
        control_parent.setblocking(False)
        family.append(_Worker(index, pid, control_parent, bytearray()))
    # the workers read the sockets and the inboxes; the parent keeps none of them
    for sock in udp:
        sock.close()
    for sending, reading in inboxes:
        sending.close()
        reading.close()
    return _Parent(addresses, family).run()


def _inbox_pair() -> tuple[socket.socket, socket.socket]:
    """A worker's inbox: a datagram socket pair, ``(sending end, reading end)``, with room for a
    burst (see :mod:`imscore.transport.relay`)."""
    sending, reading = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError):
        sending.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, INBOX_BUFFER)
        reading.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, INBOX_BUFFER)
    return sending, reading


def _worker_main(setup: WorkerSetup, build: Callable[[WorkerSetup], Server]) -> int:
    """A worker process: its own server on the shared sockets, until SIGTERM."""
    from imscore.server.gctune import tune_for_serving

    from .runtime import ServerError, run_until_signalled

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    prefix = logging.Formatter(f"%(asctime)s %(levelname)s %(name)s [worker {setup.index}]: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(prefix)
    try:
        server = build(setup)
        tune_for_serving()
        asyncio.run(run_until_signalled(server))
    except ServerError as exc:
        print(f"imscore: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 0
    except Exception:
        log.exception("worker %d failed", setup.index)
        return 1
    finally:
        logging.shutdown()
    return 0


class _Parent:
    """The parent's loop: reg-event news between the workers, signals, deaths (no datagram)."""

    def __init__(self, addresses: list[str], family: list[_Worker]) -> None:
        self.addresses = addresses
        self.family = family
        self.count = len(family)
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.status = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # -- life ------------------------------------------------------------------------------------
    def run(self) -> int:
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)}
        old_fd = signal.set_wakeup_fd(self._wake_w.fileno())
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_stop_signal)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the loop to reap
        try:
            self.selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
            for worker in self.family:
                self.selector.register(worker.control, selectors.EVENT_READ, ("control", worker))
            if self._wait_ready():
                for worker in self.family:
                    self._tell(worker, SERVE + b"\n")
                addresses = " ".join(self.addresses)
                pids = ", ".join(str(w.pid) for w in self.family)
                log.info(
                    "ready: listening on %s with %d worker processes (pids %s)",
                    addresses,
                    self.count,
                    pids,
                )
                self._serve()
        finally:
            self._stop_all()
            signal.set_wakeup_fd(old_fd)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.selector.close()
            for sock in (self._wake_r, self._wake_w):
                sock.close()
            for worker in self.family:
                worker.control.close()
        return self.status

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while not all(w.ready for w in self.family):
            if self.stopping or self._reap():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                log.error("worker processes not ready after %.0f s", START_TIMEOUT)
                self.status = 1
                return False
            self._turn(min(left, 0.5))
        return True

    def _serve(self) -> None:
        while not self.stopping:
            self._turn(1.0)
            if self._reap():
                return

    def _reap(self) -> bool:
        """Whether a worker has ended (the whole server then stops)."""
        for worker in self.family:
            if worker.pid == 0:
                continue
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = worker.pid, 0
            if pid == 0:
                continue
            worker.pid = 0
            code = os.waitstatus_to_exitcode(status)
            if not worker.ready:  # it could not start: its error is on stderr; exit as it did
                self.status = code if code > 0 else 1
            else:
                log.error("worker %d ended (exit status %d): stopping the server", worker.index, code)
                self.status = 1
            self.stopping = True
            return True
        return False

    def _stop_all(self) -> None:
        for worker in self.family:
            if worker.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self.family:
            while worker.pid:
                pid, _ = os.waitpid(worker.pid, os.WNOHANG)
                if pid:
                    worker.pid = 0
                elif time.monotonic() > deadline:
                    log.warning("worker %d did not stop in %.0f s: killed", worker.index, STOP_TIMEOUT)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGKILL)
                    os.waitpid(worker.pid, 0)
                    worker.pid = 0
                else:
                    time.sleep(0.02)

    # -- one turn --------------------------------------------------------------------------------
    def _turn(self, timeout: float) -> None:
        try:
            events = self.selector.select(timeout)
        except InterruptedError:
            return
        for key, mask in events:
            kind, worker = key.data
            if kind == "control":
                if mask & selectors.EVENT_READ:
                    self._control(worker)
                if mask & selectors.EVENT_WRITE:
                    self._tell(worker, b"")
            else:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(4096):
                        pass

    def _control(self, worker: _Worker) -> None:
        lines = read_lines(worker.control, worker.lines)
        if lines is None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(worker.control)
            return
        news = []
        for line in lines:
            if line == b"ready":
                worker.ready = True
            elif parse_worker_line(line) is not None:  # news: passed on as it came, in one write
                news.append(line + b"\n")
        if news:
            told = b"".join(news)
            for other in self.family:
                if other is not worker:
                    self._tell(other, told)

    def _tell(self, worker: _Worker, lines: bytes) -> None:
        """Write lines to a worker, watching its channel for room while some wait."""
        waiting = bool(worker.unsent)
        send_lines(worker.control, worker.unsent, lines)  # (gone: _reap will tell)
        if bool(worker.unsent) != waiting:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if worker.unsent else 0)
            with contextlib.suppress(KeyError, ValueError):
                self.selector.modify(worker.control, events, ("control", worker))


def _spelled(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"udp:[{host}]:{port}" if ":" in host else f"udp:{host}:{port}"
