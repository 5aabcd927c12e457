"""The S-CSCF's Cx side when several processes serve one registrar: ``serve --workers N`` (worker
processes sharing the SQLite store) or a pool of nodes sharing a Redis store.

Two rules make Cx right there (:mod:`imscore.diameter.provider` applies them):

- **One Diameter identity per process.** RFC 6733 identifies a peer by its Origin-Host, and the HSS
  sends an RTR or PPR to the Destination-Host it learnt from the SAR (TS 29.228 §6.1.2, §6.5), over
  that peer's connection. Every process opens its own connection, so each needs its own name
  (:func:`process_origin_host`): worker ``i`` is ``w<i>.<origin_host>``; a pool node started with
  ``--node-id NAME`` and no ``origin_host`` of its own is ``NAME.scscf.<domain>``. The Server-Name
  (the S-CSCF's SIP URI, which the I-CSCF routes to and the HSS compares in an SAR
  NO_ASSIGNMENT) stays one for all of them (:func:`shared_server_name`).
- **Registration state is the binding store's.** Whether a set is registered at this S-CSCF (SAR
  RE_REGISTRATION rather than REGISTRATION, an RTR or PPR to act on) is whether the shared store
  holds a live binding of it, whichever process wrote it — not what one process remembers.

:class:`SetIndex` remembers, from the profiles the HSS sent, which implicit set (filed under its
default IMPU) an IMPU belongs to and which sets an IMPI owns, so that a process can find a set's
bindings from any of its identities.
"""

from __future__ import annotations

from typing import Any, Final

from imscore.subscribers import Subscriber, impi_key

__all__ = ["MAX_INDEXED", "SetIndex", "process_origin_host", "serves_shared", "shared_server_name"]

#: identities a :class:`SetIndex` remembers, at most (the oldest are forgotten first)
MAX_INDEXED: Final = 200_000


def serves_shared(server: Any) -> bool:
    """Whether ``server`` is one of several processes serving one registrar: a worker of ``serve
    --workers N`` (N > 1), or a node of a pool (its binding store has a ``pool``)."""
    worker = getattr(server, "worker", None)
    if worker is not None and getattr(worker, "count", 1) > 1:
        return True
    return getattr(server, "pool", None) is not None


def process_origin_host(server: Any, given: str, domain: str) -> str:
    """This process's Origin-Host: ``given`` (the URL's ``origin_host``) or ``scscf.<domain>``;
    a pool node with a ``--node-id`` and no ``given`` name is ``<node id>.scscf.<domain>``; a worker
    of several adds ``w<index>.`` in front."""
    host = given or f"scscf.{domain}"
    node_id = getattr(server, "node_id", None)
    if not given and node_id and getattr(server, "pool", None) is not None:
        host = f"{node_id.lower()}.{host}"
    worker = getattr(server, "worker", None)
    if worker is not None and getattr(worker, "count", 1) > 1:
        host = f"w{worker.index}.{host}"
    return host


def shared_server_name(server: Any, given_origin_host: str, domain: str) -> str:
    """The default Server-Name, one for every process: ``sip:scscf.<domain>`` for a pool node
    (whatever its own origin_host), else ``sip:<origin_host>`` as given or ``sip:scscf.<domain>``
    (the same for every worker: their Origin-Hosts differ, their SIP address does not)."""
    if getattr(server, "pool", None) is not None or not given_origin_host:
        return f"sip:scscf.{domain}"
    return f"sip:{given_origin_host}"


class SetIndex:
    """IMPU key → the default IMPU key of its implicit set, and IMPI key → its sets' default keys,
    learnt from user profiles; bounded by :data:`MAX_INDEXED` entries each."""

    def __init__(self, limit: int = MAX_INDEXED) -> None:
        self.limit = limit
        self._sets: dict[str, str] = {}
        self._owners: dict[str, tuple[str, ...]] = {}

    def learn(self, record: Subscriber) -> None:
        """Remember the sets of a profile (a record made from User-Data)."""
        defaults: list[str] = []
        for implicit_set in record.implicit_sets:
            default = implicit_set.keys[0]
            defaults.append(default)
            for key in implicit_set.keys:
                self._put(self._sets, key, default)
        owner = impi_key(record.impi)
        known = self._owners.get(owner, ())
        self._put(self._owners, owner, tuple(dict.fromkeys((*known, *defaults))))

    def default_of(self, impu_key: str) -> str | None:
        """The default IMPU key of the set ``impu_key`` is in, when known."""
        return self._sets.get(impu_key)

    def sets_of(self, impi: str) -> tuple[str, ...]:
        """The default IMPU keys of the sets of ``impi`` known here."""
        return self._owners.get(impi_key(impi), ())

    def _put(self, table: dict[str, Any], key: str, value: Any) -> None:
        table.pop(key, None)
        while len(table) >= self.limit:
            del table[next(iter(table))]
        table[key] = value
