"""Run a coroutine at once, on the caller's stack, and make it a task only if it has to wait.

The server answers each REGISTER and SUBSCRIBE in a coroutine because the subscriber and binding
stores are async providers (a networked store may wait). The built-in stores never wait (memory, and
SQLite queries run on the event loop), so creating an :class:`asyncio.Task` per request — scheduling it,
running it in the next loop iteration, then its done callbacks — is pure overhead on the hot path. This
is what Python 3.12's eager task factory does, for one coroutine at a time and on Python 3.11.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["start_eagerly"]


def start_eagerly(
    coroutine: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop
) -> asyncio.Task[None] | None:
    """Run ``coroutine`` until it finishes or first waits.

    :returns: ``None`` when it finished (its exceptions propagate to the caller, as a plain call's
        would), else the task that runs the rest of it.
    """
    try:
        waiting_on = coroutine.send(None)
    except StopIteration:
        return None
    return loop.create_task(_Resumed(coroutine, waiting_on))


class _Resumed(Coroutine[Any, Any, None]):
    """A coroutine that has already run up to its first wait, as a task can take it over: the task's
    first step gets what it waits on; later steps, and anything the task throws in (cancellation,
    even before that first step), go to the coroutine itself."""

    def __init__(self, coroutine: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        self._coroutine = coroutine
        self._waiting_on = waiting_on
        self._started = False

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            return self._waiting_on
        return self._coroutine.send(value)

    def throw(self, typ: Any, value: Any = None, traceback: Any = None) -> Any:
        self._started = True
        if value is None and traceback is None:
            return self._coroutine.throw(typ)
        return self._coroutine.throw(typ, value, traceback)

    def close(self) -> None:
        self._coroutine.close()

    def __await__(self) -> Generator[Any, None, None]:
        raise TypeError("a resumed coroutine is run by its task only")
