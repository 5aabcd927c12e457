"""``imscore bindings``: the registrations of a store, as text and as JSON, run as a subprocess."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imscore.registrar import FlowInfo, StoredBinding
from imscore.registrar.store import open_binding_store
from imscore.subscribers import demo_subscribers_path

ALICE = "sip:alice@ims.example.test"
BOB = "sip:bob@ims.example.test"
INSTANCE = "<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"


def _bindings(now: float) -> list[StoredBinding]:
    behind_nat = StoredBinding(  # a phone app on Wi-Fi: private Contact, public flow
        aor=ALICE,
        impi="alice@ims.example.test",
        contact=f'<sip:alice@192.168.1.20:5060>;+sip.instance="{INSTANCE}";reg-id=1',
        uri="sip:alice@192.168.1.20:5060",
        expires_at=now + 3600,
        registered_at=1_700_000_000.0,
        call_id="call-1@phone",
        cseq=7,
        instance_id=INSTANCE,
        reg_id=1,
        q=0.8,
        path=("<sip:pcscf.ims.example.test;lr>",),
        flow=FlowInfo("udp", ("203.0.113.7", 40000), ("127.0.0.1", 5060)),
        user_agent="PhoneApp/1.0",
    )
    direct = StoredBinding(  # a desk phone on a public address, over TCP
        aor=ALICE,
        impi="alice@ims.example.test",
        contact="<sip:alice@198.51.100.9:5070;transport=tcp>",
        uri="sip:alice@198.51.100.9:5070;transport=tcp",
        expires_at=now + 600,
        registered_at=1_700_000_100.0,
        call_id="call-2@desk",
        cseq=2,
        flow=FlowInfo("tcp", ("198.51.100.9", 51000), ("127.0.0.1", 5060), 12),
        reachable=False,
    )
    bob = StoredBinding(
        aor=BOB,
        impi="bob@ims.example.test",
        contact="<sip:bob@198.51.100.20:5060>",
        uri="sip:bob@198.51.100.20:5060",
        expires_at=now + 1800,
        registered_at=1_700_000_200.0,
        call_id="call-3@bob",
        cseq=1,
        flow=FlowInfo("udp", ("198.51.100.20", 5060), ("127.0.0.1", 5060)),
    )
    return [behind_nat, direct, bob]


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = f"sqlite:{tmp_path / 'bindings.db'}"

    async def fill() -> None:
        store = open_binding_store(url)
        try:
            bindings = _bindings(time.time())
            await store.save(ALICE, bindings[:2])
            await store.save(BOB, bindings[2:])
        finally:
            await store.close()

    asyncio.run(fill())
    return url


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imscore", "bindings", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _expires_in(line: str) -> int:
    assert line.startswith("    Expires in: ") and line.endswith(" s"), line
    return int(line.removeprefix("    Expires in: ").removesuffix(" s"))


def test_text_lists_every_aor_and_binding(store_url: str) -> None:
    result = run("--store", store_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"AOR: {ALICE} (2 bindings)"
    assert lines[1] == f'  Contact: <sip:alice@192.168.1.20:5060>;+sip.instance="{INSTANCE}";reg-id=1'
    assert lines[2] == "    IMPI: alice@ims.example.test"
    assert 3590 <= _expires_in(lines[3]) <= 3600
    assert lines[4:16] == [
        "    q: 0.8",
        f"    Instance: {INSTANCE}",
        "    Reg-id: 1",
        "    Registered at: 2023-11-14T22:13:20Z",
        "    Call-ID/CSeq: call-1@phone / 7",
        "    Path: <sip:pcscf.ims.example.test;lr>",
        "    User-Agent: PhoneApp/1.0",
        "    Flow: udp 203.0.113.7:40000 -> 127.0.0.1:5060, connection -",
        "    State: reachable",
        "    NAT: requests go to the flow (registered through a Path: flow from "
        "203.0.113.7:40000)",
        f"    Public GRUU: {ALICE};gr={INSTANCE.strip('<>')}",
        "    Temporary GRUU: -",  # the server made no GRUU key in this file
    ]
    assert lines[16] == "  Contact: <sip:alice@198.51.100.9:5070;transport=tcp>"
    assert 590 <= _expires_in(lines[18]) <= 600
    assert lines[19:] == [
        "    q: -",
        "    Instance: -",
        "    Reg-id: -",
        "    Registered at: 2023-11-14T22:15:00Z",
        "    Call-ID/CSeq: call-2@desk / 2",
        "    Path: -",
        "    User-Agent: -",
        "    Flow: tcp 198.51.100.9:51000 -> 127.0.0.1:5060, connection 12",
        "    State: unreachable",
        "    NAT: requests go to the flow (registered over TCP: the same connection (flow from "
        "198.51.100.9:51000))",
        f"AOR: {BOB} (1 binding)",
        "  Contact: <sip:bob@198.51.100.20:5060>",
        "    IMPI: bob@ims.example.test",
        lines[32],
        "    q: -",
        "    Instance: -",
        "    Reg-id: -",
        "    Registered at: 2023-11-14T22:16:40Z",
        "    Call-ID/CSeq: call-3@bob / 1",
        "    Path: -",
        "    User-Agent: -",
        "    Flow: udp 198.51.100.20:5060 -> 127.0.0.1:5060, connection -",
        "    State: reachable",
        "    NAT: requests go to the Contact (Contact 198.51.100.20:5060 is the flow's remote address)",
        f"2 AOR(s), 3 binding(s) in {store_url}",
    ]
    assert 1790 <= _expires_in(lines[32]) <= 1800


def test_json_structure(store_url: str) -> None:
    result = run("--store", store_url, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["store"] == store_url
    assert [a["aor"] for a in data["aors"]] == [ALICE, BOB]
    phone, desk = data["aors"][0]["bindings"]
    assert 3590 <= phone.pop("expires_in") <= 3600
    assert phone.pop("expires_at").endswith("Z")
    assert phone == {
        "aor": ALICE,
        "impi": "alice@ims.example.test",
        "contact": f'<sip:alice@192.168.1.20:5060>;+sip.instance="{INSTANCE}";reg-id=1',
        "uri": "sip:alice@192.168.1.20:5060",
        "expired": False,
        "q": 0.8,
        "instance_id": INSTANCE,
        "reg_id": 1,
        "registered_at": "2023-11-14T22:13:20Z",
        "call_id": "call-1@phone",
        "cseq": 7,
        "path": ["<sip:pcscf.ims.example.test;lr>"],
        "user_agent": "PhoneApp/1.0",
        "flow": {
            "transport": "udp",
            "remote": ["203.0.113.7", 40000],
            "local": ["127.0.0.1", 5060],
            "connection": None,
        },
        "reachable": True,
        "behind_nat": True,
        "nat_reason": "registered through a Path: flow from 203.0.113.7:40000",
        "pub_gruu": f"{ALICE};gr={INSTANCE.strip('<>')}",
        "temp_gruu": None,
    }
    # registered over TCP: its calls go down the same connection
    assert desk["behind_nat"] is True and desk["reachable"] is False
    assert desk["flow"]["connection"] == 12 and desk["q"] is None and desk["path"] == []


def test_aor_filter_by_any_impu_form(store_url: str) -> None:
    for form in (BOB, "sip:bob@IMS.Example.TEST", "sip:bob@ims.example.test;transport=tcp"):
        data = json.loads(run("--store", store_url, "--json", "--aor", form).stdout)
        assert [a["aor"] for a in data["aors"]] == [BOB], form
    # alice's number is in her implicit set: the subscriber file (by default the demo file, as
    # for serve) knows it is her AOR; so does the user=phone form of it
    for form in ("tel:+1-555-123-0001", "sip:+15551230001@ims.example.test;user=phone"):
        tel = run("--store", store_url, "--aor", form)
        assert tel.returncode == 0, tel.stderr
        assert tel.stdout.splitlines()[-1] == f"1 AOR(s), 2 binding(s) in {store_url} for {ALICE}"
    resolved = run(
        "--store",
        store_url,
        "--aor",
        "tel:+1-555-123-0001",
        "--subscribers",
        str(demo_subscribers_path()),
    )
    assert resolved.returncode == 0, resolved.stderr
    assert resolved.stdout.splitlines()[0] == f"AOR: {ALICE} (2 bindings)"
    assert resolved.stdout.splitlines()[-1] == f"1 AOR(s), 2 binding(s) in {store_url} for {ALICE}"
    bad = run("--store", store_url, "--aor", "<nonsense")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "imscore: --aor: '<nonsense' is not a URI; expected e.g. sip:alice@ims.example.test"
    ]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgres://db",  # no plugin offers it: the schemes that are offered are named
            "imscore: --store: store 'postgres://db': no provider for 'postgres' (known: memory:, "
            "sqlite:PATH; no plugin offers another)",
        ),
        (
            "sqlite:",
            "imscore: --store: unknown store 'sqlite:'; expected 'memory:', 'sqlite:PATH', "
            "'redis://HOST[:PORT][/DB]' or SCHEME:... of a plugin's binding store",
        ),
        (
            "redis://localhost/x",  # bindings reads Redis too (tests/test_redis_pool.py)
            "imscore: --store: store 'redis://localhost/x': the database must be a number, got 'x'",
        ),
    ],
)
def test_bad_store_url_is_one_line_and_exit_2(url: str, message: str) -> None:
    result = run("--store", url)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [message]


def test_missing_file_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    result = run("--store", f"sqlite:{missing}")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"imscore: --store: store 'sqlite:{missing}': no such file "
        "(the server creates it when it starts)"
    ]
    assert not missing.exists()


def test_default_store_comes_from_the_profile(tmp_path: Path, store_url: str) -> None:
    profile = tmp_path / "lab.yaml"
    profile.write_text(f"domains: [ims.example.test]\nstore: {store_url}\n", encoding="utf-8")
    result = run("--profile", str(profile), "--aor", ALICE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"1 AOR(s), 2 binding(s) in {store_url} for {ALICE}"


def test_watch_shows_registrations_appearing_and_going(tmp_path: Path) -> None:
    """``--watch`` against the SQLite file of a running server: alice's phone registers, then
    de-registers; the frames (each one write: cursor home, the frame, clear below) show both."""
    sys.path.insert(0, str(Path(__file__).parent))
    from sipua import Phone

    from imscore.testing import start_server

    url = f"sqlite:{tmp_path / 'live.db'}"
    server = start_server("multi-device", transports=("udp",), store_url=url)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "imscore", "bindings", "--store", url, "--watch",
         "--interval", "0.25", "--frames", "14"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    phone = Phone(server.address("udp"), "desk")
    try:
        assert watcher.stdout is not None
        first = ""
        while not first.endswith("\x1b[J"):  # the first frame is drawn: the watcher is running
            char = watcher.stdout.read(1)
            assert char, "the watcher ended before its first frame"
            first += char
        assert phone.register().status == 200
        time.sleep(1.0)
        assert phone.register(expires=0).status == 200
        rest, _ = watcher.communicate(timeout=30)
        out = first + rest
    finally:
        phone.close()
        server.stop()
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0
    frames = out.split("\x1b[H")[1:]
    assert len(frames) == 14 and out.startswith("\x1b[2J")
    assert all(frame.endswith("\x1b[J") for frame in frames)
    assert "0 AOR(s), 0 binding(s)" in frames[0] and "(no registrations)" in frames[0]
    seen = next(f for f in frames if "1 AOR(s), 1 binding(s)" in f)
    assert f"sip:desk@127.0.0.1:{phone.port}" in seen and "test-phone desk" in seen
    last = frames[-1]
    assert "0 AOR(s), 0 binding(s)" in last
    changes = [line for line in last.splitlines() if line[9:11] in ("+ ", "- ", "~ ")]
    assert [c[9] for c in changes] == ["-", "+"]  # newest first
    assert ALICE in changes[1] and "de-registered" in changes[0]
