"""YAML profiles: shipped ones, lookup by name, validation messages, listeners, effective settings."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import pytest
import yaml

import imscore
from imscore.profile import (
    BUILTIN_PLUGINS,
    DECISIONS,
    Listener,
    ListenError,
    PolicyChoice,
    Profile,
    ProfileError,
    RegistrarSettings,
    Timers,
    TlsSettings,
    check_store_url,
    dump_profile,
    effective_settings,
    load_profile,
    parse_listen,
    profile_from_data,
    resolve_profile,
    shipped_profiles,
)

SHIPPED_DIR = Path(imscore.__file__).resolve().parent / "profiles"
FILE = "profiles/x.yaml"
Writer = Callable[[str], str]


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Writer:
    """Write ``profiles/x.yaml`` under a temporary working directory; return that relative path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles").mkdir()

    def _write(text: str) -> str:
        (tmp_path / FILE).write_text(text, encoding="utf-8")
        return FILE

    return _write


def message_of(path: str, known_plugins: Mapping[str, Collection[str]] | None = None) -> str:
    with pytest.raises(ProfileError) as info:
        load_profile(path, known_plugins=known_plugins)
    text = str(info.value)
    assert "\n" not in text, "one message, one line"
    # no chained exception to print: one error, one message
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__
    return text


# --------------------------------------------------------------------------------------------------
# Shipped profiles and name resolution


def test_shipped_profiles_are_listed() -> None:
    assert shipped_profiles() == (
        "default",
        "hunt-group",
        "ims",
        "legacy-single-registration",
        "multi-device",
    )


@pytest.mark.parametrize(
    "name", ["default", "hunt-group", "ims", "legacy-single-registration", "multi-device"]
)
def test_every_shipped_profile_loads_with_builtin_plugins(name: str) -> None:
    profile = load_profile(name, known_plugins=BUILTIN_PLUGINS)
    assert profile.name == name
    assert profile.domains == ("ims.example.test",)
    assert set(profile.policies) == set(DECISIONS)
    assert profile.description


def test_default_profile_contents() -> None:
    profile = load_profile("default")
    assert profile == Profile(
        name="default",
        description=profile.description,
        domains=("ims.example.test",),
        listeners=(Listener("udp", "127.0.0.1", 5060), Listener("tcp", "127.0.0.1", 5060)),
        store="sqlite:imscore.db",
        timers=Timers(0.5, 4.0, 5.0),
        registrar=RegistrarSettings(60, 7200, 3600, 404),
        policies={
            "binding_policy": PolicyChoice(
                "max-contacts", {"max_contacts": 10, "at_limit": "reject", "reject_status": 403}
            ),
            "forking": PolicyChoice("parallel", {}),
            "auth": PolicyChoice("digest-or-aka", {}),
        },
        tls=TlsSettings(None, None, None),
    )


def test_legacy_and_multi_device_differ_in_binding_policy() -> None:
    legacy = load_profile("legacy-single-registration")
    multi = load_profile("multi-device")
    assert legacy.policies["binding_policy"] == PolicyChoice("replace-all", {})
    assert multi.policies["binding_policy"] == PolicyChoice(
        "max-contacts", {"max_contacts": 10, "at_limit": "reject", "reject_status": 403}
    )
    assert legacy.policies["forking"].plugin == multi.policies["forking"].plugin == "parallel"
    assert legacy.policies["auth"] == PolicyChoice("digest", {"digest_algorithm": "MD5"})


def test_default_and_multi_device_have_the_same_policies() -> None:
    assert load_profile("default").policies == load_profile("multi-device").policies


def test_ims_profile_contents() -> None:
    profile = load_profile("ims", known_plugins=BUILTIN_PLUGINS)
    assert profile.policies == {
        "binding_policy": PolicyChoice("max-contacts", {"max_contacts": 5, "at_limit": "evict-oldest"}),
        "forking": PolicyChoice("parallel", {}),
        "auth": PolicyChoice("aka", {}),
    }
    assert "AKA" in profile.description


@pytest.mark.parametrize(
    "name", ["default", "hunt-group", "ims", "legacy-single-registration", "multi-device"]
)
def test_shipped_binding_policy_options_are_valid(name: str) -> None:
    from imscore.profile.model import check_binding_policy_options

    choice = load_profile(name).policies["binding_policy"]
    check_binding_policy_options(choice.plugin, choice.options)  # raises when invalid


def test_default_resolves_by_name_regardless_of_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # decoys in the working directory must not shadow the shipped profile
    (tmp_path / "default").write_text("not: a profile\n")
    (tmp_path / "default.yaml").write_text("not: a profile\n")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "default.yaml").write_text("not: a profile\n")
    path = resolve_profile("default")
    assert path.resolve() == (SHIPPED_DIR / "default.yaml").resolve()
    assert load_profile("default").name == "default"


def test_a_path_is_used_as_is(write: Writer) -> None:
    path = write("domains: [lab.test]\n")
    assert resolve_profile(path) == Path(path)
    assert resolve_profile(Path(path)) == Path(path)
    assert resolve_profile("./x") == Path("x")
    assert resolve_profile("x.yaml") == Path("x.yaml")
    profile = load_profile(path)
    assert profile.name == "x"  # no name key: the file name
    assert load_profile(Path(path)) == profile


def test_unknown_profile_name() -> None:
    with pytest.raises(ProfileError) as info:
        resolve_profile("nosuch")
    assert str(info.value) == (
        "profile 'nosuch': no such shipped profile; expected one of: "
        "default, hunt-group, ims, legacy-single-registration, multi-device, or a path to a YAML file"
    )


# --------------------------------------------------------------------------------------------------
# Validation: one message naming the file, the key path and what was expected

MIN = "domains: [ims.example.test]\n"

ERROR_CASES = [
    pytest.param(
        MIN + "registrar:\n  min_expire: 30\n",
        "key 'registrar.min_expire': unknown key; expected one of: "
        "default_expires, max_expires, min_expires, service_route, unknown_user_status",
        id="unknown-nested-key",
    ),
    pytest.param(
        MIN + "listen: [udp:127.0.0.1]\n",
        "key 'listen': unknown key; expected one of: "
        "connections, description, dns, domains, listeners, name, overload, policies, proxy, qualify, "
        "reg_event, registrar, "
        "store, "
        "timers, tls",
        id="unknown-top-key",
    ),
    pytest.param(
        MIN + "policies:\n  forkng: {plugin: parallel}\n",
        "key 'policies.forkng': unknown key; expected one of: auth, binding_policy, forking",
        id="unknown-decision",
    ),
    pytest.param(
        MIN + "policies:\n  forking: {plugin: parallel, option: {}}\n",
        "key 'policies.forking.option': unknown key; expected one of: options, plugin",
        id="unknown-policy-key",
    ),
    pytest.param(
        MIN + "timers:\n  t1: fast\n",
        "key 'timers.t1': expected a number > 0, got 'fast' (str)",
        id="t1-str",
    ),
    pytest.param(
        MIN + "timers:\n  t1: yes\n",
        "key 'timers.t1': expected a number > 0, got True (bool)",
        id="t1-bool",
    ),
    pytest.param(
        MIN + "timers:\n  t4: 0\n",
        "key 'timers.t4': expected a number > 0, got 0 (int)",
        id="t4-zero",
    ),
    pytest.param(
        MIN + "timers:\n  t1: 5\n",
        "key 'timers.t2': expected a number >= timers.t1 (5), got 4",
        id="t2-below-t1",
    ),
    pytest.param(
        MIN + "timers: [1, 2]\n",
        "key 'timers': expected a mapping with keys: t1, t2, t4, got a list",
        id="section-not-mapping",
    ),
    pytest.param(
        MIN + "registrar:\n  min_expires: '60'\n",
        "key 'registrar.min_expires': expected an integer >= 1, got '60' (str)",
        id="int-as-str",
    ),
    pytest.param(
        MIN + "registrar:\n  min_expires: 1.5\n",
        "key 'registrar.min_expires': expected an integer >= 1, got 1.5 (float)",
        id="int-as-float",
    ),
    pytest.param(
        MIN + "registrar:\n  unknown_user_status: 500\n",
        "key 'registrar.unknown_user_status': expected one of: 401, 403, 404, got 500 (int)",
        id="status",
    ),
    pytest.param(
        MIN + "registrar:\n  min_expires: 600\n  max_expires: 300\n",
        "key 'registrar.max_expires': expected an integer >= registrar.min_expires (600), got 300",
        id="max-below-min",
    ),
    pytest.param(
        MIN + "registrar:\n  default_expires: 10\n",
        "key 'registrar.default_expires': expected an integer between registrar.min_expires (60) "
        "and registrar.max_expires (7200), got 10",
        id="default-outside",
    ),
    pytest.param(
        "name: x\n",
        "key 'domains': required key missing; expected a list of a domain name (one at least)",
        id="domains-missing",
    ),
    pytest.param(
        "",
        "key 'domains': required key missing; expected a list of a domain name (one at least)",
        id="empty-file",
    ),
    pytest.param(
        "domains: []\n",
        "key 'domains': expected a list of a domain name (one at least), got a list",
        id="domains-empty",
    ),
    pytest.param(
        "domains: ims.example.test\n",
        "key 'domains': expected a list of a domain name (one at least), got 'ims.example.test' (str)",
        id="domains-scalar",
    ),
    pytest.param(
        "domains: [a.test, A.TEST]\n",
        "key 'domains[1]': repeats 'A.TEST' (str); expected each entry once",
        id="domains-repeat",
    ),
    pytest.param(
        "domains: [a.test, 'bad domain']\n",
        "key 'domains[1]': 'bad domain' is not a domain name; "
        "expected labels of letters, digits and '-'",
        id="domain-bad",
    ),
    pytest.param(
        MIN + "listeners: [udp:127.0.0.1:5060, 'sctp:127.0.0.1:5060']\n",
        "key 'listeners[1]': unknown transport 'sctp' (known: udp, tcp, tls); SCTP comes with the "
        "imscore-sctp plugin: pip install ./plugins/imscore-sctp",
        id="listener-transport",
    ),
    pytest.param(
        MIN + "listeners: ['udp:::1:5060']\n",
        "key 'listeners[0]': IPv6 address without brackets in 'udp:::1:5060'; "
        "expected it in brackets, as udp:[::1]:5060",
        id="listener-ipv6-brackets",
    ),
    pytest.param(
        MIN + "listeners: [udp:127.0.0.1:5060, 'udp:127.0.0.1']\n",
        "key 'listeners[1]': repeats 'udp:127.0.0.1' (str); expected each entry once",
        id="listener-repeat",
    ),
    pytest.param(
        MIN + "listeners: [5060]\n",
        "key 'listeners[0]': expected a listener as TRANSPORT:HOST[:PORT], got 5060 (int)",
        id="listener-int",
    ),
    pytest.param(
        MIN + "store: /var/lib/imscore.db\n",
        "key 'store': unknown store '/var/lib/imscore.db'; expected 'memory:', 'sqlite:PATH', "
        "'redis://HOST[:PORT][/DB]' or SCHEME:... of a plugin's binding store",
        id="store",
    ),
    pytest.param(
        MIN + "policies:\n  forking: parallel\n",
        "key 'policies.forking': expected a mapping with keys: options, plugin, got 'parallel' (str)",
        id="policy-scalar",
    ),
    pytest.param(
        MIN + "policies:\n  forking: {options: {}}\n",
        "key 'policies.forking.plugin': required key missing; expected a non-empty string",
        id="plugin-missing",
    ),
    pytest.param(
        MIN + "policies:\n  forking: {plugin: hunt, options: [1]}\n",
        "key 'policies.forking.options': expected a mapping of option names to values, got a list",
        id="options-list",
    ),
    pytest.param(
        MIN + "policies:\n  forking: {plugin: hunt, options: {1: x}}\n",
        "key 'policies.forking.options': expected string keys, got 1 (int)",
        id="options-key",
    ),
    pytest.param(
        MIN + "policies:\n  forking: {plugin: hunt, options: {at: 2024-01-01}}\n",
        "key 'policies.forking.options.at': expected a string, number, boolean, null, list or mapping, "
        "got datetime.date(2024, 1, 1) (date)",
        id="options-date",
    ),
    pytest.param(
        MIN + "listeners: ['tls:[::1]']\n",
        "key 'tls.certfile': required by listener 'tls:[::1]:5061'; expected a path to a PEM file",
        id="tls-without-cert",
    ),
    pytest.param(
        MIN + "tls: {certfile: 3}\n",
        "key 'tls.certfile': expected a non-empty string or null, got 3 (int)",
        id="tls-type",
    ),
    pytest.param(
        "- domains\n",
        "top level: expected a mapping with keys: "
        "connections, description, dns, domains, listeners, name, overload, policies, proxy, qualify, "
        "reg_event, registrar, "
        "store, "
        "timers, tls, got a list",
        id="top-level-list",
    ),
    pytest.param(
        "domains: [a.test\nstore: memory:\n",
        "line 2, column 6: invalid YAML: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence)",
        id="yaml-syntax",
    ),
    pytest.param(
        "domains: [a.test]\ntimers:\n  t1: 1\n  t1: 2\n",
        "line 4, column 3: invalid YAML: duplicate key 't1'",
        id="yaml-duplicate-key",
    ),
    pytest.param(
        "domains: [a.test]\nx: !!python/object:os.system ls\n",
        "line 2, column 4: invalid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object:os.system'",
        id="yaml-unsafe-tag",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES)
def test_invalid_profile_gives_one_exact_message(write: Writer, text: str, expected: str) -> None:
    assert message_of(write(text)) == f"{FILE}: {expected}"


def test_error_attributes(write: Writer) -> None:
    path = write(MIN + "timers:\n  t1: fast\n")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert info.value.source == FILE
    assert info.value.key == "timers.t1"
    assert info.value.detail == "expected a number > 0, got 'fast' (str)"


def test_unknown_plugin_name(write: Writer) -> None:
    path = write(MIN + "policies:\n  forking:\n    plugin: paralel\n")
    assert message_of(path, known_plugins=BUILTIN_PLUGINS) == (
        f"{FILE}: key 'policies.forking.plugin': unknown plugin 'paralel'; "
        "expected one of: hunt, parallel, sequential"
    )
    # without known plugins there is nothing to check against
    assert load_profile(path).policies["forking"].plugin == "paralel"
    # a decision missing from known_plugins is not checked; an empty one rejects everything
    partial = load_profile(path, known_plugins={"auth": ["digest-or-aka"]})
    assert partial.policies["forking"].plugin == "paralel"
    assert message_of(path, known_plugins={"forking": []}) == (
        f"{FILE}: key 'policies.forking.plugin': unknown plugin 'paralel'; "
        "expected one of: (none registered)"
    )


def test_third_party_plugin_name_accepted_when_known(write: Writer) -> None:
    path = write(MIN + "policies:\n  auth: {plugin: vendor-auth, options: {realm: x}}\n")
    known = {**BUILTIN_PLUGINS, "auth": (*BUILTIN_PLUGINS["auth"], "vendor-auth")}
    assert load_profile(path, known_plugins=known).policies["auth"] == PolicyChoice(
        "vendor-auth", {"realm": "x"}
    )


def test_unreadable_files(write: Writer, tmp_path: Path) -> None:
    write(MIN)
    assert message_of("profiles/missing.yaml") == (
        "profiles/missing.yaml: cannot read profile: no such file"
    )
    (tmp_path / "profiles" / "bin.yaml").write_bytes(b"domains: [\xff]\n")
    assert message_of("profiles/bin.yaml") == (
        "profiles/bin.yaml: cannot read profile: not UTF-8 text (byte 10 is 0xff)"
    )
    assert message_of("profiles/") == "profiles/: cannot read profile: Is a directory"


# --------------------------------------------------------------------------------------------------
# Listeners

LISTEN_OK = [
    ("udp:127.0.0.1:5060", Listener("udp", "127.0.0.1", 5060)),
    ("tcp:10.0.0.1:5080", Listener("tcp", "10.0.0.1", 5080)),
    ("udp:127.0.0.1", Listener("udp", "127.0.0.1", 5060)),
    ("tcp:127.0.0.1", Listener("tcp", "127.0.0.1", 5060)),
    ("tls:127.0.0.1", Listener("tls", "127.0.0.1", 5061)),
    ("tcp:[::1]:5060", Listener("tcp", "::1", 5060)),
    ("tls:[::1]", Listener("tls", "::1", 5061)),
    ("udp:[2001:db8::5]:5070", Listener("udp", "2001:db8::5", 5070)),
    ("UDP:localhost:0", Listener("udp", "localhost", 0)),
    ("tls:sip.example.test:65535", Listener("tls", "sip.example.test", 65535)),
]


@pytest.mark.parametrize(("text", "listener"), LISTEN_OK)
def test_parse_listen(text: str, listener: Listener) -> None:
    assert parse_listen(text) == listener
    assert parse_listen(str(listener)) == listener  # str() is the canonical form


def test_listener_str_brackets_ipv6() -> None:
    assert str(Listener("tcp", "::1", 5060)) == "tcp:[::1]:5060"
    assert str(Listener("udp", "127.0.0.1", 5060)) == "udp:127.0.0.1:5060"


LISTEN_BAD = [
    (
        "127.0.0.1:5060",
        "unknown transport '127.0.0.1' in '127.0.0.1:5060'; expected one of: tcp, tls, udp",
    ),
    ("sctp:127.0.0.1", "unknown transport 'sctp' in 'sctp:127.0.0.1'; expected one of: tcp, tls, udp"),
    ("udp", "expected TRANSPORT:HOST[:PORT] such as udp:127.0.0.1:5060, got 'udp'"),
    ("", "expected TRANSPORT:HOST[:PORT] such as udp:127.0.0.1:5060, got ''"),
    ("udp:", "missing host in 'udp:'; expected TRANSPORT:HOST[:PORT]"),
    ("udp::5060", "missing host in 'udp::5060'; expected TRANSPORT:HOST[:PORT]"),
    ("udp:127.0.0.1:99999", "bad port '99999' in 'udp:127.0.0.1:99999'; expected an integer 0-65535"),
    ("udp:127.0.0.1:abc", "bad port 'abc' in 'udp:127.0.0.1:abc'; expected an integer 0-65535"),
    ("udp:127.0.0.1:", "bad port '' in 'udp:127.0.0.1:'; expected an integer 0-65535"),
    ("udp:127.0.0.1:-1", "bad port '-1' in 'udp:127.0.0.1:-1'; expected an integer 0-65535"),
    ("tcp:[::1]:70000", "bad port '70000' in 'tcp:[::1]:70000'; expected an integer 0-65535"),
    (
        "tcp:::1",
        "IPv6 address without brackets in 'tcp:::1'; expected it in brackets, as tcp:[::1]:5060",
    ),
    (
        "tls:2001:db8::1:5061",
        "IPv6 address without brackets in 'tls:2001:db8::1:5061'; expected it in brackets, "
        "as tls:[::1]:5061",
    ),
    ("tcp:[::1:5060", "missing ']' in 'tcp:[::1:5060'; expected an IPv6 address as [::1]"),
    (
        "tcp:[127.0.0.1]:5060",
        "'127.0.0.1' in 'tcp:[127.0.0.1]:5060' is not an IPv6 address; "
        "expected an IPv6 address inside brackets",
    ),
    ("tcp:[::1]5060", "unexpected '5060' after ']' in 'tcp:[::1]5060'; expected ':PORT' or nothing"),
    (
        "udp:bad_host:5060",
        "host 'bad_host' in 'udp:bad_host:5060' is not an IP address or a host name; "
        "expected an IPv4 address, a host name or an IPv6 address in brackets",
    ),
    (
        "udp:300.1.1.1",
        "host '300.1.1.1' in 'udp:300.1.1.1' is not an IP address or a host name; "
        "expected an IPv4 address, a host name or an IPv6 address in brackets",
    ),
]


@pytest.mark.parametrize(("text", "message"), LISTEN_BAD)
def test_parse_listen_errors(text: str, message: str) -> None:
    with pytest.raises(ListenError) as info:
        parse_listen(text)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_listener_constructor_validates() -> None:
    with pytest.raises(ListenError, match="unknown transport 'SC TP'"):
        Listener("SC TP", "127.0.0.1", 5060)
    assert Listener("sctp", "127.0.0.1", 5060).transport == "sctp"  # a plugin may offer it
    with pytest.raises(ListenError, match="port 70000 out of range"):
        Listener("udp", "127.0.0.1", 70000)


@pytest.mark.parametrize(
    "url", ["memory:", "sqlite:imscore.db", "sqlite:/var/lib/x.db", "redis://h:6379/0"]
)
def test_store_urls_accepted(url: str) -> None:
    assert check_store_url(url) == url


def test_store_memory_without_colon() -> None:
    # `store: memory:` is a YAML syntax error unless quoted, so plain `memory` is accepted too
    assert check_store_url("memory") == "memory:"


@pytest.mark.parametrize("url", ["memory:x", "sqlite:", "", "redis://", "/a/path", "mem", "1x:y"])
def test_store_urls_rejected(url: str) -> None:
    with pytest.raises(ValueError, match=r"expected 'memory:', 'sqlite:PATH', 'redis://.* or SCHEME:"):
        check_store_url(url)


def test_a_plugin_store_scheme_is_accepted_and_checked_at_start() -> None:
    assert check_store_url("postgres://db.example.test/ims") == "postgres://db.example.test/ims"


# --------------------------------------------------------------------------------------------------
# Effective settings and round trip


def test_effective_settings_fill_defaults(write: Writer) -> None:
    profile = load_profile(write("domains: [Lab.Test]\n"))
    assert effective_settings(profile) == {
        "name": "x",
        "description": "",
        "domains": ["lab.test"],
        "listeners": ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"],
        "store": "sqlite:imscore.db",
        "timers": {"t1": 0.5, "t2": 4.0, "t4": 5.0},
        "registrar": {
            "min_expires": 60,
            "max_expires": 7200,
            "default_expires": 3600,
            "unknown_user_status": 404,
            "service_route": None,
        },
        "policies": {
            "binding_policy": {"plugin": "max-contacts", "options": {}},
            "forking": {"plugin": "parallel", "options": {}},
            "auth": {"plugin": "digest-or-aka", "options": {}},
        },
        "tls": {"certfile": None, "keyfile": None, "cafile": None, "verify_cafile": None},
        "connections": {
            "max_connections": 1024,
            "idle_timeout": 600.0,
            "max_message_size": 65535,
            "connect_timeout": 5.0,
            "first_message_timeout": 20.0,
            "header_timeout": 10.0,
            "max_connections_per_source": 128,
        },
        "dns": {
            "nameservers": [],
            "timeout": 2.0,
            "cache_size": 1024,
            "prefer": "ipv4",
            "negative_ttl": 30,
        },
        "proxy": {
            "record_route": False,
            "originating_auth": ["trusted-peer", "registered-flow", "digest"],
            "trusted_peers": [],
            "outbound": None,
        },
        "reg_event": {"max_per_set": 16, "max_per_watcher": 8},
        "qualify": {"interval": 0.0, "max_failures": 3},
        "overload": {"max_lag": 0.25, "retry_after": 5, "max_backlog": 262144},
    }


def test_connection_limits(write: Writer) -> None:
    profile = load_profile(
        write(MIN + "connections: {max_connections: 2, idle_timeout: 0.5, max_message_size: 4096}\n")
    )
    assert (profile.connections.max_connections, profile.connections.idle_timeout) == (2, 0.5)
    assert profile.connections.max_message_size == 4096
    with pytest.raises(ProfileError) as info:
        load_profile(write(MIN + "connections: {max_connections: 0}\n"))
    assert "key 'connections.max_connections'" in str(info.value)


def test_proxy_and_qualify_sections(write: Writer) -> None:
    profile = load_profile(
        write(
            MIN + "proxy: {record_route: true, originating_auth: [digest], trusted_peers: ['::1'],"
            " outbound: 'sip:127.0.0.1:5090;transport=tcp'}\nqualify: {interval: 30, max_failures: 2}\n"
        )
    )
    assert profile.proxy.record_route is True
    assert profile.proxy.originating_auth == ("digest",)
    assert profile.proxy.trusted_peers == ("::1",)
    assert profile.proxy.outbound == "sip:127.0.0.1:5090;transport=tcp"
    assert (profile.qualify.interval, profile.qualify.max_failures) == (30.0, 2)
    for text, key, expected in [
        ("proxy: {record_route: yes please}", "proxy.record_route", "expected true or false"),
        ("proxy: {originating_auth: [magic]}", "proxy.originating_auth[0]", "expected one of: "),
        ("proxy: {trusted_peers: [pcscf.test]}", "proxy.trusted_peers[0]", "expected an IPv4 or IPv6"),
        ("proxy: {outbound: 'http://x'}", "proxy.outbound", "expected a sip: or sips: URI"),
        ("qualify: {interval: -1}", "qualify.interval", "expected a number >= 0, got -1 (int)"),
    ]:
        with pytest.raises(ProfileError) as info:
            load_profile(write(MIN + text + "\n"))
        assert f"key '{key}'" in str(info.value), text
        assert expected in str(info.value), (text, str(info.value))


def test_empty_sections_mean_defaults(write: Writer) -> None:
    profile = load_profile(write(MIN + "timers:\nregistrar: {}\npolicies:\n  forking: {plugin: hunt}\n"))
    assert profile.timers == Timers()
    assert profile.registrar == RegistrarSettings()
    assert profile.policies["forking"] == PolicyChoice("hunt", {})
    assert profile.policies["auth"] == PolicyChoice("digest-or-aka", {})


def test_effective_settings_is_plain_data_and_a_copy() -> None:
    profile = load_profile("default")
    settings = effective_settings(profile)
    settings["policies"]["binding_policy"]["options"]["max_contacts"] = 1
    assert profile.policies["binding_policy"].options["max_contacts"] == 10
    # plain data only: safe_dump accepts it
    assert yaml.safe_load(yaml.safe_dump(settings)) == settings


CUSTOM = """\
name: lab
description: every knob set
domains: [ims.example.test, Other.Example.Test]
listeners: ['udp:[::1]', 'tls:127.0.0.1:5071', 'TCP:localhost']
store: memory
timers: {t1: 1, t2: 8, t4: 2.5}
registrar: {min_expires: 30, max_expires: 600, default_expires: 300, unknown_user_status: 403}
policies:
  binding_policy:
    plugin: max-contacts
    options: {max_contacts: 3, at_limit: evict-unreachable-first}
  forking: {plugin: hunt, options: {ring_timeout: 20}}
  auth: {plugin: aka, options: {nested: {a: [1, 2.5, null, true]}}}
tls: {certfile: cert.pem, keyfile: key.pem, cafile: null}
"""


def test_custom_profile_values(write: Writer) -> None:
    profile = load_profile(write(CUSTOM), known_plugins=BUILTIN_PLUGINS)
    assert profile.name == "lab"
    assert profile.domains == ("ims.example.test", "other.example.test")
    assert profile.listeners == (
        Listener("udp", "::1", 5060),
        Listener("tls", "127.0.0.1", 5071),
        Listener("tcp", "localhost", 5060),
    )
    assert profile.store == "memory:"
    assert profile.timers == Timers(1.0, 8.0, 2.5)
    assert isinstance(profile.timers.t1, float)
    assert profile.registrar == RegistrarSettings(30, 600, 300, 403)
    assert profile.policies["binding_policy"] == PolicyChoice(
        "max-contacts", {"max_contacts": 3, "at_limit": "evict-unreachable-first"}
    )
    assert profile.policies["forking"] == PolicyChoice("hunt", {"ring_timeout": 20})
    assert profile.policies["auth"] == PolicyChoice("aka", {"nested": {"a": [1, 2.5, None, True]}})
    assert profile.tls == TlsSettings("cert.pem", "key.pem", None)


@pytest.mark.parametrize(
    "source", ["default", "ims", "legacy-single-registration", "multi-device", "custom"]
)
def test_dump_load_round_trip(write: Writer, tmp_path: Path, source: str) -> None:
    original = load_profile(write(CUSTOM)) if source == "custom" else load_profile(source)
    dumped = dump_profile(original)
    (tmp_path / "dumped.yaml").write_text(dumped, encoding="utf-8")
    again = load_profile(tmp_path / "dumped.yaml")
    assert again == original
    assert dump_profile(again) == dumped
    assert yaml.safe_load(dumped) == effective_settings(original)


def test_profile_from_data() -> None:
    profile = profile_from_data({"domains": ["a.test"]}, source="<cli>", default_name="adhoc")
    assert profile.name == "adhoc"
    with pytest.raises(ProfileError) as info:
        profile_from_data({"domains": ["a.test"], "store": 1}, source="<cli>", default_name="adhoc")
    assert str(info.value) == (
        "<cli>: key 'store': expected a store URL ('memory:', 'sqlite:PATH' or 'redis://...'), "
        "got 1 (int)"
    )


def test_hunt_group_profile_contents() -> None:
    profile = load_profile("hunt-group", known_plugins=BUILTIN_PLUGINS)
    assert profile.policies["forking"] == PolicyChoice(
        "hunt", {"ring_timeout": 10, "order": "newest-first"}
    )
    assert (profile.qualify.interval, profile.qualify.max_failures) == (30.0, 3)


def test_forking_options_are_checked_at_load(write: Writer) -> None:
    for text, key, expected in [
        ("policies:\n  forking: {plugin: hunt, options: {order: random}}\n", "order", "expected one of"),
        ("policies:\n  forking: {plugin: hunt, options: {ring_timeout: 0}}\n", "ring_timeout", "> 0"),
        ("policies:\n  forking: {plugin: parallel, options: {order: q}}\n", "order", "unknown option"),
    ]:
        with pytest.raises(ProfileError) as info:
            load_profile(write(MIN + text))
        assert f"key 'policies.forking.options.{key}'" in str(info.value), text
        assert expected in str(info.value), str(info.value)


def test_the_shipped_profiles_are_the_top_level_profiles_folder() -> None:
    """One copy: ``profiles/`` of the repository is what the installed package ships (in a
    checkout ``imscore/profiles`` links to it; a wheel carries its files)."""
    from importlib import resources

    top = Path(__file__).resolve().parent.parent / "profiles"
    installed = Path(str(resources.files("imscore").joinpath("profiles")))
    names = sorted(p.name for p in top.glob("*.yaml"))
    assert "default.yaml" in names and "subscribers.demo.yaml" in names
    assert sorted(p.name for p in installed.glob("*.yaml")) == names
    for name in names:
        assert (installed / name).read_bytes() == (top / name).read_bytes(), name
