"""Run a coroutine at once, on the caller's stack, and make it a task only if it has to wait.

The server answers each REGISTER and SUBSCRIBE in a coroutine because the subscriber and binding
stores are async providers (a networked store may wait). The built-in stores never wait (memory, and
SQLite queries run on the event loop), so creating an :class:`asyncio.Task` per request — scheduling it,
running it in the next loop iteration, then its done callbacks — is pure overhead on the hot path. This
is what Python 3.12's eager task factory does, for one coroutine at a time and on Python 3.11.
"""

from __future__ import annotations

import asyncio
import types
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
    return loop.create_task(_finish(coroutine, waiting_on))


async def _finish(coroutine: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    await _resume(coroutine, waiting_on)


@types.coroutine
def _resume(coroutine: Coroutine[Any, Any, None], waiting_on: Any) -> Generator[Any, Any, None]:
    """Hand the task what ``coroutine`` waits on (a future, or ``None`` for a bare yield), then pass
    results and exceptions (cancellation included) back into it until it returns: ``yield from``
    on a coroutine that has already started."""
    while True:
        try:
            sent = yield waiting_on
        except BaseException as exc:  # noqa: BLE001 - thrown in by the task (e.g. CancelledError)
            try:
                waiting_on = coroutine.throw(exc)
            except StopIteration:
                return
        else:
            try:
                waiting_on = coroutine.send(sent)
            except StopIteration:
                return
