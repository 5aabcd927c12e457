"""Hooks with one plain implementation are called without pluggy's machinery, and give the same
results, errors and tracing as a call through it (imscore.plugin.manager._DirectHookCaller)."""

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
    assert seen == ["ims_identity_resolve"]  # two implementations: through pluggy
    pm.unregister(plugin)
    assert pm.hook.ims_identity_resolve(impu="sip:bob@ims.example.test", subscribers=[ALICE]) is None
    assert seen == ["ims_identity_resolve"]  # direct again


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


def test_a_lone_implementation_returning_a_coroutine_is_refused_and_closed() -> None:
    pm = ImsPluginManager()
    pm.add_hookspecs(hookspecs)

    class Sneaky:
        made: Any = None

        async def _later(self) -> None:
            await asyncio.sleep(0)

        @hookimpl
        def ims_identity_resolve(self, impu: str, subscribers: Any) -> Any:
            self.made = self._later()
            return self.made

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
