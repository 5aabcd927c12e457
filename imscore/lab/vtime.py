"""Virtual time: an asyncio event loop whose clock jumps to the next timer instead of waiting.

:class:`VirtualTimeLoop` is an ordinary :class:`asyncio.SelectorEventLoop` with two changes: its
:meth:`~VirtualTimeLoop.time` reads a virtual clock, and its selector never blocks — asked to wait
``t`` seconds for I/O, it moves the clock ``t`` seconds on and reports nothing ready. Timers
(``call_later``, ``asyncio.sleep``, the server's transaction and ring timers) therefore fire in the
order and at the virtual times they would in real time, and a 60-second hunt takes no wall time.
Nothing in a virtual run may wait on real I/O: the lab's network is in-process
(:mod:`imscore.lab.network`).

A run that waits with nothing scheduled would wait forever; the loop raises :class:`Stalled`
instead, naming the virtual time.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

__all__ = ["Stalled", "VirtualClock", "VirtualTimeLoop"]


class Stalled(RuntimeError):
    """The virtual run waits for something that can never happen (no timer, nothing ready)."""


class VirtualClock:
    """Seconds of virtual time; starts at ``start``."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start


class _JumpingSelector(selectors.SelectSelector):
    """A selector for a loop with no real I/O: ``select(t)`` advances the clock by ``t``."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise Stalled(f"virtual time {self.clock.now:.3f} s: nothing scheduled, nothing ready")
        if timeout > 0:
            self.clock.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a :class:`VirtualClock` (see the module docstring)."""

    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.clock = clock or VirtualClock()
        super().__init__(_JumpingSelector(self.clock))

    def time(self) -> float:
        return self.clock.now

    def run(self, coroutine: Any) -> Any:
        """Run ``coroutine`` to completion on this loop and return its result."""
        return self.run_until_complete(coroutine)
