#!/usr/bin/env python3
"""What the authenticator's anti-replay, anti-guessing and AKA bookkeeping costs, in process.

Usage::

    python3 bench/auth_state_bench.py [--nonces N] [--challenges N] [--json]

It reports, with no sockets:

* ``nonce_entry_bytes``: the bytes :mod:`tracemalloc` sees per entry of the nonce-count table
  (:class:`~imscore.auth.digest.NonceCounter`) after ``--nonces`` nonces were used once each;
* ``limiter_entry_bytes``: the bytes per failed authentication kept by the failure limiter, each
  failure from its own IMPI and address (the worst case: every key is new);
* ``aka_sqn_steps``: how many SEQ steps the SQN of one AKA subscriber moved after ``--challenges``
  unauthenticated challenges in a burst (before issue 15: one per challenge);
* ``challenge_us`` for a known Digest user, an unknown one (``unknown_user_status: 401``), a known
  AKA user (vectors re-sent) and an unknown AKA IMPI; and ``check_us`` for a wrong Digest answer of
  a known and of an unknown user: the timing an attacker could compare.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
import tracemalloc
from collections.abc import Callable

from imscore.auth.aka import IND_BITS
from imscore.auth.digest import NonceCounter, credentials
from imscore.registrar.authenticator import Authenticator
from imscore.registrar.failures import FailureLimiter, FailureLimits
from imscore.sip import AuthHeader, Request
from imscore.subscribers import demo_subscribers_path, load_subscribers

DOMAIN = "ims.example.test"
BOB = "bob@ims.example.test"
CAROL = "001010123456789@ims.mnc001.mcc001.3gppnetwork.org"


def _bytes_per(make: Callable[[int], None], count: int) -> float:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    make(count)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / count


def nonce_entry_bytes(count: int) -> float:
    counter = NonceCounter(per_owner=None, max_nonces=count + 1)
    nonces = [secrets.token_urlsafe(32) for _ in range(count)]

    def fill(n: int) -> None:
        for i in range(n):
            counter.use(nonces[i], 1, issued=1000.0 + i / n, now=1001.0, owner=BOB)

    return _bytes_per(fill, count)


def limiter_entry_bytes(count: int) -> float:
    limiter = FailureLimiter(FailureLimits(max_entries=count + 1, per_impi=5))
    keys = [(f"user{i}@{DOMAIN}", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}") for i in range(count)]

    def fill(n: int) -> None:
        for impi, source in keys[:n]:
            limiter.failed(impi, source, 1000.0)

    return _bytes_per(fill, count)


def _request(authorization: str | None = None) -> Request:
    headers: list[tuple[str, object]] = [
        ("Via", f"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{secrets.token_hex(8)}"),
        ("From", f"<sip:{BOB}>;tag=t"),
        ("To", f"<sip:{BOB}>"),
        ("Call-ID", "bench@test"),
        ("CSeq", "1 REGISTER"),
    ]
    if authorization:
        headers.append(("Authorization", authorization))
    return Request("REGISTER", f"sip:{DOMAIN}", headers)


def _offer(value: str | None) -> AuthHeader:
    assert value is not None
    return Request("REGISTER", f"sip:{DOMAIN}", [("WWW-Authenticate", value)]).www_authenticate[0]


def _us(call: Callable[[], object], rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        call()
    return (time.perf_counter() - start) / rounds * 1e6


def run(nonces: int, challenges: int) -> dict[str, object]:
    subscribers = load_subscribers(demo_subscribers_path())
    bob, carol = subscribers.by_impi(BOB), subscribers.by_impi(CAROL)
    assert bob is not None and carol is not None and carol.aka is not None
    auth = Authenticator(
        DOMAIN, ("aka", "digest"), limits=FailureLimits(per_impi_source=0, per_source=0)
    )
    now = 1000.0
    for _ in range(challenges):
        auth.challenge_for(carol, now)
    last = auth.sqn_store.last(CAROL)
    assert last is not None
    steps = (last >> IND_BITS) - (carol.aka.sqn >> IND_BITS)
    request = _request()
    rounds = 2000
    wrong = credentials(
        _offer(auth.challenge_for(bob, now).challenge),
        username=BOB, password="guess", method="REGISTER", uri=f"sip:{DOMAIN}",
    )  # fmt: skip
    wrong_request = _request(wrong)
    wrong_unknown = wrong.replace(BOB, "mallory@ims.example.test")
    unknown_request = _request(wrong_unknown)
    timings = {
        "challenge_us_known_digest": _us(lambda: auth.challenge_for(bob, now), rounds),
        "challenge_us_unknown_digest": _us(
            lambda: auth.unknown_user(request, None, "mallory@ims.example.test", now), rounds
        ),
        "challenge_us_known_aka_resent": _us(lambda: auth.challenge_for(carol, now), rounds),
        "challenge_us_unknown_aka": _us(
            lambda: auth.unknown_user(request, None, "001019999@ims.mnc001.mcc001.3gppnetwork.org", now),
            rounds,
        ),
        "check_us_known_wrong": _us(
            lambda: auth.check(wrong_request, wrong_request.authorization[0], bob, now), rounds
        ),
        "check_us_unknown_wrong": _us(
            lambda: auth.unknown_user(
                unknown_request, unknown_request.authorization[0], "mallory@ims.example.test", now
            ),
            rounds,
        ),
    }
    return {
        "nonces": nonces,
        "nonce_entry_bytes": round(nonce_entry_bytes(nonces), 1),
        "limiter_entry_bytes": round(limiter_entry_bytes(nonces), 1),
        "challenges": challenges,
        "aka_sqn_steps": steps,
        **{k: round(v, 1) for k, v in timings.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nonces", type=int, default=100_000)
    parser.add_argument("--challenges", type=int, default=5_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.nonces, args.challenges)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:32} {value}")


if __name__ == "__main__":
    main()
