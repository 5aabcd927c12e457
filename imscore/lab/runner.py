"""Run a scenario against the real server core, in virtual time or in real time over loopback.

The server is the one ``imscore serve`` runs (:class:`~imscore.server.runtime.Server`, the given
profile, a memory binding store); the devices and callers are :mod:`imscore.lab.agents`. After each
step the runner notes who is registered (from the binding store), which devices rang (sent 180 or
answered), which were cancelled, who answered, what the caller got, and what became of each
device's branch (``rang, answered``, ``busy (486)``, ``no answer (offline)`` …): a
:class:`StepResult`. It also notes each device's state as it changes — offline, busy, its binding
replaced or evicted — as :class:`~imscore.capture.Mark` rows for the ladders.

Virtual time (:func:`run_virtual`) needs no sockets and no waiting, and the same scenario always
gives byte-identical records: tokens come from counters and the random sources the server uses
are seeded for the run (:func:`deterministic`). Real time (:func:`run_real`) runs the same agents
over loopback UDP sockets, for a look at the real thing; its records come from the server's
capture tap and the agents' own sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import random
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from imscore.capture import Mark, MessageRecord, summarize
from imscore.profile import Listener, Profile
from imscore.server.runtime import Server
from imscore.sip import transaction as sip_transaction
from imscore.subscribers import MemorySubscriberStore, demo_subscribers_path
from imscore.subscribers.model import AkaCredentials

from .agents import CallOutcome, SimCaller, SimDevice, Tokens
from .appserver import SimAppServer
from .network import VirtualNetwork, VirtualTransports
from .scenario import Behaviour, CallerSpec, Scenario, ScenarioError, Step
from .vtime import VirtualClock, VirtualTimeLoop

__all__ = ["LabRun", "StepResult", "deterministic", "run_real", "run_virtual"]

#: where the server sits on the lab network, and the epoch its registrar clock starts from
SERVER_ADDRESS = ("192.0.2.1", 5060)
EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z: fixed, so every virtual run has the same dates
#: virtual seconds a call step waits after the call ends, for CANCEL/487/ACK exchanges to finish
SETTLE = 1.0


@dataclass
class StepResult:
    """What one step did."""

    index: int
    step: str
    at: float
    registered: list[str] = field(default_factory=list)
    rang: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    answered: str | None = None
    caller_got: str = ""
    detail: str = ""
    #: a REGISTER step: the algorithm of the challenge the device answered (``MD5``, ``AKAv1-MD5``)
    auth: str = ""
    #: a call step: what became of each device the call was offered to (see :func:`branch_outcome`)
    devices: dict[str, str] = field(default_factory=dict)


@dataclass
class LabRun:
    """A scenario run under one profile."""

    scenario: str
    profile: str
    mode: str
    steps: list[StepResult]
    records: list[MessageRecord]
    names: dict[tuple[str, int], str]
    #: step notes and device marks in the order they happened (times on the records' clock)
    notes: list[tuple[float, str] | Mark]
    duration: float
    #: ladder column order: callers, the server, then the devices in scenario order
    order: list[str] = field(default_factory=list)
    #: the devices' states as they changed (offline, busy, binding replaced …), on the records' clock
    marks: list[Mark] = field(default_factory=list)
    #: the profile's binding policy and auth policy names (``replace-all``, ``aka`` …)
    policies: dict[str, str] = field(default_factory=dict)


@dataclass
class _Branch:
    """What the records say of one device's branch of a call."""

    offered: float | None = None
    rang: float | None = None
    cancelled: bool = False
    final: int | None = None


def branch_outcome(branch: _Branch, offline: bool) -> str:
    """A device's branch in words: ``rang, answered``, ``rang, cancelled (487)``, ``busy (486)``,
    ``declined (603)``, ``no answer (offline)``; ``""`` when the call was not offered to it."""
    if branch.offered is None:
        return ""
    rang = "rang, " if branch.rang is not None else ""
    final = branch.final
    if final is None:
        if offline:
            return "no answer (offline)"
        return rang + ("cancelled, no final response" if branch.cancelled else "no final response")
    if 200 <= final < 300:
        return rang + "answered"
    if final == 486 or final == 600:
        return f"{rang}busy ({final})"
    if final == 487:
        return f"{rang}cancelled (487)"
    if final == 603:
        return f"{rang}declined (603)"
    return f"{rang}{final}"


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed every random source the server uses (``secrets`` tokens, branch prefixes) for a run,
    and restore them after: the same run then gives the same bytes."""
    rng = random.Random(seed)
    saved = (
        secrets.token_bytes,
        secrets.token_hex,
        sip_transaction._BRANCH_PREFIX,
        sip_transaction._branch_counter,
    )

    def token_bytes(n: int | None = None) -> bytes:
        return rng.randbytes(32 if n is None else n)

    def token_hex(n: int | None = None) -> str:
        return token_bytes(n).hex()

    secrets.token_bytes = token_bytes  # type: ignore[assignment]
    secrets.token_hex = token_hex  # type: ignore[assignment]
    sip_transaction._BRANCH_PREFIX = f"{seed:012x}"[-12:]
    sip_transaction._branch_counter = itertools.count(1)
    try:
        yield
    finally:
        secrets.token_bytes, secrets.token_hex = saved[0], saved[1]
        sip_transaction._BRANCH_PREFIX, sip_transaction._branch_counter = saved[2], saved[3]


class _NetworkPort:
    """An agent's address on the virtual network."""

    def __init__(self, network: VirtualNetwork, local: tuple[str, int]) -> None:
        self.network = network
        self.local = local

    def send(self, data: bytes, destination: tuple[str, int]) -> None:
        self.network.send(self.local, destination, data)


class _UdpPort(asyncio.DatagramProtocol):
    """An agent's loopback UDP socket (real time); it records what it sends."""

    def __init__(self, records: list[MessageRecord], receive: Callable[[bytes, Any], None]) -> None:
        self.records = records
        self._receive = receive
        self.transport: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] = ("127.0.0.1", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport
        host, port = transport.get_extra_info("sockname")[:2]
        self.local = (host, port)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._receive(data, (addr[0], addr[1]))

    def send(self, data: bytes, destination: tuple[str, int]) -> None:
        assert self.transport is not None
        self.records.append(MessageRecord(time.time(), "udp", self.local, destination, data))
        self.transport.sendto(data, destination)


class _Lab:
    """The agents, the server and the step logic, shared by both modes."""

    def __init__(self, scenario: Scenario, profile: Profile, server: Server) -> None:
        self.scenario = scenario
        self.profile = profile
        self.server = server
        self.devices: dict[str, SimDevice] = {}
        self.callers: dict[str, SimCaller] = {}
        self.app_servers: dict[str, SimAppServer] = {}
        #: step notes and device marks, in the order they happened (the ladders' annotations)
        self.notes: list[tuple[float, str] | Mark] = []
        self.set_offline: Callable[[SimDevice, bool], None] = lambda device, down: None
        #: (time, agent, label) of every message an agent received, in order
        self.journal: list[tuple[float, str, str]] = []
        #: list who is registered after each step (reads the whole store: off for scale runs)
        self.snapshots = True
        #: every message on the wire, in order (the network's records, or the real run's)
        self.records: list[MessageRecord] = []
        #: device states for the ladders, on the loop's clock
        self.marks: list[Mark] = []
        self._state: dict[str, tuple[bool, bool, str]] = {}  # name -> (offline, registered, behaviour)
        binding = profile.policies.get("binding_policy")
        self.binding_policy = binding.plugin if binding is not None else ""

    def add_device(self, device: SimDevice) -> None:
        device.journal = self.journal
        self.devices[device.name] = device

    def add_caller(self, caller: SimCaller) -> None:
        caller.journal = self.journal
        self.callers[caller.name] = caller

    def add_app_server(self, server: SimAppServer) -> None:
        server.journal = self.journal
        self.app_servers[server.name] = server

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def run_steps(self, progress: Callable[[int, int], None] | None) -> list[StepResult]:
        results: list[StepResult] = []
        total = len(self.scenario.steps)
        if self.snapshots:
            start = self.now()
            for name, device in self.devices.items():
                kind = device.behaviour.kind
                self._state[name] = (False, False, kind)
                text = str(device.behaviour) if kind != "answer" else ""
                self._mark(Mark(start, name, "unregistered", text))
        for index, step in enumerate(self.scenario.steps):
            results.append(await self.run_step(index, step))
            if progress is not None:
                progress(index + 1, total)
        return results

    async def registered(self) -> list[str]:
        store = self.server.store
        assert store is not None
        by_contact = {device.contact: name for name, device in self.devices.items()}
        now = self.server.clock()
        names = {by_contact.get(b.uri, b.uri) for b in await store.all() if not b.expired(now)}
        return sorted(names)

    async def run_step(self, index: int, step: Step) -> StepResult:
        started = self.now()
        mark = len(self.journal)
        record_mark = len(self.records)
        result = StepResult(index + 1, step.describe(), started)
        self.notes.append((started, f"step {index + 1}: {step.describe()}"))
        args = step.args
        action = step.action
        if action == "register":
            device = self.devices[args["device"]]
            status = await device.register(args.get("expires"))
            result.detail = _register_detail("REGISTER", status, device.last_reason)
        elif action == "deregister":
            device = self.devices[args["device"]]
            status = await device.register(0)
            result.detail = _register_detail("REGISTER expires 0", status, device.last_reason)
        elif action == "subscribe":
            status = await self.devices[args["device"]].subscribe(args["expires"])
            await asyncio.sleep(SETTLE)
            result.detail = f"SUBSCRIBE reg -> {status or 'no answer'}"
        elif action in ("offline", "online"):
            device = self.devices[args["device"]]
            device.online = action == "online"
            self.set_offline(device, not device.online)
            result.detail = f"{device.name} is {action}"
        elif action == "on_call":
            device = self.devices[args["device"]]
            device.behaviour = args["behaviour"]
            result.detail = f"{device.name} will {_will(device.behaviour)}"
        elif action == "wait":
            await asyncio.sleep(args["seconds"])
        elif action == "call":
            outcome = await self._call(args)
            result.answered = outcome.answered_by
            if outcome.status:
                result.caller_got = f"{outcome.status} {outcome.reason} at {outcome.final_at or 0:.1f} s"
            else:
                result.caller_got = f"nothing ({outcome.reason})"
            await asyncio.sleep(SETTLE)
        if action == "call":
            self._branches(result, self.records[record_mark:])
        if self.snapshots:
            result.registered = await self.registered()
            self._note_states(step, result)
        if action == "register" and result.detail == "REGISTER -> 200":
            result.auth = self.devices[args["device"]].last_algorithm or "none"
        if len(self.journal) > 100_000:  # long runs: keep the journal short
            del self.journal[:mark]
        return result

    def _branches(self, result: StepResult, records: Sequence[MessageRecord]) -> None:
        """Fill ``rang``, ``cancelled`` and ``devices`` from what went to and came from devices."""
        by_address = {device.port.local: name for name, device in self.devices.items()}
        branches: dict[str, _Branch] = {}
        for record in records:
            to_device, from_device = by_address.get(record.dst), by_address.get(record.src)
            if to_device is None and from_device is None:
                continue
            summary = summarize(record.data)
            if to_device is not None and summary.kind == "request":
                branch = branches.setdefault(to_device, _Branch())
                if summary.method == "INVITE" and branch.offered is None:
                    branch.offered = record.time
                elif summary.method == "CANCEL" and branch.offered is not None:
                    branch.cancelled = True
            elif from_device is not None and summary.kind == "response":
                branch = branches.setdefault(from_device, _Branch())
                status = summary.status or 0
                if summary.method != "INVITE" or branch.offered is None:
                    continue
                if (101 <= status < 200 or 200 <= status < 300) and branch.rang is None:
                    branch.rang = record.time
                if status >= 200 and branch.final is None:
                    branch.final = status
        # in the order they rang (a hunt's order); same time: by name
        rang = sorted((b.rang, n) for n, b in branches.items() if b.rang is not None)
        result.rang = [name for _, name in rang]
        result.cancelled = sorted(n for n, b in branches.items() if b.cancelled)
        for name in self.devices:  # scenario order
            found = branches.get(name)
            outcome = "" if found is None else branch_outcome(found, not self.devices[name].online)
            if outcome:
                result.devices[name] = outcome

    def _note_states(self, step: Step, result: StepResult) -> None:
        """Add a :class:`Mark` for each device whose state this step changed."""
        now = self.now()
        registered = set(result.registered)
        actor = step.args.get("device")
        for name, device in self.devices.items():
            was_offline, was_registered, was_behaviour = self._state[name]
            offline, bound, behaviour = not device.online, name in registered, device.behaviour.kind
            texts: list[str] = []
            if offline != was_offline:
                texts.append("offline" if offline else "online")
            if was_registered and not bound:
                if step.action == "deregister" and actor == name:
                    texts.append("deregistered")
                elif step.action == "register" and actor not in (None, name):
                    verb = "replaced" if self.binding_policy == "replace-all" else "evicted"
                    texts.append(f"binding {verb} by {actor}")
                else:
                    texts.append("binding gone")
            if behaviour != was_behaviour:
                texts.append(str(device.behaviour) if behaviour != "answer" else "answers again")
            if (offline, bound, behaviour) == (was_offline, was_registered, was_behaviour):
                continue
            self._state[name] = (offline, bound, behaviour)
            state = (
                "offline"
                if offline
                else "unregistered"
                if not bound
                else "busy"
                if behaviour == "busy"
                else ""
            )
            self._mark(Mark(now, name, state, ", ".join(texts)))

    def _mark(self, mark: Mark) -> None:
        self.marks.append(mark)
        self.notes.append(mark)

    async def _call(self, args: Any) -> CallOutcome:
        origin = args["from"]
        caller = self.callers.get(origin)
        if caller is None:  # a device calls out, from its own address (its registered flow)
            device = self.devices[origin]
            if device.outgoing is None:
                spec = _as_caller(device)
                device.outgoing = SimCaller(spec, device.port, device.server, device.tokens)
            caller = device.outgoing
        return await caller.call(
            args["to"],
            args["hangup_after"],
            args["timeout"],
            lambda tag: tag,  # a device answers with its name as To tag
        )


def _will(behaviour: Behaviour) -> str:
    """``answer after 2 s``, ``be busy``, ``not answer``, ``decline 603``."""
    return {"busy": "be busy", "no-answer": "not answer"}.get(behaviour.kind, str(behaviour))


def _register_detail(what: str, status: int, reason: str) -> str:
    """``REGISTER -> 200``; a refusal with its reason phrase (``REGISTER -> 403 Forbidden``)."""
    if not status:
        return f"{what} -> no answer"
    return f"{what} -> {status}" if status == 200 else f"{what} -> {status} {reason}".rstrip()


def _as_caller(device: SimDevice) -> CallerSpec:
    return CallerSpec(device.name, device.spec.impu, device.port.local)


async def _aka_of(server: Server, impi: str) -> AkaCredentials | None:
    """The AKA credentials the device's SIM holds: its subscriber's, from the subscriber data."""
    subscriber = await server.subscribers.get_by_impi(impi)
    return None if subscriber is None else subscriber.aka


def _subscribers(scenario: Scenario) -> MemorySubscriberStore:
    return MemorySubscriberStore.from_file(scenario.subscribers or demo_subscribers_path())


def _shifted(note: tuple[float, str] | Mark, offset: float) -> tuple[float, str] | Mark:
    if isinstance(note, Mark):
        return replace(note, time=note.time + offset)
    return (note[0] + offset, note[1])


def _policies(profile: Profile) -> dict[str, str]:
    return {decision: choice.plugin for decision, choice in profile.policies.items()}


def _order(scenario: Scenario) -> list[str]:
    return [
        *(c.name for c in scenario.callers),
        "imscore",
        *(a.name for a in scenario.application_servers),
        *(d.name for d in scenario.devices),
    ]


def _names(lab: _Lab, server: tuple[str, int]) -> dict[tuple[str, int], str]:
    names = {server: "imscore"}
    for name, device in lab.devices.items():
        names[device.port.local] = name
    for name, caller in lab.callers.items():
        names[caller.port.local] = name
    for name, app_server in lab.app_servers.items():
        names[app_server.port.local] = name
    return names


def run_virtual(
    scenario: Scenario,
    profile: Profile,
    *,
    seed: int = 1,
    progress: Callable[[int, int], None] | None = None,
    extra_plugins: Sequence[object] = (),
    snapshots: bool = True,
) -> LabRun:
    """Run ``scenario`` under ``profile`` in virtual time (no sockets, no waiting).

    :param seed: seeds the server's random sources (same seed, same bytes).
    :param progress: called with (steps done, steps) after each step.
    :param snapshots: list who is registered after each step (reads the whole binding store each
        time: turn it off for runs of thousands of devices).
    """
    clock = VirtualClock()
    loop = VirtualTimeLoop(clock)
    network = VirtualNetwork(clock=lambda: EPOCH + clock.now)
    try:
        with deterministic(seed):
            run: LabRun = loop.run(
                _virtual(scenario, profile, loop, network, progress, extra_plugins, snapshots)
            )
            return run
    finally:
        loop.close()


async def _virtual(
    scenario: Scenario,
    profile: Profile,
    loop: VirtualTimeLoop,
    network: VirtualNetwork,
    progress: Callable[[int, int], None] | None,
    extra_plugins: Sequence[object],
    snapshots: bool,
) -> LabRun:
    lab_profile = replace(
        profile,
        store="memory:",
        listeners=(Listener("udp", *SERVER_ADDRESS),),
        overload=replace(profile.overload, max_lag=0.0),  # a virtual loop is never late
    )
    server = Server(
        lab_profile,
        source=f"profile {profile.name}",
        subscribers=_subscribers(scenario),
        clock=lambda: EPOCH + loop.time(),
        transports_factory=functools.partial(VirtualTransports, network),
        extra_plugins=extra_plugins,
    )
    await server.start()
    lab = _Lab(scenario, profile, server)
    lab.snapshots = snapshots
    domain = profile.domains[0]
    for spec in scenario.devices:
        port = _NetworkPort(network, spec.address)
        aka = await _aka_of(server, spec.impi)
        device = SimDevice(spec, port, SERVER_ADDRESS, domain, Tokens(f"{spec.name}-"), aka)
        network.attach(spec.address, device.receive)
        lab.add_device(device)
    for caller_spec in scenario.callers:
        port = _NetworkPort(network, caller_spec.address)
        caller = SimCaller(caller_spec, port, SERVER_ADDRESS, Tokens(f"{caller_spec.name}-"))
        network.attach(caller_spec.address, caller.receive)
        lab.add_caller(caller)
    for as_spec in scenario.application_servers:
        port = _NetworkPort(network, as_spec.address)
        app_server = SimAppServer(as_spec, port, SERVER_ADDRESS, Tokens(f"{as_spec.name}-"))
        network.attach(as_spec.address, app_server.receive)
        lab.add_app_server(app_server)
    lab.set_offline = lambda device, down: network.set_down(device.port.local, down)
    lab.records = network.records
    try:
        steps = await lab.run_steps(progress)
    finally:
        await server.stop()
    return LabRun(
        scenario=scenario.name,
        profile=profile.name,
        mode="virtual",
        steps=steps,
        records=[replace(r) for r in network.records],
        names=_names(lab, SERVER_ADDRESS),
        notes=[_shifted(note, EPOCH) for note in lab.notes],
        duration=loop.time(),
        order=_order(scenario),
        marks=[replace(m, time=EPOCH + m.time) for m in lab.marks],
        policies=_policies(profile),
    )


def run_real(
    scenario: Scenario,
    profile: Profile,
    *,
    progress: Callable[[int, int], None] | None = None,
    extra_plugins: Sequence[object] = (),
) -> LabRun:
    """Run ``scenario`` under ``profile`` in real time over loopback UDP sockets."""
    return asyncio.run(_real(scenario, profile, progress, extra_plugins))


async def _real(
    scenario: Scenario,
    profile: Profile,
    progress: Callable[[int, int], None] | None,
    extra_plugins: Sequence[object],
) -> LabRun:
    if scenario.application_servers:
        # the subscribers' iFCs name the servers' addresses, and a real run's agents get ports the
        # kernel picks: only a virtual run can put each server where its iFCs say it is
        raise ScenarioError(
            scenario.source,
            "application servers run in virtual time only (drop --real-time)",
            key="application_servers",
        )
    loop = asyncio.get_running_loop()
    records: list[MessageRecord] = []
    lab_profile = replace(profile, store="memory:", listeners=(Listener("udp", "127.0.0.1", 0),))
    server = Server(
        lab_profile,
        source=f"profile {profile.name}",
        subscribers=_subscribers(scenario),
        extra_plugins=extra_plugins,
    )
    await server.start()
    (_, host, port) = server.addresses[0]
    address = (host, port)
    assert server.transports is not None

    def tap(record: MessageRecord) -> None:
        if record.src == address:  # what the server sends (the agents record their own)
            records.append(record)

    server.transports.tap = tap
    lab = _Lab(scenario, profile, server)
    lab.records = records
    domain = profile.domains[0]
    sockets: list[asyncio.DatagramTransport] = []
    offline: set[str] = set()

    async def open_port(agent_receive: Callable[[bytes, Any], None], name: str) -> _UdpPort:
        def receive(data: bytes, source: Any) -> None:
            if name not in offline:
                agent_receive(data, source)

        transport, port_ = await loop.create_datagram_endpoint(
            lambda: _UdpPort(records, receive), local_addr=("127.0.0.1", 0)
        )
        sockets.append(transport)
        return port_

    started = time.monotonic()
    try:
        for spec in scenario.devices:
            holder: list[SimDevice] = []
            port_ = await open_port(lambda d, s, h=holder: h[0].receive(d, s), spec.name)  # type: ignore[misc]
            aka = await _aka_of(server, spec.impi)
            device = SimDevice(spec, port_, address, domain, Tokens(f"{spec.name}-"), aka)
            holder.append(device)
            lab.add_device(device)
        for caller_spec in scenario.callers:
            holder_c: list[SimCaller] = []
            port_ = await open_port(lambda d, s, h=holder_c: h[0].receive(d, s), caller_spec.name)  # type: ignore[misc]
            caller = SimCaller(caller_spec, port_, address, Tokens(f"{caller_spec.name}-"))
            holder_c.append(caller)
            lab.add_caller(caller)

        def set_offline(device: SimDevice, down: bool) -> None:
            (offline.add if down else offline.discard)(device.name)

        lab.set_offline = set_offline
        steps = await lab.run_steps(progress)
    finally:
        await server.stop()
        for transport in sockets:
            transport.close()
    records.sort(key=lambda r: r.time)
    offset = time.time() - loop.time()
    return LabRun(
        scenario=scenario.name,
        profile=profile.name,
        mode="real",
        steps=steps,
        records=records,
        names=_names(lab, address),
        notes=[_shifted(note, offset) for note in lab.notes],
        duration=time.monotonic() - started,
        order=_order(scenario),
        marks=[replace(m, time=m.time + offset) for m in lab.marks],
        policies=_policies(profile),
    )
