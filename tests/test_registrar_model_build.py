"""The StoredBinding and Binding builders of imscore.registrar.model give what the dataclass
constructors and dataclasses.replace give, field for field, frozen alike."""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
from types import SimpleNamespace

import pytest

from imscore.plugin.types import Binding
from imscore.registrar.model import (
    FIRST_CSEQ,
    FlowInfo,
    StoredBinding,
    binding_with,
    new_binding,
    new_flow,
)
from imscore.registrar.store import MemoryBindingStore

FLOW = FlowInfo("udp", ("192.0.2.7", 5999), ("192.0.2.1", 5060), None)

CASES = [
    ("sip:a@x", "a@x", "<sip:a@192.0.2.7:5999>", "sip:a@192.0.2.7:5999", 3700.0, 100.0,
     "1-bench@x", 2, None, None, None, (), FLOW, None, True, {}),
    ("sip:b@x", "b@x", '<sip:b@h>;+sip.instance="<urn:u>";reg-id=1;+g.x', "sip:b@h", 5.5, 0.25,
     "c", 7, "<urn:u>", 1, 0.5, ("<sip:p;lr>", "<sip:q>"), None, "UA/1", False,
     {FIRST_CSEQ: "7", "ob": "1"}),
]  # fmt: skip


@pytest.mark.parametrize("values", CASES)
def test_new_binding_is_the_dataclass(values: tuple[object, ...]) -> None:
    made = StoredBinding(*values)  # type: ignore[arg-type]
    built = new_binding(*values)  # type: ignore[arg-type]
    assert type(built) is StoredBinding
    assert built == made and repr(built) == repr(made)
    for f in dataclasses.fields(StoredBinding):
        assert getattr(built, f.name) is getattr(made, f.name)
    assert pickle.loads(pickle.dumps(built)) == made
    assert dataclasses.replace(built, cseq=9) == dataclasses.replace(made, cseq=9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.aor = "sip:other@x"  # type: ignore[misc]


@pytest.mark.parametrize("values", CASES)
def test_binding_with_is_replace(values: tuple[object, ...]) -> None:
    old = StoredBinding(*values)  # type: ignore[arg-type]
    extra = {"k": "v"}
    flow = FlowInfo("tcp", ("192.0.2.9", 1), ("192.0.2.1", 5060), 4)
    built = binding_with(old, "sip:k@x", 42.0, flow, "Agent", extra)
    expected = dataclasses.replace(
        old, aor="sip:k@x", registered_at=42.0, flow=flow, user_agent="Agent", extra=extra
    )
    assert type(built) is StoredBinding and built == expected and built.extra is extra


@pytest.mark.parametrize("values", CASES)
@pytest.mark.parametrize("registered_at", [None, 0.0])
def test_hook_binding_is_the_dataclass(values: tuple[object, ...], registered_at: float | None) -> None:
    b = StoredBinding(*values)  # type: ignore[arg-type]
    got = b.hook_binding(3.0, registered_at=registered_at)
    assert type(got) is Binding
    assert got == Binding(
        contact=b.uri,
        expires=b.remaining(3.0),
        q=b.q,
        instance_id=b.instance_id,
        reg_id=b.reg_id,
        call_id=b.call_id,
        cseq=b.cseq,
        registered_at=b.registered_at if registered_at is None else registered_at,
        reachable=b.reachable,
        user_agent=b.user_agent,
        feature_tags=(("+g.x", None),) if "+g.x" in b.contact else (),
    )
    assert hash(got) == hash(dataclasses.replace(got))
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.expires = 1  # type: ignore[misc]


def test_refreshed_keeps_first_registration_and_first_cseq() -> None:
    old = StoredBinding(*CASES[1])  # type: ignore[arg-type]
    new = dataclasses.replace(old, cseq=8, registered_at=50.0, extra={FIRST_CSEQ: "8"})
    got = old.refreshed(new)
    assert got == dataclasses.replace(new, registered_at=0.25, extra={FIRST_CSEQ: "7"})
    other_call = dataclasses.replace(new, call_id="d")
    assert old.refreshed(other_call) == dataclasses.replace(other_call, registered_at=0.25)


def test_memory_store_copies_are_still_copies() -> None:
    store = MemoryBindingStore()
    b = StoredBinding(*CASES[1])  # type: ignore[arg-type]
    asyncio.run(store.save(b.aor, [b]))
    b.extra["late"] = "x"  # the saved copy has its own extra
    (loaded,) = asyncio.run(store.load(b.aor))
    assert "late" not in loaded.extra and type(loaded) is StoredBinding
    loaded.extra["later"] = "y"  # and so does what load hands out
    (again,) = asyncio.run(store.load(b.aor))
    assert again == dataclasses.replace(b, extra={FIRST_CSEQ: "7", "ob": "1"})


def test_flow_builder_is_the_dataclass() -> None:
    built = new_flow("tls", ("192.0.2.7", 5061), ("192.0.2.1", 5061), 12)
    assert type(built) is FlowInfo
    assert built == FlowInfo("tls", ("192.0.2.7", 5061), ("192.0.2.1", 5061), 12)
    assert hash(built) == hash(FlowInfo("tls", ("192.0.2.7", 5061), ("192.0.2.1", 5061), 12))
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.connection = 1  # type: ignore[misc]


def test_registration_change_as_the_constructor_makes_it() -> None:
    """Registrar._registration fills a RegistrationChange's __dict__ at once: the same object as
    its constructor with those values (run on the pure build: it calls the method with a stand-in
    registrar)."""
    from imscore.registrar import register
    from imscore.registrar.change import INITIAL, RegistrationChange
    from imscore.sip import parse_uri

    if register.__file__ and not register.__file__.endswith(".py"):
        pytest.skip("compiled build: the method takes a Registrar only")
    reported: list[RegistrationChange] = []
    stand_in = SimpleNamespace(on_registration=reported.append, remote=None)
    stand_in._report = lambda change: register.Registrar._report(stand_in, change)  # type: ignore[arg-type]
    request = SimpleNamespace(to=SimpleNamespace(uri=parse_uri("sip:a@x")))
    subscriber, implicit_set = SimpleNamespace(impi="a@x"), SimpleNamespace(aor="sip:a@x")
    after = [StoredBinding(*CASES[0])]  # type: ignore[arg-type]
    register.Registrar._registration(
        stand_in,
        request,
        "ok",
        subscriber,
        implicit_set,
        FLOW,
        [],
        after,
        100.0,  # type: ignore[arg-type]
    )
    (change,) = reported
    assert type(change) is RegistrationChange
    assert change == RegistrationChange(
        INITIAL,
        "sip:a@x",
        "a@x",
        3600,
        impu=request.to.uri,  # type: ignore[arg-type]
        subscriber=subscriber,  # type: ignore[arg-type]
        implicit_set=implicit_set,  # type: ignore[arg-type]
        request=request,  # type: ignore[arg-type]
        response="ok",  # type: ignore[arg-type]
        interface="udp:192.0.2.1:5060",
    )
    assert list(vars(change)) == [f.name for f in dataclasses.fields(RegistrationChange)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        change.kind = "x"  # type: ignore[misc]
