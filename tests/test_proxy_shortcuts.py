"""The proxy's short cuts (issue 13) against the general code they stand for.

Each short cut of the forked-call path is checked two ways: calls through a server that takes it and
through one that does not give the same datagrams, byte for byte and in the same order; and the
short cut's own answer is the general code's wherever it answers, and "not mine" elsewhere.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from imscore.profile import load_profile, parse_listen
from imscore.proxy.core import Branch, Destination, ForkContext, ProxyCore, Target
from imscore.proxy.relay import DialogStamp
from imscore.registrar import FlowInfo
from imscore.registrar.outbound import FlowSet
from imscore.registrar.redis_store import NodeFlow
from imscore.server.runtime import Server
from imscore.sip import Request, Response, SipError
from imscore.sip.errors import ParseError
from imscore.sip.framing import parse_datagram
from imscore.sip.message import SINGLE_HEADERS, Message
from imscore.transport import Flow, transports

BENCH = Path(__file__).resolve().parent.parent / "bench"
SECRET = b"k" * 32
#: flows a registration may have recorded: UDP from a device behind a NAT, a TCP connection gone
UDP_SEEN = FlowInfo("udp", ("127.0.0.1", 5071), ("127.0.0.1", 5060))
TCP_CLOSED = FlowInfo("tcp", ("127.0.0.1", 5071), ("127.0.0.1", 5060), 424242)


def _bench() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the benches import each other by their plain names
    name = "proxy_cpu_bench"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


Setup = Callable[[Server], None]


async def _calls(calls: int, setup: Setup) -> list[tuple[bytes, tuple[str, int]]]:
    """Every datagram a bench server sent for ``calls`` forked calls (after ``setup`` changed it),
    in order."""
    bench = _bench()
    from imscore.cli import _load_profile, _load_subscribers
    from imscore.profile import parse_listen
    from imscore.subscribers import MemorySubscriberStore

    with tempfile.TemporaryDirectory() as folder:
        _, subscribers = bench.write_users(Path(folder), 3)
        source, directory = _load_subscribers(str(subscribers))
        profile = _load_profile("multi-device")
        profile = replace(profile, overload=replace(profile.overload, max_lag=0.0))
        server = Server(
            profile,
            listeners=[parse_listen("udp:127.0.0.1:0", any_transport=True)],
            store_url="memory:",
            subscribers=MemorySubscriberStore(directory, source),
        )
        await server.start()
        try:
            assert server.proxying is not None
            server.proxying.stamp = DialogStamp(SECRET)  # the same Record-Route stamps on both
            setup(server)
            runner = bench.Bench(server, None)
            await bench.register_devices(runner, 3)
            sent: list[tuple[bytes, tuple[str, int]]] = []
            capture = runner.endpoint.sendto

            def sendto(data: bytes, remote: tuple[str, int]) -> None:
                sent.append((data, remote))
                capture(data, remote)

            runner.endpoint.sendto = sendto
            for call in range(calls):
                assert await bench.one_call(runner, call, call % 3)
            # the one thing that differs between two servers: the port each listens on
            ours = f"127.0.0.1:{server.addresses[0][2]}".encode()
            return [(data.replace(ours, b"127.0.0.1:PORT"), remote) for data, remote in sent]
        finally:
            await server.stop()


def _general_branches(server: Server) -> None:
    """Every branch resolved in a task, as before the short cut."""
    assert server.proxying is not None
    server.proxying._known_flow = lambda branch: None  # type: ignore[method-assign]


def _general_upstream_copy(context: ForkContext[Flow], response: Response) -> Response:
    """``ProxyCore._upstream_copy`` as it was: copy the headers, pop our Via, write them again."""
    headers = response.headers.copy()
    ours = f"branch=z9hG4bK{context.loop}."
    first = headers.get("Via")
    if first is not None and "," not in first and first.strip(" \t"):
        top = first
    else:
        vias = headers.values("Via")
        top = vias[0] if vias else ""
    if ours in top:
        headers.pop_first("Via")
    return Response(response.status, response.reason, headers, response.body)


def _general_copies(server: Server) -> None:
    """Forwarded responses copied as before the short cut."""
    assert server.proxying is not None
    server.proxying.core._upstream_copy = _general_upstream_copy  # type: ignore[assignment,method-assign]


def _general_everything(server: Server) -> None:
    _general_branches(server)
    _general_copies(server)


@pytest.mark.parametrize("general", [_general_branches, _general_copies, _general_everything])
def test_the_short_cuts_give_the_datagrams_of_the_general_path(general: Setup) -> None:
    reference = asyncio.run(_calls(12, general))
    short = asyncio.run(_calls(12, lambda server: None))
    assert len(reference) == 12 * 15  # the fifteen datagrams of each call
    assert short == reference


# --- the known flow against _branch_flow -----------------------------------------------------------
def _server(tcp: bool = False) -> Server:
    """A proxying server on loopback UDP (and TCP), memory store, nobody registered."""
    listeners = [parse_listen("udp:127.0.0.1:0")]
    if tcp:
        listeners.append(parse_listen("tcp:127.0.0.1:0"))
    return Server(load_profile("multi-device"), listeners=listeners, store_url="memory:")


def _branch(target: Target) -> Branch[Flow]:
    request = Request("INVITE", target.uri)
    context: ForkContext[Flow] = ForkContext(
        server=None, request=request, groups=[], is_invite=True, loop="x"  # type: ignore[arg-type]
    )
    return Branch(context=context, index=0, target=target, request=request, group=0)


async def _known_and_general(destination: Destination | None, uri: str) -> tuple[Any, Any, int, int]:
    """What _known_flow and _branch_flow give for a branch to ``destination`` (and the attempts
    each counted)."""
    server = _server(tcp=True)
    await server.start()
    try:
        service = server.proxying
        assert service is not None
        target = Target(uri, destination=destination)
        known_branch, general_branch = _branch(target), _branch(target)
        known = service._known_flow(known_branch)
        try:
            general: Any = await service._branch_flow(
                general_branch, destination or Destination(uri)
            )
        except Exception as exc:  # compared by type
            general = type(exc)
        return known, general, known_branch.attempts, general_branch.attempts
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("destination", "uri"),
    [
        (None, "sip:desk@127.0.0.1:5070"),
        (None, "sip:desk@127.0.0.1"),
        (None, "sip:desk@127.0.0.1:5070;transport=UDP"),
        (Destination("sip:desk@127.0.0.1:5070"), "sip:desk@127.0.0.1:5070"),
        (Destination("sip:desk@10.0.0.1:5070", UDP_SEEN), "sip:desk@10.0.0.1:5070"),  # behind a NAT
    ],
)
def test_a_known_flow_is_the_flow_the_general_path_finds(
    destination: Destination | None, uri: str
) -> None:
    known, general, known_attempts, general_attempts = asyncio.run(_known_and_general(destination, uri))
    assert isinstance(known, Flow) and known == general
    assert known_attempts == general_attempts == 1


@pytest.mark.parametrize(
    ("destination", "uri"),
    [
        (None, "sip:desk@desk.example.test"),  # a name: DNS
        (None, "sip:desk@127.0.0.1:5070;transport=tcp"),  # a connection to open
        (None, "sips:desk@127.0.0.1:5071"),  # TLS
        (None, "sip:desk@[::1]:5070"),  # no IPv6 listener: the general path fails it, and logs
        (None, "tel:+15551230001"),  # not a SIP URI
        (Destination("sip:d@127.0.0.1", TCP_CLOSED), "sip:d@127.0.0.1"),  # a closed connection
        (Destination("sip:d@127.0.0.1", FlowSet("i", (UDP_SEEN,))), "sip:d@127.0.0.1"),  # outbound
        (Destination("sip:d@", UDP_SEEN), "sip:d@127.0.0.1"),  # a bad URI to resolve, a flow
    ],
)
def test_anything_else_is_left_to_the_general_path(destination: Destination | None, uri: str) -> None:
    known, _, attempts, _ = asyncio.run(_known_and_general(destination, uri))
    assert known is None and attempts == 0


def test_a_later_attempt_and_a_flow_of_another_pool_node_are_left_to_the_general_path() -> None:
    async def check() -> None:
        server = _server()
        await server.start()
        try:
            service = server.proxying
            assert service is not None
            again = _branch(Target("sip:desk@127.0.0.1:5070"))
            again.attempts = 1
            assert service._known_flow(again) is None
            held = NodeFlow("udp", ("127.0.0.1", 5071), ("127.0.0.1", 5060), None, "node-b")
            destination = Destination("sip:d@127.0.0.1", held)
            elsewhere = _branch(Target("sip:d@127.0.0.1", destination=destination))
            assert service._known_flow(elsewhere) is None
        finally:
            await server.stop()

    asyncio.run(check())


def test_branches_behind_one_that_needs_a_task_wait_for_theirs() -> None:
    async def check() -> None:
        server = _server()
        await server.start()
        try:
            service = server.proxying
            assert service is not None
            spawned: list[Any] = []
            sent: list[Branch[Flow]] = []
            server.spawn = lambda coroutine: (spawned.append(coroutine), coroutine.close())  # type: ignore[assignment,func-returns-value]
            service.core.send_branch = lambda branch, *_: (sent.append(branch), [])[1]  # type: ignore[assignment,method-assign]
            first = _branch(Target("sip:a@127.0.0.1:5070"))
            named = _branch(Target("sip:b@b.example.test"))
            behind = _branch(Target("sip:c@127.0.0.1:5072"))
            server.core.flows_needed.extend([first, named, behind])
            service.drain()
            assert sent == [first]  # sent at once
            assert len(spawned) == 2  # the named one, and the one behind it, in that order
            assert behind.attempts == 0
        finally:
            await server.stop()

    asyncio.run(check())


# --- Message.validate reads only the optional headers a message has --------------------------------
def _validate_everything(message: Message) -> None:
    """``Message._validate`` as it was: every optional header read, present or not."""
    message._check_framing()
    message.via  # noqa: B018
    message.contacts  # noqa: B018
    message.from_.check()
    message.to.check()
    for name in ("Route", "Record-Route", "Path", "Service-Route", "P-Associated-URI"):
        for address in message._addresses(name):
            address.check()
    for name in ("Require", "Proxy-Require", "Supported", "Unsupported"):
        message._tags(name)
    message.expires  # noqa: B018
    message.min_expires  # noqa: B018
    message.content_type  # noqa: B018
    message.www_authenticate  # noqa: B018
    message.proxy_authenticate  # noqa: B018
    message.authorization  # noqa: B018
    message.proxy_authorization  # noqa: B018
    for name in ("P-Visited-Network-ID", "P-Access-Network-Info"):
        message._parameterised(name)
    for name in ("Security-Client", "Security-Server", "Security-Verify"):
        message._parameterised(name)
    message.p_charging_vector  # noqa: B018
    for name in SINGLE_HEADERS:
        if message.headers.count(name) > 1:
            raise ParseError(f"more than one {name} header")


def _verdict(check: Callable[[], None]) -> tuple[str, str, int] | None:
    try:
        check()
    except SipError as error:
        return type(error).__name__, str(error), error.status
    return None


def _optional_headers() -> list[bytes]:
    """INVITEs carrying each optional header validate reads, well-formed, malformed and doubled."""
    base = (
        "INVITE sip:bob@ims.example.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:a@ims.example.test>;tag=1\r\nTo: <sip:bob@ims.example.test>\r\n"
        "Call-ID: c1\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
    )
    good = {
        "Route": "<sip:p.example.test;lr>", "Record-Route": "<sip:p.example.test;lr>",
        "Path": "<sip:p.example.test;lr>", "Service-Route": "<sip:p.example.test;lr>",
        "P-Associated-URI": "<sip:a@ims.example.test>", "Require": "100rel",
        "Proxy-Require": "sec-agree", "Supported": "timer", "Unsupported": "foo", "Expires": "60",
        "Min-Expires": "60", "Content-Type": "application/sdp",
        "WWW-Authenticate": 'Digest realm="r", nonce="n"', "Proxy-Authenticate": 'Digest realm="r"',
        "Authorization": 'Digest username="u", realm="r"', "Proxy-Authorization": 'Digest username="u"',
        "P-Visited-Network-ID": '"Visited"', "P-Access-Network-Info": "3GPP-UTRAN-TDD",
        "Security-Client": "ipsec-3gpp;alg=hmac-sha-1-96", "Security-Server": "ipsec-3gpp;q=0.1",
        "Security-Verify": "ipsec-3gpp;q=0.1", "P-Charging-Vector": "icid-value=1",
    }  # fmt: skip
    bad = ["<", ";;;", '"unterminated', "sip:@", "a b c", "-1", "Digest ,,", "x" * 300]
    out = []
    for name, value in good.items():
        out.append(base.format(extra=f"{name}: {value}\r\n").encode())
        out.append(base.format(extra=f"{name}: {value}\r\n{name}: {value}\r\n").encode())
        out += [base.format(extra=f"{name}: {b}\r\n").encode() for b in bad]
    out.append(base.format(extra="".join(f"{n}: {v}\r\n" for n, v in good.items())).encode())
    twice = "Expires: 1\r\nExpires: 2\r\nMin-Expires: 1\r\nMin-Expires: 2\r\n"
    out.append(base.format(extra=twice).encode())
    return out


def test_validate_gives_the_verdict_of_reading_every_header() -> None:
    from test_differential import corpus

    datagrams = corpus() + _optional_headers()
    verdicts: dict[object, int] = {}
    for data in datagrams:
        try:
            first, second = parse_datagram(data), parse_datagram(data)
        except SipError:
            continue
        if first is None or second is None:
            continue
        ours = _verdict(first._validate)
        verdict = _verdict(lambda message=second: _validate_everything(message))  # type: ignore[misc]
        assert ours == verdict, data[:200]
        verdicts[verdict] = verdicts.get(verdict, 0) + 1
    # both outcomes, and many different refusals, were seen
    assert sum(verdicts.values()) > 700
    assert verdicts.get(None, 0) > 100
    assert len(verdicts) > 30


# --- a forwarded response's copy without our Via ----------------------------------------------------
def _responses() -> list[bytes]:
    """Branch answers as devices write them, and as odd ones might: our Via first or not, alone on
    its line or with others, compact, folded, spaced, without Content-Length, with octets that are
    not UTF-8."""
    ours = "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKloop.1;rport"
    theirs = "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-1-1;rport=5999;received=127.0.0.1"
    rest = (
        "From: <sip:caller@example.org>;tag=1\r\nTo: <sip:bob@ims.example.test>;tag=2\r\n"
        "Call-ID: c1@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@127.0.0.1:10000>\r\n"
    )
    heads = [
        f"Via: {ours}\r\nVia: {theirs}\r\n{rest}Content-Length: 0\r\n",
        f"v: {ours}\r\nv: {theirs}\r\n{rest}l: 0\r\n",
        f"Via:   {ours}  \r\nVia: {theirs}\r\n{rest}Content-Length: 0\r\n",
        f"VIA: {ours}\r\nVia: {theirs}\r\n{rest}Content-Length: 0\r\n",
        f"Via: {ours}, {theirs}\r\n{rest}Content-Length: 0\r\n",
        f"Via: {theirs}, {ours}\r\n{rest}Content-Length: 0\r\n",
        f"Via: SIP/2.0/UDP 127.0.0.1:5060;\r\n branch=z9hG4bKloop.1\r\nVia: {theirs}\r\n{rest}"
        "Content-Length: 0\r\n",
        f"Via: {ours}\r\nVia: {theirs}\r\n{rest}",
        f"{rest}Via: {ours}\r\nVia: {theirs}\r\nContent-Length: 0\r\n",
        f"Via: {theirs}\r\nVia: {ours}\r\n{rest}Content-Length: 0\r\n",
        f"Via: {ours}\r\n{rest}Content-Length: 0\r\n",
        f"Via: {ours}\r\nVia: {theirs}\r\n{rest}X-Odd: caf\xe9\r\nContent-Length: 0\r\n",
        f"Via: {ours};x=\u00e9\r\nVia: {theirs}\r\n{rest}Content-Length: 0\r\n",
    ]
    out = []
    for head in heads:
        for start in ("SIP/2.0 180 Ringing", "SIP/2.0 200 OK", "SIP/2.0 486 Busy Here"):
            out.append(f"{start}\r\n{head}\r\n".encode("utf-8", "surrogateescape"))
    out.append(
        f"SIP/2.0 200 OK\r\nVia: {ours}\r\nVia: {theirs}\r\n{rest}Content-Length: 4\r\n\r\nbody".encode()
    )
    return out


def _context() -> ForkContext[Flow]:
    request = Request("INVITE", "sip:b@h")
    return ForkContext(server=None, request=request, groups=[], is_invite=True, loop="loop")  # type: ignore[arg-type]


@pytest.mark.parametrize("read", ["nothing", "framing"])
def test_the_upstream_copy_is_the_general_copy(read: str) -> None:
    context = _context()
    cut = 0
    for data in _responses():
        received, again = parse_datagram(data), parse_datagram(data)
        assert isinstance(received, Response) and isinstance(again, Response)
        if read == "framing":  # as the transport left them: Via, CSeq, Call-ID ... already read
            try:
                received.check_framing_headers()
            except SipError:
                continue  # the transport drops it
            again.check_framing_headers()
        before = received.to_bytes()
        copy = ProxyCore._upstream_copy(context, received)
        general = _general_upstream_copy(context, again)
        assert copy.to_bytes() == general.to_bytes(), data
        assert received.to_bytes() == before  # the received response is left as it was
        cut += copy.headers.raw is not None and b"branch=z9hG4bKloop.1" not in copy.to_bytes()
        # what the transaction layer and the transport read of it is the same
        assert (copy.cseq.seq, copy.cseq.method) == (general.cseq.seq, general.cseq.method)
        assert copy.call_id == general.call_id
        assert copy.content_length == general.content_length
        assert _verdict(lambda c=copy: str(c.top_via)) == _verdict(lambda c=general: str(c.top_via))
        if general.headers.get("Via") is not None:
            assert str(copy.top_via) == str(general.top_via)
        # and it is a copy: changing it changes nothing of the received response
        copy.cseq.seq += 1
        copy.headers.set("To", "<sip:x@y>")
        assert received.cseq.seq == again.cseq.seq
        assert received.to_bytes() == before
    assert cut >= 20  # the short cut was taken for most of them


# --- a stamped Via keeps what was read of the other header fields -----------------------------------
def _stamp_in_general(request: Request, source: tuple[str, int]) -> bool:
    """``stamp_via`` as it was: the top Via replaced through pop_first and prepend, every typed
    value read again from the text afterwards."""
    via = request.top_via
    ip = transports._plain_ip(source[0])
    stamped = via.copy()
    changed = False
    sent_by = transports._parse_ip(via.host)
    if (via.has_rport or sent_by is None or sent_by != transports._parse_ip(ip)) and via.received != ip:
        stamped.params.set("received", ip)
        changed = True
    if via.has_rport and via.rport is None:
        stamped.params.set("rport", str(source[1]))
        changed = True
    if changed:
        request.headers.pop_first("Via")
        request.headers.prepend("Via", str(stamped))
    return changed


def _read(request: Request) -> list[object]:
    """What the layers above read of a received request, as comparable values."""
    via = request.top_via
    return [
        request.to_bytes(),
        (via.protocol, via.version, via.transport, via.host, via.port, list(via.params.items())),
        str(via),
        str(request.from_), str(request.to), request.call_id, str(request.cseq),
        request.max_forwards, request.content_length, [str(v) for v in request.via],
    ]  # fmt: skip


def test_a_stamped_request_reads_as_one_whose_every_header_is_read_again() -> None:
    from test_differential import corpus

    sources = [("127.0.0.1", 5999), ("192.0.2.7", 5060), ("::1", 5070), ("::ffff:192.0.2.9", 5071)]
    changed = 0
    for data in corpus():
        for source in sources:
            try:
                ours, general = parse_datagram(data), parse_datagram(data)
            except SipError:
                break
            if not isinstance(ours, Request) or not isinstance(general, Request):
                break
            try:
                ours.check_framing_headers()
            except SipError:
                break  # the transport refuses it before stamping
            general.check_framing_headers()
            if source[1] % 2:  # every Via read before the stamp, for some
                if _verdict(lambda r=ours: r.via) is not None:
                    break
                general.via  # noqa: B018
            was = transports.stamp_via(ours, source)
            assert was == _stamp_in_general(general, source)
            changed += was
            assert _verdict(lambda r=ours: _read(r)) == _verdict(lambda r=general: _read(r))
            if _verdict(lambda r=general: _read(r)) is None:
                assert _read(ours) == _read(general), data[:200]
    assert changed > 300
