"""Where the AKA SQN lives: per process, or in the SQLite store file, which survives a restart and
which worker processes share (imscore.registrar.sqn)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from test_registrar import AKA_IMPI, AKA_IMPU, OP, SQN, K, Ue, _aka_credentials, _empty_auth

from imscore.auth.aka import IND_BITS, UeSim
from imscore.auth.milenage import Milenage
from imscore.registrar.authenticator import Authenticator, AuthOutcome
from imscore.registrar.sqn import MemorySqnStore, SqliteSqnStore
from imscore.store import open_store
from imscore.subscribers import demo_subscribers_path, load_subscribers
from imscore.testing import RunningServer, start_server

IMPI = "001010000000001@ims.mnc001.mcc001.3gppnetwork.org"


def seq(sqn: int) -> int:
    return sqn >> IND_BITS


FAR = 1 << 40  # a file SEQ more than SQN_DELTA (2**28) beyond a new USIM's


def test_memory_store_counts_from_the_file_and_resynchronises() -> None:
    store = MemorySqnStore()
    start = 100 << IND_BITS
    first, second = store.issue(IMPI, start), store.issue(IMPI, start)
    assert (seq(first), seq(second)) == (101, 102)
    assert first & 31 != second & 31  # IND moves on with each vector
    assert store.last(IMPI) == second and store.last("other@x") is None
    # AUTS from a USIM ahead of the network (SEQ 1000): the counter jumps past it
    assert seq(store.issue(IMPI, start, sqn_ms=1000 << IND_BITS)) == 1001
    assert seq(store.issue(IMPI, start)) == 1002
    # the operator writes a new SQN in the subscriber file: counting starts again from it
    far = FAR << IND_BITS
    assert seq(store.issue(IMPI, far)) == FAR + 1
    # AUTS from a new USIM at SEQ 7, too far below: the counter goes back there, below the
    # file's SQN, and stays there
    assert seq(store.issue(IMPI, far, sqn_ms=7 << IND_BITS)) == 8
    assert seq(store.issue(IMPI, far)) == 9


def _sqlite(path: Path) -> SqliteSqnStore:
    store = open_store(f"sqlite:{path}")
    assert store.db is not None
    return SqliteSqnStore(store.db, store.url)


def test_sqlite_store_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    start = 100 << IND_BITS
    store = _sqlite(path)
    issued = [store.issue(IMPI, start) for _ in range(3)]
    store._db.close()
    again = _sqlite(path)
    assert again.last(IMPI) == issued[-1]
    assert seq(again.issue(IMPI, start)) == seq(issued[-1]) + 1
    far = FAR << IND_BITS
    assert seq(again.issue(IMPI, far, sqn_ms=7 << IND_BITS)) == 8  # resync below the file's SQN
    again._db.close()
    third = _sqlite(path)
    assert seq(third.issue(IMPI, far)) == 9  # still what was stored, not the file's
    third._db.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT file_sqn FROM aka_sqn WHERE impi = ?", (IMPI,)).fetchone() == (far,)
    db.close()


def test_two_processes_on_one_file_never_issue_the_same_sqn(tmp_path: Path) -> None:
    """Two connections to one file, as two worker processes have: every vector a USIM gets from
    either is fresh, however they alternate."""
    path = tmp_path / "w.db"
    subscriber = load_subscribers(demo_subscribers_path()).by_impi(AKA_IMPI)
    assert subscriber is not None
    stores = [_sqlite(path), _sqlite(path)]
    workers = [Authenticator("ims.example.test", ("aka",), sqn_store=store) for store in stores]
    sim = UeSim(Milenage(K, op=OP), sqn_ms=SQN)
    seen: list[int] = []
    for turn in (0, 1, 1, 0, 1, 0, 0, 1):
        result = workers[turn].challenge_for(subscriber, 1000.0)
        assert result.outcome is AuthOutcome.CHALLENGE and result.challenge is not None
        nonce = result.challenge.split('nonce="', 1)[1].split('"', 1)[0]
        answer = sim.respond(nonce)
        assert answer.auts is None, f"worker {turn} issued a SQN the USIM had seen"
        last = workers[turn].sqn_store.last(AKA_IMPI)
        assert last is not None
        seen.append(last)
    assert seen == sorted(seen) and len(set(map(seq, seen))) == len(seen)
    for store in stores:
        store._db.close()


def _aka_register(server: RunningServer, sim: UeSim) -> tuple[bool, int]:
    """One AKA registration; whether the USIM asked for re-synchronisation, and the final status."""
    ue = Ue(server, AKA_IMPI, None, AKA_IMPU)
    try:
        challenge = ue.send(ue.request(extra=[("Authorization", _empty_auth(AKA_IMPI))]))
        (offered,) = challenge.www_authenticate
        answer = sim.respond(offered.get("nonce") or "")
        if answer.auts is not None:
            return True, challenge.status
        ok = ue.send(ue.request(authorization=_aka_credentials(offered, answer.password(1))))
        return False, ok.status
    finally:
        ue.close()


def test_a_restarted_server_goes_on_from_the_stored_sqn(tmp_path: Path) -> None:
    """With the SQLite store the SQN survives a restart. With the memory store a restarted server
    counts again from the subscriber file, and its first challenge is stale for a USIM that
    registered before the restart (it answers with AUTS)."""
    for store_url, after_restart in (
        (f"sqlite:{tmp_path / 'bindings.db'}", (False, 200)),
        ("memory:", (True, 401)),
    ):
        sim = UeSim(Milenage(K, op=OP), sqn_ms=SQN)  # one USIM, before and after the restart
        outcomes = []
        for _ in range(2):
            server = start_server("default", transports=("udp",), store_url=store_url)
            try:
                outcomes.append(_aka_register(server, sim))
            finally:
                server.stop()
        assert outcomes == [(False, 200), after_restart], store_url
