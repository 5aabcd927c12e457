"""The plugin manager: builtin defaults, ordering, registries, guards, tracing and autoload."""

from __future__ import annotations

import inspect
import logging
import sys
import textwrap
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from imscore.plugin import (
    BUILTIN_PLUGIN_NAME,
    DISABLE_AUTOLOAD_ENV,
    TRACE_ENV,
    TRACE_LOGGER,
    Binding,
    BindingDecision,
    BranchGroup,
    NextHop,
    PluginError,
    ProviderRegistry,
    ResolvedIdentity,
    Subscriber,
    create_plugin_manager,
    hookimpl,
)
from imscore.sip import Request, parse_message, parse_uri

AOR = parse_uri("sip:alice@ims.example.net")


def make_request() -> Request:
    head = (
        b"REGISTER sip:ims.example.net SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n"
        b"Max-Forwards: 70\r\n"
        b"To: <sip:alice@ims.example.net>\r\n"
        b"From: <sip:alice@ims.example.net>;tag=456248\r\n"
        b"Call-ID: 843817637684230@998sdasdh09\r\n"
        b"CSeq: 1826 REGISTER\r\n"
        b"Contact: <sip:alice@192.0.2.1>\r\n"
        b"Content-Length: 0"
    )
    message = parse_message(head)
    assert isinstance(message, Request)
    return message


@pytest.fixture
def pm() -> Any:
    return create_plugin_manager(autoload=False, trace=False)


def b(contact: str, expires: int = 3600, q: float | None = None, **kw: Any) -> Binding:
    return Binding(contact=contact, expires=expires, q=q, **kw)


# --- builtin defaults ----------------------------------------------------------------------------


def test_builtin_registered_under_its_name(pm: Any) -> None:
    assert pm.get_plugin(BUILTIN_PLUGIN_NAME) is not None
    for impl in pm.hook.ims_fork_plan.get_hookimpls():
        if impl.plugin_name == BUILTIN_PLUGIN_NAME:
            assert impl.trylast


def test_builtin_binding_policies(pm: Any) -> None:
    old = (b("sip:a@1"), b("sip:b@2"))
    call = pm.hook.ims_binding_policy_apply

    multi = call(existing=old, incoming=[b("sip:b@2", 0), b("sip:c@3")], policy="multi", options={})
    assert multi == BindingDecision(bindings=(b("sip:a@1"), b("sip:c@3")), removed=(b("sip:b@2"),))

    refreshed = call(existing=old, incoming=[b("sip:a@1", 60)], policy="multi", options={})
    assert refreshed.bindings == (b("sip:a@1", 60), b("sip:b@2")) and refreshed.removed == ()

    replaced = call(existing=old, incoming=[b("sip:c@3")], policy="replace-all", options={})
    assert replaced == BindingDecision(bindings=(b("sip:c@3"),), removed=old)

    capped = call(
        existing=old, incoming=[b("sip:c@3")], policy="max-contacts", options={"max_contacts": 2}
    )
    assert capped.reject_status == 403 and capped.bindings == old
    fits = call(
        existing=old, incoming=[b("sip:c@3")], policy="max-contacts", options={"max_contacts": 3}
    )
    assert fits.reject_status is None and len(fits.bindings) == 3

    assert call(existing=old, incoming=[], policy="no-such-policy", options={}) is None


def test_builtin_instance_id_matches_across_contact_change(pm: Any) -> None:
    old = (b("sip:a@1", instance_id="<urn:uuid:1>", reg_id=1),)
    new = b("sip:a@9", instance_id="<urn:uuid:1>", reg_id=1)
    decision = pm.hook.ims_binding_policy_apply(existing=old, incoming=[new], policy="multi", options={})
    assert decision.bindings == (new,)


def test_builtin_fork_plans(pm: Any) -> None:
    contacts = (b("sip:a@1", q=0.5), b("sip:b@2"), b("sip:c@3", q=1.0), b("sip:d@4", q=0.1))
    plan = pm.hook.ims_fork_plan

    assert plan(request_uri=AOR, contacts=contacts, strategy="parallel", options={}) == (
        BranchGroup(targets=("sip:a@1", "sip:b@2", "sip:c@3", "sip:d@4")),
    )
    assert plan(request_uri=AOR, contacts=contacts, strategy="sequential", options={}) == (
        BranchGroup(targets=("sip:b@2", "sip:c@3")),
        BranchGroup(targets=("sip:a@1",)),
        BranchGroup(targets=("sip:d@4",)),
    )
    hunt = plan(request_uri=AOR, contacts=contacts, strategy="hunt", options={"ring_timeout": 5})
    assert [g.targets for g in hunt] == [("sip:b@2",), ("sip:c@3",), ("sip:a@1",), ("sip:d@4",)]
    assert {g.timeout for g in hunt} == {5.0}
    assert plan(request_uri=AOR, contacts=contacts, strategy="round-robin", options={}) is None


def test_builtin_identity_auth_and_route(pm: Any) -> None:
    bob = Subscriber(
        impi="bob@ims.example.net", implicit_sets=(("sip:bob@ims.example.net", "tel:+15551234"),)
    )
    alice = Subscriber(
        impi="alice@ims.example.net",
        implicit_sets=(
            ("sip:alice@ims.example.net",),
            ("sip:alice.work@ims.example.net", "tel:+15550001"),
        ),
        auth_schemes=("digest-aka", "digest-md5"),
    )
    resolved = pm.hook.ims_identity_resolve(impu="tel:+15550001", subscribers=[bob, alice])
    assert resolved == ResolvedIdentity(alice, ("sip:alice.work@ims.example.net", "tel:+15550001"))
    assert (
        pm.hook.ims_identity_resolve(impu="sip:nobody@ims.example.net", subscribers=[bob, alice]) is None
    )

    request = make_request()
    assert pm.hook.ims_auth_select_scheme(subscriber=alice, request=request) == "digest-aka"
    assert pm.hook.ims_auth_select_scheme(subscriber=bob, request=request) is None

    hops = [NextHop("sip:p1.example.net;lr", "p1.example.net", 5060, "udp"), NextHop("sip:p2", "p2")]
    assert pm.hook.ims_route_next_hop(request=request, targets=hops) == hops[0]
    assert pm.hook.ims_route_next_hop(request=request, targets=[]) is None


# --- ordering: user plugins before builtins, None falls through ----------------------------------


class HuntEverything:
    """Answers every strategy with one single-target group per contact."""

    @hookimpl
    def ims_fork_plan(self, contacts: Sequence[Binding], strategy: str) -> tuple[BranchGroup, ...]:
        return tuple(BranchGroup((c.contact,), 1.0) for c in contacts)


class NoOpinion:
    def __init__(self) -> None:
        self.asked = 0

    @hookimpl(tryfirst=True)
    def ims_fork_plan(self, strategy: str) -> None:
        self.asked += 1


def test_user_plugin_overrides_builtin() -> None:
    pm = create_plugin_manager(autoload=False, extra_plugins=[HuntEverything()])
    contacts = (b("sip:a@1"), b("sip:b@2"))
    plan = pm.hook.ims_fork_plan(request_uri=AOR, contacts=contacts, strategy="parallel", options={})
    assert plan == (BranchGroup(("sip:a@1",), 1.0), BranchGroup(("sip:b@2",), 1.0))


def test_none_falls_through_to_the_next_plugin(pm: Any) -> None:
    quiet = NoOpinion()
    pm.register(quiet, name="quiet")
    plan = pm.hook.ims_fork_plan(
        request_uri=AOR, contacts=(b("sip:a@1"),), strategy="parallel", options={}
    )
    assert quiet.asked == 1
    assert plan == (BranchGroup(("sip:a@1",)),)  # the builtin answered

    pm.register(HuntEverything(), name="hunter")
    plan = pm.hook.ims_fork_plan(
        request_uri=AOR, contacts=(b("sip:a@1"),), strategy="parallel", options={}
    )
    assert quiet.asked == 2  # tryfirst: still asked first
    assert plan == (BranchGroup(("sip:a@1",), 1.0),)


# --- registry hooks ------------------------------------------------------------------------------


class UdpPlugin:
    @hookimpl
    def ims_register_transports(self, registry: ProviderRegistry[Any]) -> None:
        registry.add("udp", "UDP-PROVIDER")


class StreamPlugin:
    @hookimpl
    def ims_register_transports(self, registry: ProviderRegistry[Any]) -> None:
        registry.add("tcp", "TCP-PROVIDER")
        registry.add("tls", "TLS-PROVIDER")

    @hookimpl
    def ims_register_binding_stores(self, registry: ProviderRegistry[Any]) -> None:
        registry.add("memory", dict)


def test_registry_hooks_collect_from_all_plugins() -> None:
    pm = create_plugin_manager(autoload=False, extra_plugins=[UdpPlugin(), StreamPlugin()])
    transports: ProviderRegistry[str] = ProviderRegistry("transport")
    assert pm.hook.ims_register_transports(registry=transports) == []
    assert sorted(transports) == ["tcp", "tls", "udp"]
    assert transports.get("tls") == "TLS-PROVIDER"
    with pytest.raises(PluginError, match="no transport named 'sctp' \\(known: tcp, tls, udp\\)"):
        transports.get("sctp")

    stores: ProviderRegistry[Any] = ProviderRegistry("binding store")
    pm.hook.ims_register_binding_stores(registry=stores)
    assert stores.names() == ["memory"]


def test_registering_a_provider_name_twice_is_an_error() -> None:
    pm = create_plugin_manager(autoload=False, extra_plugins=[UdpPlugin()])
    pm.register(UdpPlugin(), name="second-udp")
    with pytest.raises(PluginError, match="transport 'udp' is registered twice"):
        pm.hook.ims_register_transports(registry=ProviderRegistry("transport"))


# --- validation ----------------------------------------------------------------------------------


class Misspelt:
    @hookimpl
    def ims_fork_plna(self, contacts: Sequence[Binding]) -> None:
        return None


def test_misspelt_hook_is_rejected_naming_plugin_and_hook() -> None:
    with pytest.raises(PluginError) as info:
        create_plugin_manager(autoload=False, extra_plugins=[Misspelt()])
    message = str(info.value)
    assert "ims_fork_plna" in message and "did you mean ims_fork_plan" in message
    assert info.value.hook == "ims_fork_plna"
    assert info.value.plugin is not None and info.value.plugin in message


def test_check_pending_after_manual_registration(pm: Any) -> None:
    pm.check_pending()
    pm.register(Misspelt(), name="typo")
    with pytest.raises(PluginError, match="plugin 'typo' implements unknown hook 'ims_fork_plna'"):
        pm.check_pending()


class WrongArgument:
    @hookimpl
    def ims_fork_plan(self, contacts: Sequence[Binding], branches: int) -> None:
        return None


def test_argument_not_in_spec_is_a_plugin_error(pm: Any) -> None:
    with pytest.raises(PluginError, match=r"(?s)plugin 'wrong' cannot be registered.*branches"):
        pm.register(WrongArgument(), name="wrong")


class AsyncDecision:
    @hookimpl
    async def ims_fork_plan(self, contacts: Sequence[Binding]) -> tuple[BranchGroup, ...]:
        return ()


def test_async_decision_hook_rejected_at_registration(pm: Any) -> None:
    with pytest.raises(PluginError) as info:
        pm.register(AsyncDecision(), name="asyncplan")
    message = str(info.value)
    assert "hook ims_fork_plan in plugin 'asyncplan'" in message
    assert "decision hooks are synchronous (pluggy cannot await) — do the I/O in a provider" in message
    assert pm.get_plugin("asyncplan") is None  # nothing left half-registered


class ReturnsCoroutine:
    """A sync implementation that hands back a coroutine: only detectable at call time."""

    def __init__(self) -> None:
        self.made: Any = None

    async def _lookup(self, impu: str) -> None:
        return None

    @hookimpl
    def ims_identity_resolve(self, impu: str, subscribers: Sequence[Subscriber]) -> Any:
        self.made = self._lookup(impu)
        return self.made


def test_coroutine_returned_at_call_time_is_an_error_and_closed(pm: Any) -> None:
    plugin = ReturnsCoroutine()
    pm.register(plugin, name="sneaky")
    with pytest.raises(PluginError) as info:
        pm.hook.ims_identity_resolve(impu="sip:a@b", subscribers=[])
    assert str(info.value) == (
        "hook ims_identity_resolve in plugin 'sneaky' returned a coroutine; decision hooks are "
        "synchronous (pluggy cannot await) — do the I/O in a provider"
    )
    assert inspect.getcoroutinestate(plugin.made) == inspect.CORO_CLOSED  # no "never awaited" warning


# --- tracing -------------------------------------------------------------------------------------


def test_trace_env_var_logs_hook_calls(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(TRACE_ENV, "1")
    pm = create_plugin_manager(autoload=False)
    caplog.set_level(logging.DEBUG, logger=TRACE_LOGGER)
    pm.hook.ims_fork_plan(request_uri=AOR, contacts=(b("sip:a@1"),), strategy="parallel", options={})
    messages = [r.getMessage() for r in caplog.records if r.name == TRACE_LOGGER]
    assert len(messages) == 2
    assert messages[0].startswith("call ims_fork_plan(") and "strategy='parallel'" in messages[0]
    assert "plugins=[builtin]" in messages[0]
    assert messages[1].startswith("ims_fork_plan returned (BranchGroup(")


def test_no_trace_without_env_var(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(TRACE_ENV, raising=False)
    pm = create_plugin_manager(autoload=False)
    caplog.set_level(logging.DEBUG, logger=TRACE_LOGGER)
    pm.hook.ims_route_next_hop(request=make_request(), targets=[])
    assert not [r for r in caplog.records if r.name == TRACE_LOGGER]


# --- autoload through the "imscore" entry-point group --------------------------------------------


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real distribution on sys.path declaring an ``imscore`` entry point; returns its name."""
    module = f"imscore_testplugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            from imscore.plugin import hookimpl

            @hookimpl
            def ims_auth_select_scheme(subscriber, request):
                return "from-entry-point"
            """
        )
    )
    dist_info = tmp_path / f"{module}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[imscore]\nepplug = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    yield module
    sys.modules.pop(module, None)


def select(pm: Any) -> Any:
    return pm.hook.ims_auth_select_scheme(
        subscriber=Subscriber(impi="x", auth_schemes=("digest-md5",)), request=make_request()
    )


def test_entry_point_plugin_loaded_by_default(
    installed_plugin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    pm = create_plugin_manager()
    plugin = pm.get_plugin("epplug")
    assert plugin is not None and plugin.__name__ == installed_plugin
    assert select(pm) == "from-entry-point"


def test_autoload_disabled_by_env_var(installed_plugin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    pm = create_plugin_manager()
    assert pm.get_plugin("epplug") is None
    assert installed_plugin not in sys.modules
    assert select(pm) == "digest-md5"  # the builtin default


def test_autoload_argument_beats_env_var(installed_plugin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    assert create_plugin_manager(autoload=True).get_plugin("epplug") is not None
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV)
    assert create_plugin_manager(autoload=False).get_plugin("epplug") is None


def test_broken_entry_point_names_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist_info = tmp_path / "imscore_broken-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: imscore-broken\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[imscore]\nbroken = imscore_no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        PluginError, match="cannot load plugin entry point broken = imscore_no_such_module_xyz"
    ):
        create_plugin_manager(autoload=True)


def test_max_contacts_admits_within_limit(pm: Any) -> None:
    options: Mapping[str, Any] = {"max_contacts": 1}
    decision = pm.hook.ims_binding_policy_apply(
        existing=(), incoming=[b("sip:a@1")], policy="max-contacts", options=options
    )
    assert decision.bindings == (b("sip:a@1"),)
