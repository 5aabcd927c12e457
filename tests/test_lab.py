"""The lab: scenarios run against the real core, compared across profiles, in virtual and real time."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from imscore.capture import read_pcap
from imscore.lab import ScenarioError, load_scenario, run_real, run_virtual
from imscore.lab.report import comparison_table, write_comparison, write_run
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
    # later the desk phone is busy: the only registered device, so the caller gets 486; the desk
    # phone never rang (486 without a 180)
    assert row(legacy, 9)["rang"] == [] and row(legacy, 9)["caller"] == "486 Busy Here at 0.0 s"
    assert legacy.steps[8].devices == {"desk": "busy (486)"}
    assert legacy.steps[5].devices == {"desk": "rang, answered"}
    assert [s.auth for s in legacy.steps if s.step.startswith("register ")] == ["MD5"] * 7
    # each REGISTER replaced the previous device's binding: the ladders say so
    replaced = [(m.participant, m.text) for m in legacy.marks if "replaced" in m.text]
    assert replaced[:2] == [
        ("app", "binding replaced by softphone"),
        ("softphone", "binding replaced by desk"),
    ]


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
    assert run.steps[5].devices == {
        "app": "rang, cancelled (487)",
        "softphone": "rang, answered",
        "desk": "rang, cancelled (487)",
    }
    # the app is offline and the desk busy: the softphone still takes the call; the desk did not
    # ring (486 at once), and the app's branch is there, never answered
    assert row(run, 9) == {
        "registered": ["app", "desk", "softphone"],
        "rang": ["softphone"],
        "cancelled": [],
        "answered": "softphone",
        "caller": "200 OK at 2.0 s",
    }
    assert run.steps[8].devices == {
        "app": "no answer (offline)",
        "softphone": "rang, answered",
        "desk": "busy (486)",
    }


def test_ims_evicts_the_oldest_of_six_devices_and_refuses_a_digest_only_subscriber(
    three_devices,
) -> None:  # type: ignore[no-untyped-def]
    multi, ims = three_devices["multi-device"], three_devices["ims"]
    everyone = ["app", "car", "desk", "softphone", "tablet", "watch"]
    assert multi.steps[12].registered == everyone  # up to 10 devices
    assert ims.steps[12].registered == everyone[1:]  # up to 5: the car evicted the oldest, the app
    assert [(m.participant, m.text) for m in ims.marks if "evicted" in m.text] == [
        ("app", "binding evicted by car")
    ]
    assert not any("evicted" in m.text or "replaced" in m.text for m in multi.marks)
    # the third call: the offline app is still tried under multi-device, no longer under ims
    assert multi.steps[13].devices["app"] == "no answer (offline)"
    assert "app" not in ims.steps[13].devices
    for run in (multi, ims):
        assert run.steps[13].answered == "softphone"
        assert run.steps[13].devices["watch"] == "rang, cancelled (487)"
    # bob has a password and no AKA credentials: Digest profiles take him, ims (AKA only) does not
    assert (multi.steps[14].detail, multi.steps[14].auth) == ("REGISTER -> 200", "MD5")
    assert ims.steps[14].detail.startswith("REGISTER -> 403 ") and ims.steps[14].auth == ""
    assert "bob" in multi.steps[14].registered and "bob" not in ims.steps[14].registered


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
    step9 = table.split("step 9  call carol -> sip:alice@ims.example.test\n", 1)[1].split("\n\n", 1)[0]
    cells = {line.split()[0]: line for line in step9.splitlines()[1:]}
    assert " ".join(cells["rang"].split()[1:]) == "- softphone softphone"
    # one row per device the call was offered to, indented, in scenario order
    devices = [line for line in step9.splitlines()[1:] if line.startswith("    ")]
    assert [line.split()[0] for line in devices] == ["app", "softphone", "desk"]
    assert devices[0].split(None, 1)[1].split("  ")[0] == "-"  # not registered under legacy
    assert devices[0].count("no answer (offline)") == 2
    assert devices[2].count("busy (486)") == 3
    step15 = table.split("step 15  register bob\n", 1)[1]
    auth = next(line for line in step15.splitlines() if line.startswith("  auth"))
    assert auth.split() == ["auth", "MD5", "MD5", "-"]


def test_the_table_and_the_steps_are_written_as_markdown_and_json(tmp_path: Path, three_devices) -> None:  # type: ignore[no-untyped-def]
    runs = [three_devices[name] for name in PROFILES]
    written = write_comparison(runs, tmp_path)
    assert [p.name for p in written] == ["comparison.txt", "comparison.md", "comparison.json"]
    assert (tmp_path / "comparison.txt").read_text() == comparison_table(runs)
    document = json.loads((tmp_path / "comparison.json").read_text())
    assert document["profiles"] == list(PROFILES) and document["scenario"] == "three-devices"
    step9 = document["steps"][8]
    rows = {(r["row"], r["device"]): r["cells"] for r in step9["rows"]}
    assert rows[("rang", False)] == dict(zip(PROFILES, ["-", "softphone", "softphone"], strict=True))
    assert rows[("app", True)]["multi-device"] == "no answer (offline)"
    assert document["runs"]["ims"]["policies"]["binding_policy"] == "max-contacts"
    assert document["runs"]["ims"]["steps"][8]["devices"]["desk"] == "busy (486)"
    markdown = (tmp_path / "comparison.md").read_text()
    assert "## Step 9: call carol -> sip:alice@ims.example.test" in markdown
    assert "| | legacy-single-registration | multi-device | ims |" in markdown
    assert "| *app* | - | no answer (offline) | no answer (offline) |" in markdown
    assert "| rang | - | softphone | softphone |" in markdown
    # every time is rounded to the microsecond: no float noise such as 1.0399999999999996
    write_run(three_devices["multi-device"], tmp_path)
    for name in ("comparison.json", "multi-device.steps.json"):
        text = (tmp_path / name).read_text()
        numbers = re.findall(r"-?\d+\.\d+", text)
        assert numbers and all(len(n.split(".")[1]) <= 6 for n in numbers), name
    steps = json.loads((tmp_path / "multi-device.steps.json").read_text())
    assert steps[2]["at"] == 1.02 and steps[8]["devices"]["app"] == "no answer (offline)"


def test_the_lab_ladders_mark_devices_forks_and_pauses(tmp_path: Path, three_devices) -> None:  # type: ignore[no-untyped-def]
    write_run(three_devices["multi-device"], tmp_path)
    write_run(three_devices["legacy-single-registration"], tmp_path)
    text = (tmp_path / "multi-device.ladder.txt").read_text()
    # which device each of the three identical 180s came from
    for device in ("app", "softphone", "desk"):
        assert f"180 from {device}" in text
    assert "* busy" in text and "* offline" in text and "---x" in text and "legend:" in text
    assert "401 AKAv1-MD5" in text  # the challenge's scheme
    assert re.search(r"^ *\+5\.0 s +~", text, re.MULTILINE)  # the 5 s call before the BYE
    legacy = (tmp_path / "legacy-single-registration.ladder.txt").read_text()
    assert "binding replaced by softphone" in legacy and "401 MD5" in legacy
    svg = ET.parse(tmp_path / "multi-device.ladder.svg").getroot()
    classes = {g.get("class") for g in svg.iter("{http://www.w3.org/2000/svg}g")}
    assert {"legend", "gap", "mark busy", "mark offline", "message request lost"} <= classes


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
    # newest first: desk (no answer, cancelled after 10 s), softphone (busy: 486 without ringing),
    # app answers after 3 s
    assert step.rang == ["desk", "app"] and step.cancelled == ["desk"]
    assert step.devices == {
        "app": "rang, answered",
        "softphone": "busy (486)",
        "desk": "rang, cancelled (487)",
    }
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
    # three calls: caller -> imscore, imscore -> each of the three, three and six devices; the
    # INVITE to the offline app is retransmitted (Timer A) until the fork ends
    assert len({(r.dst, r.data.split(b"Call-ID: ", 1)[1][:20]) for r in invites}) == 4 + 4 + 7
    assert sum(1 for line in lines if line.split("\t")[0] == "INVITE") == len(invites) > 15
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
    assert re.search(r"caller got +200 OK at 3\.0 s +200 OK at 13\.0 s", result.stdout)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "hunt-group.pcap" in names and "multi-device.ladder.svg" in names and len(names) == 13
    # the table printed is the table written, also as Markdown and JSON
    table = (tmp_path / "out" / "comparison.txt").read_text()
    assert table in result.stdout
    hunt = json.loads((tmp_path / "out" / "comparison.json").read_text())["steps"][-1]
    outcomes = {r["row"]: r["cells"] for r in hunt["rows"] if r["device"]}
    assert outcomes["softphone"] == {"multi-device": "busy (486)", "hunt-group": "busy (486)"}
    assert outcomes["desk"]["hunt-group"] == "rang, cancelled (487)"
    assert "## Step 6: call carol" in (tmp_path / "out" / "comparison.md").read_text()


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
    ("scenario", "profile", "picture"),
    [
        ("three-devices", "multi-device", "three-devices-multi-device.svg"),
        ("three-devices", "legacy-single-registration", "three-devices-legacy.svg"),
        ("app-servers", "default", "app-servers.svg"),
        ("app-servers", "default", "app-servers.ladder.txt"),
        ("gruu-outbound", "default", "gruu-outbound.ladder.txt"),
    ],
)
def test_the_pictures_in_the_docs_are_what_the_lab_draws_today(
    tmp_path: Path, scenario: str, profile: str, picture: str
) -> None:
    run = run_virtual(load_scenario(scenario), load_profile(profile))
    written = write_run(run, tmp_path)
    suffix = ".ladder.txt" if picture.endswith(".txt") else ".svg"
    drawn = next(p for p in written if p.name.endswith(suffix))
    docs = Path(__file__).resolve().parent.parent / "docs" / "images" / picture
    assert drawn.read_bytes() == docs.read_bytes(), f"regenerate docs/images/{picture} (docs/lab.rst)"


# --- the plugin guide's example, packaged and installed ----------------------------------------------
EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "newest-first"


@pytest.fixture(scope="module")
def newest_first_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment where the packaged example plugin is installed: this one if tox installed it
    (commands_pre), else a ``pip install --target`` of a copy of it on PYTHONPATH."""
    env = dict(os.environ)
    if any(e.value == "newest_first" for e in entry_points(group="imscore")):
        return env
    base = tmp_path_factory.mktemp("newest-first")
    shutil.copytree(EXAMPLE, base / "src")  # pip builds in place: keep docs/examples clean
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    result = subprocess.run(
        [*pip, "--target", str(base / "site"), str(base / "src")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"cannot install docs/examples/newest-first (pip: {last})")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(base / "site"), env.get("PYTHONPATH")) if p)
    return env


def test_the_plugin_guide_example_installed_is_selected_by_a_profile_and_runs_in_the_lab(
    tmp_path: Path, newest_first_env: dict[str, str]
) -> None:
    def imscore(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "imscore", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=newest_first_env,
            cwd=tmp_path,
        )

    profile = tmp_path / "newest.yaml"
    profile.write_text(
        "name: newest\ndomains: [ims.example.test]\n"
        "policies:\n  forking: {plugin: newest-first, options: {first_timeout: 4}}\n"
    )
    check = imscore("profile", "check", str(profile))
    assert check.returncode == 0, check.stderr  # the plugin declares its name (ims_policy_names)
    typo = tmp_path / "typo.yaml"
    typo.write_text(profile.read_text().replace("newest-first", "newest-frist"))
    refused = imscore("profile", "check", str(typo))
    assert refused.returncode == 2 and "unknown plugin 'newest-frist'" in refused.stderr
    lab = imscore("lab", "compare", "hunt", "--profiles", f"multi-device,{profile}", "--out", "out")
    assert lab.returncode == 0, lab.stderr
    call = json.loads((tmp_path / "out" / "comparison.json").read_text())["steps"][-1]
    cells = {r["row"]: r["cells"]["newest"] for r in call["rows"]}
    # the desk phone, registered last, rings alone for 4 s; then the softphone (busy) and the app,
    # which answers after 3 s
    assert cells["rang"] == "desk, app" and cells["answered"] == "app"
    assert cells["caller got"] == "200 OK at 7.0 s"
    assert (cells["desk"], cells["softphone"], cells["app"]) == (
        "rang, cancelled (487)",
        "busy (486)",
        "rang, answered",
    )


def test_the_table_in_the_docs_is_what_the_lab_prints_today(three_devices) -> None:  # type: ignore[no-untyped-def]
    table = comparison_table([three_devices[name] for name in PROFILES])
    page = (Path(__file__).resolve().parent.parent / "docs" / "lab.rst").read_text()
    excerpt = (
        page.split(".. code-block:: text\n\n", 1)[1].split("\n\n\n", 1)[0].split("\nEach step", 1)[0]
    )
    blocks = [
        "\n".join(line[3:] for line in block.splitlines())
        for block in excerpt.strip("\n").split("\n\n")
        if block.strip() != "..."
    ]
    assert len(blocks) == 6  # steps 5, 6, 9, 13, 14 and 15
    for block in blocks:
        assert block + "\n" in table, f"docs/lab.rst is out of date:\n{block}"


# --- application servers (initial filter criteria, TS 24.229 §5.4.1.7 / §5.4.3) -----------------


def _first_lines(run: object) -> list[tuple[str, str, str]]:
    """(from, to, first line) of every message of a run, by the ladder's names."""
    names = run.names  # type: ignore[attr-defined]
    out = []
    for record in run.records:  # type: ignore[attr-defined]
        first = record.data.split(b"\r\n", 1)[0].decode()
        out.append((names.get(record.src, "?"), names.get(record.dst, "?"), first))
    return out


def test_app_servers_scenario_third_party_register_default_handling_and_a_retarget() -> None:
    run = run_virtual(load_scenario("app-servers"), load_profile("default"))
    lines = _first_lines(run)
    # every registration of alice's phone, and its de-registration, is told to the registration AS
    third_party = [line for line in lines if line[:2] == ("imscore", "reg-as")]
    assert [line[2] for line in third_party] == ["REGISTER sip:192.0.2.80:5060 SIP/2.0"] * 2
    assert ("reg-as", "imscore", "SIP/2.0 200 OK") in lines
    # the call: the AS that never answers first, then (default handling) the forwarding AS, whose
    # INVITE back names bob; bob's desk rings and answers, alice's phone never sees the call
    to_silent = lines.index(("imscore", "silent-as", "INVITE sip:alice@ims.example.test SIP/2.0"))
    to_forward = lines.index(("imscore", "forward-as", "INVITE sip:alice@ims.example.test SIP/2.0"))
    back = lines.index(("forward-as", "imscore", "INVITE sip:bob@ims.example.test SIP/2.0"))
    assert to_silent < to_forward < back
    assert not [line for line in lines if line[0] == "silent-as"]  # it never answered
    assert not [line for line in lines if line[1] == "phone" and line[2].startswith("INVITE")]
    call = run.steps[2]
    assert call.answered == "desk" and call.rang == ["desk"]
    assert call.caller_got.startswith("200 OK")


def test_app_servers_need_a_virtual_run() -> None:
    with pytest.raises(ScenarioError, match="virtual time only"):
        run_real(load_scenario("app-servers"), load_profile("default"))


def test_an_app_server_with_a_bad_behaviour_names_the_key(tmp_path: Path) -> None:
    data = {
        "devices": [
            {
                "name": "p",
                "impi": "alice@ims.example.test",
                "password": "x",
                "impu": "sip:alice@ims.example.test",
                "address": "192.0.2.1:5060",
            }
        ],
        "application_servers": [{"name": "as1", "address": "192.0.2.9:5060", "behaviour": "proxy"}],
        "steps": [{"register": "p"}],
    }
    with pytest.raises(
        ScenarioError, match=r"servers\[0\]\.behaviour.*expected one of accept, redirect, silent"
    ):
        scenario_from_data(data, "x.yaml", "x", tmp_path)
    data["application_servers"] = [{"name": "as1", "address": "192.0.2.9:5060", "behaviour": "redirect"}]
    with pytest.raises(ScenarioError, match=r"application_servers\[0\]\.redirect_to"):
        scenario_from_data(data, "x.yaml", "x", tmp_path)


def test_gruu_outbound_scenario_a_call_to_a_public_gruu_rings_that_device_only() -> None:
    run = run_virtual(load_scenario("gruu-outbound"), load_profile("default"))
    by_name = {v: k for k, v in run.names.items()}
    oks = [
        r.data.decode()
        for r in run.records
        if r.dst == by_name["phone"] and r.data.startswith(b"SIP/2.0 200 OK") and b"REGISTER" in r.data
    ]
    first = oks[0]
    phone_gruu = "sip:alice@ims.example.test;gr=urn:uuid:00000000-0000-4000-8000-0000000000b1"
    assert f'pub-gruu="{phone_gruu}"' in first
    assert "temp-gruu=" in first and "Require: outbound" in first and "Flow-Timer: " in first
    gruu_call, aor_call, _, after = run.steps[2], run.steps[3], run.steps[4], run.steps[5]
    assert (gruu_call.rang, gruu_call.answered) == (["softphone"], "softphone")
    assert sorted(aor_call.rang) == ["phone", "softphone"]
    assert after.rang == [] and after.caller_got.startswith("480")


def test_gruu_and_reg_id_need_an_instance(tmp_path: Path) -> None:
    device = {
        "name": "p",
        "impi": "alice@ims.example.test",
        "password": "x",
        "impu": "sip:alice@ims.example.test",
        "address": "192.0.2.1:5060",
        "reg_id": 1,
    }
    data = {"devices": [device], "steps": [{"register": "p"}]}
    with pytest.raises(ScenarioError, match=r"devices\[0\]\.reg_id.*instance"):
        scenario_from_data(data, "x.yaml", "x", tmp_path)
