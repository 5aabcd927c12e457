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


# --- builtin binding policies --------------------------------------------------------------------

AT_LIMIT = ("reject", "evict-oldest", "evict-soonest-to-expire", "evict-unreachable-first")


def dev(
    name: str, at: float, expires: int = 3600, *, reachable: bool = True, host: str | None = None
) -> Binding:
    """An existing binding of device ``name`` (an RFC 5626 instance), registered at ``at``."""
    return Binding(
        contact=f"sip:{name}@{host or name}.example.net",
        expires=expires,
        instance_id=f"<urn:uuid:{name}>",
        reg_id=1,
        registered_at=at,
        reachable=reachable,
    )


def new(name: str, expires: int = 3600, host: str | None = None) -> Binding:
    """An incoming binding of device ``name`` (registered_at 0, as the registrar passes it)."""
    return Binding(
        contact=f"sip:{name}@{host or name}.example.net",
        expires=expires,
        instance_id=f"<urn:uuid:{name}>",
        reg_id=1,
    )


def apply(
    pm: Any,
    existing: Sequence[Binding],
    incoming: Sequence[Binding],
    policy: str,
    options: Mapping[str, Any] | None = None,
) -> BindingDecision:
    decision = pm.hook.ims_binding_policy_apply(
        existing=tuple(existing), incoming=list(incoming), policy=policy, options=options or {}
    )
    assert isinstance(decision, BindingDecision)
    return decision


def test_builtin_binding_policy_names_match_the_profile_names(pm: Any) -> None:
    from imscore.profile import BUILTIN_PLUGINS

    assert BUILTIN_PLUGINS["binding_policy"] == ("replace-all", "max-contacts", "unlimited")
    for name in BUILTIN_PLUGINS["binding_policy"]:
        assert apply(pm, (), [b("sip:a@1")], name).bindings == (b("sip:a@1"),)
    for unknown in ("multi", "evict-oldest", "reject-new", "no-such-policy"):
        assert (
            pm.hook.ims_binding_policy_apply(existing=(), incoming=[], policy=unknown, options={})
            is None
        )


@pytest.mark.parametrize(
    ("policy", "options"),
    [("unlimited", {})]
    + [("max-contacts", {"max_contacts": 10, "at_limit": mode}) for mode in AT_LIMIT],
)
def test_common_rules_add_refresh_remove(pm: Any, policy: str, options: dict[str, Any]) -> None:
    old = (b("sip:a@1"), b("sip:b@2"))
    decision = apply(pm, old, [b("sip:b@2", 0), b("sip:c@3")], policy, options)
    assert decision == BindingDecision(bindings=(b("sip:a@1"), b("sip:c@3")), removed=(b("sip:b@2"),))

    refreshed = apply(pm, old, [b("sip:a@1", 60)], policy, options)
    assert refreshed == BindingDecision(bindings=(b("sip:a@1", 60), b("sip:b@2")))

    # a removal that matches nothing changes nothing
    assert apply(pm, old, [b("sip:z@9", 0)], policy, options) == BindingDecision(bindings=old)
    # removing a contact added earlier in the same REGISTER reports nothing as removed
    assert apply(pm, old, [b("sip:c@3"), b("sip:c@3", 0)], policy, options) == BindingDecision(
        bindings=old
    )


@pytest.mark.parametrize(
    ("policy", "options"),
    [("unlimited", {}), ("replace-all", {})]
    + [("max-contacts", {"max_contacts": 2, "at_limit": mode}) for mode in AT_LIMIT],
)
def test_same_instance_from_a_new_address_updates_that_device(
    pm: Any, policy: str, options: dict[str, Any]
) -> None:
    # two devices, at the limit of 2: the desk phone comes back from a new address and port
    old = (dev("desk", 100.0), dev("soft", 200.0))
    moved = Binding(
        contact="sip:desk@198.51.100.7:5071", expires=600, instance_id="<urn:uuid:desk>", reg_id=1
    )
    decision = apply(pm, old, [moved], policy, options)
    assert decision.reject_status is None
    if policy == "replace-all":
        assert decision == BindingDecision(bindings=(moved,), removed=(old[1],))
    else:  # the update keeps its place, nothing is evicted: it is not another device
        assert decision == BindingDecision(bindings=(moved, old[1]))
    # the same instance with another reg-id is another flow of the device (RFC 5626): a new binding
    other_flow = Binding(contact="sip:desk@2", expires=600, instance_id="<urn:uuid:desk>", reg_id=2)
    assert not old[0].same_binding(other_flow)


@pytest.mark.parametrize("policy", ["unlimited", "replace-all", "max-contacts"])
def test_expires_zero_with_instance_removes_from_any_address(pm: Any, policy: str) -> None:
    old = (dev("desk", 100.0), dev("soft", 200.0))
    gone = new("desk", expires=0, host="203.0.113.9")
    assert apply(pm, old, [gone], policy) == BindingDecision(bindings=(old[1],), removed=(old[0],))


def test_unlimited_keeps_every_contact(pm: Any) -> None:
    old = tuple(b(f"sip:u{i}@{i}") for i in range(50))
    decision = apply(pm, old, [b("sip:new@1")], "unlimited")
    assert decision.bindings == (*old, b("sip:new@1")) and decision.removed == ()
    # the registrar's per-subscriber limit means nothing to unlimited
    assert apply(pm, old, [b("sip:new@1")], "unlimited", {"max_contacts": 1}) == decision


def test_replace_all_the_newest_contact_wins(pm: Any) -> None:
    old = (dev("desk", 100.0), dev("soft", 200.0))
    decision = apply(pm, old, [new("mobile")], "replace-all")
    assert decision == BindingDecision(bindings=(new("mobile"),), removed=old)

    # several contacts in one REGISTER: only the last one with expires > 0 stays
    two = apply(pm, old, [new("x"), new("y"), new("desk", 0)], "replace-all")
    assert two == BindingDecision(bindings=(new("y"),), removed=old)

    # a refresh of the one registered device: nothing displaced
    single = (dev("desk", 100.0),)
    assert apply(pm, single, [new("desk", 60)], "replace-all") == BindingDecision(
        bindings=(new("desk", 60),)
    )

    # only removals: remove what they match, keep the rest
    only_removals = apply(pm, old, [new("soft", 0), new("nobody", 0)], "replace-all")
    assert only_removals == BindingDecision(bindings=(old[0],), removed=(old[1],))

    # from nothing
    assert apply(pm, (), [new("desk")], "replace-all") == BindingDecision(bindings=(new("desk"),))
    # the registrar's per-subscriber limit is ignored
    assert apply(pm, old, [new("mobile")], "replace-all", {"max_contacts": 3}) == decision


def test_max_contacts_defaults_to_ten_then_reject_403(pm: Any) -> None:
    nine = tuple(dev(f"d{i}", float(i)) for i in range(9))
    tenth = apply(pm, nine, [new("d9")], "max-contacts")
    assert tenth == BindingDecision(bindings=(*nine, new("d9")))
    ten = tuple(dev(f"d{i}", float(i)) for i in range(10))
    eleventh = apply(pm, ten, [new("d10")], "max-contacts")
    assert eleventh == BindingDecision(
        bindings=ten, reject_status=403, reject_reason="Too many registered contacts (limit 10)"
    )


def test_max_contacts_reject_leaves_everything_unchanged(pm: Any) -> None:
    old = (dev("desk", 100.0), dev("soft", 200.0))
    options = {"max_contacts": 2, "at_limit": "reject", "reject_status": 486}
    # even a REGISTER that also refreshes one device and removes nothing is refused as a whole
    decision = apply(pm, old, [new("soft", 60), new("mobile")], "max-contacts", options)
    assert decision == BindingDecision(
        bindings=old,
        removed=(),
        reject_status=486,
        reject_reason="Too many registered contacts (limit 2)",
    )
    # a removal in the same REGISTER makes room
    swap = apply(pm, old, [new("desk", 0), new("mobile")], "max-contacts", options)
    assert swap == BindingDecision(bindings=(old[1], new("mobile")), removed=(old[0],))


def test_max_contacts_never_refuses_refreshes_or_removals_above_the_limit(pm: Any) -> None:
    # three devices but the limit (say, a subscriber's max_devices) is now 1
    old = (dev("a", 1.0), dev("b", 2.0), dev("c", 3.0))
    for mode in AT_LIMIT:
        options = {"max_contacts": 1, "at_limit": mode}
        refresh = apply(pm, old, [new("b", 60)], "max-contacts", options)
        assert refresh == BindingDecision(bindings=(old[0], new("b", 60), old[2]))
        removal = apply(pm, old, [new("a", 0)], "max-contacts", options)
        assert removal == BindingDecision(bindings=old[1:], removed=old[:1])


@pytest.mark.parametrize(
    ("mode", "evicted"),
    [
        ("evict-oldest", ["a"]),  # registered at 10
        ("evict-soonest-to-expire", ["c"]),  # 30 s left
        ("evict-unreachable-first", ["b"]),  # the only unreachable one
    ],
)
def test_max_contacts_eviction_picks_by_mode(pm: Any, mode: str, evicted: list[str]) -> None:
    a = dev("a", 10.0, expires=3000)
    b_ = dev("b", 20.0, expires=3000, reachable=False)
    c = dev("c", 30.0, expires=30)
    old = (a, b_, c)
    decision = apply(pm, old, [new("d")], "max-contacts", {"max_contacts": 3, "at_limit": mode})
    by_name = {"a": a, "b": b_, "c": c}
    gone = tuple(by_name[n] for n in evicted)
    assert decision == BindingDecision(
        bindings=(*(x for x in old if x not in gone), new("d")), removed=gone
    )


def test_max_contacts_eviction_ties_and_multiple_evictions(pm: Any) -> None:
    # registration order breaks ties: all registered at the same time, same lifetime, all reachable
    same = (dev("a", 5.0), dev("b", 5.0), dev("c", 5.0))
    for mode in AT_LIMIT[1:]:
        one = apply(pm, same, [new("d")], "max-contacts", {"max_contacts": 3, "at_limit": mode})
        assert one == BindingDecision(bindings=(*same[1:], new("d")), removed=same[:1]), mode

    # soonest-to-expire ties on expires: the older registration goes first
    t = (dev("a", 30.0, expires=100), dev("b", 10.0, expires=100), dev("c", 20.0, expires=500))
    out = apply(
        pm, t, [new("d")], "max-contacts", {"max_contacts": 3, "at_limit": "evict-soonest-to-expire"}
    )
    assert out.removed == (t[1],)

    # unreachable first (oldest of them first), then the oldest reachable ones
    u = (
        dev("a", 1.0),
        dev("b", 2.0, reachable=False),
        dev("c", 3.0),
        dev("d", 4.0, reachable=False),
    )
    two_new = [new("e"), new("f"), new("g")]
    out = apply(
        pm, u, two_new, "max-contacts", {"max_contacts": 4, "at_limit": "evict-unreachable-first"}
    )
    assert out.removed == (u[1], u[3], u[0])
    assert out.bindings == (u[2], *two_new) and out.reject_status is None

    # evict-oldest goes by registered_at even when existing is handed over out of order
    shuffled = (dev("late", 50.0), dev("early", 5.0))
    out = apply(
        pm, shuffled, [new("x")], "max-contacts", {"max_contacts": 2, "at_limit": "evict-oldest"}
    )
    assert out.removed == (shuffled[1],)


@pytest.mark.parametrize("mode", AT_LIMIT[1:])
def test_max_contacts_eviction_spares_devices_this_register_touched(pm: Any, mode: str) -> None:
    # the oldest, soonest-to-expire, unreachable device refreshes in the same REGISTER as a new one
    old = (dev("a", 1.0, expires=10, reachable=False), dev("b", 2.0))
    decision = apply(
        pm, old, [new("a", 3600), new("c")], "max-contacts", {"max_contacts": 2, "at_limit": mode}
    )
    assert decision == BindingDecision(bindings=(new("a", 3600), new("c")), removed=(old[1],))


@pytest.mark.parametrize("mode", AT_LIMIT[1:])
def test_max_contacts_eviction_cannot_make_room_for_too_many_new_devices(pm: Any, mode: str) -> None:
    old = (dev("a", 1.0),)
    options = {"max_contacts": 2, "at_limit": mode, "reject_status": 503}
    decision = apply(pm, old, [new("x"), new("y"), new("z")], "max-contacts", options)
    assert decision == BindingDecision(
        bindings=old, reject_status=503, reject_reason="Too many registered contacts (limit 2)"
    )


def test_max_contacts_subscriber_override_arrives_as_max_contacts(pm: Any) -> None:
    # the profile says 10, evict-oldest; the registrar replaces max_contacts with max_devices (2)
    old = (dev("a", 1.0), dev("b", 2.0))
    options = {"max_contacts": 2, "at_limit": "evict-oldest"}
    decision = apply(pm, old, [new("c")], "max-contacts", options)
    assert decision == BindingDecision(bindings=(old[1], new("c")), removed=(old[0],))


@pytest.mark.parametrize(
    ("policy", "options", "message"),
    [
        (
            "max-contacts",
            {"max_contacts": 0},
            "Bad option 'max_contacts' of binding policy max-contacts: expected an integer >= 1, "
            "got 0 (int)",
        ),
        (
            "max-contacts",
            {"max_contacts": True},
            "Bad option 'max_contacts' of binding policy max-contacts: expected an integer >= 1, "
            "got True (bool)",
        ),
        (
            "max-contacts",
            {"at_limit": "evict-newest"},
            "Bad option 'at_limit' of binding policy max-contacts: expected one of: reject, "
            "evict-oldest, evict-soonest-to-expire, evict-unreachable-first, got 'evict-newest' (str)",
        ),
        (
            "max-contacts",
            {"reject_status": 200},
            "Bad option 'reject_status' of binding policy max-contacts: expected an integer between "
            "400 and 699, got 200 (int)",
        ),
        (
            "max-contacts",
            {"reject_status": "403"},
            "Bad option 'reject_status' of binding policy max-contacts: expected an integer between "
            "400 and 699, got '403' (str)",
        ),
        (
            "max-contacts",
            {"at_limt": "reject"},
            "Bad option 'at_limt' of binding policy max-contacts: unknown option; expected one of: "
            "at_limit, max_contacts, reject_status",
        ),
        (
            "replace-all",
            {"at_limit": "reject"},
            "Bad option 'at_limit' of binding policy replace-all: unknown option; "
            "replace-all takes no options",
        ),
        (
            "unlimited",
            {"limit": 3},
            "Bad option 'limit' of binding policy unlimited: unknown option; unlimited takes no options",
        ),
    ],
)
def test_bad_options_refuse_with_500_naming_the_option(
    pm: Any, policy: str, options: dict[str, Any], message: str
) -> None:
    old = (b("sip:a@1"),)
    decision = apply(pm, old, [b("sip:b@2")], policy, options)
    assert decision == BindingDecision(bindings=old, reject_status=500, reject_reason=message)


def test_check_binding_policy_options() -> None:
    from imscore.profile.model import PolicyOptionError, check_binding_policy_options

    assert check_binding_policy_options("max-contacts", {}) == {
        "max_contacts": 10,
        "at_limit": "reject",
        "reject_status": 403,
    }
    assert check_binding_policy_options(
        "max-contacts", {"at_limit": "evict-oldest", "max_contacts": 5}
    ) == {
        "max_contacts": 5,
        "at_limit": "evict-oldest",
        "reject_status": 403,
    }
    assert check_binding_policy_options("replace-all", {}) == {}
    assert check_binding_policy_options("unlimited", {}) == {}
    # a third-party policy's options are its own business
    assert check_binding_policy_options("vendor-policy", {"x": [1]}) == {"x": [1]}
    with pytest.raises(PolicyOptionError) as info:
        check_binding_policy_options("max-contacts", {"max_contacts": 2.5})
    assert info.value.option == "max_contacts"
    assert info.value.message == "expected an integer >= 1, got 2.5 (float)"
    assert str(info.value) == "max_contacts: expected an integer >= 1, got 2.5 (float)"
