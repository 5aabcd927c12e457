"""A recording TCP relay for Diameter, for the interop tests (tests/test_kamailio_icscf.py).

:class:`DiameterRelay` listens on a free loopback port in front of a Diameter server (``imscore
hss``): it copies both directions unchanged and keeps every whole message (cut by its header's
length, :class:`~imscore.diameter.framer.StreamFramer`) with its direction, so that a test can
decode what a peer really sent and what it was answered. The octets of tests/data/cdp/ were
recorded with it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from imscore.diameter.codec import Message, decode_message
from imscore.diameter.framer import FramingError, StreamFramer

LOOPBACK = "127.0.0.1"

__all__ = ["DiameterRelay", "Recorded"]


@dataclass(frozen=True)
class Recorded:
    """One whole Diameter message the relay copied."""

    #: ``"up"`` (client to server, e.g. Kamailio's cdp to the HSS) or ``"down"``
    direction: str
    #: its octets, exactly as sent
    octets: bytes
    #: when the relay had it whole (``time.monotonic()``)
    when: float

    def decode(self) -> Message:
        """The message, decoded by imscore's codec."""
        return decode_message(self.octets)


class DiameterRelay:
    """A recording TCP relay on ``127.0.0.1:port`` in front of ``upstream``; a daemon thread per
    direction and connection. Use as a context manager, or :meth:`start` and :meth:`close`."""

    def __init__(
        self, upstream: tuple[str, int], drop: Callable[[Recorded], bool] | None = None
    ) -> None:
        """``drop``: messages for which it is true are recorded but not passed on (an HSS that
        never answers); with it, only whole messages are passed on."""
        self.upstream = upstream
        self.drop = drop
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._recorded: list[Recorded] = []
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="diameter-relay", daemon=True)

    def start(self) -> DiameterRelay:
        """Start accepting; returns self."""
        self._thread.start()
        return self

    def __enter__(self) -> DiameterRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def recorded(self) -> list[Recorded]:
        """A copy of the messages copied so far, in the order they were whole."""
        with self._lock:
            return list(self._recorded)

    def messages(self, direction: str | None = None) -> list[Message]:
        """The decoded messages (of one direction, when given)."""
        return [r.decode() for r in self.recorded if direction in (None, r.direction)]

    def wait_for(self, check: Callable[[list[Message]], bool], timeout: float = 10.0) -> bool:
        """Poll until ``check(all decoded messages)`` is true (bounded by ``timeout``); whether
        it became true."""
        deadline = time.monotonic() + timeout
        while not check(self.messages()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._closed.set()
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            for source, sink, direction in ((client, server, "up"), (server, client, "down")):
                threading.Thread(
                    target=self._pump, args=(source, sink, direction), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        framer = StreamFramer()
        framing = True
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            if framing:
                try:
                    whole = framer.feed(data)
                except FramingError:
                    framing = False  # not Diameter any more: keep copying, stop recording
                    whole = []
                now = time.monotonic()
                records = [Recorded(direction, octets, now) for octets in whole]
                with self._lock:
                    self._recorded += records
                if self.drop is not None and framing:
                    data = b"".join(r.octets for r in records if not self.drop(r))
            try:
                sink.sendall(data)
            except OSError:
                return
