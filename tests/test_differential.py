"""The compiled build behaves as the plain-Python sources do, byte for byte (issue 13, decision 3).

One corpus — the RFC 4475 and RFC 5118 torture messages, the REGISTERs of the registration
benchmark (with and without credentials), INVITEs, and seeded mutations of all of them (bytes
flipped, lines dropped, doubled or cut, CRLF injected) — goes through the imscore that is installed
(in tox's ``tests-compiled`` env, the mypyc build) and, in a subprocess, through the Python sources of
this checkout. Verdicts, typed header values, reserialised bytes and the answers built from each
message must be the same. In the ``tests`` env both sides are pure Python, and the test checks that
the installed wheel is the checkout's code; ``tests/test_build.py`` checks which build each env runs.
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CORPUS, REPO_ROOT
from differential_probe import outcome

import imscore.sip

PROBE = Path(__file__).with_name("differential_probe.py")
DOMAIN = "ims.example.test"
SEED = 4475


def _register(i: int, authorization: str = "") -> bytes:
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-{i}-1;rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:user{i:05d}@{DOMAIN}>;tag={i}\r\n"
        f"To: <sip:user{i:05d}@{DOMAIN}>\r\nCall-ID: {i}-bench@127.0.0.1\r\nCSeq: 1 REGISTER\r\n"
        f'Contact: <sip:user{i:05d}@127.0.0.1:5999>;+sip.instance="<urn:uuid:{i:08d}-0000>";reg-id=1\r\n'
        f"{authorization}Supported: path, gruu, outbound\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _authorization(i: int) -> str:
    return (
        f'Authorization: Digest username="user{i:05d}@{DOMAIN}",realm="{DOMAIN}",cnonce="6b8b4567",'
        f'nc=00000001,qop=auth,uri="sip:{DOMAIN}",nonce="AAAAAYvR2cAAAAAAAAAAAA",'
        f'response="0123456789abcdef0123456789abcdef",algorithm=MD5\r\n'
    )


def _invite(i: int) -> bytes:
    body = (
        b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=audio 4000 RTP/AVP 0\r\n"
    )
    head = (
        f"INVITE sip:user{i:05d}@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP [::1]:5080;branch=z9hG4bK-inv{i}\r\n"
        "v: SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKx\r\n"
        f'Max-Forwards: 69\r\nf: "Caller {i}" <sip:caller@{DOMAIN}>;tag=c{i}\r\n'
        f"t: sip:user{i:05d}@{DOMAIN}\r\n"
        f"i: inv-{i}@127.0.0.1\r\nCSeq: 7 INVITE\r\nm: <sip:caller@127.0.0.1:5080;transport=tcp>\r\n"
        f"Route: <sip:orig@{DOMAIN};lr>\r\nRecord-Route: <sip:p1.{DOMAIN};lr>, <sip:p2.{DOMAIN};lr>\r\n"
        f"P-Asserted-Identity: <tel:+1555123{i:04d}>\r\nc: application/sdp\r\nl: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _mutations(message: bytes, rng: random.Random, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        data = bytearray(message)
        kind = rng.randrange(6)
        if kind == 0 and data:  # flip bytes
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1:  # cut anywhere
            data = data[: rng.randrange(len(data) + 1)]
        lines = bytes(data).split(b"\r\n")
        if kind == 2 and len(lines) > 2:  # drop a header line
            del lines[rng.randrange(1, len(lines) - 1)]
        elif kind == 3 and len(lines) > 2:  # double one
            j = rng.randrange(1, len(lines) - 1)
            lines.insert(j, lines[j])
        elif kind == 4 and len(lines) > 2:  # CRLF injected into a value
            j = rng.randrange(1, len(lines) - 1)
            lines[j] = lines[j][: len(lines[j]) // 2] + b"\r\n" + lines[j][len(lines[j]) // 2 :]
        elif kind == 5 and len(lines) > 2:  # a value swapped for a hostile one
            j = rng.randrange(1, len(lines) - 1)
            name = lines[j].split(b":", 1)[0]
            lines[j] = (
                name
                + b": "
                + rng.choice([b"<", b";;;", b'"unterminated', b"sip:@", b"x" * 3000, b"\xff\xfe"])
            )
        out.append(b"\r\n".join(lines) if kind >= 2 else bytes(data))
    return out


def corpus() -> list[bytes]:
    """The datagrams both builds are given (the same list on every run: seeded)."""
    messages = [_register(i) for i in range(3)] + [_register(i, _authorization(i)) for i in range(3)]
    messages += [_invite(i) for i in range(3)]
    for folder in ("rfc4475", "rfc5118"):
        messages += [p.read_bytes() for p in sorted((CORPUS / folder).glob("*.dat"))]
    rng = random.Random(SEED)
    mutated = [m for base in list(messages) for m in _mutations(base, rng, 12)]
    return messages + mutated + [b"\r\n\r\n", b""]


def test_installed_build_answers_as_the_python_sources_do(tmp_path: Path) -> None:
    if not (CORPUS / "rfc4475").is_dir():
        pytest.skip(f"corpus missing: {CORPUS} (set IMSCORE_CORPUS)")
    sources = REPO_ROOT / "imscore" / "sip"
    compiled_in_tree = sorted(p.name for p in sources.glob("*.so"))
    assert not compiled_in_tree, f"the checkout's sources must be plain Python: {compiled_in_tree}"
    datagrams = corpus()
    assert len(datagrams) > 800
    infile, outfile = tmp_path / "in.json", tmp_path / "out.json"
    infile.write_text(json.dumps([base64.b64encode(d).decode() for d in datagrams]))
    subprocess.run([sys.executable, str(PROBE), str(REPO_ROOT), str(infile), str(outfile)], check=True)
    pure = json.loads(outfile.read_text())
    installed = [outcome(d) for d in datagrams]
    assert len(pure) == len(installed) == len(datagrams)
    differing = [(i, a, b) for i, (a, b) in enumerate(zip(installed, pure, strict=True)) if a != b]
    assert not differing, f"{len(differing)} datagrams differ; first: {differing[0]!r}"
    # the corpus exercises both outcomes: messages that parse and answer, and refused ones
    assert sum(1 for r in installed if r["parse"] == "ok" and "bytes" in r) > 100
    assert sum(1 for r in installed if isinstance(r["parse"], dict)) > 50
    assert imscore.sip.__file__ is not None
