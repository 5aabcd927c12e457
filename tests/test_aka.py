"""MILENAGE (TS 35.206) and Digest-AKA (RFC 3310/4169) against the standards' test data.

The known answers come from ``milenage_ts35208.json`` (TS 35.208 conformance sets, TS 35.207
implementors' sets, AES kernel vectors, AUTS resync vectors) and, for the Digest layer, the derived
example in ``digest_vectors.json`` (a consistency check, not an external known answer: the digest is
recomputed here with hashlib as well).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import CORPUS

from imscore.auth.aka import (
    AkaError,
    AuthVector,
    MacError,
    NonceError,
    SqnState,
    UeSim,
    aka_password,
    decode_auts,
    derive_password,
    encode_auts,
    generate_vector,
    make_auts,
    make_nonce,
    new_vector,
    parse_aka_algorithm,
    parse_nonce,
    resync_sqn,
)
from imscore.auth.milenage import Milenage, compute_opc

MILENAGE_JSON = CORPUS / "milenage_ts35208.json"
DIGEST_JSON = CORPUS / "digest_vectors.json"

h = bytes.fromhex

# TS 35.208 test set 1 (= TS 35.207 set 1), also the SIPp documentation example.
K1 = h("465b5ce8b199b49faa5f0a2ee238a6bc")
OP1 = h("cdc202d5123e20f62b6d676ac72cb318")
RAND1 = h("23553cbe9637a89d218ae64dae47bf35")
SQN1 = 0xFF9BB4D0B607
AMF1 = h("b9b9")


def _load(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    with path.open("rb") as f:
        data: dict[str, Any] = json.load(f)
    return data


MIL = _load(MILENAGE_JSON)
DIG = _load(DIGEST_JSON)


def _params(data: dict[str, Any] | None, path: Path, *keys: str) -> list[Any]:
    """Parametrise over data[keys...]; one skipped case (with the reason) when the corpus is missing."""
    if data is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"corpus file missing: {path}"))]
    node: Any = data
    for key in keys:
        node = node[key]
    return [pytest.param(item, id=str(item.get("test_set", i))) for i, item in enumerate(node)]


def _need(data: dict[str, Any] | None, path: Path) -> dict[str, Any]:
    if data is None:
        pytest.skip(f"corpus file missing: {path}")
    return data


def _check_set(s: dict[str, Any]) -> None:
    rand, sqn, amf = h(s["RAND"]), h(s["SQN"]), h(s["AMF"])
    for m in (Milenage(h(s["K"]), op=h(s["OP"])), Milenage(h(s["K"]), opc=h(s["OPc"]))):
        assert m.opc.hex() == s["OPc"]
        assert m.f1(rand, sqn, amf).hex() == s["f1_MAC_A"]
        assert m.f1_star(rand, sqn, amf).hex() == s["f1star_MAC_S"]
        res, ck, ik, ak = m.f2345(rand)
        assert res.hex() == s["f2_RES"]
        assert ck.hex() == s["f3_CK"]
        assert ik.hex() == s["f4_IK"]
        assert ak.hex() == s["f5_AK"]
        assert m.f5_star(rand).hex() == s["f5star_AK_resync"]
    assert compute_opc(h(s["K"]), h(s["OP"])).hex() == s["OPc"]


# --- MILENAGE known answers ----------------------------------------------------------------------


@pytest.mark.parametrize("s", _params(MIL, MILENAGE_JSON, "ts35208_conformance"))
def test_ts35208_conformance_set(s: dict[str, Any]) -> None:
    _check_set(s)


@pytest.mark.parametrize("s", _params(MIL, MILENAGE_JSON, "ts35207_implementors"))
def test_ts35207_implementors_set(s: dict[str, Any]) -> None:
    _check_set(s)


def test_corpus_has_all_sets() -> None:
    data = _need(MIL, MILENAGE_JSON)
    assert sorted(s["test_set"] for s in data["ts35208_conformance"]) == list(range(1, 21))
    assert sorted(s["test_set"] for s in data["ts35207_implementors"]) == list(range(1, 7))


@pytest.mark.parametrize(
    "v", _params(MIL, MILENAGE_JSON, "rijndael_kernel_vectors_ts35207_section3", "vectors")
)
def test_aes_kernel(v: dict[str, Any]) -> None:
    # compute_opc(K, X) = X xor E_K(X), so the kernel output is recovered through the public API.
    plain = h(v["plain"])
    e_k = bytes(a ^ b for a, b in zip(compute_opc(h(v["K"]), plain), plain, strict=True))
    assert e_k.hex() == v["cipher"]


@pytest.mark.parametrize("v", _params(MIL, MILENAGE_JSON, "auts_resync_vectors", "vectors"))
def test_auts_resync_vectors(v: dict[str, Any]) -> None:
    assert v["MAC_S_AMF"] == "0000"
    m = Milenage(h(v["K"]), opc=h(v["OPc"]))
    sqn_ms = resync_sqn(m, h(v["RAND"]), h(v["AUTS"]))
    assert sqn_ms == int(v["expected_SQN_MS"], 16)
    assert make_auts(m, h(v["RAND"]), sqn_ms).hex() == v["AUTS"]


def test_milenage_argument_checks() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Milenage(K1)
    with pytest.raises(ValueError, match="exactly one"):
        Milenage(K1, op=OP1, opc=OP1)
    with pytest.raises(ValueError, match="K must be 16 octets, got 15"):
        Milenage(K1[:15], op=OP1)
    with pytest.raises(ValueError, match="OP must be 16 octets"):
        Milenage(K1, op=OP1 + b"\x00")
    with pytest.raises(ValueError, match="OPc must be 16 octets"):
        Milenage(K1, opc=b"")
    with pytest.raises(TypeError, match="K must be bytes"):
        Milenage("465b5ce8b199b49faa5f0a2ee238a6bc", op=OP1)  # type: ignore[arg-type]
    m = Milenage(K1, op=OP1)
    with pytest.raises(ValueError, match="RAND must be 16 octets"):
        m.f2345(RAND1[:8])
    with pytest.raises(ValueError, match="SQN must be 6 octets"):
        m.f1(RAND1, b"\x00" * 5, AMF1)
    with pytest.raises(ValueError, match="AMF must be 2 octets"):
        m.f1_star(RAND1, b"\x00" * 6, b"\x00")
    assert K1.hex() not in repr(m) and "hidden" in repr(m)


# --- vectors and nonces --------------------------------------------------------------------------


def test_autn_and_nonce_set1() -> None:
    v = generate_vector(Milenage(K1, op=OP1), SQN1, AMF1, RAND1)
    assert v.autn.hex() == "55f328b43577b9b94a9ffac354dfafb3"
    assert v.xres.hex() == "a54211d5e3ba50bf"
    assert v.ck.hex() == "b40ba9a3c58b2a05bbf0d987b21bf8cb"
    assert v.ik.hex() == "f769bcd751044604127672711c6d3441"
    nonce = "I1U8vpY3qJ0hiuZNrke/NVXzKLQ1d7m5Sp/6w1Tfr7M="
    assert make_nonce(v.rand, v.autn) == nonce == v.nonce
    assert parse_nonce(nonce) == (RAND1, v.autn)
    assert parse_nonce(nonce.encode()) == (RAND1, v.autn)
    # secrets stay out of repr
    assert v.xres.hex() not in repr(v) and v.ck.hex() not in repr(v)


def test_nonce_server_data_is_ignored_by_parse() -> None:
    autn = bytes(range(16))
    nonce = make_nonce(RAND1, autn, b"opaque-server-state")
    assert parse_nonce(nonce) == (RAND1, autn)


@pytest.mark.parametrize(
    "bad",
    [
        "not base64!",
        "I1U8vpY3qJ0hiuZNrke/NVXzKLQ1d7m5Sp/6w1Tfr7M",  # padding stripped
        "I1U8vpY3qJ0hiuZNrke/NVXzKLQ1d7m5",  # 24 octets: too short
        "",
        "I1U8vpY3qJ0hiuZNrke/NVXzKLQ1d7m5Sp/6w1Tfr7é=",  # non-ASCII
    ],
)
def test_parse_nonce_rejects(bad: str) -> None:
    with pytest.raises(NonceError):
        parse_nonce(bad)


def test_nonce_error_is_an_aka_error_and_value_error() -> None:
    with pytest.raises(ValueError):
        parse_nonce("QUJD")
    assert issubclass(NonceError, AkaError) and issubclass(MacError, AkaError)


def test_generate_vector_checks() -> None:
    m = Milenage(K1, op=OP1)
    with pytest.raises(ValueError, match="SQN"):
        generate_vector(m, 1 << 48, AMF1, RAND1)
    with pytest.raises(ValueError, match="SQN"):
        generate_vector(m, -1, AMF1, RAND1)
    with pytest.raises(ValueError, match="AMF"):
        generate_vector(m, 1, b"\x80", RAND1)
    with pytest.raises(ValueError, match="RAND"):
        generate_vector(m, 1, AMF1, RAND1[:15])
    with pytest.raises(ValueError, match="AUTN"):
        make_nonce(RAND1, b"short")


def test_new_vector_uses_injected_randomness() -> None:
    m = Milenage(K1, op=OP1)
    calls: list[int] = []

    def fake_random(n: int) -> bytes:
        calls.append(n)
        return RAND1

    assert new_vector(m, SQN1, AMF1, random_bytes=fake_random) == generate_vector(m, SQN1, AMF1, RAND1)
    assert calls == [16]
    assert new_vector(m, 1, AMF1).rand != new_vector(m, 1, AMF1).rand  # default: secrets


# --- passwords and the Digest response -----------------------------------------------------------


def _md5(*parts: bytes) -> str:
    return hashlib.md5(b":".join(parts)).hexdigest()


def _digest_response(ex: dict[str, Any], password: bytes) -> str:
    """RFC 2617 qop=auth response computed independently of imscore."""
    ha1 = _md5(ex["username"].encode(), ex["realm"].encode(), password)
    ha2 = _md5(ex["method"].encode(), ex["uri"].encode())
    return _md5(
        ha1.encode(),
        ex["nonce_b64_RAND_AUTN"].encode(),
        ex["nc"].encode(),
        ex["cnonce"].encode(),
        ex["qop"].encode(),
        ha2.encode(),
    )


def test_akav1_response_end_to_end() -> None:
    ex = _need(DIG, DIGEST_JSON)["digest_aka_derived_example"]
    m = Milenage(h(ex["milenage_inputs"]["K"]), op=h(ex["milenage_inputs"]["OP"]))
    vec = generate_vector(
        m,
        int(ex["milenage_inputs"]["SQN"], 16),
        h(ex["milenage_inputs"]["AMF"]),
        h(ex["milenage_inputs"]["RAND"]),
    )
    assert vec.nonce == ex["nonce_b64_RAND_AUTN"]
    # the UE side: RES from the nonce, password = RES as raw octets
    # set 1's SQN is far from 0: give the UE a recent SEQ so the SQN is fresh (within delta)
    ue = UeSim(m, sqn_ms=SQN1 - (1 << 5))
    answer = ue.respond(vec.nonce)
    assert answer.auts is None and answer.res == vec.xres
    client = _digest_response(ex, answer.password(1))
    # the server side: password = XRES
    assert aka_password(1, vec) == vec.xres == h("a54211d5e3ba50bf")
    server = _digest_response(ex, aka_password(1, vec))
    assert client == server == ex["akav1_md5"]["response"]
    assert _md5(ex["username"].encode(), ex["realm"].encode(), vec.xres) == ex["akav1_md5"]["HA1"]


def test_akav2_password() -> None:
    vec = generate_vector(Milenage(K1, op=OP1), SQN1, AMF1, RAND1)
    pw = aka_password(2, vec)
    # shape: 24 base64 characters of a 16-octet HMAC-MD5 output
    assert len(pw) == 24 and pw.endswith(b"==")
    assert len(base64.b64decode(pw, validate=True)) == 16
    # independent computation of RFC 4169's PRF(XRES||IK||CK, "http-digest-akav2-password")
    mac = hmac.new(vec.xres + vec.ik + vec.ck, b"http-digest-akav2-password", hashlib.md5).digest()
    assert pw == base64.b64encode(mac)
    assert pw != aka_password(1, vec)
    # the doubango bug (base64 of the concatenation, no HMAC) must not be what we produce
    assert pw != base64.b64encode(vec.xres + vec.ik + vec.ck + b"http-digest-akav2-password")
    assert pw == derive_password(2, vec.xres, vec.ik, vec.ck)


def test_akav2_response_matches_derived_example() -> None:
    ex = _need(DIG, DIGEST_JSON)["digest_aka_derived_example"]
    vec = generate_vector(Milenage(K1, op=OP1), SQN1, AMF1, RAND1)
    assert aka_password(2, vec).decode() == ex["akav2_md5"]["password"]
    ue = UeSim(Milenage(K1, opc=h(ex["milenage_inputs"]["OPc"])), sqn_ms=SQN1 - (1 << 5))
    answer = ue.respond(vec.nonce)
    assert answer.password(2) == aka_password(2, vec)
    assert _digest_response(ex, answer.password(2)) == ex["akav2_md5"]["response"]


def test_password_unknown_version() -> None:
    vec = generate_vector(Milenage(K1, op=OP1), SQN1, AMF1, RAND1)
    with pytest.raises(ValueError, match="version 3"):
        aka_password(3, vec)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("AKAv1-MD5", (1, "MD5")),
        ("akav2-md5", (2, "MD5")),
        ("AKAv1-SHA-256", (1, "SHA-256")),
        ("MD5", None),
        ("AKAv-MD5", None),
        ("AKAv0-MD5", None),
        ("AKAv1", None),
        ("AKAv1-", None),
        ("AKAvx-MD5", None),
    ],
)
def test_parse_aka_algorithm(token: str, expected: tuple[int, str] | None) -> None:
    assert parse_aka_algorithm(token) == expected


# --- resynchronisation ---------------------------------------------------------------------------


def test_resync_derived_example() -> None:
    ex = _need(DIG, DIGEST_JSON)["digest_aka_derived_example"]
    rs = ex["resync_akav1"]
    m = Milenage(K1, op=OP1)
    auts = make_auts(m, RAND1, int(rs["SQN_MS"], 16))
    assert auts.hex() == rs["AUTS"]
    assert encode_auts(auts) == rs["auts_param_b64"]
    assert decode_auts(rs["auts_param_b64"]) == auts
    assert resync_sqn(m, RAND1, auts) == int(rs["SQN_MS"], 16)
    assert _digest_response(ex, b"") == rs["response_with_empty_password"]


def test_resync_wrong_mac_fails() -> None:
    m = Milenage(K1, op=OP1)
    auts = make_auts(m, RAND1, 0x20)
    forged = auts[:-1] + bytes([auts[-1] ^ 1])
    with pytest.raises(MacError, match="MAC-S"):
        resync_sqn(m, RAND1, forged)
    # a changed SQN_MS no longer matches MAC-S either
    with pytest.raises(MacError):
        resync_sqn(m, RAND1, bytes([auts[0] ^ 0x80]) + auts[1:])
    # nor does the same AUTS against another RAND, or another subscriber's key
    with pytest.raises(MacError):
        resync_sqn(m, bytes(16), auts)
    with pytest.raises(MacError):
        resync_sqn(Milenage(bytes(16), op=OP1), RAND1, auts)
    with pytest.raises(ValueError, match="AUTS must be 14 octets"):
        resync_sqn(m, RAND1, auts[:13])


def test_decode_auts_rejects() -> None:
    with pytest.raises(AkaError):
        decode_auts("!!!")
    with pytest.raises(AkaError, match="14"):
        decode_auts(base64.b64encode(bytes(15)).decode())


# --- SQN management ------------------------------------------------------------------------------


def test_sqn_state_sequence_and_storage() -> None:
    st = SqnState()
    issued = [st.next() for _ in range(40)]
    assert issued[0] == (1 << 5) | 1
    assert [s >> 5 for s in issued] == list(range(1, 41))  # SEQ grows by one
    assert [s & 31 for s in issued] == [(i + 1) % 32 for i in range(40)]  # IND round-robin
    assert all(b > a for a, b in itertools.pairwise(issued))
    stored = int(st)
    assert stored == st.to_int() == st.last == issued[-1]
    again = SqnState.from_int(stored)
    assert again.next() == SqnState(stored).next()
    with pytest.raises(ValueError):
        SqnState(1 << 48)


def test_sqn_state_resync() -> None:
    st = SqnState(100 << 5)
    # SQN_MS behind us, within delta: just continue
    assert st.next(sqn_ms=90 << 5) >> 5 == 101
    # SQN_MS ahead of us: restart from SEQ_MS
    assert st.next(sqn_ms=5000 << 5) >> 5 == 5001
    # we are more than delta ahead of the UE: restart from SEQ_MS as well
    far = SqnState(10_000 << 5, delta=100)
    assert far.next(sqn_ms=10 << 5) >> 5 == 11


def test_sqn_state_exhausted() -> None:
    st = SqnState(((1 << 43) - 1) << 5)
    with pytest.raises(AkaError, match="exhausted"):
        st.next()


# --- the UE simulator ----------------------------------------------------------------------------


def test_ue_stale_sqn_then_server_recovers() -> None:
    m = Milenage(K1, op=OP1)
    # The UE has seen SEQ up to 1000 (for example the HSS lost its state); the server starts afresh.
    ue = UeSim(m, sqn_ms=1000 << 5)
    server = SqnState()
    rands = iter(bytes([i]) * 16 for i in range(1, 10))
    vec = generate_vector(m, server.next(), AMF1, next(rands))
    answer = ue.respond(vec.nonce)
    assert answer.res is None and answer.auts is not None and answer.ck is None
    assert answer.password(1) == b"" and answer.password(2) == b""
    assert answer.auts_param is not None and len(answer.auts_param) == 20
    # server: verify AUTS against the RAND it sent, move SQN past SQN_MS, challenge again
    sqn_ms = resync_sqn(m, vec.rand, decode_auts(answer.auts_param))
    assert sqn_ms == 1000 << 5
    vec2 = generate_vector(m, server.next(sqn_ms=sqn_ms), AMF1, next(rands))
    answer2 = ue.respond(vec2.nonce)
    assert answer2.auts is None and answer2.res == vec2.xres
    assert answer2.ck == vec2.ck and answer2.ik == vec2.ik
    assert answer2.password(1) == aka_password(1, vec2)
    assert answer2.password(2) == aka_password(2, vec2)
    assert ue.sqn_ms == (1001 << 5)


def test_ue_rejects_replayed_nonce() -> None:
    m = Milenage(K1, op=OP1)
    ue, server = UeSim(m), SqnState()
    vec = generate_vector(m, server.next(), AMF1, RAND1)
    assert ue.respond(vec.nonce).res == vec.xres
    replay = ue.respond(vec.nonce)
    assert replay.res is None and replay.auts is not None
    assert resync_sqn(m, RAND1, replay.auts) == ue.sqn_ms == 1 << 5


def test_ue_accepts_out_of_order_within_the_array() -> None:
    m = Milenage(K1, op=OP1)
    ue, server = UeSim(m), SqnState()
    first = generate_vector(m, server.next(), AMF1, b"\x01" * 16)
    second = generate_vector(m, server.next(), AMF1, b"\x02" * 16)
    assert ue.respond(second.nonce).res == second.xres
    assert ue.respond(first.nonce).res == first.xres  # other IND slot, still fresh


def test_ue_rejects_sqn_too_far_ahead() -> None:
    m = Milenage(K1, op=OP1)
    ue = UeSim(m, delta=1000)
    vec = generate_vector(m, 5000 << 5, AMF1, RAND1)
    assert ue.respond(vec.nonce).auts is not None


def test_ue_detects_fake_network() -> None:
    vec = generate_vector(Milenage(bytes(16), op=OP1), 1 << 5, AMF1, RAND1)
    with pytest.raises(MacError, match="MAC-A"):
        UeSim(Milenage(K1, op=OP1)).respond(vec.nonce)
    with pytest.raises(NonceError):
        UeSim(Milenage(K1, op=OP1)).respond("short")


def test_vector_is_frozen() -> None:
    vec = generate_vector(Milenage(K1, op=OP1), 1, AMF1, RAND1)
    assert isinstance(vec, AuthVector)
    with pytest.raises(AttributeError):
        vec.rand = b""  # type: ignore[misc]
