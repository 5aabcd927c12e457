"""The REGISTER specialisation (imscore.server.fastreg) answers as the general path does (issue 13,
decision 3).

Two real servers (the default profile, memory stores, the same subscribers and the same fixed
registrar clock) are fed the same datagrams through the transport's UDP receive path: one with the
specialisation, one without (``Server.fast_register = False``). The corpus: the registration
benchmark's REGISTERs (the credentialed one computed from each server's own 401), the RFC 4475 and
RFC 5118 torture messages that are REGISTERs (as they are, and readdressed to this server's domain
and source), and seeded mutations of them (header lines dropped, doubled, swapped, renamed in
another case or compact form, folded; odd parameters; bad values; extra headers; stray octets).
The answers must be the same octets (nonces and To tags masked; the registrar's deterministic To
tags are compared too), and afterwards the binding stores, the counters and the server transactions
the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CORPUS, REPO_ROOT

from imscore.cli import _load_profile, _load_subscribers
from imscore.plugin import builtin, hookimpl
from imscore.profile import parse_listen
from imscore.registrar import FlowInfo
from imscore.server.fastreg import (
    _CSEQ,
    _FROM,
    _MAX_FORWARDS,
    _REQUIRED,
    _TO,
    _VIA,
    TAKEN,
    build_request,
    check,
    checked_to,
    fast_register_for,
    plain_contact,
    resolved_set,
)  # fmt: skip
from imscore.server.runtime import Server
from imscore.sip import Address, Request, SipError, SipUri, parse_datagram
from imscore.sip.grammar import CALL_ID_RE
from imscore.sip.headers import parse_contact
from imscore.sip.uri import aor_of
from imscore.subscribers import MemorySubscriberStore, demo_subscribers_path
from imscore.subscribers.model import impu_key

sys.path.insert(0, str(REPO_ROOT / "bench"))
from register_bench import DOMAIN, write_users

PEER = ("127.0.0.1", 5999)
USERS = 500
NOW = 1_800_000_000.0
NONCE = re.compile(rb'nonce="[A-Za-z0-9_=+/-]*"?')
#: the digest computed from a nonce, as an error's reason phrase may quote it
DIGEST = re.compile(rb'esponse="[0-9a-f]*')
TO_TAG = re.compile(rb"(\r\n(?i:to|t)[ \t]*:[^\r\n]*;tag=)[0-9A-Za-z]+")
SEED = 13


def register(i: int, cseq: int, authorization: str = "", branch: str = "") -> bytes:
    """The REGISTER of register-auth.xml for user ``i``, as the benchmark sends it."""
    user = f"user{i:05d}"
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {PEER[0]}:{PEER[1]};branch=z9hG4bK-{i}-{cseq}{branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag={i}\r\nTo: <sip:{user}@{DOMAIN}>\r\n"
        f"Call-ID: {i}-bench@{PEER[0]}\r\nCSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@{PEER[0]}:{PEER[1]}>\r\n{authorization}"
        "Expires: 3600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def credentials(i: int, nonce: str, password: str = "secret", nc: int = 1) -> str:
    """SIPp's Authorization header for user ``i`` (qop=auth, MD5), nonce-count ``nc``."""
    username, uri, count = f"user{i:05d}@{DOMAIN}", f"sip:{DOMAIN}", f"{nc:08x}"
    ha1 = hashlib.md5(f"{username}:{DOMAIN}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
    response = hashlib.md5(f"{ha1}:{nonce}:{count}:6b8b4567:auth:{ha2}".encode()).hexdigest()
    return (
        f'Authorization: Digest username="{username}",realm="{DOMAIN}",cnonce="6b8b4567",'
        f'nc={count},qop=auth,uri="{uri}",nonce="{nonce}",response="{response}",algorithm=MD5\r\n'
    )


#: what a device's next credentialed REGISTER may change: (Expires, CSeq step, Call-ID, Contact port)
NEXT = [
    ("3600", 1, "", 5999), ("0", 1, "", 5999), ("30", 1, "", 5999), ("7200", 1, "", 5999),
    ("3600", -1, "", 5999), ("3600", 0, "", 5999), ("3600", 1, "other-", 5999),
    ("3600", 1, "", 6001), ("0", 1, "other-", 6001), ("59", 1, "", 6002), ("60", 1, "", 5999),
    ("4294967296", 1, "", 5999),
]  # fmt: skip


def again(i: int, cseq: int, nonce: str, nc: int, change: tuple[str, int, str, int]) -> bytes:
    """Device ``i``'s next REGISTER with credentials on the same nonce, as ``change`` says."""
    expires, step, call_id, port = change
    data = register(i, cseq + step, credentials(i, nonce, nc=nc), branch=f".n{nc}")
    data = data.replace(b"Expires: 3600", f"Expires: {expires}".encode())
    data = data.replace(b"Call-ID: ", f"Call-ID: {call_id}".encode())
    return data.replace(b"127.0.0.1:5999>", f"127.0.0.1:{port}>".encode())


# -- mutations ---------------------------------------------------------------------------------------
COMPACT = {"Via": "v", "From": "f", "To": "t", "Call-ID": "i", "Contact": "m", "Content-Length": "l"}
EXTRA = [
    "Require: path", "Require: foo", "Route: <sip:ims.example.test;lr>",
    "Route: <sip:elsewhere.test;lr>",
    "Supported: path, gruu, outbound", "Supported: gruu", "Path: <sip:pcscf.test;lr>",
    "User-Agent: softphone 1.0", "Allow: INVITE, ACK, BYE", "Proxy-Require: foo", "Expires: 60",
    "Authorization: Digest username=\"x\"", "Authorization: Basic Zm9vOmJhcg==",
    "Content-Type: text/plain",
    "P-Access-Network-Info: 3GPP-UTRAN-TDD; utran-cell-id-3gpp=23456789ABCDE",
    "X-Odd: \x01", "Max-Forwards: 10", "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-second",
]  # fmt: skip
VALUES: dict[str, list[str]] = {
    "Via": [
        "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-x;rport",
        "SIP/2.0/UDP 127.0.0.1:5999;rport;branch=z9hG4bK-x",
        "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-x;received=10.1.1.1",
        "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK-x", "SIP/2.0/UDP 127.0.0.1:0;branch=z9hG4bK-x",
        "SIP/2.0/UDP 127.0.0.1:70000;branch=z9hG4bK-x", "SIP/2.0/UDP 10.9.9.9:5999;branch=z9hG4bK-x",
        "SIP/2.0/UDP host.test:5999;branch=z9hG4bK-x", "SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-x",
        "SIP/2.0/udp 127.0.0.1:5999;branch=z9hG4bK-x", "SIP/2.0/UDP 127.0.0.1:5999;branch=x-2543",
        "SIP/2.0/UDP 127.0.0.1:5999;branch=Z9HG4BK-x", "SIP/2.0/UDP 127.0.0.1:5999",
        "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-x, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-y",
        "SIP/2.0/UDP 127.000.0.1:5999;branch=z9hG4bK-x", "SIP/3.0/UDP 127.0.0.1:5999;branch=z9hG4bK-x",
        "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-x;maddr=10.0.0.1",
    ],
    "From": [
        "<sip:user00001@ims.example.test>", "sip:user00001@ims.example.test;tag=1",
        "\"Alice\" <sip:user00001@ims.example.test>;tag=1", "<sip:user00001@ims.example.test>;tag=",
        "<sip:user00001@-bad->;tag=1", "<sip:user00001@ims.example.test>;tag=a;tag=b",
        "<tel:+15551234>;tag=1", "<sip:@ims.example.test>;tag=1",
        "<sip:user00001@ims.example.123>;tag=1",
    ],
    "To": [
        "<sip:user00001@ims.example.test>;tag=abc", "sip:user00001@ims.example.test",
        "<sip:user00001@IMS.EXAMPLE.TEST>", "<sip:USER00001@ims.example.test>",
        "<sip:user00001@ims.example.test;user=phone>", "<sip:+15551230001@ims.example.test;user=phone>",
        "<sip:user99999@ims.example.test>", "<sips:user00001@ims.example.test>", "<tel:+15551230001>",
        "<mailto:user@ims.example.test>", "<sip:user00001@other.test>",
        "\"U\" <sip:user00001@ims.example.test>",
        "<sip:user00001@ims.example.test>;x=1", "<sip:user00001@ims.example.test.>",
        "<sip:user%30%30001@ims.example.test>", "<sip:user00001@ims.example.test:5060>",
    ],
    "Call-ID": ["a b", "x@y@z", "@", "abc@", "k" * 300, "{}[]@host", "1-bench@127.0.0.1"],
    "CSeq": [
        "1 INVITE", "0 REGISTER", "4294967296 REGISTER", "01 REGISTER", "1  REGISTER", "1 register",
        "x REGISTER", "2147483648 REGISTER", "999999999 REGISTER",
    ],
    "Max-Forwards": ["0", "255", "256", "-1", "abc", "070", "1"],
    "Contact": [
        "*", "<sip:u@127.0.0.1:5999>;expires=0", "<sip:u@127.0.0.1:5999>;expires=10",
        "<sip:u@127.0.0.1:5999>, <sip:v@127.0.0.1:6000>", "<sip:u@127.0.0.1:5999>;q=0.5",
        "<sip:u@127.0.0.1:5999>;+sip.instance=\"<urn:uuid:0000-1>\";reg-id=1", "garbage<<",
        "sip:u@127.0.0.1:5999;expires=20", "<sip:u@127.0.0.1:5999>;expires=abc",
    ],
    "Expires": ["0", "10", "-1", "abc", "4294967296", "7200", "59"],
    "Content-Length": ["5", "00", "abc", "0, 0", "1"],
}  # fmt: skip
START = [
    "REGISTER sip:IMS.EXAMPLE.TEST SIP/2.0", "REGISTER sip:other.test SIP/2.0",
    "REGISTER sip:ims.example.test:5060 SIP/2.0", "REGISTER sips:ims.example.test SIP/2.0",
    "REGISTER sip:ims.example.test SIP/2.1", "REGISTER  sip:ims.example.test SIP/2.0",
    "REGISTER sip:ims.example.test;transport=udp SIP/2.0", "REGISTER sip:u@ims.example.test SIP/2.0",
    "register sip:ims.example.test SIP/2.0", "REGISTER sip:ims.example.test. SIP/2.0",
    "REGISTER <sip:ims.example.test> SIP/2.0", "REGISTER sip:127.0.0.1 SIP/2.0",
]  # fmt: skip


def mutate(message: bytes, rng: random.Random, *, flips: bool = True) -> bytes:
    """One or two seeded changes to a REGISTER (the same ``rng`` state gives the same changes to
    two messages of the same shape). ``flips=False`` leaves out changing an octet at random (on
    two messages whose nonces differ it may change one's and leave the other's as it was)."""
    head, _, body = message.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    for _ in range(rng.choice((1, 1, 2))):
        kind = rng.randrange(12 if flips else 11)
        i = rng.randrange(1, len(lines)) if len(lines) > 1 else 0
        name, sep, value = lines[i].partition(": ")
        if kind == 0 and len(lines) > 1:
            del lines[i]
        elif kind == 1:
            lines.insert(i, lines[i])
        elif kind == 2 and len(lines) > 2:
            j = rng.randrange(1, len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == 3:
            lines[i] = f"{rng.choice((name.lower(), name.upper(), name.swapcase()))}{sep}{value}"
        elif kind == 4:
            lines[i] = f"{COMPACT.get(name, name)}{rng.choice((': ', ':', ' : '))}{value}"
        elif kind == 5 and len(value) > 4:
            cut = rng.randrange(1, len(value) - 1)
            lines[i] = f"{name}{sep}{value[:cut]}\r\n {value[cut:]}"
        elif kind == 6 and name in VALUES:
            lines[i] = f"{name}: {rng.choice(VALUES[name])}"
        elif kind == 7:
            lines.insert(i, rng.choice(EXTRA))
        elif kind == 8:
            lines[0] = rng.choice(START)
        elif kind == 9:
            lines[i] = rng.choice((f"{name}:  {value}", f"{name}: {value} ", f"{name}:\t{value}",
                                   f"{name} : {value}"))  # fmt: skip
        elif kind == 10:
            body = rng.choice((b"x", b"\r\n", b"v=0\r\n"))
        else:
            text = bytearray("\r\n".join(lines).encode("latin-1"))
            at = rng.randrange(len(text))
            text[at] = rng.randrange(256)
            lines = text.decode("latin-1").split("\r\n")
    return ("\r\n".join(lines)).encode("latin-1") + b"\r\n\r\n" + body


def torture() -> list[bytes]:
    """The RFC 4475 and RFC 5118 messages that are REGISTERs, each as it is and readdressed to
    this server (its domain in the Request-URI, To and From, the peer's address in the top Via)."""
    found: list[bytes] = []
    for folder in ("rfc4475", "rfc5118"):
        for path in sorted((CORPUS / folder).glob("*.dat")):
            data = path.read_bytes()
            if not data.startswith(b"REGISTER "):
                continue
            found.append(data)
            text = data.decode("latin-1")
            head, sep, rest = text.partition("\r\n")
            head = re.sub(r"sip:[^ ]*", f"sip:{DOMAIN}", head, count=1)
            rest = re.sub(r"@[A-Za-z0-9.-]+\.(com|net|org|example)", f"@{DOMAIN}", rest)
            via = r"(Via: SIP/2\.0/UDP )[^;:\r\n]+(:\d+)?"
            rest = re.sub(via, rf"\g<1>{PEER[0]}:{PEER[1]}", rest, count=1)
            found.append(f"{head}{sep}{rest}".encode("latin-1"))
    return found


# -- two servers -------------------------------------------------------------------------------------
class Side:
    """One server and its UDP endpoint, answers taken off ``sendto``."""

    def __init__(self, server: Server) -> None:
        self.server = server
        transports = server.transports
        assert transports is not None
        self.transports = transports
        self.endpoint = next(iter(transports._endpoints.values()))
        self.sent: list[bytes] = []
        self.endpoint.sendto = lambda data, remote: self.sent.append(data)  # type: ignore[method-assign]

    def feed(self, data: bytes) -> list[bytes]:
        """What the server sends for one datagram from the peer."""
        self.transports._datagram_received(self.endpoint, data, PEER)
        out, self.sent[:] = list(self.sent), []
        return out


async def start(
    subscribers: Path, *, fast: bool, extra_plugins: tuple[object, ...] = (), store: str = "memory:"
) -> Side:
    source, directory = _load_subscribers(str(subscribers))
    server = Server(
        _load_profile("default"),
        listeners=[parse_listen("udp:127.0.0.1:0", any_transport=True)],
        store_url=store,
        subscribers=MemorySubscriberStore(directory, source),
        clock=lambda: NOW,
        extra_plugins=extra_plugins,
    )
    server.fast_register = fast
    await server.start()
    return Side(server)


@pytest.fixture
def users(tmp_path: Path) -> Path:
    return write_users(tmp_path, USERS)[1]


def masked(answers: list[bytes]) -> list[bytes]:
    """Nonces (and digests computed from them) and To tags masked."""
    return [
        TO_TAG.sub(rb"\1TAG", DIGEST.sub(b'esponse="D', NONCE.sub(b'nonce="N"', a))) for a in answers
    ]


def nonce_of(answers: list[bytes]) -> str | None:
    for answer in answers:
        found = NONCE.search(answer)
        if found is not None:
            return found.group(0)[7:-1].decode()
    return None


def same(fast: Side, plain: Side, data: bytes, what: str) -> tuple[list[bytes], list[bytes]]:
    """Feed ``data`` to both; their answers must be the same octets (masked)."""
    a, b = fast.feed(data), plain.feed(data)
    assert masked(a) == masked(b), f"{what}: {data!r}\nfast:  {a!r}\nplain: {b!r}"
    return a, b


async def bindings_of(side: Side) -> list[Any]:
    store = side.server.store
    assert store is not None
    every = await store.all()
    anywhere = [
        dataclasses.replace(b, flow=FlowInfo(b.flow.transport, b.flow.remote, ("local", 0), None))
        if b.flow is not None
        else b
        for b in every
    ]
    return sorted(anywhere, key=lambda b: (b.aor, b.contact))


def transactions(side: Side) -> list[tuple[object, ...]]:
    layer = side.server.core.layer
    return sorted(
        (
            t.method,
            t.branch or "",
            t.cseq,
            t.state.value,
            tuple(sorted((k, int(v - t.created_at)) for k, v in t.deadlines.items())),
        )
        for t in layer.transactions()
    )


def counters(side: Side) -> tuple[object, ...]:
    counted = side.server.core.counters
    stats = side.transports.stats.as_dict()
    return (dict(counted.answered), counted.parse_errors, counted.shed, stats)


# -- the tests -----------------------------------------------------------------------------------------
async def _test_the_specialisation_answers_the_corpus_as_the_general_path(
    users: Path, store: str
) -> None:
    if store == "sqlite":
        fast = await start(users, fast=True, store=f"sqlite:{users.parent}/fast.db")
        plain = await start(users, fast=False, store=f"sqlite:{users.parent}/plain.db")
    else:
        fast, plain = await start(users, fast=True), await start(users, fast=False)
    assert fast.server._fastreg is not None and plain.server._fastreg is None
    rng = random.Random(SEED)
    user = iter(range(USERS))
    try:
        # the benchmark's registrations: 401, then 200 with the binding (tags compared unmasked)
        for _ in range(40):
            i = next(user)
            a, b = same(fast, plain, register(i, 1), "first REGISTER")
            assert a[0].startswith(b"SIP/2.0 401 ") and NONCE.sub(b"", a[0]) == NONCE.sub(b"", b[0])
            second_a = register(i, 2, credentials(i, nonce_of(a) or ""))
            second_b = register(i, 2, credentials(i, nonce_of(b) or ""))
            a, b = fast.feed(second_a), plain.feed(second_b)
            assert a[0].startswith(b"SIP/2.0 200 ") and a == b
            assert fast.feed(second_a) == a and plain.feed(second_b) == b  # retransmitted
            # a refresh and a retransmission of it
            third = register(i, 3, "")
            same(fast, plain, third, "refresh without credentials")
            same(fast, plain, third, "its retransmission")
        # devices registering again on the same nonce: refreshes, more contacts, de-registration,
        # too short an expiry, out-of-order CSeqs, another Call-ID
        seen: set[bytes] = set()
        for _ in range(60):
            i = next(user)
            a, b = same(fast, plain, register(i, 1), "first REGISTER")
            nonces = [nonce_of(a) or "", nonce_of(b) or ""]
            a, b = fast.feed(register(i, 2, credentials(i, nonces[0]))), plain.feed(
                register(i, 2, credentials(i, nonces[1]))
            )
            assert a == b and a[0].startswith(b"SIP/2.0 200 ")
            cseq = 2
            for nc in range(2, 2 + rng.randrange(1, 5)):
                change = rng.choice(NEXT)
                a = fast.feed(again(i, cseq, nonces[0], nc, change))
                b = plain.feed(again(i, cseq, nonces[1], nc, change))
                assert masked(a) == masked(b), f"again {change}: {a!r} {b!r}"
                seen.add(a[0][8:11])
                cseq += max(change[1], 0)
        assert {b"200", b"423", b"500"} <= seen, seen
        # the torture REGISTERs, as they are and readdressed, and mutations of them
        corpus = torture()
        assert len(corpus) >= 20
        for data in corpus:
            same(fast, plain, data, "torture")
            for _ in range(3):
                same(fast, plain, mutate(data, rng), "mutated torture")
        # mutated first REGISTERs, and mutated credentialed ones from each server's own 401
        for n in range(600):
            i = next(user) if n < 300 else rng.randrange(400)
            data = mutate(register(i, 1, branch=f".{n}"), rng)
            same(fast, plain, data, "mutated first REGISTER")
        for n in range(300):
            i = rng.randrange(400, USERS)
            a, b = same(fast, plain, register(i, 10 + n, branch=f".c{n}"), "first REGISTER")
            password = "secret" if rng.random() < 0.8 else "wrong"
            wanted_a = credentials(i, nonce_of(a) or "x", password)
            wanted_b = credentials(i, nonce_of(b) or "x", password)
            seed = rng.random()  # the same changes to both servers' messages
            first = register(i, 11 + n, wanted_a, branch=f".d{n}")
            data_a = mutate(first, random.Random(seed), flips=False)
            second = register(i, 11 + n, wanted_b, branch=f".d{n}")
            data_b = mutate(second, random.Random(seed), flips=False)
            answer_a, answer_b = fast.feed(data_a), plain.feed(data_b)
            assert masked(answer_a) == masked(answer_b), f"mutated credentials: {data_a!r}"
        fastreg = fast.server._fastreg
        assert fastreg is not None, "the specialisation is on"
        assert fastreg.challenged >= 300 and fastreg.bound >= 250 and fastreg.handed >= 5
        assert await bindings_of(fast) == await bindings_of(plain)
        assert len(await bindings_of(fast)) >= 40
        assert transactions(fast) == transactions(plain)
        assert counters(fast) == counters(plain)
        assert len(fast.server._retransmissions) == len(plain.server._retransmissions)
        # Timer J: every transaction ends when it should, on both
        later = fast.server.now() + 40
        fast.server.core.advance(later)
        plain.server.core.advance(later)
        assert len(fast.server.core.layer) == len(plain.server.core.layer) == 0
    finally:
        await fast.server.stop()
        await plain.server.stop()


async def _test_a_retransmitted_challenge_gets_the_same_octets(users: Path) -> None:
    fast, plain = await start(users, fast=True), await start(users, fast=False)
    try:
        first = fast.feed(register(7, 1))
        again = fast.feed(register(7, 1))
        assert len(first) == 1 and first == again
        assert fast.server.retransmissions == 1
        assert fast.server._fastreg is not None and fast.server._fastreg.challenged == 1
        # what the general path sends for it, masked nonce aside, and its To tag
        general = plain.feed(register(7, 1))
        assert NONCE.sub(b"", general[0]) == NONCE.sub(b"", first[0])
        (transaction,) = list(fast.server.core.layer.transactions())
        assert transaction.state.value == "Completed" and set(transaction.deadlines) == {"J"}
    finally:
        await fast.server.stop()
        await plain.server.stop()


class Resolver:
    """A plugin with an opinion on identities (none, here): the specialisation must step aside."""

    @hookimpl
    def ims_identity_resolve(self, impu: str, subscribers: list[object]) -> None:
        return None


async def _test_a_plugin_on_the_register_path_turns_the_challenge_path_off(users: Path) -> None:
    fast = await start(users, fast=True, extra_plugins=(Resolver(),))
    plain = await start(users, fast=False, extra_plugins=(Resolver(),))
    try:
        assert not fast.server.plugins.only_builtin("ims_identity_resolve")
        assert fast.server.plugins.only_builtin("ims_auth_select_scheme")
        for i in range(5):
            a, b = same(fast, plain, register(i, 1), "first REGISTER")
            second = [register(i, 2, credentials(i, nonce_of(x) or "")) for x in (a, b)]
            assert masked(fast.feed(second[0])) == masked(plain.feed(second[1]))
        fastreg = fast.server._fastreg
        assert fastreg is not None and fastreg.challenged == 0 and fastreg.handed == 10
        assert fastreg.known == 0 and fastreg.bound == 0
        assert await bindings_of(fast) == await bindings_of(plain)
    finally:
        await fast.server.stop()
        await plain.server.stop()


async def _test_the_path_is_off_when_switched_off(users: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    side = await start(users, fast=True)
    try:
        assert fast_register_for(side.server) is not None
        monkeypatch.setenv("IMSCORE_FASTREG", "0")
        assert fast_register_for(side.server) is None
        side.server.fast_register = False
        monkeypatch.delenv("IMSCORE_FASTREG")
        assert fast_register_for(side.server) is None
    finally:
        await side.server.stop()


def _shapes() -> Iterator[tuple[bytes, bool]]:
    yield register(1, 1), True
    yield register(1, 2, credentials(1, "abc")), True
    yield register(1, 1).replace(b"127.0.0.1:5999;", b"127.0.0.1:5999;rport;"), False
    yield register(1, 1).replace(b"To: ", b"t: "), False
    yield register(1, 1).replace(b"Content-Length: 0", b"Content-Length: 1") + b"x", False
    yield register(1, 1).replace(b"Max-Forwards: 70", b"Max-Forwards: 256"), False
    yield register(1, 1).replace(b"CSeq: 1 REGISTER", b"CSeq: 1 INVITE"), False
    yield register(1, 1).replace(b"Expires: 3600\r\n", b"Expires: 3600\r\nRequire: path\r\n"), False
    yield register(1, 1).replace(b"sip:ims.example.test SIP", b"sip:other.test SIP"), False


@pytest.mark.parametrize(("data", "taken"), list(_shapes()))
def test_the_octet_checks_take_only_what_they_know(data: bytes, taken: bool) -> None:
    assert (check(data, PEER[0], {DOMAIN}) is not None) is taken



#: what the octet checks asked of the start line and header lines until they were written without
#: it (visible ASCII, one space after each name's colon, no white space at either end of a value,
#: 1 to 40 header lines): the specification :func:`check` is held to
_HEAD_SPEC = re.compile(
    rb"REGISTER sip:[A-Za-z0-9.-]{1,253} SIP/2\.0"
    rb"(?:\r\n[A-Za-z-]{1,20}: [\x21-\x7e](?:[\x20-\x7e]{0,2000}[\x21-\x7e])?){1,40}"
)


def _head_cases() -> Iterator[bytes]:
    """Datagrams whose start line and header lines are near the edges of the specification."""
    rng = random.Random(SEED)
    base = register(2, 1)
    head, _, _ = base.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    to = b"<sip:user00002@ims.example.test>"
    edits = [
        b"To:  " + to, b"To: " + to + b" ", b"To:", b"To: ", b"To", b"To:" + to, b"To : " + to,
        b"User-Agent: x", b"User-Agent:  x", b"User-Agent: x ", b"User-Agent:  ", b"Allow: A, B ",
        b"User-Agent: x\ty", b"User-Agent: a\x7fb", b"User-Agent: a\xc3\xa9b", b"User-Agent: a\rb",
        b"User-Agent: a\nb", b"User-Agent: a\x00b",
        b"User-Agent: " + b"x" * 2002, b"User-Agent: " + b"x" * 2003,
        b"User-Agent: x" + b" " * 1000 + b"y", b"User-Agent: ab: cd", b"User-Agent: :",
    ]  # fmt: skip
    for tag in (b"t", b"", b"a b", b"a;b", b"a\x7f", b"x" * 128, b"x" * 129, b"'`~!%*_+.-"):
        edits += [b"From: " + to + b";tag=" + tag, b"From: " + to + b";tag=" + tag + b";x=1"]
    edits += [b"From: <sip:other@ims.example.test>;tag=1", b"From: " + to + b";tag", b"From: " + to,
              b"From: " + to + b"x;tag=1", b"From: " + to[:-1] + b";tag=1",
              b"To: <sip:user00002@ims..test>", b"From: <sip:user00002@ims..test>;tag=1"]  # fmt: skip
    for edit in edits:
        yield b"\r\n".join([*lines, edit]) + b"\r\n\r\n"
        yield b"\r\n".join([lines[0], edit, *lines[1:]]) + b"\r\n\r\n"
        # in place of the line of the same name (so not a second one)
        name = edit.partition(b":")[0]
        same = [i for i, line in enumerate(lines) if line.partition(b":")[0] == name]
        if same:
            yield b"\r\n".join([*lines[: same[0]], edit, *lines[same[0] + 1 :]]) + b"\r\n\r\n"
    for count in (0, 1, 30, 31, 32, 40, 41):  # header lines in all: 9 of the datagram's and more
        extra = [b"User-Agent: x"] * max(0, count - len(lines) + 1)
        yield b"\r\n".join(lines[: count + 1] + extra) + b"\r\n\r\n"
    for start in (b"REGISTER sip:ims.example.test SIP/2.0 ", b"REGISTER  sip:ims.example.test SIP/2.0",
                  b"register sip:ims.example.test SIP/2.0", b"REGISTER sip:ims.example.test SIP/2.1",
                  b"REGISTER sip:" + b"a" * 254 + b" SIP/2.0"):  # fmt: skip
        yield b"\r\n".join([start, *lines[1:]]) + b"\r\n\r\n"
    for _ in range(600):
        data = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            where = rng.randrange(len(head))
            data[where : where + 1] = bytes([rng.choice(b" \t\r\n:\x7f\x80xA-0")])
        yield bytes(data)


def _reference_check(data: bytes) -> dict[str, str] | None:
    """The octet checks as they were written with :data:`_HEAD_SPEC` (the header fields they
    found, or ``None``), for the same peer and domain as the tests'."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or body or _HEAD_SPEC.fullmatch(head) is None:
        return None
    lines = head.decode("ascii").split("\r\n")
    if lines[0][len("REGISTER sip:") : -8].lower().rstrip(".") != DOMAIN:
        return None
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        key = TAKEN.get(name)
        if key is None or key in fields:
            return None
        fields[key] = value
    if not _REQUIRED.issubset(fields) or fields["content-length"] != "0":
        return None
    via = _VIA.fullmatch(fields["via"])
    if via is None or via.group(1) != PEER[0] or int(via.group(2)) > 65535:
        return None
    if _FROM.fullmatch(fields["from"]) is None or _TO.fullmatch(fields["to"]) is None:
        return None
    if _CSEQ.fullmatch(fields["cseq"]) is None or CALL_ID_RE.fullmatch(fields["call-id"]) is None:
        return None
    forwards = fields.get("max-forwards")
    if forwards is not None and _MAX_FORWARDS.fullmatch(forwards) is None:
        return None
    return fields


def test_the_octet_checks_take_what_the_specification_takes() -> None:
    """:func:`check` takes exactly the datagrams the checks written with the specification's
    pattern took, and finds the same header fields in them, over edits at the edges of each rule
    of the start line and header lines and seeded mutations."""
    taken = refused = 0
    for data in _head_cases():
        want = _reference_check(data)
        checked = check(data, PEER[0], {DOMAIN})
        assert (checked is None) == (want is None), data
        if checked is None:
            refused += 1
        else:
            taken += 1
            assert checked.fields == want
    assert taken > 20 and refused > 50


def test_the_request_built_from_the_checks_reads_as_the_parsed_one() -> None:
    """For every datagram the checks take (the benchmark's, the torture messages, seeded mutations
    and Vias of other addresses, ports and branches), the request made from the checked lines has
    the header fields, start line and octets of the parsed one, and the top Via and CSeq it holds
    parsed already read as the parser's (each attribute, the Via's parameters, the text)."""
    rng = random.Random(SEED)
    messages = [register(i, 1) for i in range(3)] + [register(1, 2, credentials(1, "abc"))]
    messages += torture()
    messages += [mutate(register(i % 7, 1 + i % 2), rng) for i in range(400)]
    for host, port, branch in [
        ("127.0.0.1", "1", "z9hG4bK"), ("127.0.0.1", "65535", "z9hG4bK.!%*_+`'~-x"),
        ("127.0.0.1", "5999", "z9hG4bKAbC"), ("127.0.0.1", "65536", "z9hG4bK1"),
    ]:
        via = f"SIP/2.0/UDP {host}:{port};branch={branch}".encode()
        messages.append(register(3, 1).replace(b"SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-3-1", via))
    taken = 0
    for data in messages:
        checked = check(data, PEER[0], {DOMAIN})
        if checked is None:
            continue
        taken += 1
        built = build_request(checked)
        parsed = parse_datagram(data)
        assert isinstance(parsed, Request)
        parsed.check_framing_headers()
        assert [(f.key, f.name, f.value, f.raw) for f in built.headers] == [
            (f.key, f.name, f.value, f.raw) for f in parsed.headers
        ]
        assert built.to_bytes() == parsed.to_bytes() == data
        assert (built.method, str(built.uri)) == (parsed.method, str(parsed.uri))
        via, want = built.headers.cache["top_via"], parsed.top_via
        assert (via.protocol, via.version, via.transport, via.host, via.port) == (
            want.protocol, want.version, want.transport, want.host, want.port
        )  # fmt: skip
        assert via.params.items() == want.params.items() and str(via) == str(want)
        cseq = built.headers.cache["cseq"]
        assert (cseq.seq, cseq.method) == (parsed.cseq.seq, parsed.cseq.method)
        for key in ("call-id", "max-forwards", "content-length"):
            assert built.headers.cache[key] == getattr(parsed, key.replace("-", "_"))
        assert same_address(checked_to(checked), parsed.to)
        assert checked.to == str(parsed.to.uri)
        assert checked.to_key == parsed.to.uri.aor == aor_of(checked.to)
    assert taken > 50


def same_address(made: Address, parsed: Address) -> bool:
    """Whether two addresses read alike: text, display name, parameters, brackets and the URI's
    parts (of a SIP URI: each attribute, its parameters and headers)."""
    uri, want = made.uri, parsed.uri
    assert isinstance(uri, SipUri) and isinstance(want, SipUri)
    return (
        (str(made), made.display, made.params.items(), made.bracketed, type(made))
        == (str(parsed), parsed.display, parsed.params.items(), parsed.bracketed, type(parsed))
        and (uri.scheme, uri.spelling, uri.user, uri.password, uri.host, uri.port, str(uri))
        == (want.scheme, want.spelling, want.user, want.password, want.host, want.port, str(want))
        and uri.params.items() == want.params.items()
        and uri.headers == want.headers
    )


def test_a_plain_contact_reads_as_the_parsed_one() -> None:
    """The Contact :func:`plain_contact` makes is the one :func:`parse_contact` gives, for every
    value it takes (the benchmark's, mutations' and edge cases of user, address and port), and it
    takes none that does not parse."""
    rng = random.Random(SEED)
    values = [f"<sip:{user}@{host}:{port}>" for user in ("u", "a.b-c_d", "x" * 64, "x" * 65, "U9")
              for host in ("127.0.0.1", "255.255.255.255", "0.0.0.0", "256.1.1.1", "01.2.3.4")
              for port in ("1", "5060", "65535", "65536", "99999", "0", "05060")]  # fmt: skip
    values += VALUES["Contact"] + ["<sip:u@127.0.0.1>", "<sip:u@host.test:5060>", "<sips:u@1.2.3.4:5>"]
    for i in range(400):
        try:
            values += parse_datagram(mutate(register(i % 7, 1), rng)).headers.get_all("Contact")
        except SipError:
            continue
    taken = 0
    for value in values:
        made = plain_contact(value)
        if made is None:
            continue
        taken += 1
        assert same_address(made, parse_contact(value)), value
    assert taken > 50
    for value in ("<sip:u@127.0.0.1:65536>", "<sip:u@127.0.0.1:99999>"):
        with pytest.raises(SipError):
            parse_contact(value)


def test_the_resolved_set_is_the_builtin_answer() -> None:
    """:func:`resolved_set` answers what the builtin ``ims_identity_resolve`` and
    ``resolve_identity``'s reading of it give for one subscriber, for every public identity of the
    demo and benchmark subscribers (sets, barred identities, tel URIs, phone numbers) written as
    they are, in other spellings, and identities of others or of nobody."""
    _, demo = _load_subscribers(str(demo_subscribers_path()))
    _, bench = _load_subscribers(str(write_users(Path(tempfile.mkdtemp()), 20)[1]))
    subscribers = list(demo) + list(bench)
    texts = [str(uri) for subscriber in subscribers for uri in subscriber.impus]
    texts += sorted(key for subscriber in subscribers for key in subscriber.barred)
    texts += [text.replace("ims.example.test", "IMS.Example.TEST") for text in texts]
    texts += ["sip:nobody@ims.example.test", "tel:+19999999999", "sip:alice@other.test"]
    for subscriber in subscribers:
        for text in texts:
            resolved = builtin.ims_identity_resolve(impu=text, subscribers=[subscriber.hook_record()])
            want = None
            if resolved is not None and resolved.subscriber.impi == subscriber.impi:
                want = subscriber.implicit_set_of(resolved.implicit_set[0])
            key = impu_key(text)
            assert key is not None
            assert resolved_set(subscriber, key) == want, (subscriber.impi, text)
            assert subscriber.implicit_set_of(text) == want, (subscriber.impi, text)


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_the_specialisation_answers_the_corpus_as_the_general_path(users: Path, store: str) -> None:
    asyncio.run(_test_the_specialisation_answers_the_corpus_as_the_general_path(users, store))


def test_a_retransmitted_challenge_gets_the_same_octets(users: Path) -> None:
    asyncio.run(_test_a_retransmitted_challenge_gets_the_same_octets(users))


def test_a_plugin_on_the_register_path_turns_the_challenge_path_off(users: Path) -> None:
    asyncio.run(_test_a_plugin_on_the_register_path_turns_the_challenge_path_off(users))


def test_the_path_is_off_when_switched_off(users: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(_test_the_path_is_off_when_switched_off(users, monkeypatch))


def demo_register(user: str, cseq: int, port: int, impi: str = "", password: str = "",
                  nonce: str = "", call_id: str = "") -> bytes:  # fmt: skip
    """A REGISTER of the demo subscriber ``user`` (the To's user part) from a device on ``port``,
    with Digest credentials of ``impi`` when a nonce is given."""
    authorization = ""
    if nonce:
        uri = f"sip:{DOMAIN}"
        ha1 = hashlib.md5(f"{impi}:{DOMAIN}:{password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
        digest = hashlib.md5(f"{ha1}:{nonce}:00000001:0a1b2c3d:auth:{ha2}".encode()).hexdigest()
        authorization = (
            f'Authorization: Digest username="{impi}",realm="{DOMAIN}",cnonce="0a1b2c3d",'
            f'nc=00000001,qop=auth,uri="{uri}",nonce="{nonce}",response="{digest}",algorithm=MD5\r\n'
        )
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {PEER[0]}:{port};branch=z9hG4bK-demo-{user}-{port}-{cseq}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag={port}\r\nTo: <sip:{user}@{DOMAIN}>\r\n"
        f"Call-ID: {call_id or user}-{port}@{PEER[0]}\r\nCSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@{PEER[0]}:{port}>\r\n{authorization}"
        "Expires: 600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


#: (To user, IMPI, password) of the demo subscribers: sets, a barred IMPU, a device limit, AKA,
#: an unknown user and a wrong password
DEMO = [
    ("alice", "alice@ims.example.test", "alice-secret"),
    ("alice.work", "alice@ims.example.test", "alice-secret"),
    ("alice.old", "alice@ims.example.test", "alice-secret"),
    ("bob", "bob@ims.example.test", "bob-secret"),
    ("bob", "alice@ims.example.test", "alice-secret"),
    ("bob", "bob@ims.example.test", "wrong"),
    ("nobody", "nobody@ims.example.test", "x"),
    ("+15551230003", "001010123456789@ims.mnc001.mcc001.3gppnetwork.org", "x"),
]


async def _test_the_demo_subscribers_get_the_same_answers(tmp_path: Path) -> None:
    sides = []
    for fast in (True, False):
        server = Server(
            _load_profile("default"),
            listeners=[parse_listen("udp:127.0.0.1:0", any_transport=True)],
            store_url="memory:",
            clock=lambda: NOW,
        )
        server.fast_register = fast
        await server.start()
        sides.append(Side(server))
    fast, plain = sides
    seen: set[bytes] = set()
    try:
        for port in (5999, 6000, 6001, 6002, 6003):  # alice's limit is 3 devices
            for user, impi, password in DEMO:
                first = demo_register(user, 1, port)
                a, b = same(fast, plain, first, f"demo {user}")
                if not a or not a[0].startswith(b"SIP/2.0 401 "):
                    continue
                data = [
                    demo_register(user, 2, port, impi, password, nonce_of(x) or "") for x in (a, b)
                ]
                a, b = fast.feed(data[0]), plain.feed(data[1])
                assert masked(a) == masked(b), f"demo {user} as {impi}: {a!r} {b!r}"
                seen.add(a[0][8:11])
        assert {b"200", b"401", b"403"} <= seen
        fastreg = fast.server._fastreg
        assert fastreg is not None and fastreg.challenged >= 20 and fastreg.bound >= 15
        assert await bindings_of(fast) == await bindings_of(plain)
        assert transactions(fast) == transactions(plain)
        assert counters(fast) == counters(plain)
    finally:
        await fast.server.stop()
        await plain.server.stop()


def test_the_demo_subscribers_get_the_same_answers(tmp_path: Path) -> None:
    asyncio.run(_test_the_demo_subscribers_get_the_same_answers(tmp_path))


def test_an_answer_is_marked_plain_only_when_its_section_is() -> None:
    """:func:`answer` marks its section plain (so the transaction layer slims the sent response
    without checking it again) only when every line is a token, a colon and a value without CR
    or LF, as the transaction layer's own check finds; a change to the fields drops the mark."""
    from imscore.server.fastreg import answer
    from imscore.sip.transaction import _PLAIN_SECTION, PLAIN_SECTION_KEY, SentResponse, _as_sent

    checked = check(register(1, 1), PEER[0], {DOMAIN})
    assert checked is not None
    request = build_request(checked)
    cases: list[tuple[list[tuple[str, object]], bool]] = [
        ([], True),
        ([("WWW-Authenticate", 'Digest realm="r", nonce="n"')], True),
        ([("Contact", "<sip:u@127.0.0.1:5999>;expires=3600"), ("Date", "x"), ("Min-Expires", 60)], True),
        ([("Service-Route", "<sip:a>\r\nX-Injected: 1")], False),
        ([("P-Associated-URI", "<sip:a>\n")], False),
        ([("Supported", "a\rb")], False),
        ([("X-Other", "fine")], False),  # a name not among the registrar's: checked as before
        ([("Bad Name", "v")], False),
    ]
    for headers, plain in cases:
        response = answer(checked, request, 200, None, headers)
        section = response.headers.to_bytes()
        assert (response.headers.cache.get(PLAIN_SECTION_KEY) is True) is plain, headers
        if plain:
            assert _PLAIN_SECTION.fullmatch(section) is not None
            assert isinstance(_as_sent(response), SentResponse)
    response = answer(checked, request, 200, None, [])
    response.headers.add("X-Later", "a\r\nb")  # a change empties the cache, and the mark with it
    assert PLAIN_SECTION_KEY not in response.headers.cache
    assert not isinstance(_as_sent(response), SentResponse)
