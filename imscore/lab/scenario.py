"""Lab scenario files: subscribers, devices, callers and a timeline of steps (YAML, validated).

A scenario names who takes part and what happens, in order::

    name: three-devices
    subscribers: demo                 # the demo subscribers, or a subscriber file (relative path)
    devices:
      - {name: app, impi: alice@ims.example.test, password: alice-secret,
         impu: sip:alice@ims.example.test, address: 192.0.2.11:5060, on_call: {answer_after: 2}}
    callers:
      - {name: carol, uri: sip:carol@example.org, address: 192.0.2.50:5060}
    steps:
      - register: app
      - call: {from: carol, to: sip:alice@ims.example.test}

A bad file stops with one line naming the file, the key path and what was expected, as profiles do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn

from imscore.profile.schema import (
    Bool,
    Field,
    Int,
    KeyPath,
    ListOf,
    Node,
    Number,
    Optional,
    Parsed,
    Record,
    SchemaError,
    Str,
    describe,
    format_path,
)
from imscore.sip import SipError, SipUri, TelUri, parse_uri
from imscore.yamlload import UniqueKeyLoader, YamlReadError, read_yaml

__all__ = [
    "AS_BEHAVIOURS",
    "BEHAVIOURS",
    "AppServerSpec",
    "Behaviour",
    "CallerSpec",
    "DeviceSpec",
    "Scenario",
    "ScenarioError",
    "Step",
    "load_scenario",
]


class ScenarioError(Exception):
    """A scenario file cannot be read or is invalid: one line with the file, key and expectation."""

    def __init__(self, source: str, detail: str, *, key: str | None = None) -> None:
        self.source, self.detail, self.key = source, detail, key
        where = f"{source}: key {key!r}" if key else source
        super().__init__(f"{where}: {detail}")


#: What a device does with an incoming INVITE.
BEHAVIOURS: Final = ("answer", "busy", "no-answer", "decline")


@dataclass(frozen=True)
class Behaviour:
    """A device's answer to a call: ``kind`` one of :data:`BEHAVIOURS`; ``after`` seconds of ringing
    before answering (``answer``); ``status`` for ``decline`` (default 603)."""

    kind: str = "answer"
    after: float = 0.0
    status: int = 603

    def __str__(self) -> str:
        if self.kind == "answer":
            return f"answer after {self.after:g} s"
        if self.kind == "decline":
            return f"decline {self.status}"
        return self.kind


@dataclass(frozen=True)
class DeviceSpec:
    """A subscriber's device: who it registers as, where it is, and how it takes calls."""

    name: str
    impi: str
    password: str | None
    impu: str
    address: tuple[str, int]
    on_call: Behaviour = field(default_factory=Behaviour)
    instance: str | None = None
    expires: int = 3600
    user_agent: str | None = None
    #: ask for GRUUs (``Supported: gruu``, RFC 5627; needs an instance)
    gruu: bool = False
    #: register an outbound flow with this ``reg-id`` (``Supported: outbound``, RFC 5626)
    reg_id: int | None = None


@dataclass(frozen=True)
class CallerSpec:
    """Someone calling in (not a subscriber: no credentials needed to call a served user)."""

    name: str
    uri: str
    address: tuple[str, int]


#: What a lab application server does with what the S-CSCF sends it (TS 24.229 §5.7): ``accept``
#: answers a third-party REGISTER with 200 and sends an initial request back to the S-CSCF as it
#: came (a proxy in the path); ``redirect`` does the same but sends an INVITE back to ``redirect_to``
#: (a changed Request-URI, §5.7.3); ``silent`` never answers (the iFC's default handling applies).
AS_BEHAVIOURS: Final = ("accept", "redirect", "silent")


@dataclass(frozen=True)
class AppServerSpec:
    """An application server the subscribers' initial filter criteria name by its address."""

    name: str
    address: tuple[str, int]
    behaviour: str = "accept"
    redirect_to: str | None = None


@dataclass(frozen=True)
class Step:
    """One timeline entry: ``action`` and its arguments."""

    action: str
    args: Mapping[str, Any]

    def describe(self) -> str:
        """A short text for tables and ladders, e.g. ``call carol -> sip:alice@…``."""
        a = self.args
        if self.action == "call":
            return f"call {a['from']} -> {a['to']}"
        if self.action == "wait":
            return f"wait {a['seconds']:g} s"
        if self.action == "on_call":
            return f"{a['device']}: {a['behaviour']}"
        if self.action == "subscribe":
            return f"{a['device']} subscribes to reg"
        return f"{self.action} {a['device']}"


@dataclass(frozen=True)
class Scenario:
    """A validated scenario file."""

    name: str
    description: str
    source: str
    subscribers: str | None  # None: the demo subscribers
    devices: tuple[DeviceSpec, ...]
    callers: tuple[CallerSpec, ...]
    steps: tuple[Step, ...]
    application_servers: tuple[AppServerSpec, ...] = ()

    def device(self, name: str) -> DeviceSpec:
        for device in self.devices:
            if device.name == name:
                return device
        raise KeyError(name)


def _address(text: str) -> tuple[str, int]:
    import ipaddress

    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, "5060"
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected an IP:PORT address, got {text!r}") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected an IP:PORT address with a port 1-65535, got {text!r}")
    return host, int(port)


def _uri(text: str) -> str:
    try:
        uri = parse_uri(text)
    except SipError as exc:
        raise ValueError(f"expected a sip: or tel: URI, got {text!r} ({exc.reason})") from None
    if not isinstance(uri, SipUri | TelUri):
        raise ValueError(f"expected a sip: or tel: URI, got {text!r}")
    return text


def _name(text: str) -> str:
    if not text.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"expected a name of letters, digits, '-' and '_', got {text!r}")
    return text


class _BehaviourNode(Node):
    expected = (
        "answer, busy, no-answer, decline, or a mapping {answer_after: SECONDS} / {decline: STATUS}"
    )

    def validate(self, value: object, path: KeyPath) -> object:
        if isinstance(value, str) and value in BEHAVIOURS:
            return Behaviour(value)
        if isinstance(value, dict) and len(value) == 1:
            ((key, inner),) = value.items()
            if key == "answer_after":
                seconds = Number(gt=-1).validate(inner, (*path, key))
                assert isinstance(seconds, float)
                return Behaviour("answer", after=seconds)
            if key == "decline":
                status = Int(minimum=300, maximum=699).validate(inner, (*path, key))
                assert isinstance(status, int)
                return Behaviour("decline", status=status)
        self.fail(value, path)


_DEVICE = Record(
    {
        "name": Field(Parsed("a name", _name)),
        "impi": Field(Str()),
        "password": Field(Optional(Str()), None),
        "impu": Field(Parsed("a sip: or tel: URI", _uri)),
        "address": Field(Parsed("an IP:PORT address", _address)),
        "on_call": Field(_BehaviourNode(), "answer"),
        "instance": Field(Optional(Str()), None),
        "expires": Field(Int(minimum=1), 3600),
        "user_agent": Field(Optional(Str()), None),
        "gruu": Field(Bool(), False),
        "reg_id": Field(Optional(Int(minimum=1)), None),
    }
)
_CALLER = Record(
    {
        "name": Field(Parsed("a name", _name)),
        "uri": Field(Parsed("a sip: or tel: URI", _uri)),
        "address": Field(Parsed("an IP:PORT address", _address)),
    }
)


def _as_behaviour(text: str) -> str:
    if text not in AS_BEHAVIOURS:
        raise ValueError(f"expected one of {', '.join(AS_BEHAVIOURS)}, got {text!r}")
    return text


_APP_SERVER = Record(
    {
        "name": Field(Parsed("a name", _name)),
        "address": Field(Parsed("an IP:PORT address", _address)),
        "behaviour": Field(Parsed("accept, redirect or silent", _as_behaviour), "accept"),
        "redirect_to": Field(Optional(Parsed("a sip: or tel: URI", _uri)), None),
    }
)

#: each step action and the record of its arguments (a bare name stands for ``{device: NAME}``)
_DEVICE_ARG = {"device": Field(Str())}
_ACTIONS: Final[Mapping[str, Record]] = {
    "register": Record({**_DEVICE_ARG, "expires": Field(Optional(Int(minimum=1)), None)}),
    "deregister": Record(_DEVICE_ARG),
    "offline": Record(_DEVICE_ARG),
    "online": Record(_DEVICE_ARG),
    "subscribe": Record({**_DEVICE_ARG, "expires": Field(Int(minimum=1), 600)}),
    "on_call": Record({**_DEVICE_ARG, "behaviour": Field(_BehaviourNode())}),
    "wait": Record({"seconds": Field(Number(gt=0))}),
    "call": Record(
        {
            "from": Field(Str()),
            "to": Field(Parsed("a sip: or tel: URI", _uri)),
            "hangup_after": Field(Number(gt=0), 1.0),
            "timeout": Field(Number(gt=0), 300.0),
        }
    ),
}


class _StepNode(Node):
    expected = "a mapping with one action: " + ", ".join(_ACTIONS)

    def validate(self, value: object, path: KeyPath) -> object:
        if not isinstance(value, dict) or len(value) != 1:
            self.fail(value, path)
        ((action, args),) = value.items()
        record = _ACTIONS.get(str(action))
        if record is None:
            raise SchemaError((*path, str(action)), f"unknown action; expected {self.expected}")
        if isinstance(args, str) and "device" in record.fields:
            args = {"device": args}
        elif isinstance(args, int | float) and not isinstance(args, bool) and action == "wait":
            args = {"seconds": args}
        checked = record.validate(args, (*path, str(action)))
        assert isinstance(checked, dict)
        return Step(str(action), checked)


SCENARIO_SCHEMA: Final = Record(
    {
        "name": Field(Str(), None),
        "description": Field(Str(allow_empty=True), ""),
        "subscribers": Field(Str(), "demo"),
        "devices": Field(ListOf(_DEVICE, min_items=1)),
        "callers": Field(ListOf(_CALLER), []),
        "application_servers": Field(ListOf(_APP_SERVER), []),
        "steps": Field(ListOf(_StepNode(), min_items=1)),
    }
)


def _fail(source: str, path: KeyPath, message: str) -> NoReturn:
    raise ScenarioError(source, message, key=format_path(path) or None)


def scenario_from_data(data: object, source: str, default_name: str, base: Path) -> Scenario:
    """Validate a parsed document (see the module docstring); :class:`ScenarioError` if bad."""
    try:
        plain = SCENARIO_SCHEMA.validate(data, ())
    except SchemaError as exc:
        _fail(source, exc.path, exc.message)
    assert isinstance(plain, dict)
    devices = tuple(DeviceSpec(**d) for d in plain["devices"])
    for index, device in enumerate(devices):
        for key, wanted in (("gruu", device.gruu), ("reg_id", device.reg_id is not None)):
            if wanted and device.instance is None:
                _fail(source, ("devices", index, key), "needs the device's instance (+sip.instance)")
    callers = tuple(CallerSpec(**c) for c in plain["callers"])
    servers = tuple(AppServerSpec(**a) for a in plain["application_servers"])
    for index, server in enumerate(servers):
        if (server.behaviour == "redirect") != (server.redirect_to is not None):
            _fail(
                source,
                ("application_servers", index, "redirect_to"),
                "expected a URI with behaviour redirect, and only then",
            )
    names: dict[str, str] = {}
    addresses: dict[tuple[str, int], str] = {}
    people: list[tuple[str, int, DeviceSpec | CallerSpec | AppServerSpec]] = [
        *(("devices", i, d) for i, d in enumerate(devices)),
        *(("callers", i, c) for i, c in enumerate(callers)),
        *(("application_servers", i, a) for i, a in enumerate(servers)),
    ]
    for kind, index, item in people:
        if item.name in names:
            _fail(source, (kind, index, "name"), f"repeats the name {item.name!r}; names must be unique")
        if item.address in addresses:
            _fail(
                source,
                (kind, index, "address"),
                f"{item.address[0]}:{item.address[1]} is already {addresses[item.address]}'s address",
            )
        names[item.name] = kind
        addresses[item.address] = item.name
    steps: list[Step] = plain["steps"]
    for index, step in enumerate(steps):
        if "device" in step.args and names.get(step.args["device"]) != "devices":
            _fail(
                source,
                ("steps", index, step.action, "device"),
                f"expected the name of a device ({', '.join(d.name for d in devices)}), "
                f"got {describe(step.args['device'])}",
            )
        if step.action == "call" and step.args["from"] not in names:
            _fail(
                source,
                ("steps", index, "call", "from"),
                f"expected the name of a caller or device, got {describe(step.args['from'])}",
            )
    subscribers = plain["subscribers"]
    if subscribers != "demo":
        path = Path(subscribers)
        subscribers = str(path if path.is_absolute() else base / path)
    name = plain["name"]
    return Scenario(
        name=default_name if name is None else name,
        description=plain["description"],
        source=source,
        subscribers=None if subscribers == "demo" else subscribers,
        devices=devices,
        callers=callers,
        steps=tuple(steps),
        application_servers=servers,
    )


def shipped_scenarios() -> dict[str, Path]:
    """The scenarios shipped with imscore (``scenarios/*.yaml`` in the package)."""
    folder = Path(__file__).resolve().parent.parent / "scenarios"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def load_scenario(name_or_path: str | os.PathLike[str]) -> Scenario:
    """Read and validate a scenario file (or a shipped scenario by name)."""
    text = str(name_or_path)
    shipped = shipped_scenarios()
    path = shipped[text] if text in shipped and not Path(text).exists() else Path(text)
    if not path.exists():
        known = ", ".join(shipped) or "none"
        raise ScenarioError(text, f"no such scenario file (shipped scenarios: {known})")
    try:
        data = read_yaml(path, UniqueKeyLoader, "scenario", quote_errors=False)
    except YamlReadError as exc:
        raise ScenarioError(str(path), exc.detail) from None
    return scenario_from_data(data, str(path), path.stem, path.parent)
