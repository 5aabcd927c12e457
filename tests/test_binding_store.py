"""Binding stores (imscore.registrar.store): the same behaviour from the memory and SQLite stores,
and what only SQLite does (persistence, schema, transactions)."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from imscore.registrar.model import FlowInfo, StoredBinding
from imscore.registrar.store import (
    BindingStore,
    MemoryBindingStore,
    SqliteBindingStore,
    open_binding_store,
)
from imscore.store import SCHEMA_VERSION, StoreError, open_store

T = TypeVar("T")

NOW = 1_700_000_000.123456  # an epoch time with a fraction, as time.time() gives


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def binding(aor: str = "sip:alice@ims.example", n: int = 1, **changes: Any) -> StoredBinding:
    base = StoredBinding(
        aor=aor,
        impi=f"{aor.split(':')[1].split('@')[0]}@ims.example",
        contact=f"<sip:dev{n}@192.0.2.{n}:5060>",
        uri=f"sip:dev{n}@192.0.2.{n}:5060",
        expires_at=NOW + 3600 + n,
        registered_at=NOW - 100 + n,
    )
    return replace(base, **changes)


def full_binding(aor: str = "sip:alice@ims.example") -> StoredBinding:
    """Every field set to something other than its default."""
    return StoredBinding(
        aor=aor,
        impi="alice@ims.example",
        contact='<sip:alice@198.51.100.7:49152;transport=tcp>;+sip.instance="<urn:uuid:0001>";reg-id=1',
        uri="sip:alice@198.51.100.7:49152;transport=tcp",
        expires_at=NOW + 599.999999,
        registered_at=NOW - 1234.5678901,
        call_id="a84b4c76e66710@pc33.example",
        cseq=314159,
        instance_id="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>",
        reg_id=1,
        q=0.7,
        path=("<sip:pcscf1.visited.example;lr>", "<sip:pcscf2.visited.example;lr;ob>"),
        flow=FlowInfo("tcp", ("198.51.100.7", 49152), ("192.0.2.1", 5060), connection=42),
        user_agent="baresip v3.0 (x86_64/Linux) — ünïcode",
        reachable=False,
        extra={"feature": "+g.3gpp.smsip", "empty": "", "ünï": "cödé"},
    )


def minimal_binding(aor: str = "sip:alice@ims.example") -> StoredBinding:
    """Every optional field at its default (None, empty, True)."""
    return StoredBinding(
        aor=aor,
        impi="alice@ims.example",
        contact="<sip:alice@192.0.2.9>",
        uri="sip:alice@192.0.2.9",
        expires_at=NOW + 60,
        registered_at=NOW,
    )


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], BindingStore]]:
    """Opens a store of the parametrised kind through open_binding_store (the same file each call)."""
    url = "memory:" if request.param == "memory" else f"sqlite:{tmp_path / 'bindings.db'}"
    memory = MemoryBindingStore()

    def make() -> BindingStore:
        return memory if request.param == "memory" else open_binding_store(url)

    yield make


@pytest.fixture
def store(make_store: Callable[[], BindingStore]) -> Iterator[BindingStore]:
    s = make_store()
    yield s
    run(s.close())


# -- behaviour shared by every store ------------------------------------------------------------


def test_is_a_binding_store(store: BindingStore) -> None:
    assert isinstance(store, BindingStore)


def test_unknown_aor_has_no_bindings(store: BindingStore) -> None:
    assert run(store.load("sip:nobody@ims.example")) == []
    assert run(store.all()) == []
    assert run(store.expire(NOW)) == []


def test_round_trip_every_field(store: BindingStore) -> None:
    aor = "sip:alice@ims.example"
    full, minimal = full_binding(aor), minimal_binding(aor)
    run(store.save(aor, [full, minimal]))
    loaded = run(store.load(aor))
    assert loaded == [full, minimal]  # full registered first
    got_full, got_minimal = loaded
    for name in StoredBinding.__dataclass_fields__:
        assert getattr(got_full, name) == getattr(full, name), name
        assert type(getattr(got_full, name)) is type(getattr(full, name)), name
        assert getattr(got_minimal, name) == getattr(minimal, name), name
    assert got_full.flow is not None
    assert isinstance(got_full.flow.remote, tuple) and isinstance(got_full.flow.local, tuple)
    assert got_full.reachable is False
    assert got_minimal.instance_id is None and got_minimal.reg_id is None and got_minimal.q is None
    assert got_minimal.flow is None and got_minimal.user_agent is None
    assert got_minimal.path == () and got_minimal.extra == {} and got_minimal.reachable is True


def test_round_trip_udp_flow_and_odd_values(store: BindingStore) -> None:
    aor = "sip:bob@ims.example"
    b = binding(
        aor,
        flow=FlowInfo("udp", ("2001:db8::1", 5060), ("2001:db8::2", 5060)),
        q=0.0,
        reg_id=0,
        cseq=2**31 - 1,
        call_id="",
        path=("<sip:p;lr>",),
        expires_at=NOW + 1e-6,
        extra={"json": '{"not": "parsed"}', "quote": '"\\'},
    )
    run(store.save(aor, [b]))
    assert run(store.load(aor)) == [b]


def test_float_times_are_kept_exactly(store: BindingStore) -> None:
    aor = "sip:alice@ims.example"
    times = [1e9 + 2**-20, NOW + 0.1, NOW + 1 / 3, 4102444800.000001]  # oldest first
    bindings = [binding(aor, n, expires_at=t, registered_at=t - 3600) for n, t in enumerate(times)]
    run(store.save(aor, bindings))
    loaded = run(store.load(aor))
    assert [b.expires_at for b in loaded] == times
    assert [b.registered_at for b in loaded] == [t - 3600 for t in times]


def test_save_replaces_the_whole_set(store: BindingStore) -> None:
    alice, bob = "sip:alice@ims.example", "sip:bob@ims.example"
    run(store.save(alice, [binding(alice, 1), binding(alice, 2), binding(alice, 3)]))
    run(store.save(bob, [binding(bob, 1)]))
    newer = binding(alice, 2, cseq=7, expires_at=NOW + 7200)
    run(store.save(alice, [newer]))
    assert run(store.load(alice)) == [newer]
    assert run(store.load(bob)) == [binding(bob, 1)]  # another AOR is untouched
    run(store.save(alice, [binding(alice, 4), binding(alice, 5)]))
    assert run(store.load(alice)) == [binding(alice, 4), binding(alice, 5)]


def test_saving_nothing_deletes_the_aor(store: BindingStore) -> None:
    alice, bob = "sip:alice@ims.example", "sip:bob@ims.example"
    run(store.save(alice, [binding(alice, 1), binding(alice, 2)]))
    run(store.save(bob, [binding(bob, 1)]))
    run(store.save(alice, []))
    assert run(store.load(alice)) == []
    assert run(store.all()) == [binding(bob, 1)]
    run(store.save("sip:never@ims.example", ()))  # deleting an unknown AOR is fine
    assert run(store.all()) == [binding(bob, 1)]


def test_binding_filed_under_another_aor_is_refused(store: BindingStore) -> None:
    alice = "sip:alice@ims.example"
    run(store.save(alice, [binding(alice, 1)]))
    with pytest.raises(ValueError, match=r"filed under 'sip:bob@ims\.example'"):
        run(store.save(alice, [binding(alice, 2), binding("sip:bob@ims.example", 3)]))
    assert run(store.load(alice)) == [binding(alice, 1)]


def test_load_returns_expired_bindings_too(store: BindingStore) -> None:
    aor = "sip:alice@ims.example"
    dead = binding(aor, 1, expires_at=NOW - 10)
    live = binding(aor, 2, expires_at=NOW + 10)
    run(store.save(aor, [dead, live]))
    assert run(store.load(aor)) == [dead, live]


def test_oldest_registration_first(store: BindingStore) -> None:
    aor = "sip:alice@ims.example"
    bindings = [binding(aor, n, registered_at=NOW - 10 * n) for n in range(1, 8)]
    shuffled = bindings[:]
    random.Random(5).shuffle(shuffled)
    run(store.save(aor, shuffled))
    assert run(store.load(aor)) == sorted(bindings, key=lambda b: b.registered_at)
    assert run(store.load(aor))[0] == bindings[-1]


def test_equal_registration_times_keep_the_saved_order(store: BindingStore) -> None:
    aor = "sip:alice@ims.example"
    same = [binding(aor, n, registered_at=NOW) for n in (3, 1, 2)]
    older = binding(aor, 9, registered_at=NOW - 1)
    run(store.save(aor, [*same, older]))
    assert run(store.load(aor)) == [older, *same]


def test_all_lists_every_aor_in_order(store: BindingStore) -> None:
    alice, bob, carol = "sip:alice@ims.example", "sip:bob@ims.example", "sip:carol@ims.example"
    run(store.save(carol, [binding(carol, 1)]))
    run(store.save(alice, [binding(alice, 2), binding(alice, 1)]))
    run(store.save(bob, [binding(bob, 1)]))
    assert run(store.all()) == [
        binding(alice, 1),
        binding(alice, 2),
        binding(bob, 1),
        binding(carol, 1),
    ]


def test_expire_removes_exactly_the_expired_across_aors(store: BindingStore) -> None:
    alice, bob, carol = "sip:alice@ims.example", "sip:bob@ims.example", "sip:carol@ims.example"
    a_dead = binding(alice, 1, expires_at=NOW - 1)
    a_edge = binding(alice, 2, expires_at=NOW)  # expires_at == now is expired
    a_live = binding(alice, 3, expires_at=NOW + 0.000001)
    b_dead = binding(bob, 1, expires_at=NOW - 3600)
    c_live = binding(carol, 1, expires_at=NOW + 3600)
    run(store.save(alice, [a_dead, a_edge, a_live]))
    run(store.save(bob, [b_dead]))
    run(store.save(carol, [c_live]))

    gone = run(store.expire(NOW))
    assert gone == [a_dead, a_edge, b_dead]
    assert run(store.load(alice)) == [a_live]
    assert run(store.load(bob)) == []
    assert run(store.load(carol)) == [c_live]
    assert run(store.all()) == [a_live, c_live]
    assert run(store.expire(NOW)) == []  # nothing twice
    assert run(store.expire(NOW + 3600)) == [a_live, c_live]
    assert run(store.all()) == []


def test_expire_with_nothing_expired_changes_nothing(store: BindingStore) -> None:
    aor = "sip:alice@ims.example"
    run(store.save(aor, [binding(aor, 1), binding(aor, 2)]))
    assert run(store.expire(NOW)) == []
    assert run(store.load(aor)) == [binding(aor, 1), binding(aor, 2)]


def test_the_store_keeps_its_own_copies(store: BindingStore) -> None:
    aor = "sip:alice@ims.example"
    saved = binding(aor, 1, extra={"k": "v"})
    run(store.save(aor, [saved]))
    saved.extra["k"] = "changed after save"
    loaded = run(store.load(aor))
    loaded[0].extra["k"] = "changed after load"
    assert run(store.load(aor))[0].extra == {"k": "v"}


def test_bindings_without_extra_never_share_what_leaves_the_store(store: BindingStore) -> None:
    """The memory store keeps one shared empty ``extra`` for bindings that have none: whatever is
    loaded, listed or expired out of it has a dict of its own."""
    alice, bob = "sip:alice@ims.example", "sip:bob@ims.example"
    run(store.save(alice, [binding(alice, 1)]))
    run(store.save(bob, [binding(bob, 1, expires_at=NOW - 1)]))
    run(store.load(alice))[0].extra["k"] = "loaded"
    run(store.all())[0].extra["k"] = "listed"
    expired = run(store.expire(NOW))
    assert [b.aor for b in expired] == [bob]
    expired[0].extra["k"] = "expired"
    run(store.save(bob, [binding(bob, 2)]))
    assert run(store.load(alice))[0].extra == {}
    assert run(store.load(bob))[0].extra == {}


def test_close_twice_and_use_after_close(make_store: Callable[[], BindingStore]) -> None:
    s = make_store()
    run(s.close())
    run(s.close())
    with pytest.raises(StoreError, match="closed"):
        run(s.load("sip:alice@ims.example"))
    with pytest.raises(StoreError, match="closed"):
        run(s.save("sip:alice@ims.example", []))


def test_many_aors_concurrently(store: BindingStore) -> None:
    aors = [f"sip:user{i}@ims.example" for i in range(300)]

    async def scenario() -> None:
        saves = [
            store.save(aor, [binding(aor, n, expires_at=NOW + i - 150 + n) for n in (1, 2)])
            for i, aor in enumerate(aors)
        ]
        await asyncio.gather(*saves)
        loaded = await asyncio.gather(*(store.load(aor) for aor in aors))
        for i, (aor, got) in enumerate(zip(aors, loaded, strict=True)):
            assert got == [binding(aor, n, expires_at=NOW + i - 150 + n) for n in (1, 2)]
        # interleave saves to some AORs with an expiry sweep over all of them
        results = await asyncio.gather(
            store.expire(NOW),
            *(store.save(aor, [binding(aor, 3, expires_at=NOW + 9999)]) for aor in aors[:50]),
        )
        gone = results[0]
        assert gone is not None
        assert all(b.expires_at <= NOW for b in gone)
        remaining = await store.all()
        assert all(b.expires_at > NOW for b in remaining)
        assert len(remaining) + len(gone) >= 2 * len(aors) - 2 * 50
        for aor in aors[:50]:
            assert await store.load(aor) == [binding(aor, 3, expires_at=NOW + 9999)]
        expected_live = [
            binding(aor, n, expires_at=NOW + i - 150 + n)
            for i, aor in enumerate(aors)
            if i >= 50
            for n in (1, 2)
            if NOW + i - 150 + n > NOW
        ]
        assert sorted(remaining, key=lambda b: (b.aor, b.uri)) == sorted(
            expected_live + [binding(aor, 3, expires_at=NOW + 9999) for aor in aors[:50]],
            key=lambda b: (b.aor, b.uri),
        )

    run(scenario())


# -- SQLite only -------------------------------------------------------------------------------


def test_sqlite_bindings_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "imscore.db"
    alice, bob = "sip:alice@ims.example", "sip:bob@ims.example"
    a = [full_binding(alice), minimal_binding(alice), binding(alice, 3, expires_at=NOW + 3600 + 1 / 7)]
    b = [binding(bob, 1, expires_at=NOW + 0.3)]

    first = SqliteBindingStore(path)
    run(first.save(alice, a))
    run(first.save(bob, b))
    run(first.close())

    again = SqliteBindingStore(path)
    loaded = run(again.load(alice))
    expected = sorted(a, key=lambda x: x.registered_at)
    assert loaded == expected
    assert [x.expires_at for x in loaded] == [x.expires_at for x in expected]  # exactly, not ~
    later = NOW + 100
    assert [x.remaining(later) for x in loaded] == [x.remaining(later) for x in expected]
    assert run(again.load(bob)) == b
    assert run(again.expire(NOW + 1)) == b
    run(again.close())

    third = open_binding_store(f"sqlite:{path}")
    assert run(third.load(bob)) == []
    assert len(run(third.all())) == 3
    run(third.close())


def test_sqlite_two_stores_on_one_file_see_each_other(tmp_path: Path) -> None:
    url = f"sqlite:{tmp_path / 'shared.db'}"
    server, cli = open_binding_store(url), open_binding_store(url)
    aor = "sip:alice@ims.example"
    run(server.save(aor, [binding(aor, 1)]))
    assert run(cli.all()) == [binding(aor, 1)]
    run(cli.save(aor, []))
    assert run(server.load(aor)) == []
    run(server.close())
    run(cli.close())


def test_sqlite_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    run(SqliteBindingStore(path).close())
    db = sqlite3.connect(path)
    version = db.execute("SELECT value FROM imscore_meta WHERE key = 'schema'").fetchone()
    assert version == (str(SCHEMA_VERSION),) and SCHEMA_VERSION == 3
    sqn_columns = {row[1] for row in db.execute("PRAGMA table_info(aka_sqn)")}
    assert sqn_columns == {"impi", "sqn", "file_sqn"}
    columns = {row[1] for row in db.execute("PRAGMA table_info(bindings)")}
    assert {f for f in StoredBinding.__dataclass_fields__} <= columns
    indexed: set[str] = set()
    for index in db.execute("PRAGMA index_list(bindings)").fetchall():
        first_column = db.execute(f"PRAGMA index_info({index[1]})").fetchone()[2]
        indexed.add(first_column)
    assert {"aor", "expires_at"} <= indexed
    db.close()


def test_open_store_api_is_unchanged(tmp_path: Path) -> None:
    store = open_store(f"sqlite:{tmp_path / 'x.db'}")
    assert store.kind == "sqlite" and store.db is not None
    store.close()
    store.close()
    memory = open_store("memory:")
    assert memory.kind == "memory" and memory.db is None


def test_a_version_1_file_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE imscore_meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO imscore_meta VALUES ('schema', '1')")
    db.commit()
    db.close()
    s = open_binding_store(f"sqlite:{path}")
    aor = "sip:alice@ims.example"
    run(s.save(aor, [binding(aor, 1)]))
    assert run(s.load(aor)) == [binding(aor, 1)]
    run(s.close())
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM imscore_meta WHERE key = 'schema'").fetchone() == ("3",)
    db.close()


def test_a_version_2_file_is_upgraded_keeping_its_bindings(tmp_path: Path) -> None:
    """A file of the previous imscore (bindings, no AKA SQN table) gains the table, loses nothing."""
    path = tmp_path / "v2.db"
    aor = "sip:alice@ims.example"
    s = SqliteBindingStore(path)
    run(s.save(aor, [binding(aor, 1)]))
    run(s.close())
    db = sqlite3.connect(path)  # back to what version 2 wrote
    db.execute("DROP TABLE aka_sqn")
    db.execute("UPDATE imscore_meta SET value = '2' WHERE key = 'schema'")
    db.commit()
    db.close()
    s = open_binding_store(f"sqlite:{path}")
    assert run(s.load(aor)) == [binding(aor, 1)]
    run(s.close())
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM imscore_meta WHERE key = 'schema'").fetchone() == ("3",)
    assert db.execute("SELECT count(*) FROM aka_sqn").fetchone() == (0,)
    db.close()


def test_a_newer_schema_is_refused_naming_the_url(tmp_path: Path) -> None:
    path = tmp_path / "v9.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE imscore_meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO imscore_meta VALUES ('schema', '9')")
    db.commit()
    db.close()
    url = f"sqlite:{path}"
    with pytest.raises(StoreError, match=r"schema version 9, this imscore needs 3") as info:
        open_binding_store(url)
    assert repr(url) in str(info.value)
    with pytest.raises(StoreError, match="schema version 9"):
        SqliteBindingStore(path)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgres://db/x", "expected 'memory:' or 'sqlite:PATH'"),
        ("sqlite:", "expected 'memory:' or 'sqlite:PATH'"),
        ("memory:x", "expected 'memory:' or 'sqlite:PATH'"),
        ("sqlite:{tmp}/missing/dir/x.db", "cannot open"),
        ("sqlite:{tmp}/not-a-db.txt", "cannot open"),
    ],
)
def test_open_binding_store_errors_name_the_url(tmp_path: Path, url: str, message: str) -> None:
    (tmp_path / "not-a-db.txt").write_text("hello, this is not SQLite\n" * 100)
    url = url.format(tmp=tmp_path)
    with pytest.raises(StoreError, match=message) as info:
        open_binding_store(url)
    assert repr(url) in str(info.value)


def test_open_binding_store_kinds(tmp_path: Path) -> None:
    for url in ("memory:", "memory"):
        s = open_binding_store(url)
        assert isinstance(s, MemoryBindingStore)
        run(s.close())
    s = open_binding_store(f"sqlite:{tmp_path / 'k.db'}")
    assert isinstance(s, SqliteBindingStore)
    run(s.close())


def test_sqlite_failed_save_leaves_the_old_set(tmp_path: Path) -> None:
    s = SqliteBindingStore(tmp_path / "atomic.db")
    aor = "sip:alice@ims.example"
    run(s.save(aor, [binding(aor, 1)]))
    too_big = binding(aor, 3, cseq=2**70)  # SQLite integers are 64-bit: the second insert fails
    with pytest.raises(StoreError, match=r"cannot save 'sip:alice@ims.example'"):
        run(s.save(aor, [binding(aor, 2), too_big]))
    assert run(s.load(aor)) == [binding(aor, 1)]
    run(s.save(aor, [binding(aor, 2)]))  # the store is usable afterwards
    assert run(s.load(aor)) == [binding(aor, 2)]
    run(s.close())


def test_sqlite_bad_row_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    s = SqliteBindingStore(path)
    aor = "sip:alice@ims.example"
    run(s.save(aor, [binding(aor, 1)]))
    db = sqlite3.connect(path)
    db.execute("UPDATE bindings SET flow = '{not json'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"cannot load 'sip:alice@ims.example' \(bad row\)"):
        run(s.load(aor))
    run(s.close())


def test_sqlite_on_a_given_connection(tmp_path: Path) -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    s = SqliteBindingStore(db)
    aor = "sip:alice@ims.example"
    run(s.save(aor, [full_binding(aor)]))
    assert run(s.load(aor)) == [full_binding(aor)]
    run(s.close())
    assert db.execute("SELECT count(*) FROM bindings").fetchone() == (1,)  # not closed: not ours
    db.close()

    legacy = sqlite3.connect(":memory:")  # Python's implicit transactions would fight ours
    with pytest.raises(StoreError, match="isolation_level=None"):
        SqliteBindingStore(legacy)
    legacy.close()


def test_sqlite_file_uses_write_ahead_logging(tmp_path: Path) -> None:
    s = SqliteBindingStore(tmp_path / "wal.db")
    run(s.close())
    db = sqlite3.connect(tmp_path / "wal.db")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
