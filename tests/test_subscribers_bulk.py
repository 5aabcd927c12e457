"""The bulk subscriber file (JSON Lines) and its compact directory: same answers and same messages
as the YAML file, line numbers instead of list indexes."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml
from test_subscribers import BAD_FILES, DEMO, SECRETS

from imscore.subscribers import SubscriberDirectory, SubscriberError, load_subscribers
from imscore.subscribers import loader as yaml_loader
from imscore.subscribers.bulk import _as_json, convert, load_bulk
from imscore.subscribers.compact import CompactDirectory

FILE = "subs.jsonl"
DOMAIN = "ims.example.test"


def bulk_message(path: Path | str) -> str:
    with pytest.raises(SubscriberError) as info:
        load_subscribers(path)
    text = str(info.value)
    assert "\n" not in text
    assert info.value.__cause__ is None
    for secret in SECRETS:
        assert secret not in text.lower()
    return text


def write_lines(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / FILE
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def yaml_entries(text: str) -> list[object] | None:
    """The entries of a YAML subscriber file, read as the YAML loader reads them, or ``None``."""
    try:
        data = yaml.load(text, Loader=yaml_loader._Loader)
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict) or set(data) != {"subscribers"}:
        return None
    entries = data["subscribers"]
    return entries if isinstance(entries, list) and entries else None


def as_line(entry: object) -> str:
    return json.dumps(_as_json(entry) if isinstance(entry, dict) else entry)


# --------------------------------------------------------------------------------------------------
# Every bad YAML entry of test_subscribers.py, written as a bulk file, gets the same message


CONVERTIBLE = [case for case in BAD_FILES if yaml_entries(case.values[0]) is not None]


def test_most_bad_yaml_cases_are_compared() -> None:
    assert len(CONVERTIBLE) >= len(BAD_FILES) - 10, "the differential below covers most cases"


@pytest.mark.parametrize(("text", "expected"), CONVERTIBLE)
def test_same_message_as_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    entries = yaml_entries(text)
    assert entries is not None
    path = write_lines(tmp_path, ["# converted from the YAML case", *map(as_line, entries)])
    # line = index + 2 (a comment line first); the file name differs
    want = re.sub(r"subscribers\[(\d+)\]", lambda m: f"line {int(m.group(1)) + 2}", expected)
    want = want.replace("subs.yaml: ", "subs.jsonl: ", 1)
    assert bulk_message(FILE) == want
    assert path.exists()


# --------------------------------------------------------------------------------------------------
# Messages of the format itself

ALICE = {
    "impi": "alice@ims.example.test",
    "password": "alice-secret",
    "implicit_sets": [["sip:alice@ims.example.test", "tel:+15551230001"]],
    "barred": ["sip:alice.old@ims.example.test"],
}


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        pytest.param(
            '{"impi": "bob@ims.example.test", "password": "x", ',
            "line 3: expected a JSON object, got invalid JSON (Expecting property name enclosed in "
            "double quotes at column 50)",
            id="truncated",
        ),
        pytest.param(
            '{"impi": "bob@ims.example.test", "password": "bob-secret", "password": "bob-secret"}',
            "line 3: key 'password': repeated key; expected each key once",
            id="repeated-key",
        ),
        pytest.param(
            '["bob@ims.example.test"]',
            "line 3: expected a mapping with keys: impi, password, aka, implicit_sets, barred, "
            "max_devices, service_profile, got a list",
            id="not-an-object",
        ),
        pytest.param(
            '{"impi": "bob@ims.example.test", "password": "x", "implicit_sets": [["tel:+15551230001"]]}',
            "line 3 (bob@ims.example.test): key 'implicit_sets[0][0]': tel:+15551230001 is already "
            "an IMPU of line 1 (alice@ims.example.test), at 'implicit_sets[0][1]'",
            id="impu-of-another-line",
        ),
        pytest.param(
            '{"impi": "bob@ims.example.test", "password": "x", '
            '"implicit_sets": [["sip:alice.old@ims.example.test"]]}',
            "line 3 (bob@ims.example.test): key 'implicit_sets[0][0]': "
            "sip:alice.old@ims.example.test is already an IMPU of line 1 (alice@ims.example.test), "
            "at 'barred[0]'",
            id="barred-of-another-line",
        ),
        pytest.param(
            '{"impi": "alice@IMS.EXAMPLE.TEST", "password": "x", '
            '"implicit_sets": [["sip:bob@ims.example.test"]]}',
            "line 3 (alice@IMS.EXAMPLE.TEST): key 'impi': expected each IMPI once, already line 1 "
            "(alice@ims.example.test)",
            id="impi-twice",
        ),
        pytest.param(
            '{"impi": "bob@ims.example.test", "password": 1234, '
            '"implicit_sets": [["sip:bob@ims.example.test"]]}',
            "line 3 (bob@ims.example.test): key 'password': expected a non-empty string, got a number "
            "(value not shown)",
            id="password-number",
        ),
    ],
)
def test_bulk_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write_lines(tmp_path, [json.dumps(ALICE), "", second])
    assert bulk_message(FILE) == "subs.jsonl: " + expected


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / FILE
    path.write_bytes(json.dumps(ALICE).encode() + b"\n" + b'{"impi": "\xff"}\n')
    assert bulk_message(path) == f"{path}: line 2: expected UTF-8 text"


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = write_lines(tmp_path, ["# nobody", ""])
    assert bulk_message(empty) == f"{empty}: expected one JSON object per line, got no subscriber"
    missing = tmp_path / "nowhere.jsonl"
    assert (
        bulk_message(missing) == f"{missing}: cannot read the subscriber file: No such file or directory"
    )


def test_error_attributes(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [json.dumps(ALICE), json.dumps({**ALICE, "impi": "bob@" + DOMAIN})])
    with pytest.raises(SubscriberError) as info:
        load_bulk(path)
    assert (info.value.index, info.value.impi, info.value.key) == (
        1,
        "bob@" + DOMAIN,
        "implicit_sets[0][0]",
    )


# --------------------------------------------------------------------------------------------------
# Same answers


def identities(directory: SubscriberDirectory) -> list[str]:
    return [aor for subscriber in directory for aor in subscriber.aors]


def test_demo_file_converts_and_answers_the_same(tmp_path: Path) -> None:
    target = tmp_path / "demo.jsonl"
    assert convert(DEMO, target) == len(load_subscribers(DEMO))
    yaml_dir, bulk_dir = load_subscribers(DEMO), load_subscribers(target)
    assert isinstance(bulk_dir, CompactDirectory)
    assert len(bulk_dir) == len(yaml_dir) > 0
    assert list(bulk_dir) == list(yaml_dir)
    for subscriber in yaml_dir:
        assert bulk_dir.by_impi(subscriber.impi) == subscriber
        user, _, realm = subscriber.impi.rpartition("@")
        assert bulk_dir.by_impi(f"{user}@{realm.upper()}") == subscriber  # the realm in any case
        for uri in subscriber.impus:
            assert bulk_dir.by_impu(uri) == yaml_dir.by_impu(uri) == subscriber
            assert bulk_dir.by_impu(str(uri)) == subscriber
        assert bulk_dir.by_impi(subscriber.impi).hook_record() == subscriber.hook_record()  # type: ignore[union-attr]
    for unknown in ("nobody@ims.example.test", "sip:nobody@ims.example.test", "not a uri", "tel:+1"):
        assert bulk_dir.by_impi(unknown) is None and yaml_dir.by_impi(unknown) is None
        assert bulk_dir.by_impu(unknown) is None and yaml_dir.by_impu(unknown) is None
    assert identities(bulk_dir) == identities(yaml_dir)


def test_cache_is_bounded_and_answers_stay_the_same(tmp_path: Path) -> None:
    entries = [
        {"impi": f"u{i}@{DOMAIN}", "password": "pw", "implicit_sets": [[f"sip:u{i}@{DOMAIN}"]]}
        for i in range(10)
    ]
    path = write_lines(tmp_path, [json.dumps(e) for e in entries])
    directory = load_bulk(path, cache=3)
    first = directory.by_impi(f"u0@{DOMAIN}")
    assert directory.by_impi(f"u0@{DOMAIN}") is first  # cached
    for i in range(1, 10):
        assert directory.by_impu(f"sip:u{i}@{DOMAIN}").impi == f"u{i}@{DOMAIN}"  # type: ignore[union-attr]
    assert len(directory._cache) == 3
    again = directory.by_impi(f"u0@{DOMAIN}")
    assert again is not first and again == first  # evicted, rebuilt equal
    uncached = load_bulk(path, cache=0)
    assert uncached.by_impi(f"u5@{DOMAIN}") == directory.by_impi(f"u5@{DOMAIN}")
    assert len(uncached._cache) == 0


COUNT = 20_000


def test_twenty_thousand_subscribers(tmp_path: Path) -> None:
    """A CI-sized file: every identity found, the same records as the YAML loader's, quickly."""
    entries = []
    for i in range(COUNT):
        impi = f"user{i:05d}@{DOMAIN}"
        entry: dict[str, object] = {
            "impi": impi,
            "password": f"pw{i}",
            "implicit_sets": [[f"sip:{impi}", f"tel:+1555{i:07d}"]],
        }
        if i % 7 == 0:
            entry["barred"] = [f"sip:old{i}@{DOMAIN}"]
        if i % 11 == 0:
            entry["max_devices"] = 1 + i % 5
        entries.append(entry)
    path = write_lines(tmp_path, [json.dumps(e) for e in entries])
    started = time.process_time()
    directory = load_bulk(path, cache=1000)
    seconds = time.process_time() - started
    assert len(directory) == COUNT
    assert seconds < 20, f"loading {COUNT} subscribers took {seconds:.1f} s of CPU"
    reference = yaml_loader.subscribers_from_data({"subscribers": entries}, source="<memory>")
    for i in range(0, COUNT, 97):
        want = reference.by_impi(f"user{i:05d}@{DOMAIN}")
        assert want is not None
        assert directory.by_impi(want.impi) == want
        assert directory.by_impu(f"tel:+1-555-{i:07d}") == want
        assert directory.by_impu(f"sip:user{i:05d}@IMS.EXAMPLE.TEST") == want
        if i % 7 == 0:
            assert directory.by_impu(f"sip:old{i}@{DOMAIN}") == want
            assert want.is_barred(f"sip:old{i}@{DOMAIN}")
    assert directory.by_impu(f"sip:user{COUNT:05d}@{DOMAIN}") is None
    # a repeated IMPU far down the file names the first line that holds it
    path.write_text(
        path.read_text()
        + json.dumps(
            {"impi": f"late@{DOMAIN}", "password": "x", "implicit_sets": [["tel:+15550000042"]]}
        )
        + "\n"
    )
    assert bulk_message(path) == (
        f"{path}: line {COUNT + 1} (late@{DOMAIN}): key 'implicit_sets[0][0]': tel:+15550000042 is "
        f"already an IMPU of line 43 (user00042@{DOMAIN}), at 'implicit_sets[0][1]'"
    )


# --------------------------------------------------------------------------------------------------
# The command line: convert, and serve with a bulk file


def test_cli_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from imscore.cli import main

    target = tmp_path / "demo.jsonl"
    assert main(["subscribers", "convert", str(DEMO), str(target)]) == 0
    count = len(load_subscribers(DEMO))
    assert capsys.readouterr().out == f"{target}: {count} subscribers written from {DEMO}\n"
    assert list(load_subscribers(target)) == list(load_subscribers(DEMO))
    assert main(["subscribers", "convert", str(DEMO), str(tmp_path / "demo.txt")]) == 2
    assert capsys.readouterr().err == (
        f"imscore: {tmp_path / 'demo.txt'}: expected a bulk file name ending in .jsonl\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("subscribers:\n  - {impi: bob@ims.example.test, password: x}\n")
    assert main(["subscribers", "convert", str(bad), str(tmp_path / "bad.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"imscore: {bad}: subscribers[0] (bob@ims.example.test): key 'implicit_sets'")
    assert "Traceback" not in err


def test_serve_registers_sipp_users_from_a_bulk_file(tmp_path: Path) -> None:
    from test_serve import serve
    from test_sipp_register import CALLS, USERS, run_sipp, sipp_binary

    sipp_binary()
    subscribers = tmp_path / "subscribers.jsonl"
    subscribers.write_text(
        "".join(
            json.dumps(
                {
                    "impi": f"user{i:05d}@{DOMAIN}",
                    "password": "secret",
                    "implicit_sets": [[f"sip:user{i:05d}@{DOMAIN}"]],
                }
            )
            + "\n"
            for i in range(USERS)
        )
    )
    csv = tmp_path / "users.csv"
    csv.write_text(
        "SEQUENTIAL\n"
        + "".join(
            f"user{i:05d};{DOMAIN};[authentication username=user{i:05d}@{DOMAIN} password=secret]\n"
            for i in range(USERS)
        )
    )
    running = serve("--listen", "udp:127.0.0.1:0", "--subscribers", str(subscribers))
    try:
        run_sipp("register-digest.xml", running.addresses["udp"], csv, CALLS, tmp_path)
    finally:
        assert running.stop() == 0, "\n".join(running.log)
    assert any(f"{USERS} from {subscribers}" in line for line in running.log), running.log


def test_serve_rejects_a_bad_bulk_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    subscribers = tmp_path / "subs.jsonl"
    subscribers.write_text('{"impi": "bob@ims.example.test", "password": "x"}\n')
    result = subprocess.run(
        [sys.executable, "-m", "imscore", "serve", "--subscribers", str(subscribers)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        f"imscore: {subscribers}: line 1 (bob@ims.example.test): key 'implicit_sets': required key "
        "missing; expected a list of implicit registration sets, each a list of IMPUs\n"
    )
