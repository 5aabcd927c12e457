"""The news one process sends the others when it changed an implicit set's bindings, and why.

A reg-event subscription is held by the process that took its SUBSCRIBE; the bindings it watches
may be changed by another worker (``serve --workers N``: a line to the parent, which passes it on,
:mod:`imscore.server.workers`) or another node of a pool (a message on the set's Redis channel,
:mod:`imscore.registrar.regevent_pool`). Most changes need no reason: the process holding the
subscription reads the set again and works out each contact's event as the writer did
(``registered``, ``refreshed``, ``shortened``; ``expired`` for a binding past its time,
``unregistered`` for one taken away; ``Subscription-State: terminated;reason=deactivated`` once
none is left). One cannot be read back from the store: the network ended the registration (an
HSS's RTR, TS 24.229 §5.4.1.5), after which every contact is ``terminated`` with ``rejected`` or
``deactivated`` and the subscription ends with that reason (RFC 3680 §5.1, RFC 6665 §4.2.2). So
the news says that much (:class:`SetNews`), and the other processes NOTIFY as the writer's did —
not ``unregistered``/``deactivated`` after an RTR, Kamailio's issue 4296.

Encodings (both readable by a process that predates the reason, and both read in the old form):

- a worker's line (:func:`worker_line`): ``changed AOR`` for an ordinary change, as before, and
  ``ended EVENT AOR`` when the network ended it;
- a pool's message (:func:`pool_message`): the writer's origin token, as before, followed by
  `` ended=EVENT`` when the network ended it. Fields are ``name=value`` words after the token; one
  not known here is ignored, so a later field does not break this version.

An ``EVENT`` other than those of :data:`ENDINGS` (a garbled line, a newer node's reason) makes an
ordinary change: the watcher reads the set and hears what any removal says, never a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .model import StoredBinding
    from .store import BindingStore

__all__ = [
    "ENDINGS",
    "ORDINARY",
    "AnnouncingStore",
    "ChangeListener",
    "SetNews",
    "parse_pool_message",
    "parse_worker_line",
    "pool_message",
    "save_with_news",
    "worker_line",
]

#: the events with which the network ends a registration: the contacts' ``event`` (RFC 3680 §5.1)
#: and the ``Subscription-State`` reason (RFC 6665 §4.2.2) both; others are not carried
ENDINGS: Final = frozenset({"rejected", "deactivated", "probation"})
#: the verbs of a worker's news line
CHANGED: Final = b"changed"
ENDED: Final = b"ended"


@dataclass(frozen=True)
class SetNews:
    """Why a set's bindings changed, as much as a watcher in another process needs.

    :param ended: the network ended the set's registration with this event (one of
        :data:`ENDINGS`): every subscription of the set gets a final NOTIFY with each contact it
        knew ``terminated`` with ``event=ended``, and ``Subscription-State: terminated;reason=
        ended``. ``None``: an ordinary change (a REGISTER, a de-registration, an expiry), which
        the watcher's process reads back from the store.
    """

    ended: str | None = None

    def __post_init__(self) -> None:
        if self.ended is not None and self.ended not in ENDINGS:
            raise ValueError(f"not an ending event: {self.ended!r} (one of {sorted(ENDINGS)})")

    @property
    def ordinary(self) -> bool:
        """Whether the watcher reads the set back (no ending to carry)."""
        return self.ended is None


#: an ordinary change
ORDINARY: Final = SetNews()


def _ending(value: str) -> SetNews:
    return SetNews(value) if value in ENDINGS else ORDINARY


def worker_line(aor: str, news: SetNews = ORDINARY) -> bytes:
    """The line a worker sends the parent (without its ``\\n``): ``changed AOR`` or
    ``ended EVENT AOR``."""
    raw = aor.encode("utf-8", "surrogateescape")
    if news.ended is None:
        return CHANGED + b" " + raw
    return ENDED + b" " + news.ended.encode() + b" " + raw


def parse_worker_line(line: bytes) -> tuple[str, SetNews] | None:
    """The AOR and news of a worker's line; ``None`` when the line is no news (``ready``, …) or
    names no AOR."""
    verb, _, rest = line.partition(b" ")
    if verb == CHANGED:
        aor, news = rest, ORDINARY
    elif verb == ENDED:
        event, _, aor = rest.partition(b" ")
        news = _ending(event.decode("ascii", "replace"))
    else:
        return None
    if not aor:
        return None
    return aor.decode("utf-8", "surrogateescape"), news


def pool_message(origin: str, news: SetNews = ORDINARY) -> str:
    """What a pool node publishes on the set's channel: its origin token, and the ending if any."""
    return origin if news.ended is None else f"{origin} ended={news.ended}"


def parse_pool_message(data: str) -> tuple[str, SetNews]:
    """The writer's origin token and the news of a pool message (an older node's bare token is an
    ordinary change)."""
    origin, *fields = data.split(" ")
    news = ORDINARY
    for item in fields:
        name, _, value = item.partition("=")
        if name == "ended":
            news = _ending(value)
    return origin, news


@runtime_checkable
class AnnouncingStore(Protocol):
    """A binding store whose writes are themselves the news (Redis: the write and its message are
    one script, :mod:`imscore.registrar.redis_store`), so the reason goes with the write."""

    async def save_with_news(
        self, aor: str, bindings: Sequence[StoredBinding], news: SetNews
    ) -> None:
        """:meth:`~imscore.registrar.store.BindingStore.save`, its news saying ``news``."""
        ...


async def save_with_news(
    store: BindingStore, aor: str, bindings: Sequence[StoredBinding], news: SetNews
) -> None:
    """Save ``aor``'s ``bindings``; a store that announces its writes says ``news`` with this one
    (the others' news is told by the caller, :attr:`~imscore.registrar.register.Registrar.on_change`)."""
    if not news.ordinary and isinstance(store, AnnouncingStore):
        await store.save_with_news(aor, bindings, news)
    else:
        await store.save(aor, bindings)


class ChangeListener(Protocol):
    """Told of each change this process made to a set's bindings
    (:attr:`~imscore.registrar.register.Registrar.on_change`), with its news."""

    def __call__(self, aor: str, news: SetNews = ...) -> None:
        """``aor``'s bindings changed; ``news`` why (:data:`ORDINARY` when not given)."""
        ...
