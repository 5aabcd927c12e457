"""The memory binding store's compact form (issue 13): what it keeps per binding is smaller, and
what it answers is unchanged: equal bindings back, expiry to the exact fraction of a second."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from typing import Any

from test_binding_store import NOW, binding, full_binding, minimal_binding

from imscore.registrar.model import FlowInfo, StoredBinding
from imscore.registrar.store import MemoryBindingStore


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def fresh(text: str) -> str:
    """An equal string that is a different object (as each parsed datagram gives)."""
    return "".join(list(text))


def test_bindings_come_back_equal_one_or_several() -> None:
    store = MemoryBindingStore()
    one = full_binding("sip:one@ims.example")
    several = [replace(binding("sip:two@ims.example", n), registered_at=NOW - n) for n in (1, 2, 3)]

    async def go() -> None:
        await store.save(one.aor, [one])
        await store.save("sip:two@ims.example", several)
        assert await store.load(one.aor) == [one]
        assert await store.load("sip:two@ims.example") == sorted(several, key=lambda b: b.registered_at)
        assert await store.all() == [one, *sorted(several, key=lambda b: b.registered_at)]
        assert store.counts(NOW) == (4, 2)
        loaded = (await store.load(one.aor))[0]
        loaded.extra["changed"] = "x"  # a copy: the store keeps its own
        assert (await store.load(one.aor))[0].extra == one.extra
        await store.save("sip:two@ims.example", several[:1])
        assert await store.load("sip:two@ims.example") == several[:1]
        await store.save("sip:two@ims.example", [])
        assert await store.load("sip:two@ims.example") == []

    run(go())


def test_equal_strings_are_kept_once() -> None:
    store = MemoryBindingStore()
    aor = "sip:alice@ims.example"
    first = replace(
        minimal_binding(fresh(aor)),
        user_agent=fresh("Phone/1.0"),
        flow=FlowInfo("udp", (fresh("198.51.100.7"), 5060), ("192.0.2.1", 5060)),
    )
    second = replace(
        first,
        aor=fresh(aor),
        contact="<sip:other@198.51.100.7:5062>",
        uri="sip:other@198.51.100.7:5062",
        user_agent=fresh("Phone/1.0"),
        flow=FlowInfo("udp", (fresh("198.51.100.7"), 5062), ("192.0.2.1", 5060)),
    )
    assert first.user_agent is not second.user_agent and first.aor is not second.aor

    async def go() -> list[StoredBinding]:
        await store.save(fresh(aor), [first])
        await store.save(fresh(aor), [first, second])  # a refresh adds a device
        return await store.all()

    kept = run(go())
    assert kept == [first, second]
    assert kept[0].aor is kept[1].aor
    assert kept[0].user_agent is kept[1].user_agent
    assert kept[0].flow is not None and kept[1].flow is not None
    assert kept[0].flow.remote[0] is kept[1].flow.remote[0]


def test_expire_is_exact_to_the_fraction() -> None:
    store = MemoryBindingStore()
    times = {"a": 100.2, "b": 100.7, "c": 101.0, "d": 102.5, "e": 5000.0}

    async def go() -> None:
        for name, at in times.items():
            await store.save(
                f"sip:{name}@ims.example", [binding(f"sip:{name}@ims.example", expires_at=at)]
            )
        assert [b.aor for b in await store.expire(100.1)] == []
        assert [b.aor for b in await store.expire(100.5)] == ["sip:a@ims.example"]
        assert [b.aor for b in await store.expire(100.7)] == ["sip:b@ims.example"]
        assert [b.aor for b in await store.expire(100.99)] == []
        assert [b.aor for b in await store.expire(101.0)] == ["sip:c@ims.example"]
        # refreshed before it was due: not expired at its old time, expired at its new one
        await store.save("sip:d@ims.example", [binding("sip:d@ims.example", expires_at=300.25)])
        assert [b.aor for b in await store.expire(250.0)] == []
        assert [b.aor for b in await store.expire(300.25)] == ["sip:d@ims.example"]
        assert [b.aor for b in await store.expire(10_000.0)] == ["sip:e@ims.example"]
        assert await store.all() == []

    run(go())


def test_expire_several_bindings_of_one_aor() -> None:
    store = MemoryBindingStore()
    aor = "sip:alice@ims.example"
    bindings = [binding(aor, n, expires_at=200.0 + n / 10) for n in (1, 2, 3)]

    async def go() -> None:
        await store.save(aor, bindings)
        gone = await store.expire(200.2)
        assert gone == bindings[:2]
        assert await store.load(aor) == bindings[2:]
        assert store.counts(200.2) == (1, 1)
        assert await store.expire(200.3) == bindings[2:]
        assert await store.load(aor) == []

    run(go())


def test_infinite_and_nan_expiry() -> None:
    store = MemoryBindingStore()

    async def go() -> None:
        await store.save("sip:inf@ims.example", [binding("sip:inf@ims.example", expires_at=math.inf)])
        await store.save("sip:nan@ims.example", [binding("sip:nan@ims.example", expires_at=math.nan)])
        await store.save("sip:neg@ims.example", [binding("sip:neg@ims.example", expires_at=-math.inf)])
        assert [b.aor for b in await store.expire(NOW)] == ["sip:neg@ims.example"]
        assert await store.expire(1e300) == []
        assert len(await store.all()) == 2

    run(go())
