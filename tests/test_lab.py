"""The lab: scenarios run against the real core, compared across profiles, in virtual and real time."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from imscore.capture import read_pcap
from imscore.lab import ScenarioError, load_scenario, run_real, run_virtual
from imscore.lab.report import comparison_table, write_run
from imscore.lab.scenario import scenario_from_data
from imscore.profile import load_profile

PROFILES = ("legacy-single-registration", "multi-device", "ims")


def row(run, index: int) -> dict[str, object]:  # type: ignore[no-untyped-def]
    step = run.steps[index - 1]
    return {
        "registered": step.registered,
        "rang": step.rang,
        "cancelled": step.cancelled,
        "answered": step.answered,
        "caller": step.caller_got,
    }


@pytest.fixture(scope="module")
def three_devices():  # type: ignore[no-untyped-def]
    scenario = load_scenario("three-devices")
    return {name: run_virtual(scenario, load_profile(name)) for name in PROFILES}


def test_three_devices_legacy_keeps_only_the_newest_and_rings_it_alone(three_devices) -> None:  # type: ignore[no-untyped-def]
    legacy = three_devices["legacy-single-registration"]
    assert [s.registered for s in legacy.steps[:5]] == [
        ["app"],
        ["app"],
        ["softphone"],
        ["softphone"],
        ["desk"],
    ]
    assert row(legacy, 6) == {
        "registered": ["desk"],
        "rang": ["desk"],
        "cancelled": [],
        "answered": "desk",
        "caller": "200 OK at 4.0 s",  # the desk phone answers after 4 s
    }
    # later the desk phone is busy: the only registered device, so the caller gets 486
    assert row(legacy, 9)["rang"] == ["desk"] and row(legacy, 9)["caller"] == "486 Busy Here at 0.0 s"


@pytest.mark.parametrize("profile", ["multi-device", "ims"])
def test_three_devices_multi_device_rings_all_three_and_cancels_the_others(
    three_devices, profile
) -> None:  # type: ignore[no-untyped-def]
    run = three_devices[profile]
    assert run.steps[4].registered == ["app", "desk", "softphone"]
    assert row(run, 6) == {
        "registered": ["app", "desk", "softphone"],
        "rang": ["app", "desk", "softphone"],
        "cancelled": ["app", "desk"],
        "answered": "softphone",  # it answers first, after 2 s
        "caller": "200 OK at 2.0 s",
    }
    # the app is offline and the desk busy: the softphone still takes the call
    assert row(run, 9) == {
        "registered": ["app", "desk", "softphone"],
        "rang": ["desk", "softphone"],
        "cancelled": [],
        "answered": "softphone",
        "caller": "200 OK at 2.0 s",
    }


def test_ims_registers_with_aka_and_the_others_with_digest(three_devices) -> None:  # type: ignore[no-untyped-def]
    def algorithms(run) -> set[str]:  # type: ignore[no-untyped-def]
        found = set()
        for record in run.records:
            text = record.data.decode()
            if text.startswith("SIP/2.0 401"):
                found.add(text.split("algorithm=", 1)[1].split(",", 1)[0].split("\r", 1)[0].strip('"'))
        return found

    assert algorithms(three_devices["ims"]) == {"AKAv1-MD5"}
    assert algorithms(three_devices["legacy-single-registration"]) == {"MD5"}


def test_the_comparison_table_shows_each_profile_side_by_side(three_devices) -> None:  # type: ignore[no-untyped-def]
    table = comparison_table([three_devices[name] for name in PROFILES])
    step6 = table.split("step 6  call carol -> sip:alice@ims.example.test\n", 1)[1].split("\n\n", 1)[0]
    lines = step6.splitlines()
    assert lines[0].split() == list(PROFILES)
    assert lines[2].split(None, 1)[0] == "rang"
    assert " ".join(lines[2].split()[1:]) == "desk app, desk, softphone app, desk, softphone"
    assert " ".join(lines[4].split()[1:]) == "desk softphone softphone"


def test_the_same_scenario_twice_gives_identical_output(tmp_path: Path) -> None:
    scenario = load_scenario("three-devices")
    profile = load_profile("multi-device")
    outputs = []
    for n in (1, 2):
        run = run_virtual(scenario, profile)
        folder = tmp_path / f"run{n}"
        write_run(run, folder)
        outputs.append({p.name: p.read_bytes() for p in sorted(folder.iterdir())})
    assert outputs[0].keys() == {
        "multi-device.ladder.txt",
        "multi-device.ladder.svg",
        "multi-device.ladder.html",
        "multi-device.pcap",
        "multi-device.steps.json",
    }
    assert outputs[0] == outputs[1]


def test_a_60_second_hunt_takes_no_wall_time() -> None:
    scenario = load_scenario("hunt")
    started = time.perf_counter()
    hunt = run_virtual(scenario, load_profile("hunt-group"))
    wall = time.perf_counter() - started
    assert hunt.duration > 15 and wall < 5, (hunt.duration, wall)
    step = hunt.steps[-1]
    # newest first: desk (no answer, cancelled after 10 s), softphone (busy), app answers after 3 s
    assert step.rang == ["desk", "softphone", "app"] and step.cancelled == ["desk"]
    assert step.answered == "app" and step.caller_got == "200 OK at 13.0 s"
    parallel = run_virtual(scenario, load_profile("multi-device")).steps[-1]
    assert parallel.caller_got == "200 OK at 3.0 s" and parallel.cancelled == ["desk"]


def test_implicit_set_tel_reaches_the_sip_registration_and_sets_stay_apart() -> None:
    run = run_virtual(load_scenario("implicit-set"), load_profile("ims"))
    assert row(run, 2)["rang"] == ["phone"] and row(run, 2)["answered"] == "phone"
    assert row(run, 4)["rang"] == ["phone"]  # the softphone registered the work set only
    assert row(run, 5)["rang"] == ["softphone"]
    assert row(run, 7)["caller"] == "480 Temporarily Unavailable at 0.0 s"


def test_pcap_parses_with_the_right_message_count(tmp_path: Path, three_devices) -> None:  # type: ignore[no-untyped-def]
    run = three_devices["multi-device"]
    written = write_run(run, tmp_path)
    pcap = next(p for p in written if p.suffix == ".pcap")
    assert len(read_pcap(pcap)) == len(run.records) > 40
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark not installed (Debian package tshark)")
    out = subprocess.run(
        [
            tshark,
            "-r",
            str(pcap),
            "-Y",
            "sip",
            "-T",
            "fields",
            "-e",
            "sip.Method",
            "-e",
            "sip.Status-Code",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == len(run.records)
    invites = [r for r in run.records if r.data.startswith(b"INVITE ")]
    # two calls: caller -> imscore, imscore -> each of the three devices; the INVITE to the offline
    # app is retransmitted (Timer A) until the fork ends
    assert len({(r.dst, r.data.split(b"Call-ID: ", 1)[1][:20]) for r in invites}) == 8
    assert sum(1 for line in lines if line.split("\t")[0] == "INVITE") == len(invites) > 8
    svg = next(p for p in written if p.name.endswith(".svg"))
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    ET.parse(next(p for p in written if p.name.endswith(".html")))


def test_cli_compare_writes_ladders_and_pcaps(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "imscore",
            "lab",
            "compare",
            "hunt",
            "--profiles",
            "multi-device,hunt-group",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "caller got  200 OK at 3.0 s" in result.stdout and "200 OK at 13.0 s" in result.stdout
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "hunt-group.pcap" in names and "multi-device.ladder.svg" in names and len(names) == 10


def test_cli_bad_scenario_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "devices:\n  - {name: a, impi: x, impu: 'sip:a@ims.example.test', address: 10.0.0.1:5060}\n"
        "steps:\n  - ring: a\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "imscore", "lab", "run", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"imscore: {bad}: key 'steps[0].ring': unknown action; expected a mapping with one action: "
        "register, deregister, offline, online, subscribe, on_call, wait, call"
    )


@pytest.mark.parametrize(
    ("document", "key", "expected"),
    [
        ({"steps": [{"wait": 1}]}, "devices", "required key missing"),
        (
            {
                "devices": [{"name": "a", "impi": "x", "impu": "sip:a@d", "address": "nowhere"}],
                "steps": [{"wait": 1}],
            },
            "devices[0].address",
            "expected an IP:PORT address",
        ),
        (
            {
                "devices": [{"name": "a", "impi": "x", "impu": "sip:a@d", "address": "10.0.0.1:5060"}],
                "steps": [{"register": "b"}],
            },
            "steps[0].register.device",
            "expected the name of a device (a)",
        ),
        (
            {
                "devices": [
                    {
                        "name": "a",
                        "impi": "x",
                        "impu": "sip:a@d",
                        "address": "10.0.0.1:5060",
                        "on_call": "maybe",
                    }
                ],
                "steps": [{"wait": 1}],
            },
            "devices[0].on_call",
            "expected answer, busy, no-answer, decline",
        ),
    ],
)
def test_scenario_errors_name_the_key(document: dict, key: str, expected: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ScenarioError) as info:
        scenario_from_data(document, "s.yaml", "s", Path("."))
    assert info.value.key == key and expected in info.value.detail, str(info.value)


def test_real_time_gives_the_same_table_as_virtual_time() -> None:
    document = {
        "name": "quick",
        "devices": [
            {
                "name": "one",
                "impi": "alice@ims.example.test",
                "password": "alice-secret",
                "impu": "sip:alice@ims.example.test",
                "address": "192.0.2.31:5060",
                "on_call": {"answer_after": 0.3},
            },
            {
                "name": "two",
                "impi": "alice@ims.example.test",
                "password": "alice-secret",
                "impu": "sip:alice@ims.example.test",
                "address": "192.0.2.32:5060",
                "on_call": "no-answer",
            },
        ],
        "callers": [{"name": "eve", "uri": "sip:eve@example.org", "address": "198.51.100.40:5060"}],
        "steps": [
            {"register": "one"},
            {"register": "two"},
            {"call": {"from": "eve", "to": "sip:alice@ims.example.test", "hangup_after": 0.2}},
        ],
    }
    scenario = scenario_from_data(document, "quick.yaml", "quick", Path("."))
    profile = load_profile("multi-device")
    virtual = run_virtual(scenario, profile).steps[-1]
    started = time.monotonic()
    real = run_real(scenario, profile)
    assert time.monotonic() - started < 15
    last = real.steps[-1]
    assert (
        (last.registered, last.rang, last.cancelled, last.answered)
        == (virtual.registered, virtual.rang, virtual.cancelled, virtual.answered)
        == (["one", "two"], ["one", "two"], ["two"], "one")
    )
    assert last.caller_got.startswith("200 OK at 0.") and real.mode == "real"
    assert set(real.names.values()) == {"imscore", "one", "two", "eve"}
    assert len(real.records) > 10 and all(r.src in real.names for r in real.records)


def test_a_device_calls_another_user_over_its_registered_flow() -> None:
    document = {
        "devices": [
            {
                "name": "alice-phone",
                "impi": "alice@ims.example.test",
                "password": "alice-secret",
                "impu": "sip:alice@ims.example.test",
                "address": "192.0.2.41:5060",
            },
            {
                "name": "bob-phone",
                "impi": "bob@ims.example.test",
                "password": "bob-secret",
                "impu": "sip:bob@ims.example.test",
                "address": "192.0.2.42:5060",
                "on_call": {"answer_after": 1},
            },
        ],
        "steps": [
            {"register": "alice-phone"},
            {"register": "bob-phone"},
            {"call": {"from": "alice-phone", "to": "sip:bob@ims.example.test"}},
        ],
    }
    scenario = scenario_from_data(document, "s.yaml", "s", Path("."))
    step = run_virtual(scenario, load_profile("multi-device")).steps[-1]
    # originating from a served user: accepted because it comes over alice-phone's registered flow
    assert (step.rang, step.answered, step.caller_got) == (["bob-phone"], "bob-phone", "200 OK at 1.0 s")


@pytest.mark.parametrize(
    ("profile", "picture"),
    [
        ("multi-device", "three-devices-multi-device.svg"),
        ("legacy-single-registration", "three-devices-legacy.svg"),
    ],
)
def test_the_pictures_in_the_docs_are_what_the_lab_draws_today(
    tmp_path: Path, profile: str, picture: str
) -> None:
    run = run_virtual(load_scenario("three-devices"), load_profile(profile))
    written = write_run(run, tmp_path)
    svg = next(p for p in written if p.name.endswith(".svg"))
    docs = Path(__file__).resolve().parent.parent / "docs" / "images" / picture
    assert svg.read_bytes() == docs.read_bytes(), f"regenerate docs/images/{picture} (docs/lab.rst)"
