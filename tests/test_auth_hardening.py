"""Issue 15, authentication: no Digest downgrade, no replay once state is gone, unknown users
challenged alike, a bounded AKA SQN under unauthenticated REGISTERs, and password guessing limited
and logged. Over real loopback UDP unless the point is the authenticator's own bookkeeping."""

from __future__ import annotations

import dataclasses
import logging
import random
import secrets
from collections.abc import Iterator

import pytest
from sipua import Caller, Phone
from test_registrar import AKA_IMPI, AKA_IMPU, ALICE, BOB, DOMAIN, OP, SQN, K, Ue, _empty_auth

from imscore.auth.aka import IND_BITS, UeSim
from imscore.auth.digest import NonceCounter, credentials, digest_response
from imscore.auth.milenage import Milenage
from imscore.profile import PolicyChoice, Profile, ProfileError, load_profile, profile_from_data
from imscore.registrar.authenticator import (
    AKA_VECTORS_PER_IMPI,
    LOCKED_OUT,
    Authenticator,
    AuthOutcome,
)
from imscore.registrar.failures import FailureLimiter, FailureLimits, FailureLog
from imscore.sip import AuthHeader, Request, Response
from imscore.subscribers import Subscriber, demo_subscribers_path, load_subscribers
from imscore.testing import RunningServer, start_server

RURI = f"sip:{DOMAIN}"


def profile(auth: str = "digest-or-aka", unknown: int | None = None, **options: object) -> Profile:
    base = load_profile("default")
    policies = dict(base.policies)
    policies["auth"] = PolicyChoice(auth, dict(options))  # type: ignore[arg-type]
    changes: dict[str, object] = {"policies": policies}
    if unknown is not None:
        changes["registrar"] = dataclasses.replace(base.registrar, unknown_user_status=unknown)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def sha256_server() -> Iterator[RunningServer]:
    running = start_server(profile(digest_algorithm="SHA-256"), transports=("udp",))
    try:
        yield running
    finally:
        running.stop()


def answer(
    offered: AuthHeader,
    impi: str,
    password: str,
    *,
    algorithm: str | None,
    method: str = "REGISTER",
    uri: str = RURI,
) -> str:
    """Credentials for ``offered`` computed with ``algorithm`` (``None``: the parameter left out,
    which means MD5), whatever the challenge asked for."""
    nonce = offered.get("nonce") or ""
    cnonce = secrets.token_hex(8)
    response = digest_response(
        algorithm=algorithm or "MD5", username=impi, realm=DOMAIN, password=password,
        method=method, uri=uri, nonce=nonce, nc=1, cnonce=cnonce, qop="auth",
    )  # fmt: skip
    value = (
        f'Digest username="{impi}", realm="{DOMAIN}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", cnonce="{cnonce}", qop=auth, nc=00000001'
    )
    return value + (f", algorithm={algorithm}" if algorithm else "")


# --------------------------------------------------------------------------------------------------
# item 2: the algorithm of the challenge, or nothing


@pytest.mark.parametrize("algorithm", ["MD5", "MD5-sess", None])
def test_a_sha256_registrar_does_not_take_md5_credentials(
    sha256_server: RunningServer, algorithm: str | None
) -> None:
    bob = Ue(sha256_server, *BOB)
    try:
        first = bob.send(bob.request())
        (offered,) = first.www_authenticate
        assert offered.get("algorithm") == "SHA-256"
        downgraded = bob.send(
            bob.request(authorization=answer(offered, BOB[0], BOB[1], algorithm=algorithm))
        )
        assert downgraded.status == 401  # a fresh challenge, never a registration
        assert [c.get("algorithm") for c in downgraded.www_authenticate] == ["SHA-256"]
        store = sha256_server.server.store
        assert store is not None and sha256_server.call(store.load(BOB[2])) == []
        (again,) = downgraded.www_authenticate
        good = bob.send(bob.request(authorization=answer(again, BOB[0], BOB[1], algorithm="SHA-256")))
        assert good.status == 200
    finally:
        bob.close()


def test_a_nonce_is_bound_to_the_algorithm_it_was_issued_for() -> None:
    """Even where another algorithm were accepted, a nonce issued for SHA-256 does not verify
    credentials computed with MD5 (the algorithm is part of the nonce's MAC)."""
    subscriber = _subscriber(BOB[0])
    secret = secrets.token_bytes(32)
    sha = Authenticator(DOMAIN, ("digest",), secret=secret, digest_algorithm="SHA-256")
    md5 = Authenticator(DOMAIN, ("digest",), secret=secret, digest_algorithm="MD5")
    offered = _offered(sha.challenge_for(subscriber, 1000.0).challenge)
    request = _register(answer(offered, BOB[0], BOB[1], algorithm="MD5"))
    credentials_ = request.authorization[0]
    assert md5.check(request, credentials_, subscriber, 1001.0).outcome is AuthOutcome.CHALLENGE
    good = _register(answer(offered, BOB[0], BOB[1], algorithm="SHA-256"))
    assert sha.check(good, good.authorization[0], subscriber, 1001.0).outcome is AuthOutcome.OK


def test_the_proxy_407_takes_no_downgrade_either(sha256_server: RunningServer) -> None:
    alice = Phone(sha256_server.address("udp"), "app")
    bob = Caller(sha256_server.address("udp"), "bob", from_uri=BOB[2])
    try:
        alice.send(alice._register_request(None, 600, None, None))
        first = alice.expect("final")
        assert isinstance(first, Response)
        (offered,) = first.www_authenticate
        alice.send(
            alice._register_request(
                answer(offered, ALICE[0], ALICE[1], algorithm="SHA-256"), 600, None, None
            )
        )
        assert alice.expect("final").status == 200  # type: ignore[union-attr]
        bob.send(bob.request("MESSAGE", ALICE[2], cseq=1))
        challenge = bob.expect("407")
        assert isinstance(challenge, Response)
        (offered,) = challenge.proxy_authenticate
        for cseq, algorithm in enumerate(("MD5", None, "MD5-sess"), start=2):
            wrong = answer(offered, BOB[0], BOB[1], algorithm=algorithm, method="MESSAGE", uri=ALICE[2])
            bob.send(
                bob.request("MESSAGE", ALICE[2], cseq=cseq, headers=[("Proxy-Authorization", wrong)])
            )
            again = bob.expect("final")
            assert isinstance(again, Response) and again.status == 407, algorithm
            assert [c.get("algorithm") for c in again.proxy_authenticate] == ["SHA-256"]
        assert alice.quiet("MESSAGE", 0.3)  # nothing was forwarded
        good = answer(offered, BOB[0], BOB[1], algorithm="SHA-256", method="MESSAGE", uri=ALICE[2])
        bob.send(bob.request("MESSAGE", ALICE[2], cseq=9, headers=[("Proxy-Authorization", good)]))
        delivered = alice.expect("MESSAGE")
        assert isinstance(delivered, Request)
    finally:
        alice.close()
        bob.close()


# --------------------------------------------------------------------------------------------------
# item 3: replay once other nonces have come and gone


def _subscriber(impi: str) -> Subscriber:
    found = load_subscribers(demo_subscribers_path()).by_impi(impi)
    assert found is not None
    return found


def _offered(value: str | None) -> AuthHeader:
    assert value is not None
    request = _register(None, extra=[("WWW-Authenticate", value)])
    (offered,) = request.www_authenticate
    return offered


def _register(
    authorization: str | None,
    *,
    via_host: str = "192.0.2.1",
    extra: list[tuple[str, object]] | None = None,
    impu: str = BOB[2],
) -> Request:
    headers: list[tuple[str, object]] = [
        ("Via", f"SIP/2.0/UDP {via_host}:5060;branch=z9hG4bK{secrets.token_hex(8)}"),
        ("Max-Forwards", 70),
        ("From", f"<{impu}>;tag=t"),
        ("To", f"<{impu}>"),
        ("Call-ID", f"{secrets.token_hex(6)}@test"),
        ("CSeq", "1 REGISTER"),
    ]
    if authorization is not None:
        headers.append(("Authorization", authorization))
    headers.extend(extra or [])
    return Request("REGISTER", RURI, headers)


def test_a_replay_after_20000_other_nonces_is_refused(server_with_clock: tuple) -> None:
    running, clock = server_with_clock
    alice = Ue(running, *ALICE)
    try:
        first = alice.send(alice.request())
        (offered,) = first.www_authenticate
        auth = credentials(offered, username=ALICE[0], password=ALICE[1], method="REGISTER", uri=RURI)
        assert alice.send(alice.request(authorization=auth)).status == 200
        authenticator = running.server.registrar.authenticator  # type: ignore[union-attr]
        bob = _subscriber(BOB[0])

        async def others() -> int:  # 20,000 nonces issued and used, on the server's own loop
            used = 0
            for _ in range(20_000):
                clock[0] += 0.005
                made = _offered(authenticator.challenge_for(bob, clock[0]).challenge)
                value = credentials(made, username=BOB[0], password=BOB[1], method="REGISTER", uri=RURI)
                request = _register(value)
                result = authenticator.check(request, request.authorization[0], bob, clock[0])
                used += result.outcome is AuthOutcome.OK
            return used

        assert running.call(others()) >= 64  # (one IMPI holds at most 64 live nonces)
        replayed = alice.send(alice.request(authorization=auth))
        assert replayed.status == 401
    finally:
        alice.close()


def test_a_nonce_whose_state_is_gone_is_stale_not_accepted(server_with_clock: tuple) -> None:
    """As after a restart with the same nonce secret (a worker of ``--workers`` started again):
    the nonce still has a good MAC, but its nonce-counts are not known here any more."""
    running, clock = server_with_clock
    alice = Ue(running, *ALICE)
    try:
        (offered,) = alice.send(alice.request()).www_authenticate
        auth = credentials(offered, username=ALICE[0], password=ALICE[1], method="REGISTER", uri=RURI)
        assert alice.send(alice.request(authorization=auth)).status == 200
        authenticator = running.server.registrar.authenticator  # type: ignore[union-attr]
        authenticator.counter = NonceCounter(authenticator.nonces.lifetime)  # the state is gone
        clock[0] += 1
        replayed = alice.send(alice.request(authorization=auth))
        assert replayed.status == 401
        (fresh,) = replayed.www_authenticate
        assert fresh.get("stale") == "true" and fresh.get("nonce") != offered.get("nonce")
        again = credentials(fresh, username=ALICE[0], password=ALICE[1], method="REGISTER", uri=RURI)
        assert alice.send(alice.request(authorization=again)).status == 200
    finally:
        alice.close()


def test_a_full_nonce_table_answers_stale_and_does_not_forget() -> None:
    subscriber = _subscriber(BOB[0])
    auth = Authenticator(DOMAIN, ("digest",), counter=NonceCounter(max_nonces=2, per_owner=None))
    values = []
    for _ in range(3):
        offered = _offered(auth.challenge_for(subscriber, 1000.0).challenge)
        values.append(
            credentials(offered, username=BOB[0], password=BOB[1], method="REGISTER", uri=RURI)
        )
    results = []
    for value in values:
        request = _register(value)
        results.append(auth.check(request, request.authorization[0], subscriber, 1001.0))
    assert [r.outcome for r in results] == [AuthOutcome.OK, AuthOutcome.OK, AuthOutcome.CHALLENGE]
    assert _offered(results[2].challenge).get("stale") == "true"
    replay = _register(values[0])
    assert auth.check(replay, replay.authorization[0], subscriber, 1002.0).outcome is (
        AuthOutcome.CHALLENGE
    )


@pytest.fixture
def server_with_clock() -> Iterator[tuple[RunningServer, list[float]]]:
    clock = [1_700_000_000.0]
    running = start_server("default", transports=("udp",), clock=lambda: clock[0])
    try:
        yield running, clock
    finally:
        running.stop()


# --------------------------------------------------------------------------------------------------
# item 5: what an unknown user learns


def _shape(response: Response) -> tuple[object, ...]:
    """What a 401 says about the user: status, reason, header names, challenge parameters and
    the nonce's length."""
    (offered,) = response.www_authenticate
    names = tuple(sorted(field.key for field in response.headers))
    params = tuple(sorted((k, v) for k, v in offered.params if k != "nonce"))
    return response.status, response.reason, names, params, len(offered.get("nonce") or "")


def test_unknown_users_are_challenged_like_known_ones_and_never_registered() -> None:
    running = start_server(profile(unknown=401), transports=("udp",))
    known = Ue(running, *BOB)
    nobody = Ue(running, "mallory@ims.example.test", "guess", "sip:mallory@ims.example.test")
    try:
        assert _shape(known.send(known.request())) == _shape(nobody.send(nobody.request()))
        for _ in range(3):
            (k_offer,) = known.send(known.request()).www_authenticate
            (n_offer,) = nobody.send(nobody.request()).www_authenticate
            known_wrong = known.send(
                known.request(authorization=answer(k_offer, BOB[0], "guess", algorithm="MD5"))
            )
            unknown = nobody.send(
                nobody.request(authorization=answer(n_offer, nobody.impi, "guess", algorithm="MD5"))
            )
            assert _shape(known_wrong) == _shape(unknown)
            assert unknown.status == 401
        # an answer with the nonce of another user's challenge: still not in
        (k_offer,) = known.send(known.request()).www_authenticate
        stolen = answer(k_offer, nobody.impi, "guess", algorithm="MD5")
        assert nobody.send(nobody.request(authorization=stolen)).status == 401
        # malformed credentials: the same 400 as a known user's
        bad_known = answer(k_offer, BOB[0], "x", algorithm="MD5").replace(f'uri="{RURI}"', 'uri="sip:x"')
        bad_unknown = answer(n_offer, nobody.impi, "x", algorithm="MD5").replace(
            f'uri="{RURI}"', 'uri="sip:x"'
        )
        first = known.send(known.request(authorization=bad_known))
        second = nobody.send(nobody.request(authorization=bad_unknown))
        assert (
            (first.status, first.reason)
            == (second.status, second.reason)
            == (
                400,
                "Digest uri does not match the Request-URI",
            )
        )
    finally:
        known.close()
        nobody.close()
        running.stop()


def test_unknown_users_get_404_by_default() -> None:
    running = start_server("default", transports=("udp",))
    nobody = Ue(running, "mallory@ims.example.test", "guess", "sip:mallory@ims.example.test")
    try:
        response = nobody.send(nobody.request())
        assert response.status == 404
        assert response.reason == "Unknown user: no public identity sip:mallory@ims.example.test"
    finally:
        nobody.close()
        running.stop()


def test_an_unknown_3gpp_impi_gets_aka_challenges_shaped_as_a_known_ones() -> None:
    auth = Authenticator(DOMAIN, ("aka", "digest"))
    carol = _subscriber(AKA_IMPI)
    unknown_impi = "001019999999999@ims.mnc001.mcc001.3gppnetwork.org"
    request = _register(None, impu="tel:+15550000000")
    known = [auth.challenge_for(carol, 1000.0 + i).challenge for i in range(6)]
    made = [auth.unknown_user(request, None, unknown_impi, 1000.0 + i).challenge for i in range(6)]
    for k, u in zip(known, made, strict=True):
        ko, uo = _offered(k), _offered(u)
        assert sorted(k for k, _ in ko.params) == sorted(k for k, _ in uo.params)
        assert ko.get("algorithm") == uo.get("algorithm")
        assert len(ko.get("nonce") or "") == len(uo.get("nonce") or "")
    distinct = [len({_offered(c).get("nonce") for c in group}) for group in (known, made)]
    assert distinct == [AKA_VECTORS_PER_IMPI, AKA_VECTORS_PER_IMPI]
    # with both schemes allowed a name@domain IMPI is challenged with Digest
    digest = auth.unknown_user(request, None, "mallory@ims.example.test", 1000.0).challenge
    assert _offered(digest).get("algorithm") == "MD5"


def test_unknown_user_status_401_is_a_profile_value(tmp_path: object) -> None:
    data = {"domains": ["ims.example.test"], "registrar": {"unknown_user_status": 401}}
    loaded = profile_from_data(data, source="x.yaml", default_name="x")
    assert loaded.registrar.unknown_user_status == 401
    with pytest.raises(ProfileError) as info:
        profile_from_data(
            {"domains": ["ims.example.test"], "registrar": {"unknown_user_status": 200}},
            source="x.yaml",
            default_name="x",
        )
    assert str(info.value) == (
        "x.yaml: key 'registrar.unknown_user_status': expected one of: 401, 403, 404, got 200 (int)"
    )


# --------------------------------------------------------------------------------------------------
# item 10: the AKA SQN under unauthenticated REGISTERs


def test_unauthenticated_aka_challenges_move_the_sqn_a_bounded_amount(tmp_path: object) -> None:
    running = start_server("default", transports=("udp",), store_url=f"sqlite:{tmp_path}/s.db")
    ue = Ue(running, AKA_IMPI, None, AKA_IMPU)
    try:
        authenticator = running.server.registrar.authenticator  # type: ignore[union-attr]
        nonces = set()
        for _ in range(300):
            challenge = ue.send(ue.request(extra=[("Authorization", _empty_auth(AKA_IMPI))]))
            (offered,) = challenge.www_authenticate
            nonces.add(offered.get("nonce"))

        async def last_sqn() -> int | None:  # (the SQLite connection belongs to the server's thread)
            return authenticator.sqn_store.last(AKA_IMPI)

        last = running.call(last_sqn())
        assert last is not None
        assert (last >> IND_BITS) - (SQN >> IND_BITS) <= AKA_VECTORS_PER_IMPI  # 300 would be 300
        assert len(nonces) == AKA_VECTORS_PER_IMPI
        assert authenticator.vectors_pending(AKA_IMPI) == AKA_VECTORS_PER_IMPI
        # the device answers the challenge it got last: registered
        sim = UeSim(Milenage(K, op=OP), sqn_ms=SQN - 32)
        reply = sim.respond(offered.get("nonce") or "")
        assert reply.auts is None
        value = credentials(
            offered, username=AKA_IMPI, password=reply.password(1), method="REGISTER", uri=RURI,
            algorithm_aliases={"AKAv1-MD5": "MD5"},
        )  # fmt: skip
        assert ue.send(ue.request(authorization=value)).status == 200
        assert authenticator.vectors_pending(AKA_IMPI) == AKA_VECTORS_PER_IMPI - 1
    finally:
        ue.close()
        running.stop()


def test_an_akav1_answer_to_an_akav2_challenge_is_not_taken() -> None:
    auth = Authenticator(DOMAIN, ("aka",), aka_algorithm="AKAv2-MD5")
    carol = _subscriber(AKA_IMPI)
    offered = _offered(auth.challenge_for(carol, 1000.0).challenge)
    sim = UeSim(Milenage(K, op=OP), sqn_ms=SQN - 32)
    reply = sim.respond(offered.get("nonce") or "")
    v1 = credentials(
        offered, username=AKA_IMPI, password=reply.password(1), method="REGISTER", uri=RURI,
        algorithm_aliases={"AKAv2-MD5": "MD5"},
    ).replace("algorithm=AKAv2-MD5", "algorithm=AKAv1-MD5")  # fmt: skip
    request = _register(v1, impu=AKA_IMPU)
    assert auth.check(request, request.authorization[0], carol, 1001.0).outcome is (
        AuthOutcome.CHALLENGE
    )


# --------------------------------------------------------------------------------------------------
# item 10: password guessing


def test_guessing_is_logged_rate_limited_and_refused_past_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = start_server(profile(max_failures=5), transports=("udp",))
    alice = Ue(running, *ALICE)
    caplog.set_level(logging.INFO, logger="imscore.auth")
    secrets_seen: list[str] = []
    try:
        statuses = []
        for i in range(8):
            (offered,) = alice.send(alice.request()).www_authenticate
            guess = answer(offered, ALICE[0], f"guess-{i}", algorithm="MD5")
            secrets_seen += [offered.get("nonce") or "", f"guess-{i}", guess.split('response="')[1][:32]]
            response = alice.send(alice.request(authorization=guess))
            statuses.append((response.status, response.reason))
        assert statuses[:5] == [(401, "Unauthorized")] * 5
        assert statuses[5:] == [(403, LOCKED_OUT)] * 3
        # the right password from the same source is refused too, until the window has passed
        (offered,) = alice.send(alice.request()).www_authenticate
        good = credentials(offered, username=ALICE[0], password=ALICE[1], method="REGISTER", uri=RURI)
        assert alice.send(alice.request(authorization=good)).status == 403
        lines = [r.getMessage() for r in caplog.records if r.name == "imscore.auth"]
        assert lines == [
            "authentication failed: wrong response, IMPI 'alice@ims.example.test' from 127.0.0.1",
            "authentication failed: refused unchecked, too many failures of this IMPI from this "
            "source, IMPI 'alice@ims.example.test' from 127.0.0.1",
        ]
        assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "imscore.auth")
        assert not any(s in line for s in [*secrets_seen, ALICE[1]] for line in lines)
    finally:
        alice.close()
        running.stop()


def test_a_locked_out_source_does_not_lock_the_user_out_elsewhere() -> None:
    auth = Authenticator(DOMAIN, ("digest",), limits=FailureLimits(per_impi_source=3))
    bob = _subscriber(BOB[0])

    def attempt(password: str, source: str, now: float) -> AuthOutcome:
        offered = _offered(auth.challenge_for(bob, now).challenge)
        value = credentials(offered, username=BOB[0], password=password, method="REGISTER", uri=RURI)
        request = _register(value, via_host=source)
        return auth.check(request, request.authorization[0], bob, now).outcome

    assert [attempt("x", "192.0.2.66", 1000.0 + i) for i in range(4)] == [
        AuthOutcome.CHALLENGE,
        AuthOutcome.CHALLENGE,
        AuthOutcome.CHALLENGE,
        AuthOutcome.FORBIDDEN,
    ]
    assert attempt(BOB[1], "192.0.2.66", 1010.0) is AuthOutcome.FORBIDDEN
    assert attempt(BOB[1], "198.51.100.7", 1010.0) is AuthOutcome.OK  # bob's phone, elsewhere
    assert attempt(BOB[1], "192.0.2.66", 1061.0) is AuthOutcome.OK  # the window has passed


def test_the_per_source_and_per_impi_limits() -> None:
    limiter = FailureLimiter(
        FailureLimits(per_impi_source=0, per_source=3, per_impi=4, exempt=frozenset({"10.0.0.1"}))
    )
    for i in range(3):
        limiter.failed(f"user{i}@x", "192.0.2.1", 0.0)
    assert limiter.blocked("someone-else@x", "192.0.2.1", 1.0) == "too many failures from this source"
    assert limiter.blocked("someone-else@x", "192.0.2.2", 1.0) is None
    for _ in range(5):  # a trusted peer (a P-CSCF) carries many users: no per-source limit
        limiter.failed("victim@x", "10.0.0.1", 0.0)
    assert limiter.blocked("other@x", "10.0.0.1", 1.0) is None
    assert limiter.blocked("victim@x", "203.0.113.9", 1.0) == "too many failures of this IMPI"
    assert limiter.blocked("victim@x", "203.0.113.9", 61.0) is None


@pytest.mark.parametrize(
    "limits",
    [
        FailureLimits(),
        FailureLimits(per_impi_source=2, per_source=0, per_impi=3, window=5.0),
        FailureLimits(per_impi_source=0, per_source=2, per_impi=0, exempt=frozenset({"192.0.2.1"})),
    ],
)
def test_blocked_answers_what_the_plain_rule_answers(limits: FailureLimits) -> None:
    """``blocked`` skips a table with no limit or no count; over random failures and asks, it
    answers what asking every table with its key answers."""
    from imscore.registrar.failures import _key
    from imscore.subscribers.model import impi_key

    def plain(limiter: FailureLimiter, impi: str, source: str, now: float) -> str | None:
        if limiter._pair.reached(_key(impi_key(impi), source), now):
            return "too many failures of this IMPI from this source"
        if source not in limiter.limits.exempt and limiter._source.reached(source, now):
            return "too many failures from this source"
        if limiter._impi.reached(_key(impi_key(impi)), now):
            return "too many failures of this IMPI"
        return None

    rng = random.Random(7)
    limiter = FailureLimiter(limits)
    answers = set()
    now = 0.0
    for _ in range(3000):
        now += rng.choice([0.0, 0.01, 0.05, 2.0])
        impi, source = f"u{rng.randrange(2)}@X.test", f"192.0.2.{rng.randrange(2)}"
        if rng.random() < 0.6:
            limiter.failed(impi, source, now)
        got = limiter.blocked(impi, source, now)
        assert got == plain(limiter, impi, source, now)
        assert got is None or limiter.holds_failures()  # (check reads no source without one)
        answers.add(got)
    assert None in answers and len(answers) >= 2


def test_a_limiter_holds_failures_only_in_a_table_with_a_limit() -> None:
    limiter = FailureLimiter(FailureLimits(per_impi_source=0, per_source=0, per_impi=0))
    assert not limiter.holds_failures()
    limiter.failed("u@x", "192.0.2.1", 1.0)
    assert not limiter.holds_failures() and limiter.blocked("u@x", "192.0.2.1", 1.0) is None
    for limits in (FailureLimits(per_impi_source=0, per_source=0, per_impi=1), FailureLimits()):
        limiter = FailureLimiter(limits)
        assert not limiter.holds_failures()
        limiter.failed("u@x", "192.0.2.1", 1.0)
        assert limiter.holds_failures()


def test_the_limiter_and_the_log_stay_bounded(caplog: pytest.LogCaptureFixture) -> None:
    limiter = FailureLimiter(FailureLimits(max_entries=100, per_impi=5))
    for i in range(10_000):
        limiter.failed(f"user{i}@x", f"192.0.2.{i % 250}", float(i) / 1000)
    assert all(size <= 100 for size in limiter.sizes())
    caplog.set_level(logging.INFO, logger="imscore.auth")
    failures = FailureLog(interval=10.0, burst=3)
    written = [failures.note(t / 100, f"u{t % 5}@x", "192.0.2.1", "wrong response") for t in range(900)]
    assert sum(written) == 3 and failures.suppressed == 897
    failures.note(10.0, "u0@x", "192.0.2.1", "wrong response")  # the next interval: the summary
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5
    assert lines[3].startswith("authentication failed 897 more times in 10 s, not logged one by one")
    assert failures.suppressed == 0


def test_limits_are_profile_options_checked_on_load() -> None:
    def load(options: dict[str, object]) -> Profile:
        auth = {"plugin": "digest", "options": options}
        data = {"domains": ["ims.example.test"], "policies": {"auth": auth}}
        return profile_from_data(data, source="x.yaml", default_name="x")

    assert load({"max_failures": 0, "failure_window": 30}).policies["auth"].options == {
        "max_failures": 0,
        "failure_window": 30,
    }
    for options, message in [
        ({"max_failures": -1}, "key 'policies.auth.options.max_failures': expected an integer >= 0"),
        ({"failure_window": 0}, "key 'policies.auth.options.failure_window': expected a number of"),
        ({"max_failures_per_source": True}, "key 'policies.auth.options.max_failures_per_source'"),
        ({"digest_algorithm": "SHA-1"}, "key 'policies.auth.options.digest_algorithm': expected one"),
    ]:
        with pytest.raises(ProfileError) as info:
            load(options)
        assert str(info.value).startswith(f"x.yaml: {message}"), str(info.value)
    limits = Authenticator.from_profile(
        dataclasses.replace(
            profile("digest", max_failures=2, failure_window=5),
            proxy=dataclasses.replace(load_profile("default").proxy, trusted_peers=("10.0.0.1",)),
        )
    ).limiter.limits
    assert (limits.per_impi_source, limits.window, limits.exempt) == (2, 5.0, frozenset({"10.0.0.1"}))


def test_resync_still_works_when_the_usim_already_saw_a_re_sent_vector() -> None:
    """A USIM that computed a vector's RES (the answer got lost) sees the same SQN when the vector
    is re-sent: it answers with AUTS, and the fresh vector after it registers."""
    auth = Authenticator(DOMAIN, ("aka",))
    carol = _subscriber(AKA_IMPI)
    sim = UeSim(Milenage(K, op=OP), sqn_ms=SQN - 32)
    offers = [_offered(auth.challenge_for(carol, 1000.0).challenge) for _ in range(AKA_VECTORS_PER_IMPI)]
    assert sim.respond(offers[-1].get("nonce") or "").auts is None  # computed, never sent back
    again = _offered(auth.challenge_for(carol, 1001.0).challenge)
    assert again.get("nonce") == offers[-1].get("nonce")  # the newest unused vector, re-sent
    stale = sim.respond(again.get("nonce") or "")
    assert stale.auts_param is not None
    value = credentials(
        again, username=AKA_IMPI, password=stale.password(1), method="REGISTER", uri=RURI,
        algorithm_aliases={"AKAv1-MD5": "MD5"},
    ) + f', auts="{stale.auts_param}"'  # fmt: skip
    request = _register(value, impu=AKA_IMPU)
    result = auth.check(request, request.authorization[0], carol, 1002.0)
    assert result.outcome is AuthOutcome.CHALLENGE
    assert auth.vectors_pending(AKA_IMPI) == 1  # the old ones went with the resync
    fresh = _offered(result.challenge)
    reply = sim.respond(fresh.get("nonce") or "")
    assert reply.auts is None
    value = credentials(
        fresh, username=AKA_IMPI, password=reply.password(1), method="REGISTER", uri=RURI,
        algorithm_aliases={"AKAv1-MD5": "MD5"},
    )  # fmt: skip
    request = _register(value, impu=AKA_IMPU)
    assert auth.check(request, request.authorization[0], carol, 1003.0).outcome is AuthOutcome.OK


def test_the_proxy_407_keeps_stale(server_with_clock: tuple) -> None:
    """Right credentials on a nonce whose state is gone: the 407 says ``stale=true`` as the 401
    does, so the client answers the new nonce without asking its user (RFC 7616 §3.3)."""
    running, clock = server_with_clock
    bob = Caller(running.address("udp"), "bob", from_uri=BOB[2])
    try:
        bob.send(bob.request("MESSAGE", ALICE[2], cseq=1))
        challenge = bob.expect("407")
        assert isinstance(challenge, Response)
        (offered,) = challenge.proxy_authenticate
        assert offered.get("stale") is None
        good = credentials(offered, username=BOB[0], password=BOB[1], method="MESSAGE", uri=ALICE[2])
        bob.send(bob.request("MESSAGE", ALICE[2], cseq=2, headers=[("Proxy-Authorization", good)]))
        assert bob.expect("final").status == 480  # type: ignore[union-attr]  # authorised; alice is offline
        authenticator = running.server.registrar.authenticator  # type: ignore[union-attr]
        authenticator.counter = NonceCounter(authenticator.nonces.lifetime)  # the state is gone
        clock[0] += 1
        bob.send(bob.request("MESSAGE", ALICE[2], cseq=3, headers=[("Proxy-Authorization", good)]))
        again = bob.expect("final")
        assert isinstance(again, Response) and again.status == 407
        (fresh,) = again.proxy_authenticate
        assert fresh.get("stale") == "true"
    finally:
        bob.close()
