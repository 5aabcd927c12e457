#!/usr/bin/env python3
"""Parse benchmark for :mod:`imscore.sip`, compared in the same run with PyPI's sipmessage.

Usage::

    python3 -m pip install -e '.[bench]'
    python3 bench/parse_bench.py [--seconds S] [--rounds N] [--json] [--profile]

What it does, in order:

1. Checks the built-in corpus (CRLF line ends, right Content-Length) and that both libraries read
   the same values out of every corpus message, so that the workloads compare like with like.
2. Times two workloads, imscore and sipmessage interleaved in rounds (the order alternates between
   rounds), and prints the median messages per second of each and their ratio:

   (a) parse + serialise;
   (b) parse, read what a registrar or proxy reads (top Via branch, From tag, To URI and tag,
       Call-ID, CSeq, every Contact with its expires, the Authorization username), then serialise.

3. Runs both parsers over the RFC 4475 and RFC 5118 torture corpora (from ``$IMSCORE_CORPUS``,
   else ``../shared/corpus`` beside the repository, else ``/work/shared/corpus``) and prints how
   many valid messages each accepted, how many invalid ones it rejected, the crashes and the cases
   it got wrong. The exit status is 1 if imscore raised anything but SipError on a corpus message.

Only the ratios of one run mean anything: on a shared machine the absolute rates move with the load.
``--profile`` runs cProfile over imscore's side of both workloads instead of timing them.
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import datetime
import gc
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import imscore.sip as ims

try:
    import sipmessage
except ImportError:  # pragma: no cover - depends on the environment
    sipmessage = None

# --------------------------------------------------------------------------------------------------
# The corpus: what an S-CSCF sees. Written out line by line; Content-Length is checked at start-up.
# --------------------------------------------------------------------------------------------------
DOMAIN = b"ims.mnc001.mcc001.3gppnetwork.org"

REGISTER = b"\r\n".join(
    [
        b"REGISTER sip:ims.mnc001.mcc001.3gppnetwork.org SIP/2.0",
        b"Via: SIP/2.0/UDP pcscf1.ims.mnc001.mcc001.3gppnetwork.org:5060;branch=z9hG4bKpc1.a8e0217c",
        b"Via: SIP/2.0/UDP [2001:db8:10::5]:5060;rport=5060;branch=z9hG4bK1734a2b5c",
        b"Max-Forwards: 69",
        b"From: <sip:001010000012345@ims.mnc001.mcc001.3gppnetwork.org>;tag=4fa3e1c2",
        b"To: <sip:001010000012345@ims.mnc001.mcc001.3gppnetwork.org>",
        b"Call-ID: 7b4c5d2e-9f01-4a6b-8c3d-2e1f0a9b8c7d",
        b"CSeq: 2 REGISTER",
        b"Contact: <sip:001010000012345@[2001:db8:10::5]:5060>;expires=600000"
        b';+sip.instance="<urn:gsma:imei:35209900-176148-0>";reg-id=1'
        b';+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.mmtel";audio;+g.3gpp.smsip',
        b'Authorization: Digest username="001010000012345@ims.mnc001.mcc001.3gppnetwork.org", '
        b'realm="ims.mnc001.mcc001.3gppnetwork.org", '
        b'nonce="4Ix2b7sH6bBMKQtCvB1nQVzKXtD3uQAAvEkCdW5yYqHXNw==", '
        b'uri="sip:ims.mnc001.mcc001.3gppnetwork.org", '
        b'response="6629fae49393a05397450978507c4ef1", algorithm=AKAv1-MD5, qop=auth, '
        b'nc=00000001, cnonce="0a4f113b", integrity-protected="ip-assoc-yes"',
        b"Path: <sip:term@pcscf1.ims.mnc001.mcc001.3gppnetwork.org:5060;lr>",
        b"Supported: path, gruu, sec-agree",
        b"Require: path",
        b"P-Visited-Network-ID: ims.mnc001.mcc001.3gppnetwork.org",
        b"P-Access-Network-Info: 3GPP-E-UTRAN-FDD; utran-cell-id-3gpp=0010100010019B01",
        b"P-Charging-Vector: icid-value=pcscf1-1a2b3c4d5e6f;icid-generated-at=198.51.100.10",
        b"User-Agent: Example VoLTE UE/4.2 (IMS 3GPP Rel-15)",
        b"Content-Length: 0",
        b"",
        b"",
    ]
)

SDP = b"\r\n".join(
    [
        b"v=0",
        b"o=- 1718972340 1718972340 IN IP6 2001:db8:10::5",
        b"s=-",
        b"c=IN IP6 2001:db8:10::5",
        b"b=AS:49",
        b"b=RS:0",
        b"b=RR:2000",
        b"t=0 0",
        b"m=audio 31000 RTP/AVP 116 107 118 96 111 110",
        b"b=AS:49",
        b"b=RS:0",
        b"b=RR:2000",
        b"a=rtpmap:116 AMR-WB/16000/1",
        b"a=fmtp:116 mode-change-capability=2;max-red=0",
        b"a=rtpmap:107 AMR-WB/16000/1",
        b"a=fmtp:107 octet-align=1;mode-change-capability=2;max-red=0",
        b"a=rtpmap:118 AMR/8000/1",
        b"a=fmtp:118 mode-change-capability=2;max-red=0",
        b"a=rtpmap:96 AMR/8000/1",
        b"a=fmtp:96 octet-align=1;mode-change-capability=2;max-red=0",
        b"a=rtpmap:111 telephone-event/16000",
        b"a=fmtp:111 0-15",
        b"a=rtpmap:110 telephone-event/8000",
        b"a=fmtp:110 0-15",
        b"a=ptime:20",
        b"a=maxptime:240",
        b"a=curr:qos local none",
        b"a=curr:qos remote none",
        b"a=des:qos mandatory local sendrecv",
        b"a=des:qos optional remote sendrecv",
        b"a=sendrecv",
        b"",
    ]
)

INVITE = (
    b"\r\n".join(
        [
            b"INVITE sip:+15551234567@ims.mnc001.mcc001.3gppnetwork.org;user=phone SIP/2.0",
            b"Via: SIP/2.0/UDP pcscf1.ims.mnc001.mcc001.3gppnetwork.org:5060;branch=z9hG4bKpc1.77f3c0d1",
            b"Via: SIP/2.0/UDP [2001:db8:10::5]:5060;rport=5060;branch=z9hG4bK.inv.58c1e2f3",
            b"Route: <sip:orig@scscf1.ims.mnc001.mcc001.3gppnetwork.org:6060;lr>",
            b"Record-Route: <sip:mo@pcscf1.ims.mnc001.mcc001.3gppnetwork.org:5060;lr>",
            b"Max-Forwards: 69",
            b'From: "Alice" <sip:+15550001111@ims.mnc001.mcc001.3gppnetwork.org>;tag=a73kszlfl',
            b"To: <tel:+15551234567>",
            b"Call-ID: 3c26700857ab-1b9@2001:db8:10::5",
            b"CSeq: 1 INVITE",
            b"Contact: <sip:+15550001111@[2001:db8:10::5]:5060>"
            b';+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.mmtel"'
            b';+sip.instance="<urn:gsma:imei:35209900-176148-0>"',
            b"P-Asserted-Identity: <sip:+15550001111@ims.mnc001.mcc001.3gppnetwork.org>, "
            b"<tel:+15550001111>",
            b"P-Access-Network-Info: 3GPP-E-UTRAN-FDD; utran-cell-id-3gpp=0010100010019B01",
            b"P-Charging-Vector: icid-value=pcscf1-9f8e7d6c5b4a;icid-generated-at=198.51.100.10;"
            b"orig-ioi=ims.mnc001.mcc001.3gppnetwork.org",
            b'Accept-Contact: *;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.mmtel"',
            b"P-Preferred-Service: urn:urn-7:3gpp-service.ims.icsi.mmtel",
            b"Allow: INVITE, ACK, OPTIONS, CANCEL, BYE, UPDATE, INFO, REFER, NOTIFY, MESSAGE, PRACK",
            b"Supported: 100rel, timer, precondition, replaces, histinfo",
            b"Session-Expires: 1800",
            b"Min-SE: 90",
            b"Accept: application/sdp, application/3gpp-ims+xml",
            b"User-Agent: Example VoLTE UE/4.2 (IMS 3GPP Rel-15)",
            b"Content-Type: application/sdp",
            b"Content-Length: 779",
            b"",
            b"",
        ]
    )
    + SDP
)

OK_REGISTER = b"\r\n".join(
    [
        b"SIP/2.0 200 OK",
        b"Via: SIP/2.0/UDP pcscf1.ims.mnc001.mcc001.3gppnetwork.org:5060;branch=z9hG4bKpc1.a8e0217c",
        b"Via: SIP/2.0/UDP [2001:db8:10::5]:5060;rport=5060;branch=z9hG4bK1734a2b5c",
        b"From: <sip:001010000012345@ims.mnc001.mcc001.3gppnetwork.org>;tag=4fa3e1c2",
        b"To: <sip:001010000012345@ims.mnc001.mcc001.3gppnetwork.org>;tag=9b2c11e7a0",
        b"Call-ID: 7b4c5d2e-9f01-4a6b-8c3d-2e1f0a9b8c7d",
        b"CSeq: 2 REGISTER",
        b"Contact: <sip:001010000012345@[2001:db8:10::5]:5060>;expires=3600"
        b';+sip.instance="<urn:gsma:imei:35209900-176148-0>";reg-id=1'
        b';+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.mmtel";audio',
        b"Contact: <sip:001010000012345@[2001:db8:10::77]:5060>;expires=1210"
        b';+sip.instance="<urn:gsma:imei:86091204-221334-1>";reg-id=1'
        b';+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.mmtel"',
        b"Contact: <sip:001010000012345@198.51.100.23:5062;transport=tcp>;expires=482"
        b';+sip.instance="<urn:uuid:2f1b6a3e-8c4d-4e5f-9a0b-1c2d3e4f5a6b>";reg-id=2',
        b"P-Associated-URI: <sip:+15550001111@ims.mnc001.mcc001.3gppnetwork.org>, "
        b"<tel:+15550001111>, <sip:alice@ims.mnc001.mcc001.3gppnetwork.org>",
        b"Service-Route: <sip:orig@scscf1.ims.mnc001.mcc001.3gppnetwork.org:6060;lr>",
        b"Path: <sip:term@pcscf1.ims.mnc001.mcc001.3gppnetwork.org:5060;lr>",
        b"Supported: path, gruu",
        b"Require: path",
        b"P-Charging-Function-Addresses: ccf=pri_ccf_address",
        b"Date: Tue, 14 Jan 2025 09:30:00 GMT",
        b"Server: imscore S-CSCF",
        b"Content-Length: 0",
        b"",
        b"",
    ]
)

RINGING = b"\r\n".join(
    [
        b"SIP/2.0 180 Ringing",
        b"Via: SIP/2.0/UDP pcscf1.ims.mnc001.mcc001.3gppnetwork.org:5060;branch=z9hG4bKpc1.77f3c0d1",
        b"Via: SIP/2.0/UDP [2001:db8:10::5]:5060;rport=5060;branch=z9hG4bK.inv.58c1e2f3",
        b"Record-Route: <sip:mt@pcscf2.ims.mnc001.mcc001.3gppnetwork.org:5060;lr>",
        b"Record-Route: <sip:mo@pcscf1.ims.mnc001.mcc001.3gppnetwork.org:5060;lr>",
        b'From: "Alice" <sip:+15550001111@ims.mnc001.mcc001.3gppnetwork.org>;tag=a73kszlfl',
        b"To: <tel:+15551234567>;tag=8321234356",
        b"Call-ID: 3c26700857ab-1b9@2001:db8:10::5",
        b"CSeq: 1 INVITE",
        b"Contact: <sip:+15551234567@[2001:db8:20::9]:5060>"
        b';+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.mmtel"',
        b"P-Asserted-Identity: <sip:+15551234567@ims.mnc001.mcc001.3gppnetwork.org>",
        b"Require: 100rel",
        b"RSeq: 1",
        b"Allow: INVITE, ACK, OPTIONS, CANCEL, BYE, UPDATE, INFO, REFER, NOTIFY, MESSAGE, PRACK",
        b"Content-Length: 0",
        b"",
        b"",
    ]
)

OPTIONS = b"\r\n".join(
    [
        b"OPTIONS sip:scscf1.ims.mnc001.mcc001.3gppnetwork.org:6060 SIP/2.0",
        b"Via: SIP/2.0/UDP 198.51.100.40:5060;branch=z9hG4bK.opt.0c9d8e7f",
        b"Max-Forwards: 70",
        b"From: <sip:ping@icscf1.ims.mnc001.mcc001.3gppnetwork.org>;tag=opt5521",
        b"To: <sip:scscf1.ims.mnc001.mcc001.3gppnetwork.org:6060>",
        b"Call-ID: opt-7715-1718972340@198.51.100.40",
        b"CSeq: 7715 OPTIONS",
        b"Content-Length: 0",
        b"",
        b"",
    ]
)


@dataclass(frozen=True)
class CorpusEntry:
    name: str
    data: bytes
    weight: int


#: The mix, weighted as an S-CSCF sees it: registrations (and their answers) and OPTIONS keep-alives
#: dominate; a call setup adds an INVITE and a provisional response.
CORPUS: tuple[CorpusEntry, ...] = (
    CorpusEntry("REGISTER (Digest AKA Authorization, Path)", REGISTER, 3),
    CorpusEntry("200 OK to REGISTER (3 Contacts, P-Associated-URI)", OK_REGISTER, 3),
    CorpusEntry("INVITE with SDP (Route, Record-Route, 2 Vias)", INVITE, 1),
    CorpusEntry("180 Ringing", RINGING, 1),
    CorpusEntry("OPTIONS", OPTIONS, 2),
)


class CorpusError(Exception):
    """The built-in corpus is broken, or the libraries disagree on it: no honest timing possible."""


def require(condition: object, message: str) -> None:
    """Like ``assert``, but also under ``python -O``."""
    if not condition:
        raise CorpusError(message)


def check_corpus(corpus: Sequence[CorpusEntry]) -> None:
    """Every line ends in CRLF and Content-Length is the body's length."""
    for entry in corpus:
        head, sep, body = entry.data.partition(b"\r\n\r\n")
        require(sep, f"{entry.name}: no empty line")
        require(b"\n" not in head.replace(b"\r\n", b""), f"{entry.name}: bare LF in headers")
        require(b"\r" not in head.replace(b"\r\n", b""), f"{entry.name}: bare CR in headers")
        lengths = [
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ]
        require(
            lengths == [str(len(body)).encode()],
            f"{entry.name}: Content-Length {lengths} but the body has {len(body)} octets",
        )


def weighted_batch(corpus: Sequence[CorpusEntry]) -> list[bytes]:
    """One pass of the mix, kinds interleaved (not grouped) so no kind runs hot in a row."""
    batch: list[bytes] = []
    remaining = {e.name: e.weight for e in corpus}
    while any(remaining.values()):
        for e in corpus:
            if remaining[e.name]:
                batch.append(e.data)
                remaining[e.name] -= 1
    return batch


# --------------------------------------------------------------------------------------------------
# The workloads. Each "read" function returns the same plain tuple for both libraries.
# --------------------------------------------------------------------------------------------------
def ims_parse_serialise(data: bytes) -> bytes:
    return ims.parse_datagram(data).to_bytes()  # type: ignore[union-attr]


def sm_parse_serialise(data: bytes) -> bytes:
    return bytes(sipmessage.Message.parse(data))


def ims_checked(data: bytes) -> bytes:
    """What imscore's transport does with every datagram: frame, check the framing headers."""
    msg = ims.parse_datagram(data)
    assert msg is not None
    msg.check_framing_headers()
    return msg.to_bytes()


def sm_checked(data: bytes) -> bytes:
    """The same headers touched through sipmessage's typed accessors."""
    msg = sipmessage.Message.parse(data)
    _ = (msg.via[0], msg.from_address, msg.to_address, msg.call_id, msg.cseq, msg.max_forwards)
    _ = msg.content_length
    return bytes(msg)


def ims_read(data: bytes) -> tuple[Any, ...]:
    msg = ims.parse_datagram(data)
    assert msg is not None
    to = msg.to
    cseq = msg.cseq
    auth = msg.authorization
    return (
        msg.top_via.branch,
        msg.from_.tag,
        str(to.uri),
        to.tag,
        msg.call_id,
        cseq.seq,
        cseq.method,
        [(str(c.uri), c.expires) for c in msg.contacts],
        auth[0].get("username") if auth else None,
        msg.to_bytes(),
    )


def sm_read(data: bytes) -> tuple[Any, ...]:
    msg = sipmessage.Message.parse(data)
    to = msg.to_address
    cseq = msg.cseq
    auth = msg.authorization
    contacts = []
    for c in msg.contact:
        expires = c.parameters.get("expires")
        contacts.append((str(c.uri), None if expires is None else int(expires)))
    return (
        msg.via[0].parameters.get("branch"),
        msg.from_address.parameters.get("tag"),
        str(to.uri),
        to.parameters.get("tag"),
        msg.call_id,
        cseq.sequence,
        cseq.method,
        contacts,
        auth.parameters.get("username") if auth is not None and auth.parameters else None,
        bytes(msg),
    )


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    imscore: Callable[[bytes], Any]
    sipmessage: Callable[[bytes], Any]


WORKLOADS = (
    Workload("parse_serialise", "(a) parse + serialise", ims_parse_serialise, sm_parse_serialise),
    Workload(
        "parse_check_serialise",
        "(c) parse + check Via/From/To/Call-ID/CSeq/Max-Forwards/Content-Length + serialise",
        ims_checked,
        sm_checked,
    ),
    Workload(
        "parse_read_serialise",
        "(b) parse + read registrar/proxy fields + serialise",
        ims_read,
        sm_read,
    ),
)


def check_same_reading(corpus: Sequence[CorpusEntry]) -> list[str]:
    """Both libraries must read the same values; returns notes on serialisation differences."""
    notes: list[str] = []
    for entry in corpus:
        mine = ims_read(entry.data)
        theirs = sm_read(entry.data)
        require(
            mine[:-1] == theirs[:-1],
            f"{entry.name}: the libraries read different values\n"
            f"  imscore:    {mine[:-1]!r}\n  sipmessage: {theirs[:-1]!r}",
        )
        require(mine[0] is not None and mine[4], f"{entry.name}: nothing was read")
        require(
            ims_parse_serialise(entry.data) == entry.data,
            f"{entry.name}: imscore does not serialise it back to its input bytes",
        )
        if sm_parse_serialise(entry.data) != entry.data:
            notes.append(f"sipmessage does not serialise {entry.name!r} back to its input bytes")
    return notes


def rate(fn: Callable[[bytes], Any], batch: Sequence[bytes], seconds: float) -> float:
    """Messages per second of ``fn`` over whole passes of ``batch`` for about ``seconds``."""
    gc.collect()
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for data in batch:
            fn(data)
        n += len(batch)
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def run_workload(workload: Workload, batch: Sequence[bytes], seconds: float, rounds: int) -> dict:
    """Interleave the two libraries in ``rounds`` rounds (order alternating); medians and ratio."""
    per_slice = seconds / (2 * rounds)
    rates: dict[str, list[float]] = {"imscore": [], "sipmessage": []}
    fns = {"imscore": workload.imscore, "sipmessage": workload.sipmessage}
    for r in range(rounds):
        order = ("imscore", "sipmessage") if r % 2 == 0 else ("sipmessage", "imscore")
        for lib in order:
            rates[lib].append(rate(fns[lib], batch, per_slice))
    ims_median = statistics.median(rates["imscore"])
    sm_median = statistics.median(rates["sipmessage"])
    # the ratio of each round's pair says how stable the ratio itself was during the run
    pair_ratios = [a / b for a, b in zip(rates["imscore"], rates["sipmessage"], strict=True)]
    return {
        "title": workload.title,
        "seconds_per_slice": per_slice,
        "rounds": rounds,
        "imscore": {"rates": rates["imscore"], "median": ims_median},
        "sipmessage": {"rates": rates["sipmessage"], "median": sm_median},
        "ratio": ims_median / sm_median,
        "round_ratios": pair_ratios,
    }


# --------------------------------------------------------------------------------------------------
# Correctness over the torture corpora
# --------------------------------------------------------------------------------------------------
#: sipmessage's typed accessor for each header it has one for (lower-case header name -> property).
SM_ACCESSORS = {
    "accept": "accept",
    "authorization": "authorization",
    "call-id": "call_id",
    "contact": "contact",
    "content-language": "content_language",
    "content-length": "content_length",
    "content-type": "content_type",
    "cseq": "cseq",
    "date": "date",
    "expires": "expires",
    "from": "from_address",
    "in-reply-to": "in_reply_to",
    "max-forwards": "max_forwards",
    "min-expires": "min_expires",
    "proxy-authenticate": "proxy_authenticate",
    "proxy-authorization": "proxy_authorization",
    "proxy-require": "proxy_require",
    "record-route": "record_route",
    "require": "require",
    "route": "route",
    "server": "server",
    "subject": "subject",
    "supported": "supported",
    "to": "to_address",
    "unsupported": "unsupported",
    "user-agent": "user_agent",
    "via": "via",
    "www-authenticate": "www_authenticate",
}

CORPORA = (
    # (label, directory, globs of .dat files in it, index file), relative to the corpus root. A file
    # in variants/ takes the verdict of the case its name starts with (baddn.crlf-fixed -> baddn).
    ("RFC 4475 torture messages", "rfc4475", ("*.dat", "variants/*.dat"), "rfc4475/INDEX.tsv"),
    (
        "RFC 5118 IPv6 torture messages (CRLF copies)",
        "rfc5118/ersip-crlf",
        ("*.dat",),
        "rfc5118/INDEX.tsv",
    ),
)


@dataclass
class Verdict:
    accepted: bool
    crash: bool = False
    detail: str = ""
    #: for an accepted message: did serialising give back the input (a prefix of the datagram)?
    exact: bool | None = None


def judge_imscore(data: bytes) -> Verdict:
    try:
        msg = ims.parse_datagram(data)
        if msg is None:
            return Verdict(False, detail="taken for a keep-alive")
        msg.validate()
    except ims.SipError as error:
        return Verdict(False, detail=f"{type(error).__name__}({error.status}): {error.reason}")
    except Exception as error:  # any other exception is the finding
        where = traceback.extract_tb(error.__traceback__)[-1]
        return Verdict(
            False,
            crash=True,
            detail=f"{type(error).__name__}: {error} at {Path(where.filename).name}:{where.lineno}",
        )
    try:
        out = msg.to_bytes()
    except Exception as error:
        return Verdict(True, crash=True, detail=f"to_bytes(): {type(error).__name__}: {error}")
    return Verdict(True, exact=data.lstrip(b"\r\n").startswith(out))


def judge_sipmessage(data: bytes) -> Verdict:
    try:
        msg = sipmessage.Message.parse(data)
        names = msg.headers.keys()  # sipmessage's Headers is not a mapping
        for name in names:
            prop = SM_ACCESSORS.get(name.lower())
            if prop is not None:
                getattr(msg, prop)
    except Exception as error:  # a rejection, for sipmessage
        # ValueError is what sipmessage documents; anything else is counted as a crash too
        return Verdict(
            False,
            crash=not isinstance(error, ValueError),
            detail=f"{type(error).__name__}: {error}",
        )
    try:
        out = bytes(msg)
    except Exception as error:
        return Verdict(True, crash=True, detail=f"bytes(): {type(error).__name__}: {error}")
    return Verdict(True, exact=data.startswith(out))


JUDGES = {"imscore": judge_imscore, "sipmessage": judge_sipmessage}


@dataclass
class LibraryScore:
    valid: int = 0
    valid_accepted: int = 0
    invalid: int = 0
    invalid_rejected: int = 0
    crashes: list[str] = field(default_factory=list)
    accepted: int = 0
    exact: int = 0
    wrong: list[dict[str, str]] = field(default_factory=list)


def corpus_root() -> Path | None:
    env = os.environ.get("IMSCORE_CORPUS")
    if env:
        return Path(env)
    for candidate in (
        Path(__file__).resolve().parent.parent.parent / "shared" / "corpus",
        Path("/work/shared/corpus"),
    ):
        if candidate.is_dir():
            return candidate
    return None


def run_correctness(root: Path | None) -> dict:
    out: dict[str, Any] = {"root": str(root) if root else None, "corpora": [], "skipped": []}
    if root is None or not root.is_dir():
        out["skipped"].append(
            f"corpus not found ({root or 'tried ../shared/corpus and /work/shared/corpus'}); "
            "set IMSCORE_CORPUS to its path"
        )
        return out
    for label, sub, globs, index_name in CORPORA:
        directory = root / sub
        index = root / index_name
        if not directory.is_dir() or not index.is_file():
            out["skipped"].append(f"{label}: {directory} or {index} is missing")
            continue
        with index.open(newline="", encoding="utf-8") as f:
            rows = {row["name"]: row for row in csv.DictReader(f, delimiter="\t")}
        scores = {lib: LibraryScore() for lib in JUDGES}
        cases: list[dict[str, Any]] = []
        skipped: list[str] = []
        paths = [path for pattern in globs for path in sorted(directory.glob(pattern))]
        for path in paths:
            name = path.relative_to(directory).with_suffix("").as_posix()
            row = rows.get(path.name.split(".")[0])
            if row is None or row["verdict"] not in ("valid", "invalid"):
                why = "not in INDEX.tsv" if row is None else f"verdict {row['verdict']!r}"
                skipped.append(f"{name} ({why})")
                continue
            data = path.read_bytes()
            valid = row["verdict"] == "valid"
            handling = row.get("expected_handling", "")
            case: dict[str, Any] = {"name": name, "verdict": row["verdict"]}
            for lib, judge in JUDGES.items():
                v = judge(data)
                s = scores[lib]
                case[lib] = {"accepted": v.accepted, "crash": v.crash, "detail": v.detail}
                if v.accepted:
                    s.accepted += 1
                    s.exact += bool(v.exact)
                    case[lib]["round_trip_exact"] = v.exact
                if v.crash:
                    s.crashes.append(f"{name}: {v.detail}")
                    if lib == "imscore":
                        print(f"!!! imscore CRASHED on {name}: {v.detail}", file=sys.stderr)
                if valid:
                    s.valid += 1
                    ok = v.accepted and not (lib == "imscore" and v.crash)
                    s.valid_accepted += ok
                else:
                    s.invalid += 1
                    ok = not v.accepted and not (lib == "imscore" and v.crash)
                    s.invalid_rejected += ok
                if not ok:
                    what = "accepted" if v.accepted else ("CRASHED" if v.crash else "rejected")
                    s.wrong.append(
                        {
                            "name": name,
                            "verdict": row["verdict"],
                            "outcome": what,
                            "detail": v.detail,
                            "index_says": handling,
                        }
                    )
            cases.append(case)
        out["corpora"].append(
            {
                "label": label,
                "directory": str(directory),
                "skipped_files": skipped,
                "scores": {lib: vars(s) for lib, s in scores.items()},
                "cases": cases,
            }
        )
    return out


# --------------------------------------------------------------------------------------------------
# Profiling imscore's side
# --------------------------------------------------------------------------------------------------
def profile_imscore(batch: Sequence[bytes], seconds: float, top: int) -> str:
    out = io.StringIO()
    for workload in WORKLOADS:
        profiler = cProfile.Profile()
        n = 0
        deadline = time.perf_counter() + seconds
        profiler.enable()
        while time.perf_counter() < deadline:
            for data in batch:
                workload.imscore(data)
            n += len(batch)
        profiler.disable()
        for sort in ("cumulative", "tottime"):
            out.write(f"\n=== imscore {workload.title}: {n} messages, top {top} by {sort} ===\n")
            stats = pstats.Stats(profiler, stream=out)
            stats.strip_dirs().sort_stats(sort).print_stats(top)
    return out.getvalue()


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "imscore": _version("imscore"),
        "sipmessage": _version("sipmessage"),
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def print_report(report: dict[str, Any], goal: float) -> None:
    env = report["environment"]
    print(
        f"imscore.sip parse benchmark, {env['date']}: {env['implementation']} {env['python']} on "
        f"{env['platform']}, {env['cpus']} CPUs; imscore {env['imscore']}, "
        f"sipmessage {env['sipmessage']}"
    )
    print("Only the ratios mean anything: absolute rates move with the machine's load.\n")
    print("Corpus mix (one pass):")
    for item in report["corpus"]:
        print(f"  {item['weight']:>2} x {item['name']:<52} {item['octets']:>5} octets")
    total = sum(i["weight"] for i in report["corpus"])
    print(f"  {total:>2} messages per pass\n")
    for note in report["notes"]:
        print(f"note: {note}")
    if report["notes"]:
        print()

    for result in report["workloads"].values():
        print(
            f"{result['title']}: {result['rounds']} rounds of "
            f"{result['seconds_per_slice']:.2f} s per library, interleaved"
        )
        print(f"  {'round':<8}{'imscore msg/s':>16}{'sipmessage msg/s':>19}{'ratio':>9}")
        rows = zip(
            result["imscore"]["rates"],
            result["sipmessage"]["rates"],
            result["round_ratios"],
            strict=True,
        )
        for i, (a, b, r) in enumerate(rows, 1):
            print(f"  {i:<8}{a:>16,.0f}{b:>19,.0f}{r:>8.2f}x")
        a = result["imscore"]["median"]
        b = result["sipmessage"]["median"]
        met = "met" if result["ratio"] >= goal else "NOT met"
        print(
            f"  {'median':<8}{a:>16,.0f}{b:>19,.0f}{result['ratio']:>8.2f}x"
            f"   (goal >= {goal:g}x: {met})\n"
        )

    correctness = report["correctness"]
    for why in correctness["skipped"]:
        print(f"correctness: skipped: {why}")
    for corpus in correctness["corpora"]:
        scores = corpus["scores"]
        print(f"{corpus['label']} ({corpus['directory']})")
        for skipped in corpus["skipped_files"]:
            print(f"  skipped {skipped}")
        libs = list(scores)
        print(f"  {'':<34}" + "".join(f"{lib:>14}" for lib in libs))
        rows_out = [
            ("valid accepted", lambda s: f"{s['valid_accepted']}/{s['valid']}"),
            ("invalid rejected", lambda s: f"{s['invalid_rejected']}/{s['invalid']}"),
            ("crashes (unexpected exceptions)", lambda s: str(len(s["crashes"]))),
            ("accepted and serialised unchanged", lambda s: f"{s['exact']}/{s['accepted']}"),
        ]
        for title, cell in rows_out:
            print(f"  {title:<34}" + "".join(f"{cell(scores[lib]):>14}" for lib in libs))
        for lib in libs:
            s = scores[lib]
            for crash in s["crashes"]:
                loud = "!!! " if lib == "imscore" else ""
                print(f"  {loud}{lib} crash: {crash}")
            if not s["wrong"]:
                print(f"  {lib}: no case wrong")
                continue
            print(f"  {lib} got wrong:")
            for w in s["wrong"]:
                print(f"    {w['name']:<28} {w['verdict']:<8} {w['outcome']:<9} {w['detail'][:70]}")
                if w["verdict"] == "invalid" and w["outcome"] == "accepted":
                    print(f"    {'':<28} INDEX.tsv: {w['index_says'][:80]}")
        print()
    print("sipmessage: any exception from parsing or from the typed accessors of the headers")
    print("present counts as a rejection; exceptions other than ValueError are also listed as")
    print("crashes. imscore: rejected means SipError from parse_datagram() or validate().")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="timed seconds per workload, shared by both libraries and all rounds (default 20)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds per workload (default 5)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    parser.add_argument("--goal", type=float, default=3.0, help="ratio to flag as met (default 3)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile imscore's side of both workloads with cProfile instead of timing them",
    )
    parser.add_argument("--top", type=int, default=15, help="rows per profile table (default 15)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1:
        parser.error("--seconds must be positive and --rounds at least 1")

    check_corpus(CORPUS)
    batch = weighted_batch(CORPUS)

    if args.profile:
        print(profile_imscore(batch, max(args.seconds / 4, 1.0), args.top))
        return 0

    if sipmessage is None:
        print("sipmessage is not installed: python3 -m pip install -e '.[bench]'", file=sys.stderr)
        return 2

    notes = check_same_reading(CORPUS)
    report: dict[str, Any] = {
        "environment": environment(),
        "corpus": [{"name": e.name, "weight": e.weight, "octets": len(e.data)} for e in CORPUS],
        "notes": notes,
        "goal": args.goal,
        "workloads": {},
    }
    for workload in WORKLOADS:
        report["workloads"][workload.key] = run_workload(workload, batch, args.seconds, args.rounds)
    report["correctness"] = run_correctness(corpus_root())

    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print_report(report, args.goal)
    crashed = any(c["scores"]["imscore"]["crashes"] for c in report["correctness"]["corpora"])
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
