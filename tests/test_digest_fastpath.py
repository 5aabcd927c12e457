"""The cheaper Digest path gives what the plain one gave (issue 13, decision 3: proven equal).

Each cheaper piece of :mod:`imscore.auth.digest` and of the registrar's authenticator is compared
with a reference written the plain way (the previous code: the ``hmac``/``base64`` modules, the
challenge assembled from its parts): nonces made and read, the challenge's text, H(A2) from its
cache, and the order of the checks in :func:`verify`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import itertools
import os
import random
import re
import string
import struct
from collections.abc import Callable

import pytest

from imscore.auth import digest
from imscore.auth.digest import (
    NonceCheck,
    NonceCounter,
    NonceFactory,
    StoredHA1,
    VerdictKind,
    challenge,
    challenge_frame,
    digest_response,
    verify,
)
from imscore.registrar.authenticator import Authenticator
from imscore.sip import grammar as g
from imscore.sip.headers import parse_auth
from imscore.subscribers import Subscriber

REALM = "ims.example.test"
B64URL = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def _counting(start: int = 0) -> Callable[[int], bytes]:
    counter = itertools.count(start)
    return lambda n: next(counter).to_bytes(n, "big")


# -- the plain references --------------------------------------------------------------------------


def _ref_make(secret: bytes, now: float, rand: bytes, extra: bytes) -> str:
    head = struct.pack(">q", int(now * 1000.0 // 1)) + rand
    mac = hmac.digest(secret, head + extra, "sha256")[:16]
    return base64.urlsafe_b64encode(head + mac).decode("ascii").rstrip("=")


def _ref_decode(nonce: object) -> bytes | None:
    if not isinstance(nonce, str) or not digest.re.fullmatch(r"[A-Za-z0-9_-]{43}", nonce):
        return None
    try:
        raw = base64.urlsafe_b64decode(nonce + "=")
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 32 or base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != nonce:
        return None
    return raw


def _ref_issued_at(secret: bytes, nonce: object, extra: bytes) -> float | None:
    raw = _ref_decode(nonce)
    if raw is None:
        return None
    head, mac = raw[:-16], raw[-16:]
    if not hmac.compare_digest(mac, hmac.digest(secret, head + extra, "sha256")[:16]):
        return None
    return float(struct.unpack(">q", head[:8])[0]) / 1000.0


def _ref_challenge(
    realm: str, nonce: str, algorithm: str, qop: object, stale: bool, opaque: str | None
) -> str:
    parts = [f"realm={g.quote(realm)}", f"nonce={g.quote(nonce)}", f"algorithm={algorithm}"]
    if qop is not None:
        options = [qop] if isinstance(qop, str) else list(qop)  # type: ignore[call-overload]
        if options:
            parts.append(f"qop={g.quote(','.join(o.lower() for o in options))}")
    if opaque is not None:
        parts.append(f"opaque={g.quote(opaque)}")
    if stale:
        parts.append("stale=true")
    return "Digest " + ", ".join(parts)


# -- nonces ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [b"k" * 16, b"0123456789abcdef" * 4, bytes(range(65)), b"\xff" * 200])
def test_nonces_are_the_plain_hmac_sha256_ones(secret: bytes) -> None:
    """Keys shorter than, equal to and longer than SHA-256's block (hashed first, RFC 2104)."""
    factory = NonceFactory(secret, random=_counting(7))
    source = _counting(7)
    for now, extra in [(0.0, b""), (12.3456, b"x"), (-5.5, b"\x00MD5"), (1.7e9, b"w" * 100)]:
        made = factory.make(now, extra=extra)
        assert made == _ref_make(secret, now, source(8), extra)
        assert factory.issued_at(made, extra=extra) == _ref_issued_at(secret, made, extra)
        assert factory.issued_at(made, extra=extra + b"!") is None


def test_reading_a_nonce_matches_the_plain_decoding() -> None:
    """Every last character of made nonces (only the canonical spellings are ours), random
    strings of the alphabet, and garbage of other lengths, characters and types."""
    secret = b"s" * 32
    factory = NonceFactory(secret)
    rng = random.Random(13)
    candidates: list[object] = []
    for _ in range(20):
        made = factory.make(rng.uniform(0, 1e6))
        candidates += [made[:-1] + c for c in B64URL]
        candidates.append(made[:-1])
        candidates.append(made + "A")
        candidates.append(made + "=")
    candidates += ["".join(rng.choice(B64URL) for _ in range(43)) for _ in range(300)]
    candidates += ["", "garbage", "٣" * 43, "A" * 42 + "é", "+" * 43, "/" * 43, None, 5, b"A" * 43]
    for candidate in candidates:
        assert digest._decode_nonce(candidate) == _ref_decode(candidate), candidate
        assert factory.issued_at(candidate) == _ref_issued_at(secret, candidate, b"")
    accepted = sum(digest._decode_nonce(c) is not None for c in candidates)
    assert accepted >= 20 * 16  # the 16 canonical last characters of each made nonce at least


def test_inspect_keeps_its_verdicts() -> None:
    factory = NonceFactory(b"s" * 32, lifetime=10.0, max_skew=2.0)
    made = factory.make(100.0)
    assert factory.inspect(made, 110.0) == (NonceCheck.VALID, 100.0)
    assert factory.inspect(made, 110.001) == (NonceCheck.STALE, 100.0)
    assert factory.inspect(made, 98.0) == (NonceCheck.VALID, 100.0)
    assert factory.inspect(made, 97.9) == (NonceCheck.INVALID, 0.0)
    assert factory.inspect(made[:-1] + "B", 100.0) == (NonceCheck.INVALID, 0.0)


def test_the_default_random_source_is_looked_up_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    factory = NonceFactory(b"s" * 32)
    monkeypatch.setattr(digest.secrets, "token_bytes", lambda n: b"\x01" * n)
    assert factory.make(1.0) == _ref_make(b"s" * 32, 1.0, b"\x01" * 8, b"")


def test_the_default_random_octets_are_each_used_once_and_not_shared_by_a_fork(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default source's octets are fetched many nonces' worth at a time; each nonce gets the
    next ones, none twice, and a forked process (a worker) fetches its own."""
    fetched: list[int] = []
    counter = iter(range(1, 10_000))

    def source(n: int) -> bytes:
        fetched.append(n)
        return b"".join(next(counter).to_bytes(8, "big") for _ in range(n // 8))

    monkeypatch.setattr(digest.secrets, "token_bytes", source)
    factory = NonceFactory(b"s" * 32)
    made = [factory.make(1.0) for _ in range(digest._POOL_NONCES + 1)]
    assert fetched == [8 * digest._POOL_NONCES] * 2
    octets = [i.to_bytes(8, "big") for i in range(1, len(made) + 1)]
    assert made == [_ref_make(b"s" * 32, 1.0, rand, b"") for rand in octets]
    factory.make(1.0)
    assert len(fetched) == 2
    digest._forked()  # what a forked child runs
    factory.make(1.0)
    assert len(fetched) == 3


def test_a_forked_process_makes_nonces_of_its_own() -> None:
    """A factory that fetched its octets before a fork: the child's next nonce and the parent's
    do not share their random octets (they would be the same nonce in the same millisecond)."""
    factory = NonceFactory(b"s" * 32)
    factory.make(1.0)  # the octets of the next nonces are fetched
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        try:
            os.write(write, factory.make(1.0).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        made_there = os.read(read, 100).decode()
    finally:
        os.close(read)
        os.waitpid(child, 0)
    made_here = factory.make(1.0)
    assert len(made_there) == len(made_here) and made_there != made_here


def test_a_random_source_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="wrong number of octets"):
        NonceFactory(b"s" * 32, random=lambda n: b"short").make(1.0)


# -- challenges -----------------------------------------------------------------------------------

CHALLENGE_CASES = [
    dict(algorithm="MD5", qop="auth", stale=False, opaque=None),
    dict(algorithm="sha-256", qop="auth", stale=True, opaque=None),
    dict(algorithm="MD5-sess", qop=["auth", "AUTH-INT"], stale=False, opaque='o"p\\q'),
    dict(algorithm="SHA-256-sess", qop=None, stale=True, opaque="x"),
    dict(algorithm="MD5", qop=[], stale=False, opaque=None),
]


@pytest.mark.parametrize("case", CHALLENGE_CASES, ids=range(len(CHALLENGE_CASES)))
@pytest.mark.parametrize("realm", [REALM, 'a "quoted\\" realm'])
def test_challenge_text_is_the_plain_one(case: dict[str, object], realm: str) -> None:
    canonical = digest.canonical_algorithm(str(case["algorithm"]))
    assert canonical is not None
    for nonce in ["abc", 'q"uo\\te', NonceFactory(b"s" * 32).make(3.0)]:
        text = challenge(realm, nonce, **case)  # type: ignore[arg-type]
        expected = _ref_challenge(
            realm,
            nonce,
            canonical,
            case["qop"],
            bool(case["stale"]),
            case["opaque"],  # type: ignore[arg-type]
        )
        assert text == expected
        head, tail = challenge_frame(realm, **case)  # type: ignore[arg-type]
        assert head + g.quote(nonce) + tail == expected


def test_challenge_errors_are_unchanged() -> None:
    with pytest.raises(ValueError, match="unsupported Digest algorithm"):
        challenge("r\n", "n\n", algorithm="XX", qop="bogus")
    with pytest.raises(ValueError, match="realm must not contain"):
        challenge("r\n", "n\n", qop="bogus")
    with pytest.raises(ValueError, match="nonce must not contain"):
        challenge("r", "n\n", qop="bogus")
    with pytest.raises(ValueError, match="unsupported qop"):
        challenge("r", "n", qop="bogus", opaque="\n")
    with pytest.raises(ValueError, match="opaque must not contain"):
        challenge("r", "n", opaque="\n")
    with pytest.raises(ValueError, match="realm must not contain"):
        challenge_frame("r\x00")


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256-sess"])
def test_the_authenticators_challenge_is_challenge_of_its_nonce(algorithm: str) -> None:
    auth = Authenticator(REALM, ("digest",), secret=b"s" * 32, digest_algorithm=algorithm)
    auth.nonces = NonceFactory(b"s" * 32, random=_counting())
    twin = NonceFactory(b"s" * 32, random=_counting())
    user = Subscriber(impi=f"alice@{REALM}", password="pw")
    for stale, realm in [(False, None), (True, None), (False, "other.test"), (False, None)]:
        got = auth._digest_challenge(50.0, stale=stale, realm=realm)
        nonce = twin.make(50.0, extra=b"\x00" + algorithm.encode())
        assert got == challenge(realm or REALM, nonce, algorithm=algorithm, stale=stale)
    auth.nonce_extra = b"worker 1"  # the workers bind nonces to their number after start-up
    got = auth.challenge_for(user, 51.0).challenge
    assert got == challenge(
        REALM, twin.make(51.0, extra=b"worker 1\x00" + algorithm.encode()), algorithm=algorithm
    )


# -- responses ------------------------------------------------------------------------------------


def _plain_response(algorithm: str, password: str, qop: str | None, uri: str) -> str:
    """RFC 2617 §3.2.2.1 written out with hashlib.new, for user bob, nonce n, cnonce c, nc 1."""
    name = "md5" if algorithm.upper().startswith("MD5") else "sha256"

    def h(text: str) -> str:
        return hashlib.new(name, text.encode()).hexdigest()

    a1 = h(f"bob:{REALM}:{password}")
    if algorithm.lower().endswith("-sess"):
        a1 = h(f"{a1}:n:c")
    a2 = h(f"REGISTER:{uri}") if qop != "auth-int" else h(f"REGISTER:{uri}:{h('')}")
    return h(f"{a1}:n:{a2}") if qop is None else h(f"{a1}:n:00000001:c:{qop}:{a2}")


@pytest.mark.parametrize("algorithm", digest.ALGORITHMS)
@pytest.mark.parametrize("qop", [None, "auth", "auth-int"])
def test_responses_are_the_plain_ones_also_past_the_ha2_cache(
    algorithm: str, qop: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(digest, "_HA2", {})
    monkeypatch.setattr(digest, "_HA2_MAX", 3)
    for i in range(10):  # more Request-URIs than the cache holds: it starts again
        uri = f"sip:{i}.{REALM}"
        for _ in range(2):  # the second time from the cache
            got = digest_response(
                algorithm=algorithm, username="bob", realm=REALM, password="pw", method="REGISTER",
                uri=uri, nonce="n", nc=1, cnonce="c", qop=qop,
            )  # fmt: skip
            assert got == _plain_response(algorithm, "pw", qop, uri)
        assert len(digest._HA2) <= 3


def test_digest_response_errors_are_unchanged() -> None:
    base = dict(username="u", realm="r", password="p", method="REGISTER", uri="sip:r", nonce="n")
    with pytest.raises(ValueError, match="needs a cnonce"):
        digest_response(algorithm="MD5-sess", qop="bogus", nc=2**40, **base)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsupported qop"):
        digest_response(algorithm="MD5", qop="bogus", nc=2**40, cnonce="c", **base)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="8 hexadecimal digits"):
        digest_response(algorithm="MD5", qop="auth", nc=2**40, cnonce="c", **base)  # type: ignore[arg-type]
    # no qop: nc is not used, so an nc out of range is no error (as before)
    assert digest_response(algorithm="MD5", nc=2**40, **base)  # type: ignore[arg-type]
    sha = StoredHA1("0" * 64, "SHA-256")
    with pytest.raises(ValueError, match="cannot answer with MD5"):
        digest_response(algorithm="MD5", **{**base, "password": sha})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        StoredHA1("0" * 63 + "g", "SHA-256")


# -- verify: the order of the checks --------------------------------------------------------------

FULL = {
    "username": '"bob"',
    "realm": f'"{REALM}"',
    "nonce": '"n"',
    "uri": f'"sip:{REALM}"',
    "response": '"00"',
    "qop": "auth",
    "nc": "00000001",
    "cnonce": '"c"',
}


@pytest.mark.parametrize(
    ("missing", "reason"),
    [
        (("username", "realm"), "Digest parameter 'username' missing"),
        (("realm", "nonce"), "Digest parameter 'realm' missing"),
        (("nonce", "uri"), "Digest parameter 'nonce' missing"),
        (("uri", "response"), "Digest parameter 'uri' missing"),
        (("response",), "Digest parameter 'response' missing"),
        (("qop",), "Digest qop missing"),
        (("nc",), "Digest qop=auth needs nc and cnonce"),
    ],
)
def test_verify_reports_the_first_missing_parameter(missing: tuple[str, ...], reason: str) -> None:
    params = ", ".join(f"{k}={v}" for k, v in FULL.items() if k not in missing)
    verdict = verify(
        parse_auth(f"Digest {params}", "Authorization"), method="REGISTER",
        request_uri=f"sip:{REALM}", password_or_ha1="pw", realm=REALM,
    )  # fmt: skip
    assert (verdict.kind, verdict.reason) == (VerdictKind.BAD_REQUEST, reason)
    assert verdict.username == (None if "username" in missing else "bob")


def test_verify_accepts_algorithms_and_qops_in_any_case() -> None:
    nonces = NonceFactory(b"s" * 32)
    nonce = nonces.make(10.0)
    response = digest_response(
        algorithm="SHA-256", username="bob", realm=REALM, password="pw", method="REGISTER",
        uri=f"sip:{REALM}", nonce=nonce, nc=1, cnonce="c", qop="auth",
    )  # fmt: skip
    text = (
        f'Digest username="bob", realm="{REALM}", nonce="{nonce}", uri="sip:{REALM}", '
        f'response="{response.upper()}", algorithm=sha-256, qop=AUTH, nc=00000001, cnonce="c"'
    )
    counter = NonceCounter()
    kwargs = dict(
        method="REGISTER", request_uri=f"sip:{REALM}", password_or_ha1="pw", realm=REALM,
        nonces=nonces, now=11.0, counter=counter,
    )  # fmt: skip
    ok = verify(parse_auth(text, "Authorization"), algorithms=("SHA-256",), qops=("Auth",), **kwargs)  # type: ignore[arg-type]
    assert ok.ok
    again = verify(parse_auth(text, "Authorization"), algorithms=["sha-256"], qops={"auth"}, **kwargs)  # type: ignore[arg-type]
    assert again.kind is VerdictKind.REPLAY
    other = verify(parse_auth(text, "Authorization"), algorithms=("MD5",), **kwargs)  # type: ignore[arg-type]
    assert other.kind is VerdictKind.UNSUPPORTED_ALGORITHM
    no_qop = verify(
        parse_auth(text, "Authorization"), algorithms=("SHA-256",), qops=("auth-int",), **kwargs
    )  # type: ignore[arg-type]
    assert (no_qop.kind, no_qop.reason) == (VerdictKind.BAD_REQUEST, "Digest qop 'auth' not offered")


def test_verify_reads_parameter_names_in_any_case_and_the_first_occurrence() -> None:
    """``verify`` reads the parameters from :meth:`AuthHeader.unquoted`: names in any case, the
    first of a repeated one, as :meth:`AuthHeader.get` reads them."""
    nonces = NonceFactory(b"s" * 32)
    nonce = nonces.make(10.0)
    response = digest_response(
        algorithm="MD5", username="bob", realm=REALM, password="pw", method="REGISTER",
        uri=f"sip:{REALM}", nonce=nonce, nc=1, cnonce="c", qop="auth",
    )  # fmt: skip
    text = (
        f'Digest UserName="bob", REALM="{REALM}", Nonce="{nonce}", URI="sip:{REALM}", '
        f'Response="{response}", response="0", QOP=auth, NC=00000001, CNonce="c", uri="x"'
    )
    header = parse_auth(text, "Authorization")
    names = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")
    assert dict(header.unquoted()) == {name: header.get(name.upper()) for name in names}
    verdict = verify(
        header, method="REGISTER", request_uri=f"sip:{REALM}", password_or_ha1="pw", realm=REALM,
        nonces=nonces, now=11.0,
    )  # fmt: skip
    assert verdict.ok and verdict.username == "bob"
    header.set("response", "1" * 32)  # set() forgets the index: read again
    assert header.unquoted()["response"] == "1" * 32
    wrong = verify(
        header, method="REGISTER", request_uri=f"sip:{REALM}", password_or_ha1="pw", realm=REALM,
        nonces=nonces, now=11.0,
    )  # fmt: skip
    assert wrong.kind is VerdictKind.WRONG_RESPONSE


# -- the nonce counter ----------------------------------------------------------------------------


class _RefCounter:
    """NonceCounter's rules written plainly: every bucket looked at on every use."""

    def __init__(self, lifetime: float, max_nonces: int, per_owner: int | None) -> None:
        self.lifetime, self.max_nonces, self.per_owner = lifetime, max_nonces, per_owner
        self.width = lifetime / 10
        self.buckets: dict[int, tuple[dict[str, int], dict[str, int]]] = {}

    def use(self, nonce: str, nc: int, issued: float, now: float, owner: str) -> str:
        horizon = (now - self.lifetime) // self.width
        for number in [b for b in self.buckets if b + 1 < horizon]:
            del self.buckets[number]
        if nc < 1:
            return "replay"
        for entries, _ in self.buckets.values():
            if nonce in entries:
                if nc <= entries[nonce]:
                    return "replay"
                entries[nonce] = nc
                return "fresh"
        if sum(len(e) for e, _ in self.buckets.values()) >= self.max_nonces:
            return "full"
        held = sum(o.get(owner, 0) for _, o in self.buckets.values())
        if self.per_owner is not None and held >= self.per_owner:
            return "full"
        entries, owners = self.buckets.setdefault(int(issued // self.width), ({}, {}))
        entries[nonce] = nc
        owners[owner] = owners.get(owner, 0) + 1
        return "fresh"


@pytest.mark.parametrize("seed", range(4))
def test_the_nonce_counter_follows_the_plain_rules(seed: int) -> None:
    """Random uses over several lifetimes (time going on, nonces of every age, replays, a full
    table, a full owner): the same answers, entries and expiries as the plain rules."""
    rng = random.Random(seed)
    counter = NonceCounter(10.0, max_nonces=40, per_owner=6)
    ref = _RefCounter(10.0, 40, 6)
    now = 0.0
    made: list[tuple[str, float]] = []
    answers = set()
    for step in range(3000):
        now += rng.choice([0.0, 0.01, 0.05, 0.1, 0.5, 15.0 if step % 500 == 0 else 0.02])
        if made and rng.random() < 0.5:
            nonce, issued = rng.choice(made)
        else:
            nonce, issued = f"n{step}", now - rng.uniform(0, 10.0)
            made = [*made[-200:], (nonce, issued)]
        nc = rng.choice([0, 1, 1, 2, 3, 5])
        owner = f"o{rng.randrange(8)}"
        got = counter.use(nonce, nc, issued=issued, now=now, owner=owner).value
        assert got == ref.use(nonce, nc, issued, now, owner), step
        assert len(counter) == sum(len(e) for e, _ in ref.buckets.values())
        answers.add(got)
    assert answers == {"fresh", "replay", "full"}


# -- quoted strings -------------------------------------------------------------------------------

#: the quoted-string pattern as it was written before (one alternation per character)
_REF_QUOTED_STRING = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"'


def _ref_patterns() -> list[tuple[str, re.Pattern[str], re.Pattern[str]]]:
    """The grammar's patterns that hold a quoted-string, and each written with the old one."""
    named = {
        "QUOTED_STRING_RE": g.QUOTED_STRING,
        "AUTH_PARAM_RE": rf"[ \t]*({g.TOKEN})[ \t]*=[ \t]*({{qs}}|{g.TOKEN})[ \t]*(?=,|$)",
        "PARAMETERISED_RE": rf"[ \t]*({{qs}}|{g.TOKEN})[ \t]*",
        "HEADER_PARAMS_RE": rf"(?:[ \t]*;[ \t]*{g.TOKEN}(?:[ \t]*=[ \t]*{{gv}})?)*[ \t]*",
        "HEADER_PARAM_FIND": rf";[ \t]*({g.TOKEN})(?:[ \t]*=[ \t]*({{gv}}))?",
    }
    gen_value = rf"(?:{_REF_QUOTED_STRING}|[{g.TOKEN_CHARS}:\[\]]+)"
    out = []
    for name, template in named.items():
        ref = (
            _REF_QUOTED_STRING
            if name == "QUOTED_STRING_RE"
            else template.replace("{qs}", _REF_QUOTED_STRING).replace("{gv}", gen_value)
        )
        out.append((name, getattr(g, name), re.compile(ref)))
    return out


def test_the_quoted_string_pattern_matches_as_the_plain_one() -> None:
    """The quoted-string written as runs of qdtext between quoted-pairs: every grammar pattern that
    holds one matches (match, fullmatch, search, findall) exactly what it matched with the old
    form, over random text of quotes, backslashes, controls, commas, semicolons and tokens."""
    rng = random.Random(13)
    pieces = ['"', '"', "\\", "\\\\", '\\"', "a", "b1", " ", "\t", ",", ";", "=", "\r", "\n", "\x00",
              "\x7f", "é", "x=y", 'qop="auth,auth-int"', "nonce=", "\x1f", ":"]  # fmt: skip
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randrange(0, 14))) for _ in range(4000)]
    texts += ['"', '""', '"\\"', '"\\""', '"a\\\\"b"', 'x="\\\r"', 'x="a" , y=b', ';p="q\\"r";s']
    seen = set()
    for name, new, old in _ref_patterns():
        for text in texts:
            for pos in (0, 1):
                a, b = new.match(text, pos), old.match(text, pos)
                assert (a and (a.span(), a.groups())) == (b and (b.span(), b.groups())), (name, text)
                seen.add(a is not None)
            a, b = new.fullmatch(text), old.fullmatch(text)
            assert (a and a.groups()) == (b and b.groups()), (name, text)
            a, b = new.search(text), old.search(text)
            assert (a and (a.span(), a.groups())) == (b and (b.span(), b.groups())), (name, text)
            assert new.findall(text) == old.findall(text), (name, text)
    assert seen == {True, False}


# -- hash implementations -------------------------------------------------------------------------


def test_the_hashes_are_hashlibs_digests_and_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPython's own MD5 and SHA-256 give hashlib's digests (copied states too); without them
    hashlib's constructors are used."""
    for name, make in digest.HASHES.items():
        for data in (b"", b"abc", bytes(range(256)) * 3):
            assert make(data, usedforsecurity=False).hexdigest() == hashlib.new(name, data).hexdigest()
            state = make(b"key")
            copy = state.copy()
            copy.update(data)
            assert copy.digest() == hashlib.new(name, b"key" + data).digest()
            assert state.digest() == hashlib.new(name, b"key").digest()

    def missing(module: str) -> object:
        raise ImportError(module)

    monkeypatch.setattr(digest.importlib, "import_module", missing)
    assert digest._builtin("md5") is hashlib.md5
    assert digest._builtin("sha256") is hashlib.sha256


def test_the_ha1_memo_gives_the_plain_verdicts() -> None:
    """With ``ha1_memo``, :func:`verify` answers as without it for every password, username, realm
    and algorithm it is asked about in turn (the one kept H(A1) is used again only for the same
    ones), and keeps just that entry."""
    rng = random.Random(13)
    nonces = NonceFactory(b"m" * 32)
    memo: dict[str, object] = {}
    for _ in range(300):
        password = rng.choice(["pw", "pw2", "pässword", "pw"[:2]])
        username = rng.choice(["bob", "alice", "Bob"])
        algorithm = rng.choice(["MD5", "SHA-256", "MD5-sess"])
        realm = rng.choice([REALM, "other.test"])
        answered = rng.choice(["pw", "pw2", "pässword"])
        nonce = nonces.make(10.0)
        response = digest_response(
            algorithm=algorithm, username=username, realm=realm, password=answered,
            method="REGISTER", uri=f"sip:{REALM}", nonce=nonce, nc=1, cnonce="c", qop="auth",
        )  # fmt: skip
        text = (
            f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="sip:{REALM}", '
            f'response="{response}", algorithm={algorithm}, qop=auth, nc=00000001, cnonce="c"'
        )
        kwargs = dict(
            method="REGISTER", request_uri=f"sip:{REALM}", password_or_ha1=password, realm=realm,
            nonces=nonces, now=11.0, algorithms=(algorithm,),
        )  # fmt: skip
        plain = verify(parse_auth(text, "Authorization"), **kwargs)  # type: ignore[arg-type]
        kept = verify(parse_auth(text, "Authorization"), ha1_memo=memo, **kwargs)  # type: ignore[arg-type]
        assert (kept.kind, kept.reason, kept.username) == (plain.kind, plain.reason, plain.username)
        assert plain.ok == (password == answered)
        assert len(memo) == 1
    # a StoredHA1 or bytes password is not kept
    empty: dict[str, object] = {}
    stored = StoredHA1.from_password(username="bob", realm=REALM, password="pw")
    nonce = nonces.make(10.0)
    for secret in (stored, b"pw"):
        response = digest_response(
            algorithm="MD5", username="bob", realm=REALM, password=secret, method="REGISTER",
            uri=f"sip:{REALM}", nonce=nonce, nc=1, cnonce="c", qop="auth",
        )  # fmt: skip
        text = (
            f'Digest username="bob", realm="{REALM}", nonce="{nonce}", uri="sip:{REALM}", '
            f'response="{response}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c"'
        )
        verdict = verify(
            parse_auth(text, "Authorization"), method="REGISTER", request_uri=f"sip:{REALM}",
            password_or_ha1=secret, realm=REALM, nonces=nonces, now=11.0, ha1_memo=empty,
        )  # fmt: skip
        assert verdict.ok and not empty


def test_the_authenticator_keeps_the_ha1_on_the_subscriber() -> None:
    """A subscriber registering again is checked with the H(A1) it keeps; one with another
    password (a reloaded file's new subscriber) is checked with its own."""
    from imscore.sip import parse_datagram

    auth = Authenticator(REALM, ("digest",), secret=b"a" * 32)
    old = Subscriber(f"bob@{REALM}", password="old")
    new = Subscriber(f"bob@{REALM}", password="new")
    results = []
    for subscriber, answered in ((old, "old"), (old, "old"), (new, "old"), (new, "new"), (old, "new")):
        challenge_value = auth.challenge_for(subscriber, 100.0).challenge
        assert challenge_value is not None
        offered = parse_auth(challenge_value, "WWW-Authenticate")
        value = digest.credentials(
            offered, username=f"bob@{REALM}", password=answered, method="REGISTER", uri=f"sip:{REALM}"
        )
        request = parse_datagram(
            (
                f"REGISTER sip:{REALM} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
                f"From: <sip:bob@{REALM}>;tag=1\r\nTo: <sip:bob@{REALM}>\r\nCall-ID: c1\r\n"
                f"CSeq: 1 REGISTER\r\nAuthorization: {value}\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )
        result = auth.check(request, request.authorization[0], subscriber, 101.0)
        results.append(result.outcome.value)
    assert results == ["ok", "ok", "challenge", "ok", "challenge"]
    assert old.__dict__[digest._HA1_MEMO][0] == "old"
    assert new.__dict__[digest._HA1_MEMO][0] == "new"


def test_no_digest_algorithm_reads_as_aka() -> None:
    """Authenticator.check takes a Digest algorithm's name for no AKA one without asking
    parse_aka_algorithm: which answers None for each of them."""
    from imscore.auth.aka import parse_aka_algorithm
    from imscore.registrar import authenticator

    assert frozenset(digest.ALGORITHMS) == authenticator._DIGEST_NAMES
    assert all(parse_aka_algorithm(name) is None for name in authenticator._DIGEST_NAMES)


def test_the_counter_keys_are_56_bits_and_tell_nonces_apart() -> None:
    keys = {NonceCounter._key(NonceFactory(b"k" * 16).make(float(i))) for i in range(2000)}
    assert len(keys) == 2000 and all(0 <= k < 1 << 56 for k in keys)


def test_the_scheme_hook_is_skipped_only_when_its_answer_cannot_count() -> None:
    """scheme_for asks ims_auth_select_scheme unless only the builtin implements it and the
    subscriber has credentials for one of the profile's schemes only; the scheme is the same."""
    from imscore.plugin import create_plugin_manager, hookimpl
    from imscore.profile import PolicyChoice, load_profile
    from imscore.registrar.register import Registrar
    from imscore.registrar.store import MemoryBindingStore
    from imscore.subscribers import MemorySubscriberStore, demo_subscribers_path
    from imscore.subscribers.model import AkaCredentials

    aka = AkaCredentials(k=bytes(16), op=bytes(16), opc=None, amf=bytes(2), sqn=0)
    digest_only = Subscriber(f"d@{REALM}", password="pw")
    both = Subscriber(f"b@{REALM}", password="pw", aka=aka)
    aka_only = Subscriber(f"a@{REALM}", aka=aka)
    asked: list[str] = []

    class Prefers:
        @hookimpl
        def ims_auth_select_scheme(self, subscriber: object, request: object) -> str | None:
            asked.append(subscriber.impi)  # type: ignore[attr-defined]
            return "digest"

    for policy in ("digest", "aka", "digest-or-aka"):
        base = load_profile("default")
        policies = dict(base.policies)
        policies["auth"] = PolicyChoice(policy, {})
        profile = dataclasses.replace(base, policies=policies)
        plugins = create_plugin_manager(autoload=False)
        subscribers = MemorySubscriberStore.from_file(demo_subscribers_path())
        registrar = Registrar(profile, subscribers, MemoryBindingStore(), plugins)
        auth = registrar.authenticator
        assert auth.scheme_plugins is plugins
        plain = Authenticator(REALM, auth.schemes, secret=b"p" * 32)
        plain.select_scheme = registrar._select_scheme  # (asked always: no scheme_plugins)
        for subscriber in (digest_only, both, aka_only):
            assert auth.scheme_for(subscriber) == plain.scheme_for(subscriber)
        one = {"digest": "d", "aka": "a", "digest-or-aka": "da"}[policy]
        assert [auth._one_usable(s) for s in (digest_only, both, aka_only)] == [
            "d" in one,
            len(one) == 1,
            "a" in one,
        ]
        plugins.register(Prefers(), name="prefers")
        for subscriber in (digest_only, both, aka_only):
            del asked[:]
            chosen = auth.scheme_for(subscriber)
            assert asked == [subscriber.impi]  # another implementation: always asked
            del asked[:]
            assert chosen == plain.scheme_for(subscriber)
