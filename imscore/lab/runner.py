"""Run a scenario against the real server core, in virtual time or in real time over loopback.

The server is the one ``imscore serve`` runs (:class:`~imscore.server.runtime.Server`, the given
profile, a memory binding store); the devices and callers are :mod:`imscore.lab.agents`. After each
step the runner notes who is registered (from the binding store), which devices rang, which were
cancelled, who answered and what the caller got: a :class:`StepResult`.

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

from imscore.capture import MessageRecord
from imscore.profile import Listener, Profile
from imscore.server.runtime import Server
from imscore.sip import transaction as sip_transaction
from imscore.subscribers import MemorySubscriberStore, demo_subscribers_path
from imscore.subscribers.model import AkaCredentials

from .agents import CallOutcome, SimCaller, SimDevice, Tokens
from .network import VirtualNetwork, VirtualTransports
from .scenario import CallerSpec, Scenario, Step
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


@dataclass
class LabRun:
    """A scenario run under one profile."""

    scenario: str
    profile: str
    mode: str
    steps: list[StepResult]
    records: list[MessageRecord]
    names: dict[tuple[str, int], str]
    notes: list[tuple[float, str]]
    duration: float
    #: ladder column order: callers, the server, then the devices in scenario order
    order: list[str] = field(default_factory=list)


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
        self.notes: list[tuple[float, str]] = []
        self.set_offline: Callable[[SimDevice, bool], None] = lambda device, down: None
        #: (time, agent, label) of every message an agent received, in order
        self.journal: list[tuple[float, str, str]] = []
        #: list who is registered after each step (reads the whole store: off for scale runs)
        self.snapshots = True

    def add_device(self, device: SimDevice) -> None:
        device.journal = self.journal
        self.devices[device.name] = device

    def add_caller(self, caller: SimCaller) -> None:
        caller.journal = self.journal
        self.callers[caller.name] = caller

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def run_steps(self, progress: Callable[[int, int], None] | None) -> list[StepResult]:
        results: list[StepResult] = []
        total = len(self.scenario.steps)
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
        result = StepResult(index + 1, step.describe(), started)
        self.notes.append((started, f"step {index + 1}: {step.describe()}"))
        args = step.args
        action = step.action
        if action == "register":
            status = await self.devices[args["device"]].register(args.get("expires"))
            result.detail = f"REGISTER -> {status or 'no answer'}"
        elif action == "deregister":
            status = await self.devices[args["device"]].register(0)
            result.detail = f"REGISTER expires 0 -> {status or 'no answer'}"
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
            result.detail = f"{device.name} will {device.behaviour}"
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
        rang: dict[str, float] = {}
        cancelled: set[str] = set()
        for at, name, label in self.journal[mark:]:
            if name not in self.devices:
                continue
            if label == "INVITE":
                rang.setdefault(name, at)
            elif label == "CANCEL":
                cancelled.add(name)
        # in the order they rang (a hunt's order); same time: by name
        result.rang = [name for name, _ in sorted(rang.items(), key=lambda item: (item[1], item[0]))]
        result.cancelled = sorted(cancelled)
        if self.snapshots:
            result.registered = await self.registered()
        if len(self.journal) > 100_000:  # long runs: keep the journal short
            del self.journal[:mark]
        return result

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


def _as_caller(device: SimDevice) -> CallerSpec:
    return CallerSpec(device.name, device.spec.impu, device.port.local)


async def _aka_of(server: Server, impi: str) -> AkaCredentials | None:
    """The AKA credentials the device's SIM holds: its subscriber's, from the subscriber data."""
    subscriber = await server.subscribers.get_by_impi(impi)
    return None if subscriber is None else subscriber.aka


def _subscribers(scenario: Scenario) -> MemorySubscriberStore:
    return MemorySubscriberStore.from_file(scenario.subscribers or demo_subscribers_path())


def _order(scenario: Scenario) -> list[str]:
    return [*(c.name for c in scenario.callers), "imscore", *(d.name for d in scenario.devices)]


def _names(lab: _Lab, server: tuple[str, int]) -> dict[tuple[str, int], str]:
    names = {server: "imscore"}
    for name, device in lab.devices.items():
        names[device.port.local] = name
    for name, caller in lab.callers.items():
        names[caller.port.local] = name
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
    lab.set_offline = lambda device, down: network.set_down(device.port.local, down)
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
        notes=[(EPOCH + t, text) for t, text in lab.notes],
        duration=loop.time(),
        order=_order(scenario),
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
    return LabRun(
        scenario=scenario.name,
        profile=profile.name,
        mode="real",
        steps=steps,
        records=records,
        names=_names(lab, address),
        notes=[(time.time() - (loop.time() - t), text) for t, text in lab.notes],
        duration=time.monotonic() - started,
        order=_order(scenario),
    )
