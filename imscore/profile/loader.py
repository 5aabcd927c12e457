"""Find, read and validate YAML profiles; turn a profile back into plain data or YAML.

Every failure is one :class:`~imscore.profile.errors.ProfileError` whose message starts with the file
(as the user named it), then the key path, then what was expected::

    profiles/x.yaml: key 'timers.t1': expected a number > 0, got 'fast' (str)
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Collection, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, cast

import yaml

from imscore.yamlload import UniqueKeyLoader, YamlReadError, read_yaml

from .errors import ProfileError
from .model import (
    DECISIONS,
    TRANSPORTS,
    ConnectionSettings,
    DnsSettings,
    Listener,
    OptionValue,
    OverloadSettings,
    PolicyChoice,
    PolicyOptionError,
    Profile,
    ProxySettings,
    QualifySettings,
    RegEventSettings,
    RegistrarSettings,
    Timers,
    TlsSettings,
    check_auth_options,
    check_binding_policy_options,
    check_forking_options,
)
from .schema import PROFILE_SCHEMA, SchemaError, format_path

__all__ = [
    "dump_profile",
    "effective_settings",
    "load_profile",
    "profile_from_data",
    "resolve_profile",
    "shipped_profiles",
    "unknown_transport",
]

_PACKAGE = "imscore"
_PROFILES_DIR = "profiles"
_SUFFIX = ".yaml"
_BARE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# --------------------------------------------------------------------------------------------------
# Finding profiles


def _shipped_dir() -> Path:
    return Path(str(resources.files(_PACKAGE).joinpath(_PROFILES_DIR)))


def shipped_profiles() -> tuple[str, ...]:
    """Names of the profiles shipped inside the package, sorted (``default``, ...).

    Other data shipped beside them has a dot in its name (``subscribers.demo.yaml``) and is not a
    profile.
    """
    folder = _shipped_dir()
    if not folder.is_dir():
        return ()
    return tuple(
        sorted(
            p.stem for p in folder.iterdir() if p.suffix == _SUFFIX and p.is_file() and "." not in p.stem
        )
    )


def _is_bare_name(text: str) -> bool:
    return bool(_BARE_NAME.fullmatch(text)) and not text.endswith((".yaml", ".yml"))


def resolve_profile(name_or_path: str | os.PathLike[str]) -> Path:
    """Turn a profile name or path into the file to read.

    A bare name (``default``, no directory part, no ``.yaml``) is a profile shipped with the package,
    found with :mod:`importlib.resources` wherever the package is installed, whatever the working
    directory. Anything else (a :class:`~os.PathLike`, ``./x``, ``x.yaml``) is a path, used as is.

    :raises ProfileError: for a bare name that is not a shipped profile.
    """
    if isinstance(name_or_path, str) and _is_bare_name(name_or_path):
        candidate = _shipped_dir() / f"{name_or_path}{_SUFFIX}"
        if name_or_path not in shipped_profiles():
            names = ", ".join(shipped_profiles()) or "(none shipped)"
            raise ProfileError(
                f"profile {name_or_path!r}",
                f"no such shipped profile; expected one of: {names}, or a path to a YAML file",
            )
        return candidate
    return Path(name_or_path)


# --------------------------------------------------------------------------------------------------
# Reading YAML


def _read_yaml(path: Path, source: str) -> object:
    try:
        return read_yaml(path, UniqueKeyLoader, "profile", quote_errors=True)
    except YamlReadError as exc:
        raise ProfileError(source, exc.detail) from None


# --------------------------------------------------------------------------------------------------
# Validating


def load_profile(
    path_or_name: str | os.PathLike[str],
    *,
    known_plugins: Mapping[str, Collection[str]] | None = None,
    known_transports: Mapping[str, str | None] | None = None,
) -> Profile:
    """Read, validate and return a profile with every default filled in.

    :param path_or_name: a shipped profile name (``default``) or a path (see :func:`resolve_profile`).
    :param known_plugins: plugin names registered per decision (``{"forking": {"parallel", ...}}``);
        when given, a profile naming any other plugin for a listed decision is rejected. ``None``
        skips that check.
    :param known_transports: the transports a listener may name: name -> the plugin (distribution)
        offering it, ``None`` for a built-in one (as
        :func:`imscore.transport.registry.known_transports` gives them).
        ``None``: the built-in ``udp``, ``tcp`` and ``tls`` only.
    :raises ProfileError: one message: the file, the key path, what was expected.
    """
    path = resolve_profile(path_or_name)
    bare = isinstance(path_or_name, str) and _is_bare_name(path_or_name)
    source = str(path) if bare else os.fspath(path_or_name)
    data = _read_yaml(path, source)
    return profile_from_data(
        data,
        source=source,
        default_name=path.stem,
        known_plugins=known_plugins,
        known_transports=known_transports,
    )


def profile_from_data(
    data: object,
    *,
    source: str,
    default_name: str,
    known_plugins: Mapping[str, Collection[str]] | None = None,
    known_transports: Mapping[str, str | None] | None = None,
) -> Profile:
    """Validate an already parsed document (``None`` counts as empty) and build the :class:`Profile`.

    :param source: the file (or other origin) that messages start with.
    :param default_name: the profile name when the document has no ``name`` key.
    :raises ProfileError: as :func:`load_profile`.
    """
    if data is None:
        data = {}
    try:
        plain = PROFILE_SCHEMA.validate(data, ())
    except SchemaError as exc:
        key = format_path(exc.path)
        if not key:
            raise ProfileError(source, f"top level: {exc.message}") from None
        raise ProfileError(source, exc.message, key=key) from None
    profile = _build(_mapping(plain), default_name)
    for index, listener in enumerate(profile.listeners):
        problem = unknown_transport(listener.transport, known_transports)
        if problem is not None:
            raise ProfileError(source, problem, key=f"listeners[{index}]")
    choice = profile.policies["binding_policy"]
    try:
        check_binding_policy_options(choice.plugin, choice.options)
    except PolicyOptionError as exc:
        raise ProfileError(
            source, exc.message, key=f"policies.binding_policy.options.{exc.option}"
        ) from None
    choice = profile.policies["forking"]
    try:
        check_forking_options(choice.plugin, choice.options)
    except PolicyOptionError as exc:
        raise ProfileError(source, exc.message, key=f"policies.forking.options.{exc.option}") from None
    choice = profile.policies["auth"]
    try:
        check_auth_options(choice.plugin, choice.options)
    except PolicyOptionError as exc:
        raise ProfileError(source, exc.message, key=f"policies.auth.options.{exc.option}") from None
    if known_plugins is not None:
        for decision, choice in profile.policies.items():
            if decision not in known_plugins:
                continue
            names = known_plugins[decision]
            if choice.plugin not in names:
                raise ProfileError(
                    source,
                    f"unknown plugin {choice.plugin!r}; expected one of: "
                    + (", ".join(sorted(names)) or "(none registered)"),
                    key=f"policies.{decision}.plugin",
                )
    return profile


def unknown_transport(name: str, known: Mapping[str, str | None] | None) -> str | None:
    """Why a listener cannot use transport ``name``, or ``None`` when it is built in or offered.

    :param known: as ``known_transports`` of :func:`load_profile` (``None``: built-ins only).
    """
    offered: Mapping[str, str | None] = known if known is not None else dict.fromkeys(TRANSPORTS)
    if name in offered:
        return None
    names = ", ".join(
        n if origin is None else f"{n} from plugin {origin}" for n, origin in offered.items()
    )
    hint = (
        "; SCTP comes with the imscore-sctp plugin: pip install ./plugins/imscore-sctp"
        if name == "sctp"
        else ""
    )
    return f"unknown transport {name!r} (known: {names}){hint}"


# The schema guarantees the types below; these helpers only narrow them for the type checker.


def _mapping(value: object) -> dict[str, object]:
    assert isinstance(value, dict)
    return cast("dict[str, object]", value)


def _str(value: object) -> str:
    assert isinstance(value, str)
    return value


def _opt_str(value: object) -> str | None:
    assert value is None or isinstance(value, str)
    return value


def _float(value: object) -> float:
    assert isinstance(value, float)
    return value


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def _list(value: object) -> list[object]:
    assert isinstance(value, list)
    return value


def _listener(value: object) -> Listener:
    assert isinstance(value, Listener)
    return value


def _build(plain: dict[str, object], default_name: str) -> Profile:
    timers = _mapping(plain["timers"])
    registrar = _mapping(plain["registrar"])
    policies = _mapping(plain["policies"])
    tls = _mapping(plain["tls"])
    connections = _mapping(plain["connections"])
    dns = _mapping(plain["dns"])
    proxy = _mapping(plain["proxy"])
    qualify = _mapping(plain["qualify"])
    reg_event = _mapping(plain["reg_event"])
    overload = _mapping(plain["overload"])
    name = plain["name"]
    return Profile(
        name=default_name if name is None else _str(name),
        description=_str(plain["description"]),
        domains=tuple(_str(d) for d in _list(plain["domains"])),
        listeners=tuple(_listener(lst) for lst in _list(plain["listeners"])),
        store=_str(plain["store"]),
        timers=Timers(t1=_float(timers["t1"]), t2=_float(timers["t2"]), t4=_float(timers["t4"])),
        registrar=RegistrarSettings(
            min_expires=_int(registrar["min_expires"]),
            max_expires=_int(registrar["max_expires"]),
            default_expires=_int(registrar["default_expires"]),
            unknown_user_status=_int(registrar["unknown_user_status"]),
            service_route=_opt_str(registrar["service_route"]),
        ),
        policies={
            decision: PolicyChoice(
                plugin=_str(_mapping(policies[decision])["plugin"]),
                options=cast("dict[str, OptionValue]", _mapping(policies[decision])["options"]),
            )
            for decision in DECISIONS
        },
        tls=TlsSettings(
            certfile=_opt_str(tls["certfile"]),
            keyfile=_opt_str(tls["keyfile"]),
            cafile=_opt_str(tls["cafile"]),
            verify_cafile=_opt_str(tls["verify_cafile"]),
        ),
        connections=ConnectionSettings(
            max_connections=_int(connections["max_connections"]),
            idle_timeout=_float(connections["idle_timeout"]),
            max_message_size=_int(connections["max_message_size"]),
            connect_timeout=_float(connections["connect_timeout"]),
            first_message_timeout=_float(connections["first_message_timeout"]),
            header_timeout=_float(connections["header_timeout"]),
            max_connections_per_source=_int(connections["max_connections_per_source"]),
        ),
        dns=DnsSettings(
            nameservers=tuple(cast("tuple[str, int]", ns) for ns in _list(dns["nameservers"])),
            timeout=_float(dns["timeout"]),
            cache_size=_int(dns["cache_size"]),
            prefer=_str(dns["prefer"]),
            negative_ttl=_int(dns["negative_ttl"]),
        ),
        proxy=ProxySettings(
            record_route=bool(proxy["record_route"]),
            originating_auth=tuple(_str(m) for m in _list(proxy["originating_auth"])),
            trusted_peers=tuple(_str(p) for p in _list(proxy["trusted_peers"])),
            outbound=_opt_str(proxy["outbound"]),
        ),
        qualify=QualifySettings(
            interval=_float(qualify["interval"]), max_failures=_int(qualify["max_failures"])
        ),
        reg_event=RegEventSettings(
            max_per_set=_int(reg_event["max_per_set"]),
            max_per_watcher=_int(reg_event["max_per_watcher"]),
        ),
        overload=OverloadSettings(
            max_lag=_float(overload["max_lag"]),
            retry_after=_int(overload["retry_after"]),
            max_backlog=_int(overload["max_backlog"]),
        ),
    )


# --------------------------------------------------------------------------------------------------
# Showing


def effective_settings(profile: Profile) -> dict[str, Any]:
    """The profile as plain data (what ``imscore profile show`` prints), every default present.

    The layout is the profile file's, so the result is itself a valid profile document.
    """
    return {
        "name": profile.name,
        "description": profile.description,
        "domains": list(profile.domains),
        "listeners": [str(listener) for listener in profile.listeners],
        "store": profile.store,
        "timers": {"t1": profile.timers.t1, "t2": profile.timers.t2, "t4": profile.timers.t4},
        "registrar": {
            "min_expires": profile.registrar.min_expires,
            "max_expires": profile.registrar.max_expires,
            "default_expires": profile.registrar.default_expires,
            "unknown_user_status": profile.registrar.unknown_user_status,
            "service_route": profile.registrar.service_route,
        },
        "policies": {
            decision: {"plugin": choice.plugin, "options": copy.deepcopy(choice.options)}
            for decision, choice in profile.policies.items()
        },
        "tls": {
            "certfile": profile.tls.certfile,
            "keyfile": profile.tls.keyfile,
            "cafile": profile.tls.cafile,
            "verify_cafile": profile.tls.verify_cafile,
        },
        "connections": {
            "max_connections": profile.connections.max_connections,
            "idle_timeout": profile.connections.idle_timeout,
            "max_message_size": profile.connections.max_message_size,
            "connect_timeout": profile.connections.connect_timeout,
            "first_message_timeout": profile.connections.first_message_timeout,
            "header_timeout": profile.connections.header_timeout,
            "max_connections_per_source": profile.connections.max_connections_per_source,
        },
        "dns": {
            "nameservers": [
                f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                for host, port in profile.dns.nameservers
            ],
            "timeout": profile.dns.timeout,
            "cache_size": profile.dns.cache_size,
            "prefer": profile.dns.prefer,
            "negative_ttl": profile.dns.negative_ttl,
        },
        "proxy": {
            "record_route": profile.proxy.record_route,
            "originating_auth": list(profile.proxy.originating_auth),
            "trusted_peers": list(profile.proxy.trusted_peers),
            "outbound": profile.proxy.outbound,
        },
        "reg_event": {
            "max_per_set": profile.reg_event.max_per_set,
            "max_per_watcher": profile.reg_event.max_per_watcher,
        },
        "qualify": {
            "interval": profile.qualify.interval,
            "max_failures": profile.qualify.max_failures,
        },
        "overload": {
            "max_lag": profile.overload.max_lag,
            "retry_after": profile.overload.retry_after,
            "max_backlog": profile.overload.max_backlog,
        },
    }


def dump_profile(profile: Profile) -> str:
    """The effective settings as YAML; loading the text gives an equal :class:`Profile`."""
    return yaml.safe_dump(
        effective_settings(profile), sort_keys=False, default_flow_style=False, allow_unicode=True
    )
