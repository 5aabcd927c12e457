"""Hooks whose implementations are all plain are called without pluggy's machinery, and give the
same results, errors and tracing as a call through it (imscore.plugin.manager._DirectHookCaller)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import pytest

from imscore.plugin import PluginError, create_plugin_manager, hookimpl, hookspecs
from imscore.plugin.manager import TRACE_LOGGER, ImsPluginManager, _DirectHookCaller
from imscore.plugin.types import ResolvedIdentity, Subscriber

ALICE = Subscriber(
    impi="alice@ims.example.test",
    implicit_sets=(("sip:alice@ims.example.test", "tel:+15551230001"),),
    auth_schemes=("digest",),
)


def record_pluggy_calls(pm: ImsPluginManager) -> list[str]:
    """Record every call that goes through pluggy's executor (not through a direct call)."""
    seen: list[str] = []
    inner = pm._inner_hookexec

    def recording(name: str, impls: Any, kwargs: Any, firstresult: bool) -> object:
        seen.append(name)
        return inner(name, impls, kwargs, firstresult)

    pm._inner_hookexec = recording
    pm._plain_hookexec = recording  # still the plain executor: direct calls stay allowed
    return seen


def test_builtin_only_hooks_skip_pluggy_and_answer_the_same() -> None:
    pm = create_plugin_manager(autoload=False, trace=False)
    seen = record_pluggy_calls(pm)
    direct = pm.hook.ims_identity_resolve(impu="tel:+15551230001", subscribers=[ALICE])
    assert isinstance(pm.hook.ims_identity_resolve, _DirectHookCaller)
    assert seen == []  # did not go through pluggy's executor
    via_pluggy = pm._inner_hookexec(
        "ims_identity_resolve",
        pm.hook.ims_identity_resolve.get_hookimpls(),
        {"impu": "tel:+15551230001", "subscribers": [ALICE]},
        True,
    )
    expected = ResolvedIdentity(subscriber=ALICE, implicit_set=ALICE.implicit_sets[0])
    assert direct == via_pluggy == expected
    assert pm.hook.ims_identity_resolve(impu="sip:bob@ims.example.test", subscribers=[ALICE]) is None
    assert seen == ["ims_identity_resolve"]  # only the comparison call above


class Bob:
    @hookimpl
    def ims_identity_resolve(self, impu: str, subscribers: Any) -> ResolvedIdentity | None:
        if impu == "sip:bob@ims.example.test":
            return ResolvedIdentity(subscriber=ALICE, implicit_set=ALICE.implicit_sets[0])
        return None


def test_a_second_plugin_is_asked_and_unregistering_restores_the_direct_call() -> None:
    pm = create_plugin_manager(autoload=False, trace=False)
    seen = record_pluggy_calls(pm)
    assert pm.hook.ims_identity_resolve(impu="sip:bob@ims.example.test", subscribers=[ALICE]) is None
    plugin = Bob()
    pm.register(plugin, name="bob")
    found = pm.hook.ims_identity_resolve(impu="sip:bob@ims.example.test", subscribers=[ALICE])
    assert found is not None and found.subscriber is ALICE
    assert seen == []  # two plain implementations: still a direct call
    pm.unregister(plugin)
    assert pm.hook.ims_identity_resolve(impu="sip:bob@ims.example.test", subscribers=[ALICE]) is None
    assert seen == []  # the builtin alone again


def test_a_collecting_hook_gives_a_list_of_the_values() -> None:
    pm = ImsPluginManager()
    pm.add_hookspecs(hookspecs)

    class Names:
        @hookimpl
        def ims_policy_names(self) -> dict[str, list[str]]:
            return {"binding": ["mine"]}

    class Silent:
        @hookimpl
        def ims_policy_names(self) -> None:
            return None

    plugin = Names()
    pm.register(plugin)
    assert pm.hook.ims_policy_names() == [{"binding": ["mine"]}]
    pm.unregister(plugin)
    pm.register(Silent())
    assert pm.hook.ims_policy_names() == []


def test_tracing_turns_direct_calls_off(caplog: pytest.LogCaptureFixture) -> None:
    pm = create_plugin_manager(autoload=False, trace=False)
    pm.hook.ims_identity_resolve(impu="sip:x@y", subscribers=[])  # a direct call first
    undo = pm.enable_hook_tracing()
    caplog.set_level(logging.DEBUG, logger=TRACE_LOGGER)
    pm.hook.ims_identity_resolve(impu="sip:x@y", subscribers=[])
    assert [r.getMessage().split("(")[0] for r in caplog.records if r.name == TRACE_LOGGER] == [
        "call ims_identity_resolve",
        "ims_identity_resolve returned None",
    ]
    undo()
    caplog.clear()
    pm.hook.ims_identity_resolve(impu="sip:x@y", subscribers=[])
    assert not [r for r in caplog.records if r.name == TRACE_LOGGER]


class Sneaky:
    """A plugin whose ims_identity_resolve returns a coroutine (kept in ``made``)."""

    made: Any = None

    async def _later(self) -> None:
        await asyncio.sleep(0)

    @hookimpl
    def ims_identity_resolve(self, impu: str, subscribers: Any) -> Any:
        self.made = self._later()
        return self.made


def test_a_lone_implementation_returning_a_coroutine_is_refused_and_closed() -> None:
    pm = ImsPluginManager()
    pm.add_hookspecs(hookspecs)

    plugin = Sneaky()
    pm.register(plugin, name="sneaky")
    refused = "ims_identity_resolve in plugin 'sneaky' returned a coroutine"
    with pytest.raises(PluginError, match=refused):
        pm.hook.ims_identity_resolve(impu="sip:a@b", subscribers=[])
    assert inspect.getcoroutinestate(plugin.made) == inspect.CORO_CLOSED


def test_a_missing_argument_is_pluggys_error() -> None:
    pm = create_plugin_manager(autoload=False, trace=False)
    with pytest.warns(UserWarning, match="'subscribers'"), pytest.raises(Exception) as info:
        pm.hook.ims_identity_resolve(impu="sip:a@b")
    assert type(info.value).__name__ == "HookCallError"


def via_pluggy(pm: ImsPluginManager, name: str, **kwargs: Any) -> object:
    """What pluggy's own call of hook ``name`` answers (its HookCaller.__call__)."""
    caller = getattr(pm.hook, name)
    return super(_DirectHookCaller, caller).__call__(**kwargs)


class Asked:
    """Plain implementations of a firstresult and a collecting hook that record being asked."""

    def __init__(self, label: str, answer: Any, log: list[str]) -> None:
        self.label, self.answer, self.log = label, answer, log

    @hookimpl
    def ims_identity_resolve(self, impu: str, subscribers: Any) -> Any:
        self.log.append(self.label)
        return self.answer

    @hookimpl
    def ims_policy_names(self) -> Any:
        self.log.append(self.label)
        return self.answer


def test_several_plain_implementations_are_asked_in_pluggys_order() -> None:
    answer = ResolvedIdentity(subscriber=ALICE, implicit_set=ALICE.implicit_sets[0])
    for answers in ([None, None], [None, answer], [answer, None], [answer, answer]):
        pm = ImsPluginManager()
        pm.add_hookspecs(hookspecs)
        log: list[str] = []
        for i, value in enumerate(answers):
            pm.register(Asked(f"p{i}", value, log), name=f"p{i}")
        seen = record_pluggy_calls(pm)
        direct = pm.hook.ims_identity_resolve(impu="sip:a@b", subscribers=[])
        direct_log, log[:] = list(log), []
        expected = via_pluggy(pm, "ims_identity_resolve", impu="sip:a@b", subscribers=[])
        assert direct is expected
        assert direct_log == log  # the same plugins asked, in the same order (p1 first)
        assert direct_log[0] == "p1"
        assert seen == ["ims_identity_resolve"]  # only the comparison call


def test_several_collecting_implementations_give_pluggys_list() -> None:
    pm = ImsPluginManager()
    pm.add_hookspecs(hookspecs)
    log: list[str] = []
    for i, value in enumerate([{"binding_policy": ["a"]}, None, {"binding_policy": ["c"]}]):
        pm.register(Asked(f"p{i}", value, log), name=f"p{i}")
    seen = record_pluggy_calls(pm)
    direct = pm.hook.ims_policy_names()
    direct_log, log[:] = list(log), []
    expected = [{"binding_policy": ["c"]}, {"binding_policy": ["a"]}]
    assert direct == via_pluggy(pm, "ims_policy_names") == expected
    assert direct_log == log == ["p2", "p1", "p0"]
    assert seen == ["ims_policy_names"]


def test_the_binding_policy_with_a_plugin_beside_the_builtin_answers_as_pluggy() -> None:
    from imscore.plugin.types import Binding

    pm = create_plugin_manager(autoload=False, trace=False)
    asked: list[tuple[str, Any]] = []

    class Desk:
        @hookimpl
        def ims_binding_policy_apply(
            self, existing: Any, incoming: Any, policy: str, options: Any
        ) -> Any:
            asked.append((policy, options))
            return None

    pm.register(Desk(), name="desk")
    seen = record_pluggy_calls(pm)
    new = Binding(contact="sip:a@192.0.2.1:5060", expires=600)
    old = Binding(contact="sip:a@192.0.2.2:5060", expires=60, registered_at=5.0)
    for policy, options in [
        ("max-contacts", {"max_contacts": 1, "at_limit": "reject"}),
        ("max-contacts", {"max_contacts": 1, "at_limit": "evict-oldest"}),
        ("unlimited", {"max_contacts": 3}),
        ("nobody", {}),
    ]:
        kwargs = {"existing": [old], "incoming": [new], "policy": policy, "options": options}
        direct = pm.hook.ims_binding_policy_apply(**kwargs)
        assert direct == via_pluggy(pm, "ims_binding_policy_apply", **kwargs)
        assert asked[-2:] == [(policy, options), (policy, options)]
    assert seen == ["ims_binding_policy_apply"] * 4  # the comparison calls alone


def test_an_exception_stops_the_call_as_in_pluggy() -> None:
    class Boom(Exception):
        pass

    class Raising:
        @hookimpl
        def ims_identity_resolve(self, impu: str, subscribers: Any) -> Any:
            raise Boom(impu)

    pm = ImsPluginManager()
    pm.add_hookspecs(hookspecs)
    log: list[str] = []
    pm.register(Asked("first", None, log), name="first")
    pm.register(Raising(), name="raising")
    with pytest.raises(Boom, match="sip:a@b"):
        pm.hook.ims_identity_resolve(impu="sip:a@b", subscribers=[])
    assert log == []  # the one registered first is asked last: never reached


def test_a_coroutine_from_one_of_several_names_its_plugin() -> None:
    pm = ImsPluginManager()
    pm.add_hookspecs(hookspecs)

    plugin = Sneaky()
    pm.register(Asked("plain", None, []), name="plain")
    pm.register(plugin, name="sneaky")
    with pytest.raises(PluginError, match="in plugin 'sneaky' returned a coroutine"):
        pm.hook.ims_identity_resolve(impu="sip:a@b", subscribers=[])
    assert inspect.getcoroutinestate(plugin.made) == inspect.CORO_CLOSED


def test_a_wrapper_or_an_argument_default_goes_through_pluggy() -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def ims_identity_resolve(self, impu: str, subscribers: Any) -> Any:
            result = yield
            return result

    class Defaulted:
        @hookimpl
        def ims_identity_resolve(self, impu: str, subscribers: Any = ()) -> Any:
            given = subscribers != ()  # the caller's [] rather than the default
            return ResolvedIdentity(subscriber=ALICE, implicit_set=("given",) if given else ())

    for plugin in (Wrapper(), Defaulted()):
        pm = create_plugin_manager(autoload=False, trace=False)
        pm.register(plugin, name="other")
        seen = record_pluggy_calls(pm)
        found = pm.hook.ims_identity_resolve(impu="sip:x@y", subscribers=[])
        assert seen == ["ims_identity_resolve"]
        if isinstance(plugin, Defaulted):  # pluggy hands the caller's value to a defaulted one
            assert found is not None and found.implicit_set == ("given",)


def test_only_builtin_is_remembered_until_plugins_change() -> None:
    """What ``only_builtin`` found holds until a plugin is registered or unregistered; tracing
    turns it off while it lasts."""
    pm = create_plugin_manager(autoload=False, trace=False)
    assert pm.only_builtin("ims_identity_resolve") and pm.only_builtin("ims_binding_policy_apply")
    plugin = Bob()
    pm.register(plugin, name="bob")
    assert not pm.only_builtin("ims_identity_resolve")
    assert pm.only_builtin("ims_binding_policy_apply")
    pm.unregister(plugin)
    assert pm.only_builtin("ims_identity_resolve")
    undo = pm.enable_hook_tracing()
    assert not pm.only_builtin("ims_identity_resolve")
    undo()
    assert pm.only_builtin("ims_identity_resolve")
    assert not pm.only_builtin("no_such_hook")


def test_the_registrar_asks_the_builtin_policy_itself_only_when_it_is_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``Registrar._policy`` calls the builtin binding policy without the hook while it is the
    only implementation (the same decision), and the hook once a plugin implements it too."""
    from imscore.profile import load_profile
    from imscore.registrar import StoredBinding
    from imscore.registrar.register import Registrar
    from imscore.registrar.store import MemoryBindingStore
    from imscore.subscribers import MemorySubscriberStore, demo_subscribers_path

    pm = create_plugin_manager(autoload=False, trace=False)
    seen = record_pluggy_calls(pm)
    profile = load_profile("legacy-single-registration")
    subscribers = MemorySubscriberStore.from_file(demo_subscribers_path())
    registrar = Registrar(profile, subscribers, MemoryBindingStore(), pm)
    alice = next(iter(subscribers.directory))
    aor, impi, a1, a2 = alice.implicit_sets[0].aor, alice.impi, "sip:a@192.0.2.1", "sip:a@192.0.2.2"
    old = StoredBinding(aor, impi, f"<{a2}>", a2, 600.0, 5.0, "c1", 1)
    new = StoredBinding(aor, impi, f"<{a1}>", a1, 610.0, 10.0, "c2", 1)
    caller = pm.hook.ims_binding_policy_apply
    hook_calls: list[str] = []
    direct = _DirectHookCaller.__call__

    def counted(self: _DirectHookCaller, **kwargs: Any) -> Any:
        hook_calls.append(self.name)
        return direct(self, **kwargs)

    monkeypatch.setattr(_DirectHookCaller, "__call__", counted)
    first = registrar._policy([old], [new], alice, 10.0)
    assert hook_calls == [] and seen == [] and first is not None
    assert first == direct(
        caller,
        existing=[old.hook_binding(10.0)],
        incoming=[new.hook_binding(10.0, registered_at=0.0)],
        policy="replace-all",
        options=dict(profile.policies["binding_policy"].options),
    )
    assert [b.contact for b in first.bindings] == [a1] and [b.contact for b in first.removed] == [a2]
    asked: list[str] = []

    class Desk:
        @hookimpl
        def ims_binding_policy_apply(
            self, existing: Any, incoming: Any, policy: str, options: Any
        ) -> Any:
            asked.append(policy)
            return None

    pm.register(Desk(), name="desk")
    again = registrar._policy([old], [new], alice, 10.0)
    assert asked == ["replace-all"] and again == first
    assert hook_calls == ["ims_binding_policy_apply"]
