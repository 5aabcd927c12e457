"""SIP Digest (imscore.auth.digest): known answers, nonces, nc replay, verify, round trips."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import struct
from typing import Any

import pytest
from conftest import CORPUS

from imscore.auth import (
    ALGORITHMS,
    NonceCheck,
    NonceCounter,
    NonceFactory,
    NonceUse,
    StoredHA1,
    Verdict,
    VerdictKind,
    canonical_algorithm,
    challenge,
    credentials,
    digest_response,
    ha1,
    uri_matches,
    verify,
)
from imscore.sip import ParseError, Request, parse_datagram, parse_uri
from imscore.sip.headers import AuthHeader, parse_auth

# --------------------------------------------------------------------------------------------------
# the corpus of known answers

VECTORS_FILE = CORPUS / "digest_vectors.json"
DATA: dict[str, Any] | None = (
    json.loads(VECTORS_FILE.read_text(encoding="utf-8")) if VECTORS_FILE.is_file() else None
)
needs_corpus = pytest.mark.skipif(
    DATA is None, reason=f"corpus missing: {VECTORS_FILE} (set IMSCORE_CORPUS to point elsewhere)"
)
VECTORS: list[Any] = (
    DATA["vectors"]
    if DATA is not None
    else [pytest.param(None, marks=needs_corpus, id="corpus-missing")]
)


def _vector_id(v: Any) -> str:
    return str(v["id"]) if isinstance(v, dict) else "corpus-missing"


@needs_corpus
def test_corpus_has_the_vectors_and_not_the_rfc3261_example() -> None:
    assert DATA is not None
    ids = {v["id"] for v in DATA["vectors"]}
    assert len(ids) == len(DATA["vectors"]) >= 14
    assert {"rfc2617-3.5", "rfc7616-3.9.1-md5", "rfc7616-3.9.1-sha256"} <= ids
    # RFC 3261 §22.4's example (bob@biloxi.com with RFC 2617's response) is no known answer
    assert not any(v["username"] == "bob" and v["realm"] == "biloxi.com" for v in DATA["vectors"])


@pytest.mark.parametrize("v", VECTORS, ids=_vector_id)
def test_corpus_vector(v: dict[str, Any]) -> None:
    common = {"username": v["username"], "realm": v["realm"]}
    assert ha1(algorithm=v["algorithm"], password=v["password"], **common) == v["expected_HA1"]
    got = digest_response(
        algorithm=v["algorithm"],
        password=v["password"],
        method=v["method"],
        uri=v["uri"],
        nonce=v["nonce"],
        nc=v["nc"],
        cnonce=v["cnonce"],
        qop=v["qop"],
        **common,
    )
    assert got == v["expected_response"]
    # the same answer from a stored H(A1) instead of the password, and from bytes
    stored = StoredHA1(v["expected_HA1"], v["algorithm"])
    rest = {k: v[k] for k in ("method", "uri", "nonce", "nc", "cnonce", "qop")}
    assert digest_response(algorithm=v["algorithm"], password=stored, **common, **rest) == got
    pw_bytes = v["password"].encode("utf-8")
    assert digest_response(algorithm=v["algorithm"], password=pw_bytes, **common, **rest) == got
    if v["nc"] is not None:
        nc_int = int(v["nc"], 16)
        assert (
            digest_response(
                algorithm=v["algorithm"], password=stored, **common, **{**rest, "nc": nc_int}
            )
            == got
        )


@needs_corpus
def test_corpus_ha1_only() -> None:
    assert DATA is not None
    for h in DATA["HA1_only"]:
        got = ha1(algorithm="MD5", username=h["username"], realm=h["realm"], password=h["password"])
        assert got == h["expected_HA1_md5"]


@needs_corpus
def test_rfc2617_and_rfc7616_spell_the_password_differently() -> None:
    """RFC 2617 uses 'Circle Of Life', RFC 7616 'Circle of Life': swapping them breaks the vectors."""
    assert DATA is not None
    by_id = {v["id"]: v for v in DATA["vectors"]}
    for vid, other in (("rfc2617-3.5", "Circle of Life"), ("rfc7616-3.9.1-md5", "Circle Of Life")):
        v = by_id[vid]
        assert v["password"] != other
        wrong = digest_response(
            algorithm=v["algorithm"],
            username=v["username"],
            realm=v["realm"],
            password=other,
            method=v["method"],
            uri=v["uri"],
            nonce=v["nonce"],
            nc=v["nc"],
            cnonce=v["cnonce"],
            qop=v["qop"],
        )
        assert wrong != v["expected_response"]


@needs_corpus
def test_aka_derived_example_with_res_bytes_as_password() -> None:
    """Cross-check only (the corpus derived it, it is not a published answer): password = raw RES."""
    assert DATA is not None
    aka = DATA["digest_aka_derived_example"]
    common = {
        "username": aka["username"],
        "realm": aka["realm"],
        "method": aka["method"],
        "uri": aka["uri"],
        "nonce": aka["nonce_b64_RAND_AUTN"],
        "nc": aka["nc"],
        "cnonce": aka["cnonce"],
        "qop": aka["qop"],
    }
    res = bytes.fromhex("a54211d5e3ba50bf")
    assert (
        ha1(algorithm="MD5", username=aka["username"], realm=aka["realm"], password=res)
        == aka["akav1_md5"]["HA1"]
    )
    assert digest_response(algorithm="MD5", password=res, **common) == aka["akav1_md5"]["response"]
    v2 = aka["akav2_md5"]
    assert digest_response(algorithm="MD5", password=v2["password"], **common) == v2["response"]
    resync = aka["resync_akav1"]["response_with_empty_password"]
    assert digest_response(algorithm="MD5", password=b"", **common) == resync


# --------------------------------------------------------------------------------------------------
# -sess and auth-int, against the RFC formulas written out independently


def _hx(hash_name: str, text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.new(hash_name, data).hexdigest()


@pytest.mark.parametrize(
    ("algorithm", "hash_name", "sess"),
    [
        ("MD5", "md5", False),
        ("MD5-sess", "md5", True),
        ("SHA-256", "sha256", False),
        ("SHA-256-sess", "sha256", True),
    ],
)
@pytest.mark.parametrize("qop", ["auth", "auth-int", None])
def test_algorithms_and_qops_follow_rfc7616(
    algorithm: str, hash_name: str, sess: bool, qop: str | None
) -> None:
    user, realm, pw = "alice@ims.example.test", "ims.example.test", "s3cr\u00eat"
    method, uri, nonce, cnonce, nc = "REGISTER", "sip:ims.example.test", "n0nce", "c0nce", "0000000a"
    body = b"v=0\r\n"
    base = _hx(hash_name, f"{user}:{realm}:{pw}")
    h1 = _hx(hash_name, f"{base}:{nonce}:{cnonce}") if sess else base
    a2 = f"{method}:{uri}:{_hx(hash_name, body)}" if qop == "auth-int" else f"{method}:{uri}"
    h2 = _hx(hash_name, a2)
    if qop is None:
        expected = _hx(hash_name, f"{h1}:{nonce}:{h2}")
    else:
        expected = _hx(hash_name, f"{h1}:{nonce}:{nc}:{cnonce}:{qop}:{h2}")
    got = digest_response(
        algorithm=algorithm.upper(),  # names match case-insensitively
        username=user,
        realm=realm,
        password=pw,
        method=method,
        uri=uri,
        nonce=nonce,
        nc=10,
        cnonce=cnonce,
        qop=qop,
        entity_body=body,
    )
    assert got == expected
    assert ha1(algorithm=algorithm, username=user, realm=realm, password=pw) == base


def test_canonical_algorithm() -> None:
    assert ALGORITHMS == ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess")
    assert canonical_algorithm("md5-SESS") == "MD5-sess"
    assert canonical_algorithm("SHA-512-256") is None
    assert canonical_algorithm("AKAv1-MD5") is None


SECRET_PW = "Tr0ub4dor&3-very-secret"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"algorithm": "SHA-512-256"}, "unsupported Digest algorithm"),
        ({"qop": "auth"}, "needs nc and cnonce"),
        ({"qop": "auth", "nc": 1}, "needs nc and cnonce"),
        ({"qop": "auth-conf", "nc": 1, "cnonce": "c"}, "unsupported qop"),
        ({"algorithm": "MD5-sess"}, "needs a cnonce"),
        ({"qop": "auth", "nc": 2**32, "cnonce": "c"}, "8 hexadecimal digits"),
    ],
)
def test_digest_response_errors_name_no_secret(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "algorithm": "MD5",
        "username": "alice",
        "realm": "r",
        "password": SECRET_PW,
        "method": "REGISTER",
        "uri": "sip:r",
        "nonce": "n",
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message) as info:
        digest_response(**args)
    assert SECRET_PW not in str(info.value) and SECRET_PW not in repr(info.value)


def test_stored_ha1() -> None:
    stored = StoredHA1.from_password(
        username="Mufasa", realm="testrealm@host.com", password="Circle Of Life"
    )
    assert stored.hexdigest == "939e7578ed9e3c518a452acee763bce9"
    assert stored == StoredHA1("939E7578ED9E3C518A452ACEE763BCE9")
    assert stored.hash_name == "MD5"
    assert "939e75" not in repr(stored) and "939e75" not in str(stored)
    assert StoredHA1("0" * 64, "sha-256").hash_name == "SHA-256"
    with pytest.raises(ValueError, match="32 hexadecimal digits") as info:
        StoredHA1("939e7578ed9e3c518a452acee763bceZ")
    assert "939e75" not in str(info.value)
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        StoredHA1("939e7578ed9e3c518a452acee763bce9", "SHA-256")
    with pytest.raises(ValueError, match="not a -sess"):
        StoredHA1("939e7578ed9e3c518a452acee763bce9", "MD5-sess")
    # an MD5 H(A1) answers MD5-sess, not SHA-256
    assert digest_response(
        algorithm="MD5-sess", username="Mufasa", realm="testrealm@host.com", password=stored,
        method="GET", uri="/", nonce="n", cnonce="c",
    ) == digest_response(
        algorithm="MD5-sess", username="Mufasa", realm="testrealm@host.com", password="Circle Of Life",
        method="GET", uri="/", nonce="n", cnonce="c",
    )  # fmt: skip
    with pytest.raises(ValueError, match="cannot answer with SHA-256"):
        digest_response(
            algorithm="SHA-256", username="Mufasa", realm="testrealm@host.com", password=stored,
            method="GET", uri="/", nonce="n",
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# nonces

KEY = b"k" * 32
RAND = bytes(range(1, 9))


def _factory(lifetime: float = 300.0, secret: bytes = KEY, **kw: Any) -> NonceFactory:
    return NonceFactory(secret, lifetime, random=lambda n: RAND[:n], **kw)


def test_nonce_layout() -> None:
    nonce = _factory().make(1_700_000_000.1234, extra=b"alice")
    assert len(nonce) == 43 and "=" not in nonce
    raw = base64.urlsafe_b64decode(nonce + "=")
    assert len(raw) == 32
    head = struct.pack(">q", 1_700_000_000_123) + RAND
    assert raw[:16] == head
    assert raw[16:] == hmac.new(KEY, head + b"alice", hashlib.sha256).digest()[:16]


def test_nonces_are_random() -> None:
    f = NonceFactory(KEY)
    assert f.make(10.0) != f.make(10.0)
    assert f.check(f.make(10.0), 10.0) is NonceCheck.VALID


@pytest.mark.parametrize(
    ("issued", "now", "state"),
    [
        (1000.0, 1000.0, NonceCheck.VALID),
        (1000.0, 1299.999, NonceCheck.VALID),
        (1000.0, 1300.0, NonceCheck.VALID),  # age == lifetime is still valid
        (1000.0, 1300.001, NonceCheck.STALE),
        (1000.0, 5000.0, NonceCheck.STALE),
        (1000.0, 970.0, NonceCheck.VALID),  # 30 s in the future: within max_skew
        (1000.0, 969.9, NonceCheck.INVALID),  # further in the future: not ours
        (0.0, 0.5, NonceCheck.VALID),  # virtual time starting at 0
        (-5.0, 100.0, NonceCheck.VALID),
    ],
)
def test_nonce_age(issued: float, now: float, state: NonceCheck) -> None:
    f = _factory()
    assert f.check(f.make(issued), now) is state


def test_nonce_issued_at() -> None:
    f = _factory()
    assert f.issued_at(f.make(12.3456)) == 12.345
    assert f.issued_at("garbage") is None


def test_nonce_bound_to_extra_and_secret() -> None:
    f = _factory()
    nonce = f.make(50.0, extra=b"alice@ims.example.test")
    assert f.check(nonce, 50.0, extra=b"alice@ims.example.test") is NonceCheck.VALID
    assert f.check(nonce, 50.0) is NonceCheck.INVALID
    assert f.check(nonce, 50.0, extra=b"bob@ims.example.test") is NonceCheck.INVALID
    assert _factory(secret=b"x" * 32).check(nonce, 50.0, extra=b"alice@ims.example.test") is (
        NonceCheck.INVALID
    )
    # a pool sharing the secret accepts each other's nonces
    assert _factory().check(nonce, 60.0, extra=b"alice@ims.example.test") is NonceCheck.VALID
    # stale and bad MAC: a stale verdict needs a good MAC
    assert f.check(nonce, 5000.0) is NonceCheck.INVALID


GOOD = _factory().make(100.0)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "x",
        "!" * 43,
        GOOD[:-1],
        GOOD + "A",
        GOOD + "=",
        GOOD[:20] + "+" + GOOD[21:],  # standard base64, not base64url
        GOOD[:20] + "\u00e9" + GOOD[21:],
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        base64.urlsafe_b64encode(b"\0" * 32).decode().rstrip("="),
        " " + GOOD[1:],
    ],
)
def test_nonce_garbage_is_invalid_never_raises(garbage: str) -> None:
    assert _factory().check(garbage, 100.0) is NonceCheck.INVALID


def test_nonce_not_a_string_is_invalid() -> None:
    f = _factory()
    for bad in (None, b"bytes", 42):
        assert f.check(bad, 1.0) is NonceCheck.INVALID  # type: ignore[arg-type]


def test_nonce_tampered_anywhere_is_invalid() -> None:
    f = _factory()
    raw = bytearray(base64.urlsafe_b64decode(GOOD + "="))
    for i in range(len(raw)):
        for bit in (0x01, 0x80):
            t = bytearray(raw)
            t[i] ^= bit
            text = base64.urlsafe_b64encode(bytes(t)).decode().rstrip("=")
            assert f.check(text, 100.0) is NonceCheck.INVALID, (i, bit)


def test_nonce_non_canonical_spelling_is_invalid() -> None:
    """The 43rd character carries 2 unused bits: only the canonical spelling is accepted."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(GOOD[-1])
    for delta in (1, 2, 3):
        variant = GOOD[:-1] + alphabet[last ^ delta]
        assert base64.urlsafe_b64decode(variant + "=") == base64.urlsafe_b64decode(GOOD + "=")
        assert _factory().check(variant, 100.0) is NonceCheck.INVALID


def test_nonce_factory_arguments_and_repr() -> None:
    secret = b"super-secret-nonce-key!!"
    f = NonceFactory(secret, 60.0)
    assert secret.decode() not in repr(f) and "super" not in repr(f)
    assert repr(f) == "NonceFactory(lifetime=60.0, max_skew=30.0)"
    with pytest.raises(ValueError, match="at least 16 bytes") as info:
        NonceFactory(b"short-secret")
    assert "short-secret" not in str(info.value)
    with pytest.raises(ValueError, match="lifetime"):
        NonceFactory(KEY, 0)
    with pytest.raises(ValueError, match="random source"):
        NonceFactory(KEY, random=lambda n: b"x").make(0.0)


# --------------------------------------------------------------------------------------------------
# nonce-count replay


def test_nonce_counter_replay() -> None:
    c = NonceCounter()
    use = functools.partial(c.use, issued=NOW, now=NOW + 1, owner=IMPI)
    assert use("n1", 1) is NonceUse.FRESH
    assert use("n1", 1) is NonceUse.REPLAY  # the same nc again
    assert use("n1", 2) is NonceUse.FRESH
    assert use("n1", 5) is NonceUse.FRESH  # gaps are fine (RFC 7616: greater, not consecutive)
    assert use("n1", 3) is NonceUse.REPLAY
    assert c.last("n1") == 5
    assert use("n2", 1) is NonceUse.FRESH  # per nonce
    assert use("n3", 0) is NonceUse.REPLAY  # nc starts at 1
    assert c.last("n3") is None
    assert len(c) == 2 and c.held(IMPI) == 2 and c.held("other") == 0
    assert repr(c) == "NonceCounter(2/100000 nonces)"


def test_nonce_counter_keeps_state_for_the_lifetime_however_many_nonces_follow() -> None:
    """Issue 15: an LRU of 10,000 forgot a used nonce after 10,000 others, and its Authorization
    was then accepted again. State now lives as long as the nonce, whatever else is used."""
    c = NonceCounter(300.0, per_owner=None)
    assert c.use("first", 1, issued=NOW, now=NOW) is NonceUse.FRESH
    for i in range(20_000):
        assert c.use(f"other-{i}", 1, issued=NOW + i * 0.01, now=NOW + i * 0.01) is NonceUse.FRESH
    assert c.use("first", 1, issued=NOW, now=NOW + 250) is NonceUse.REPLAY
    assert len(c) == 20_001
    # once every nonce of a bucket is past its lifetime, the bucket goes (those nonces are stale)
    c.use("late", 1, issued=NOW + 700, now=NOW + 700)
    assert len(c) == 1 and c.last("first") is None


def test_nonce_counter_full_answers_full_never_forgets() -> None:
    c = NonceCounter(max_nonces=3, per_owner=2)
    use = functools.partial(c.use, issued=NOW, now=NOW)
    assert use("a", 1, owner="x") is NonceUse.FRESH
    assert use("b", 1, owner="x") is NonceUse.FRESH
    assert use("c", 1, owner="x") is NonceUse.FULL  # x's share is used up
    assert use("c", 1, owner="y") is NonceUse.FRESH
    assert use("d", 1, owner="z") is NonceUse.FULL  # the whole table
    assert use("a", 2, owner="x") is NonceUse.FRESH  # known nonces go on counting
    assert use("a", 2, owner="x") is NonceUse.REPLAY
    with pytest.raises(ValueError):
        NonceCounter(max_nonces=0)
    with pytest.raises(ValueError):
        NonceCounter(per_owner=0)
    with pytest.raises(ValueError):
        NonceCounter(0)


def test_nonce_counter_does_not_vouch_for_nonces_from_before_it_began() -> None:
    c = NonceCounter()
    assert c.use("old", 1, issued=NOW - 10, now=NOW) is NonceUse.FRESH  # no start: no rule
    c = NonceCounter()
    c.start(NOW)
    c.start(NOW + 50)  # the first start counts
    assert c.use("old", 1, issued=NOW - 0.001, now=NOW + 60) is NonceUse.UNKNOWN
    assert c.use("new", 1, issued=NOW, now=NOW + 60) is NonceUse.FRESH
    assert NonceCounter(since=NOW).since == NOW


# --------------------------------------------------------------------------------------------------
# challenge


def test_challenge_rendering() -> None:
    assert challenge("ims.example.test", "abc") == (
        'Digest realm="ims.example.test", nonce="abc", algorithm=MD5, qop="auth"'
    )
    text = challenge(
        'we "quote"', "abc", algorithm="sha-256", qop=["auth", "auth-int"], stale=True, opaque="op"
    )
    assert text == (
        'Digest realm="we \\"quote\\"", nonce="abc", algorithm=SHA-256, qop="auth,auth-int",'
        ' opaque="op", stale=true'
    )
    parsed = parse_auth(text, "WWW-Authenticate")
    assert parsed.is_digest
    assert parsed.get("realm") == 'we "quote"'
    assert parsed.get("algorithm") == "SHA-256"
    assert parsed.get("qop") == "auth,auth-int"
    assert parsed.get("stale") == "true"
    assert parsed.get("opaque") == "op"
    assert "qop" not in parse_auth(challenge("r", "n", qop=None), "WWW-Authenticate")


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("r", "n"), {"algorithm": "SHA-512-256"}, "unsupported Digest algorithm"),
        (("r", "n"), {"qop": "auth-conf"}, "unsupported qop"),
        (("r\r\nVia: x", "n"), {}, "realm must not contain"),
        (("r", "n\n"), {}, "nonce must not contain"),
        (("r", "n"), {"opaque": "a\rb"}, "opaque must not contain"),
    ],
)
def test_challenge_refuses(args: tuple[str, str], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        challenge(*args, **kwargs)


# --------------------------------------------------------------------------------------------------
# verify

REALM = "ims.example.test"
IMPI = "alice@ims.example.test"
PASSWORD = "alice-secret-pw"
RURI = "sip:ims.example.test"
NOW = 1_000_000.0


def _authorization(
    *,
    nonce: str,
    uri: str = RURI,
    password: str | bytes | StoredHA1 = PASSWORD,
    algorithm: str | None = "MD5",
    qop: str | None = "auth",
    nc: str | None = "00000001",
    cnonce: str | None = "0a4f113b",
    username: str = IMPI,
    realm: str = REALM,
    method: str = "REGISTER",
    drop: str | None = None,
    response: str | None = None,
    extra: str = "",
    body: bytes = b"",
) -> AuthHeader:
    """Credentials written out by hand (not with credentials()) and parsed with parse_auth."""
    if response is None:
        response = digest_response(
            algorithm=algorithm or "MD5",
            username=username,
            realm=realm,
            password=password,
            method=method,
            uri=uri,
            nonce=nonce,
            nc=nc,
            cnonce=cnonce,
            qop=qop,
            entity_body=body,
        )
    params = [
        ("username", f'"{username}"'),
        ("realm", f'"{realm}"'),
        ("nonce", f'"{nonce}"'),
        ("uri", f'"{uri}"'),
        ("response", f'"{response}"'),
        ("algorithm", algorithm),
        ("cnonce", f'"{cnonce}"' if cnonce is not None else None),
        ("qop", qop),
        ("nc", nc),
    ]
    text = "Digest " + ", ".join(f"{k}={v}" for k, v in params if v is not None and k != drop) + extra
    return parse_auth(text, "Authorization")


@pytest.fixture
def factory() -> NonceFactory:
    return NonceFactory(b"registrar-nonce-secret-0123456789", 300.0)


@pytest.fixture
def nonce(factory: NonceFactory) -> str:
    return factory.make(NOW)


def _verify(creds: AuthHeader, factory: NonceFactory, **kw: Any) -> Verdict:
    args: dict[str, Any] = {
        "method": "REGISTER",
        "request_uri": RURI,
        "password_or_ha1": PASSWORD,
        "realm": REALM,
        "nonces": factory,
        "now": NOW + 10,
        "counter": NonceCounter(),
    }
    args.update(kw)
    return verify(creds, **args)


def test_verify_ok(factory: NonceFactory, nonce: str) -> None:
    v = _verify(_authorization(nonce=nonce), factory)
    assert v == Verdict(VerdictKind.OK, "", IMPI)
    assert v.ok and v.status == 200 and not v.rechallenge and not v.stale


def test_verify_ok_without_algorithm_means_md5(factory: NonceFactory, nonce: str) -> None:
    assert _verify(_authorization(nonce=nonce, algorithm=None), factory).ok


def test_verify_ok_with_stored_ha1(factory: NonceFactory, nonce: str) -> None:
    stored = StoredHA1.from_password(username=IMPI, realm=REALM, password=PASSWORD)
    assert _verify(_authorization(nonce=nonce), factory, password_or_ha1=stored).ok
    assert _verify(_authorization(nonce=nonce, algorithm="MD5-sess"), factory, password_or_ha1=stored).ok
    sha = _verify(_authorization(nonce=nonce, algorithm="SHA-256"), factory, password_or_ha1=stored)
    assert sha == Verdict(
        VerdictKind.UNSUPPORTED_ALGORITHM, "no SHA-256 credentials stored for the user", IMPI
    )


def test_verify_accepts_upper_case_response_hex(factory: NonceFactory, nonce: str) -> None:
    good = _authorization(nonce=nonce).get("response")
    assert good is not None
    assert _verify(_authorization(nonce=nonce, response=good.upper()), factory).ok


@pytest.mark.parametrize("missing", ["username", "realm", "nonce", "uri", "response"])
def test_verify_missing_parameter(factory: NonceFactory, nonce: str, missing: str) -> None:
    v = _verify(_authorization(nonce=nonce, drop=missing), factory)
    assert v.kind is VerdictKind.BAD_REQUEST
    assert v.reason == f"Digest parameter {missing!r} missing"
    assert v.status == 400 and not v.rechallenge


def test_verify_uri_mismatch_is_400(factory: NonceFactory, nonce: str) -> None:
    creds = _authorization(nonce=nonce, uri="sip:other.example.test")
    v = _verify(creds, factory)
    assert v == Verdict(VerdictKind.BAD_REQUEST, "Digest uri does not match the Request-URI", IMPI)
    assert v.status == 400


@pytest.mark.parametrize(
    ("written", "request_uri"),
    [
        ("SIP:IMS.Example.Test", RURI),
        ("sip:ims.example.test;transport=TCP", "sip:IMS.example.test;Transport=tcp"),
        ("sip:%61lice@ims.example.test", "sip:alice@ims.example.test"),
    ],
)
def test_verify_uri_equal_but_written_differently_is_accepted(
    factory: NonceFactory, nonce: str, written: str, request_uri: str
) -> None:
    """The client hashes its own spelling; the server compares as SIP URIs (RFC 3261 §19.1.4)."""
    assert written != request_uri
    v = _verify(_authorization(nonce=nonce, uri=written), factory, request_uri=request_uri)
    assert v.ok
    # the Request-URI may also be given parsed (request.uri)
    assert _verify(
        _authorization(nonce=nonce, uri=written), factory, request_uri=parse_uri(request_uri)
    ).ok


@pytest.mark.parametrize(
    ("digest_uri", "request_uri", "same"),
    [
        ("sip:ims.example.test:5060", "sip:ims.example.test", False),  # an explicit port is not equal
        ("sip:alice@ims.example.test", "sip:Alice@ims.example.test", False),  # user is case-sensitive
        ("/dir/index.html", "/dir/index.html", True),  # not SIP URIs: exact string
        ("/dir/index.html", "/DIR/index.html", False),
        ("sip:ims.example.test", "/dir/index.html", False),
        ("not a uri", "not a uri", True),
    ],
)
def test_uri_matches(digest_uri: str, request_uri: str, same: bool) -> None:
    assert uri_matches(digest_uri, request_uri) is same


def test_verify_wrong_password(factory: NonceFactory, nonce: str) -> None:
    v = _verify(_authorization(nonce=nonce, password="guess"), factory)
    assert v == Verdict(VerdictKind.WRONG_RESPONSE, "Digest response does not match", IMPI)
    assert v.status == 401 and v.rechallenge and not v.stale


def test_verify_garbage_response_does_not_crash(factory: NonceFactory, nonce: str) -> None:
    for bad in ("caf\u00e9", "x" * 500, "00"):
        assert (
            _verify(_authorization(nonce=nonce, response=bad), factory).kind
            is VerdictKind.WRONG_RESPONSE
        )


@pytest.mark.parametrize("algorithm", ["SHA-512-256", "AKAv1-MD5", "md6"])
def test_verify_unsupported_algorithm(factory: NonceFactory, nonce: str, algorithm: str) -> None:
    creds = _authorization(nonce=nonce, algorithm=algorithm, response="0" * 32)
    v = _verify(creds, factory)
    assert v == Verdict(
        VerdictKind.UNSUPPORTED_ALGORITHM, f"unsupported Digest algorithm {algorithm!r}", IMPI
    )
    assert v.rechallenge and v.status == 401


def test_verify_algorithm_not_enabled(factory: NonceFactory, nonce: str) -> None:
    creds = _authorization(nonce=nonce, algorithm="MD5")
    v = _verify(creds, factory, algorithms=("SHA-256",))
    assert v.kind is VerdictKind.UNSUPPORTED_ALGORITHM
    assert _verify(_authorization(nonce=nonce, algorithm="sha-256"), factory, algorithms=("SHA-256",)).ok


def test_verify_algorithm_alias_for_aka(nonce: str) -> None:
    """Digest AKAv1 reuses verify(): algorithm AKAv1-MD5 computes as MD5 with the RES as password."""
    res = bytes.fromhex("a54211d5e3ba50bf")
    response = digest_response(
        algorithm="MD5", username=IMPI, realm=REALM, password=res, method="REGISTER", uri=RURI,
        nonce=nonce, nc=1, cnonce="0a4f113b", qop="auth",
    )  # fmt: skip
    creds = _authorization(nonce=nonce, algorithm="AKAv1-MD5", response=response)
    aka = {"algorithms": ("AKAv1-MD5",), "algorithm_aliases": {"AKAv1-MD5": "MD5"}, "nonces": None}
    aka["counter"] = None
    assert _verify(creds, NonceFactory(KEY), password_or_ha1=res, **aka).ok
    assert _verify(creds, NonceFactory(KEY), password_or_ha1=b"\0" * 8, **aka).kind is (
        VerdictKind.WRONG_RESPONSE
    )
    # an alias not listed in algorithms is not accepted; nor plain MD5 where only AKA is
    only_md5 = {"algorithm_aliases": {"AKAv1-MD5": "MD5"}, "nonces": None, "counter": None}
    assert _verify(creds, NonceFactory(KEY), password_or_ha1=res, **only_md5).kind is (
        VerdictKind.UNSUPPORTED_ALGORITHM
    )
    plain = _authorization(nonce=nonce, password=res)
    assert _verify(plain, NonceFactory(KEY), password_or_ha1=res, **aka).kind is (
        VerdictKind.UNSUPPORTED_ALGORITHM
    )


def test_verify_stale_nonce(factory: NonceFactory) -> None:
    old = factory.make(NOW - 301)
    v = _verify(_authorization(nonce=old), factory, now=NOW)
    assert v == Verdict(VerdictKind.STALE, "nonce expired", IMPI)
    assert v.stale and v.rechallenge and v.status == 401
    # stale=true only when the response was right: a wrong password on a stale nonce is just wrong
    v = _verify(_authorization(nonce=old, password="guess"), factory, now=NOW)
    assert v.kind is VerdictKind.WRONG_RESPONSE and not v.stale


def test_verify_invalid_nonce(factory: NonceFactory) -> None:
    for bad in ("dcd98b7102dd2f0e8b11d0f600bfb0c093", NonceFactory(b"z" * 32).make(NOW)):
        v = _verify(_authorization(nonce=bad), factory)
        assert v == Verdict(VerdictKind.INVALID_NONCE, "nonce not issued here", IMPI)
        assert v.rechallenge and not v.stale


def test_verify_nonce_bound_to_extra(factory: NonceFactory) -> None:
    bound = factory.make(NOW, extra=IMPI.encode())
    assert _verify(_authorization(nonce=bound), factory, nonce_extra=IMPI.encode()).ok
    assert _verify(_authorization(nonce=bound), factory).kind is VerdictKind.INVALID_NONCE


def test_verify_nc_replay(factory: NonceFactory, nonce: str) -> None:
    counter = NonceCounter()
    first = _authorization(nonce=nonce, nc="00000001")
    assert _verify(first, factory, counter=counter).ok
    v = _verify(first, factory, counter=counter)
    assert v == Verdict(VerdictKind.REPLAY, "nonce-count replayed", IMPI)
    assert v.rechallenge
    assert _verify(_authorization(nonce=nonce, nc="00000002"), factory, counter=counter).ok
    assert _verify(_authorization(nonce=nonce, nc="00000002"), factory, counter=counter).kind is (
        VerdictKind.REPLAY
    )
    assert _verify(_authorization(nonce=nonce, nc="0000000A"), factory, counter=counter).ok
    # a wrong response does not use up a count
    assert _verify(
        _authorization(nonce=nonce, nc="0000000b", password="x"), factory, counter=counter
    ).kind is (VerdictKind.WRONG_RESPONSE)
    assert _verify(_authorization(nonce=nonce, nc="0000000b"), factory, counter=counter).ok


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"qop": None, "nc": None, "cnonce": None}, "Digest qop missing"),
        ({"nc": None}, "Digest qop=auth needs nc and cnonce"),
        ({"cnonce": None}, "Digest qop=auth needs nc and cnonce"),
        ({"nc": "1"}, "Digest nc is not 8 hexadecimal digits"),
        ({"nc": "0000000g"}, "Digest nc is not 8 hexadecimal digits"),
        ({"qop": "auth-int"}, "Digest qop 'auth-int' not offered"),
        ({"qop": "auth-conf"}, "Digest qop 'auth-conf' not offered"),
    ],
)
def test_verify_qop_nc_cnonce_rules(
    factory: NonceFactory, nonce: str, overrides: dict[str, Any], reason: str
) -> None:
    # the response is never looked at: the malformed credentials are refused first
    v = _verify(_authorization(nonce=nonce, response="0" * 32, **overrides), factory)
    assert v == Verdict(VerdictKind.BAD_REQUEST, reason, IMPI)


def test_verify_rfc2069_form_when_allowed(factory: NonceFactory, nonce: str) -> None:
    creds = _authorization(nonce=nonce, qop=None, nc=None, cnonce=None)
    assert _verify(creds, factory, require_qop=False).ok
    sess = _authorization(
        nonce=nonce, algorithm="MD5-sess", qop=None, nc=None, cnonce=None, response="0" * 32
    )
    assert _verify(sess, factory, require_qop=False) == Verdict(
        VerdictKind.BAD_REQUEST, "Digest cnonce missing (MD5-sess)", IMPI
    )


def test_verify_auth_int(factory: NonceFactory, nonce: str) -> None:
    body = b"<xml/>"
    creds = _authorization(nonce=nonce, qop="auth-int", body=body)
    assert _verify(creds, factory, qops=("auth", "auth-int"), entity_body=body).ok
    assert _verify(creds, factory, qops=("auth", "auth-int"), entity_body=b"<other/>").kind is (
        VerdictKind.WRONG_RESPONSE
    )


def test_verify_not_digest() -> None:
    v = verify(
        AuthHeader("Basic"),  # (parse_auth has no token68 form; a bare scheme is enough here)
        method="REGISTER", request_uri=RURI, password_or_ha1=PASSWORD, realm=REALM,
    )  # fmt: skip
    assert v == Verdict(
        VerdictKind.UNSUPPORTED_SCHEME, "authorization scheme 'Basic' is not Digest", None
    )
    assert v.rechallenge


def test_verify_other_realm(factory: NonceFactory, nonce: str) -> None:
    v = _verify(_authorization(nonce=nonce, realm="other.example.test"), factory)
    assert v == Verdict(VerdictKind.WRONG_REALM, "credentials are for another realm", IMPI)
    assert v.rechallenge


def test_verify_opaque(factory: NonceFactory, nonce: str) -> None:
    assert _verify(_authorization(nonce=nonce, extra=', opaque="op1"'), factory, opaque="op1").ok
    v = _verify(_authorization(nonce=nonce, extra=', opaque="op2"'), factory, opaque="op1")
    assert v == Verdict(VerdictKind.BAD_REQUEST, "Digest opaque does not match", IMPI)
    assert _verify(_authorization(nonce=nonce), factory, opaque="op1").kind is VerdictKind.BAD_REQUEST


def test_verify_needs_now_with_nonces(factory: NonceFactory, nonce: str) -> None:
    with pytest.raises(TypeError, match="now="):
        _verify(_authorization(nonce=nonce), factory, now=None)


def test_verify_without_nonce_factory_trusts_the_caller(nonce: str) -> None:
    """Without ``nonces`` (AKA checks its own RAND||AUTN nonce) only the response and nc are checked."""
    creds = _authorization(nonce="I1U8vpY3qJ0hiuZNrke/NVXzKLQ1d7m5Sp/6w1Tfr7M=")
    assert verify(creds, method="REGISTER", request_uri=RURI, password_or_ha1=PASSWORD, realm=REALM).ok


# --------------------------------------------------------------------------------------------------
# round trips: challenge -> client -> verify


@pytest.mark.parametrize("algorithm", ["MD5", "MD5-sess", "SHA-256", "SHA-256-sess"])
def test_round_trip(factory: NonceFactory, algorithm: str) -> None:
    counter = NonceCounter()
    issued = factory.make(NOW, extra=IMPI.encode())
    www = challenge(REALM, issued, algorithm=algorithm, opaque="o-1")
    offered = parse_auth(www, "WWW-Authenticate")
    for nc in (1, 2):
        header = credentials(
            offered,
            username=IMPI,
            password=PASSWORD,
            method="REGISTER",
            uri=RURI,
            nc=nc,
            cnonce=f"cn{nc}",
        )
        creds = parse_auth(header, "Authorization")
        assert creds.get("algorithm") == algorithm and creds.get("nc") == f"{nc:08x}"
        assert creds.get("opaque") == "o-1"
        args: dict[str, Any] = {
            "method": "REGISTER",
            "request_uri": RURI,
            "realm": REALM,
            "nonces": factory,
            "now": NOW + 60,
            "nonce_extra": IMPI.encode(),
            "counter": counter,
            "opaque": "o-1",
        }
        assert verify(creds, password_or_ha1=PASSWORD, **args).ok
        assert verify(creds, password_or_ha1=PASSWORD, **args).kind is VerdictKind.REPLAY
    wrong = parse_auth(
        credentials(offered, username=IMPI, password="nope", method="REGISTER", uri=RURI, nc=3),
        "Authorization",
    )
    assert verify(wrong, password_or_ha1=PASSWORD, **args).kind is VerdictKind.WRONG_RESPONSE
    # the same credentials after the nonce lifetime: stale, then a fresh challenge works
    late = parse_auth(
        credentials(offered, username=IMPI, password=PASSWORD, method="REGISTER", uri=RURI, nc=9),
        "Authorization",
    )
    stale = verify(late, password_or_ha1=PASSWORD, **{**args, "now": NOW + 301})
    assert stale.stale
    again = parse_auth(
        challenge(REALM, factory.make(NOW + 301, extra=IMPI.encode()), algorithm=algorithm, stale=True),
        "WWW-Authenticate",
    )
    assert again.get("stale") == "true"
    fresh = parse_auth(
        credentials(again, username=IMPI, password=PASSWORD, method="REGISTER", uri=RURI),
        "Authorization",
    )
    assert verify(fresh, password_or_ha1=PASSWORD, **{**args, "now": NOW + 302, "opaque": None}).ok


def test_round_trip_through_a_parsed_register(factory: NonceFactory) -> None:
    """The registrar's view: msg.authorization[0] and request.uri from a parsed REGISTER."""
    issued = factory.make(NOW)
    offered = parse_auth(challenge(REALM, issued, algorithm="SHA-256"), "WWW-Authenticate")
    value = credentials(
        offered, username=IMPI, password=PASSWORD, method="REGISTER", uri="sip:IMS.EXAMPLE.TEST"
    )
    data = (
        "REGISTER sip:ims.example.test SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{IMPI}>;tag=1928301774\r\n"
        f"To: <sip:{IMPI}>\r\n"
        "Call-ID: a84b4c76e66710@pc33\r\n"
        "CSeq: 2 REGISTER\r\n"
        "Contact: <sip:alice@192.0.2.1:5060>\r\n"
        f"Authorization: {value}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    request = parse_datagram(data)
    assert isinstance(request, Request)
    v = verify(
        request.authorization[0],
        method="REGISTER",
        request_uri=request.uri,
        password_or_ha1=PASSWORD,
        realm=REALM,
        nonces=factory,
        now=NOW + 1,
        counter=NonceCounter(),
    )
    assert v.ok and v.username == IMPI


def test_credentials_client_side() -> None:
    offered = parse_auth('Digest realm="r", nonce="n", qop="auth-int,auth"', "WWW-Authenticate")
    header = parse_auth(
        credentials(offered, username="u", password="p", method="M", uri="sip:r", cnonce="c"),
        "Authorization",
    )
    assert header.get("qop") == "auth" and header.get("nc") == "00000001" and header.get("cnonce") == "c"
    assert header.get("algorithm") == "MD5"
    none = parse_auth(credentials(parse_auth('Digest realm="r", nonce="n"', "x"), username="u",
                                  password="p", method="M", uri="sip:r"), "x")  # fmt: skip
    assert none.get("qop") is None and none.get("nc") is None and none.get("cnonce") is None
    assert none.get("response") == digest_response(
        algorithm="MD5", username="u", realm="r", password="p", method="M", uri="sip:r", nonce="n"
    )
    aka = parse_auth('Digest realm="r", nonce="n", algorithm=AKAv1-MD5, qop="auth"', "x")
    with pytest.raises(ValueError, match="unsupported Digest algorithm"):
        credentials(aka, username="u", password=b"res", method="M", uri="sip:r")
    got = parse_auth(
        credentials(
            aka,
            username="u",
            password=b"res",
            method="M",
            uri="sip:r",
            algorithm_aliases={"AKAv1-MD5": "MD5"},
        ),
        "x",
    )
    assert got.get("algorithm") == "AKAv1-MD5"
    for bad in ('Basic realm="r"', 'Digest realm="r"', 'Digest realm="r", nonce="n", qop="auth-conf"'):
        with pytest.raises(ValueError):
            credentials(parse_auth(bad, "x"), username="u", password="p", method="M", uri="sip:r")
    with pytest.raises(ParseError):
        parse_auth("", "x")


# --------------------------------------------------------------------------------------------------
# secrets never show


def test_no_secret_in_any_verdict_or_repr(factory: NonceFactory, nonce: str) -> None:
    stored = StoredHA1.from_password(username=IMPI, realm=REALM, password=PASSWORD)
    good = _authorization(nonce=nonce)
    response = good.get("response")
    assert response is not None
    secrets_ = [PASSWORD, stored.hexdigest, response, "registrar-nonce-secret"]
    verdicts = [
        _verify(good, factory),
        _verify(good, factory, password_or_ha1=stored),
        _verify(_authorization(nonce=nonce, password="guess"), factory),
        _verify(_authorization(nonce=nonce, uri="sip:x.example.test"), factory),
        _verify(_authorization(nonce=factory.make(NOW - 1000)), factory),
        _verify(_authorization(nonce="bogus"), factory),
        _verify(_authorization(nonce=nonce, algorithm="SHA-512-256", response=response), factory),
        _verify(_authorization(nonce=nonce, drop="username"), factory),
    ]
    counter = NonceCounter()
    counter.use(nonce, 1, issued=NOW, now=NOW)
    verdicts.append(_verify(good, factory, counter=counter))
    verdicts.append(_verify(_authorization(nonce=nonce, realm="other.example.test"), factory))
    verdicts.append(_verify(AuthHeader("Basic", [("response", f'"{response}"')]), factory))
    assert {v.kind for v in verdicts} == set(VerdictKind)
    shown = [repr(v) for v in verdicts] + [v.reason for v in verdicts]
    shown += [repr(stored), str(stored), repr(factory), repr(counter)]
    for text in shown:
        for s in secrets_:
            assert s not in text, (s, text)
