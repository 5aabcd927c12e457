"""The StoredBinding and Binding builders of imscore.registrar.model give what the dataclass
constructors and dataclasses.replace give, field for field, frozen alike."""

from __future__ import annotations

import asyncio
import dataclasses
import pickle

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
    its constructor with those values (a real registrar, subscriber and REGISTER, so that the
    compiled build runs it as well)."""
    from imscore.plugin import create_plugin_manager
    from imscore.profile import load_profile
    from imscore.registrar.change import INITIAL, RegistrationChange
    from imscore.registrar.register import Registrar
    from imscore.sip import Request, parse_datagram
    from imscore.subscribers import MemorySubscriberStore, demo_subscribers_path

    subscribers = MemorySubscriberStore.from_file(demo_subscribers_path())
    registrar = Registrar(
        load_profile("default"), subscribers, MemoryBindingStore(), create_plugin_manager(autoload=False)
    )
    reported: list[RegistrationChange] = []
    registrar.on_registration = reported.append
    impu = "sip:alice@ims.example.test"
    subscriber = subscribers.directory.by_impu(impu)
    assert subscriber is not None
    implicit_set = subscriber.implicit_set_of(impu)
    assert implicit_set is not None
    request = parse_datagram(
        f"REGISTER sip:ims.example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.7:5999;branch=z9hG4bKchange\r\n"
        f"From: <{impu}>;tag=f\r\nTo: <{impu}>\r\nCall-ID: change@x\r\nCSeq: 2 REGISTER\r\n"
        f"Contact: <sip:alice@192.0.2.7:5999>\r\nContent-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(request, Request)
    response = request.make_response(200, "OK")
    after = [StoredBinding(*CASES[0])]  # type: ignore[arg-type]
    registrar._registration(request, response, subscriber, implicit_set, FLOW, [], after, 100.0)
    (change,) = reported
    assert type(change) is RegistrationChange
    assert change == RegistrationChange(
        INITIAL,
        implicit_set.aor,
        subscriber.impi,
        3600,
        impu=request.to.uri,
        subscriber=subscriber,
        implicit_set=implicit_set,
        request=request,
        response=response,
        interface="udp:192.0.2.1:5060",
    )
    assert list(vars(change)) == [f.name for f in dataclasses.fields(RegistrationChange)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        change.kind = "x"  # type: ignore[misc]
