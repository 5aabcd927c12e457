"""``imscore bindings --watch``: the registrations of a store as a live table in a terminal.

Every ``interval`` seconds the store is read again and the screen redrawn in one write (cursor
home, the frame, clear to the end: no flicker). Under the table, the last changes: a device that
registered (``+``), refreshed its binding to another lifetime (``~``) or went away (``-``,
de-registered or expired), with the time it was seen.

The frame is plain text built by :func:`render` from two snapshots, so it is tested without a
terminal; :func:`watch` only reads, renders and writes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from imscore.registrar import StoredBinding

__all__ = ["Change", "changes", "render", "watch"]

CURSOR_HOME = "\x1b[H"
CLEAR_SCREEN = "\x1b[2J"
CLEAR_TO_END = "\x1b[J"
CLEAR_LINE_END = "\x1b[K"


@dataclass(frozen=True)
class Change:
    """A binding that appeared (``+``), changed lifetime (``~``) or went away (``-``)."""

    sign: str
    aor: str
    contact: str
    at: float
    note: str = ""

    def line(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.at))
        return f"{stamp} {self.sign} {self.aor}  {self.contact}{f'  ({self.note})' if self.note else ''}"


def _key(binding: StoredBinding) -> tuple[str, str]:
    return binding.aor, binding.uri


def changes(
    before: Sequence[StoredBinding], after: Sequence[StoredBinding], now: float
) -> list[Change]:
    """What happened between two reads of the store."""
    old = {_key(b): b for b in before}
    new = {_key(b): b for b in after if not b.expired(now)}
    out: list[Change] = []
    for key, binding in new.items():
        previous = old.get(key)
        agent = f"{binding.user_agent}" if binding.user_agent else ""
        if previous is None:
            out.append(Change("+", binding.aor, binding.uri, now, agent or "registered"))
        elif previous.expires_at != binding.expires_at:
            note = f"refreshed, expires in {binding.remaining(now)} s"
            out.append(Change("~", binding.aor, binding.uri, now, note))
    for key, binding in old.items():
        if key not in new:
            why = "expired" if binding.expires_at <= now else "de-registered or replaced"
            out.append(Change("-", binding.aor, binding.uri, now, why))
    return out


def render(
    bindings: Sequence[StoredBinding],
    recent: Sequence[Change],
    now: float,
    source: str,
    width: int = 120,
) -> str:
    """One frame: a header, a row per live binding (grouped by AOR), then the recent changes."""
    live = sorted((b for b in bindings if not b.expired(now)), key=lambda b: (b.aor, b.registered_at))
    aors = len({b.aor for b in live})
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    lines = [
        f"imscore bindings — {aors} AOR(s), {len(live)} binding(s) — {stamp} — {source}",
        "(Ctrl-C quits)",
        "",
        f"{'AOR':<34} {'CONTACT':<40} {'EXPIRES':>7}  {'FLOW':<22} USER-AGENT",
    ]
    previous_aor = None
    for binding in live:
        aor = binding.aor if binding.aor != previous_aor else ""
        previous_aor = binding.aor
        flow = binding.flow
        flow_text = "-" if flow is None else f"{flow.transport}:{flow.remote[0]}:{flow.remote[1]}"
        lines.append(
            f"{aor[:34]:<34} {binding.uri[:40]:<40} {binding.remaining(now):>6}s  {flow_text[:22]:<22} "
            f"{(binding.user_agent or '-')[:30]}"
        )
    if not live:
        lines.append("(no registrations)")
    lines += ["", "recent changes:"]
    lines += [change.line() for change in recent] or ["(none yet)"]
    return "\n".join(line[:width] + CLEAR_LINE_END for line in lines) + "\n"


async def watch(
    read: Callable[[], Awaitable[list[StoredBinding]]],
    out: TextIO,
    source: str,
    *,
    interval: float = 1.0,
    frames: int | None = None,
    clock: Callable[[], float] = time.time,
    width: int = 120,
    history: int = 12,
) -> None:
    """Read, render and draw until cancelled (or for ``frames`` frames)."""
    recent: deque[Change] = deque(maxlen=history)
    before: list[StoredBinding] | None = None
    drawn = 0
    while frames is None or drawn < frames:
        now = clock()
        current = await read()
        if before is not None:
            for change in changes(before, current, now):
                recent.appendleft(change)
        before = [b for b in current if not b.expired(now)]
        frame = render(current, list(recent), now, source, width)
        out.write((CLEAR_SCREEN if drawn == 0 else "") + CURSOR_HOME + frame + CLEAR_TO_END)
        out.flush()
        drawn += 1
        if frames is not None and drawn >= frames:
            break
        await asyncio.sleep(interval)
