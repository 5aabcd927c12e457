"""Subscribers (HSS-lite): the model, the YAML loader and its messages, look-ups, the memory store."""

from __future__ import annotations

import asyncio
import doctest
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO_ROOT

import imscore
from imscore.plugin import types as hook_types
from imscore.sip import SipUri, TelUri, parse_uri
from imscore.subscribers import (
    AUTH_AKA,
    AUTH_DIGEST,
    AkaCredentials,
    ImplicitSet,
    MemorySubscriberStore,
    Subscriber,
    SubscriberDirectory,
    SubscriberError,
    SubscriberStore,
    check_impi,
    load_subscribers,
    parse_impu,
    subscribers_from_data,
)

DEMO = Path(imscore.__file__).resolve().parent / "profiles" / "subscribers.demo.yaml"
FILE = "subs.yaml"
Writer = Callable[[str], str]

# TS 35.208 test set 1
K_HEX = "465b5ce8b199b49faa5f0a2ee238a6bc"
OP_HEX = "cdc202d5123e20f62b6d676ac72cb318"
OPC_HEX = "cd63cb71954a9f4e48a5994e37a02baf"
AMF_HEX = "b9b9"
SQN_HEX = "ff9bb4d0b607"
SECRETS = ("alice-secret", "bob-secret", K_HEX, OP_HEX, OPC_HEX)

ISSUE_EXAMPLE = f"""\
subscribers:
  - impi: alice@ims.example.test
    password: alice-secret                 # Digest
    aka: {{k: {K_HEX}, op: {OP_HEX}, amf: {AMF_HEX}, sqn: {SQN_HEX}}}
    implicit_sets:                         # the first IMPU of each set is its default
      - [sip:alice@ims.example.test, tel:+15551230001]
      - [sip:alice.work@ims.example.test]
    barred: [sip:alice.old@ims.example.test]
    max_devices: 3                         # optional per-subscriber override
"""

# The first entry of every bad file below; the entry under test is subscribers[1].
ALICE = """\
subscribers:
  - impi: alice@ims.example.test
    password: alice-secret
    implicit_sets:
      - [sip:alice@ims.example.test, tel:+15551230001]
    barred: [sip:alice.old@ims.example.test]
"""
BOB = "subs.yaml: subscribers[1] (bob@ims.example.test): "
SETS = "  implicit_sets: [[sip:bob@ims.example.test]]\n"


PW = "- impi: bob@ims.example.test\n  password: x\n"
IMPU0 = BOB + "key 'implicit_sets[0][0]': "
NO_ENTRY = "subs.yaml: subscribers[1]: key 'impi': "


def one_impu(impu: str) -> str:
    """A bob entry whose only implicit set is ``[impu]``."""
    return bob(PW + f"  implicit_sets: [['{impu}']]\n")


def bob(body: str) -> str:
    """ALICE followed by an entry for bob written in ``body`` (YAML at column 0, ``- `` included)."""
    return ALICE + textwrap.indent(body, "  ")


def aka(**fields: str) -> str:
    values = {"k": K_HEX, "op": OP_HEX, "amf": AMF_HEX, "sqn": SQN_HEX, **fields}
    inner = ", ".join(f"{k}: {v}" for k, v in values.items() if v != "-")
    return bob(f"- impi: bob@ims.example.test\n  aka: {{{inner}}}\n" + SETS)


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Writer:
    """Write ``subs.yaml`` in a temporary working directory; return that relative path."""
    monkeypatch.chdir(tmp_path)

    def _write(text: str) -> str:
        (tmp_path / FILE).write_text(text, encoding="utf-8")
        return FILE

    return _write


def message_of(path: str) -> str:
    with pytest.raises(SubscriberError) as info:
        load_subscribers(path)
    text = str(info.value)
    assert "\n" not in text, "one message, one line"
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__
    for secret in SECRETS:
        assert secret not in text.lower()
    return text


# --------------------------------------------------------------------------------------------------
# Loading good files


def test_demo_file_loads() -> None:
    directory = load_subscribers(DEMO)
    assert [s.impi for s in directory] == [
        "alice@ims.example.test",
        "bob@ims.example.test",
        "001010123456789@ims.mnc001.mcc001.3gppnetwork.org",
    ]
    alice, bob_, carol = directory
    assert alice.password == "alice-secret" and alice.aka is None
    assert alice.auth_schemes == (AUTH_DIGEST,)
    assert [[str(u) for u in s] for s in alice.implicit_sets] == [
        ["sip:alice@ims.example.test", "tel:+15551230001"],
        ["sip:alice.work@ims.example.test"],
    ]
    assert alice.barred == frozenset({"sip:alice.old@ims.example.test"})
    assert alice.max_devices == 3
    assert bob_.auth_schemes == ("digest",) and bob_.max_devices is None and bob_.barred == frozenset()
    assert carol.password is None and carol.auth_schemes == (AUTH_AKA,)
    assert carol.aka == AkaCredentials(
        k=bytes.fromhex(K_HEX), op=bytes.fromhex(OP_HEX), opc=None, amf=b"\xb9\xb9", sqn=0xFF9BB4D0B607
    )
    assert [str(u) for u in carol.impus] == [
        "sip:+15551230003@ims.example.test;user=phone",
        "tel:+15551230003",
    ]


def test_demo_file_is_shipped_as_package_data() -> None:
    from importlib import resources

    shipped = resources.files("imscore").joinpath("profiles/subscribers.demo.yaml")
    assert shipped.is_file()


def test_issue_example_loads(write: Writer) -> None:
    directory = load_subscribers(write(ISSUE_EXAMPLE))
    (alice,) = directory
    assert alice.auth_schemes == ("aka", "digest")
    assert alice.aka is not None and alice.aka.op == bytes.fromhex(OP_HEX) and alice.aka.opc is None
    assert alice.aka.sqn == int(SQN_HEX, 16)
    assert alice.max_devices == 3
    assert directory.source == FILE


def test_opc_instead_of_op(write: Writer) -> None:
    directory = load_subscribers(
        write(ISSUE_EXAMPLE.replace(f"op: {OP_HEX}", f"opc: {OPC_HEX.upper()}"))
    )
    (alice,) = directory
    assert alice.aka is not None and alice.aka.op is None and alice.aka.opc == bytes.fromhex(OPC_HEX)


def test_numbers_yaml_reads_as_integers_keep_their_digits(write: Writer) -> None:
    """``amf: 8000``, ``sqn: 000000000001`` and an all-digit key are YAML integers; they are read
    back as written (leading zeros included), and so is an all-digit password."""
    text = bob(
        "- impi: bob@ims.example.test\n  password: 0123\n"
        "  aka: {k: 12345678901234567890123456789012, opc: 00000000000000000000000000000009,"
        " amf: 8000, sqn: 000000000001}\n" + SETS
    )
    bob_ = load_subscribers(write(text)).by_impi("bob@ims.example.test")
    assert bob_ is not None and bob_.aka is not None
    assert bob_.password == "0123"
    assert bob_.aka.k == bytes.fromhex("12345678901234567890123456789012")
    assert bob_.aka.opc == bytes(15) + b"\x09"
    assert (bob_.aka.amf, bob_.aka.sqn) == (b"\x80\x00", 1)


def test_optional_keys_may_be_null_and_subscribers_may_be_empty(write: Writer) -> None:
    text = bob("- impi: bob@ims.example.test\n  password: x\n  aka:\n  barred:\n  max_devices:\n" + SETS)
    bob_ = load_subscribers(write(text)).by_impi("bob@ims.example.test")
    assert bob_ is not None and (bob_.aka, bob_.barred, bob_.max_devices) == (None, frozenset(), None)
    assert len(load_subscribers(write("subscribers: []\n"))) == 0


def test_subscribers_from_data() -> None:
    data = {"subscribers": [{"impi": "x@y.test", "password": "pw", "implicit_sets": [["sip:x@y.test"]]}]}
    directory = subscribers_from_data(data, source="<memory>")
    assert [s.impi for s in directory] == ["x@y.test"]
    with pytest.raises(
        SubscriberError, match=r"^<memory>: subscribers\[0\] \(x@y.test\): key 'max_devices'"
    ):
        subscribers_from_data(
            {"subscribers": [{**data["subscribers"][0], "max_devices": -1}]}, source="<memory>"
        )


# --------------------------------------------------------------------------------------------------
# Validation messages: one line each, exactly


BAD_FILES = [
    pytest.param(
        aka(k="zz"),
        BOB + "key 'aka.k': expected 32 hex digits (16 octets), got 2 characters (value not shown)",
        id="k-not-hex-short",
    ),
    pytest.param(
        aka(k=K_HEX[:-2]),
        BOB + "key 'aka.k': expected 32 hex digits (16 octets), got 30 characters (value not shown)",
        id="k-short",
    ),
    pytest.param(
        aka(op="-", opc=OPC_HEX[:-1] + "g"),
        BOB
        + "key 'aka.opc': expected 32 hex digits (16 octets), got 32 characters that are not all hex "
        "digits (value not shown)",
        id="opc-not-hex",
    ),
    pytest.param(
        aka(op="[1, 2]"),
        BOB + "key 'aka.op': expected 32 hex digits (16 octets), got a list",
        id="op-list",
    ),
    pytest.param(
        aka(amf="b9b"),
        BOB + "key 'aka.amf': expected 4 hex digits (2 octets), got 'b9b'",
        id="amf-short",
    ),
    pytest.param(
        aka(sqn="12345"),
        BOB + "key 'aka.sqn': expected 12 hex digits (6 octets), got '12345'",
        id="sqn-short",
    ),
    pytest.param(
        aka(sqn="ff9bb4d0b6077"),
        BOB + "key 'aka.sqn': expected 12 hex digits (6 octets), got 'ff9bb4d0b6077'",
        id="sqn-long",
    ),
    pytest.param(
        aka(k="-"),
        BOB + "key 'aka.k': required key missing; expected 32 hex digits (16 octets)",
        id="k-missing",
    ),
    pytest.param(
        aka(amf="-"),
        BOB + "key 'aka.amf': required key missing; expected 4 hex digits (2 octets)",
        id="amf-missing",
    ),
    pytest.param(
        aka(opc=OPC_HEX),
        BOB + "key 'aka': expected exactly one of 'op' and 'opc', got both",
        id="op-and-opc",
    ),
    pytest.param(
        aka(op="-"),
        BOB + "key 'aka': expected exactly one of 'op' and 'opc', got neither",
        id="neither-op-nor-opc",
    ),
    pytest.param(
        aka(ki="00"),
        BOB + "key 'aka.ki': unknown key; expected one of: k, op, opc, amf, sqn",
        id="aka-unknown-key",
    ),
    pytest.param(
        bob("- impi: bob@ims.example.test\n  aka: yes\n" + SETS),
        BOB + "key 'aka': expected a mapping with keys: k, op, opc, amf, sqn, got true (a boolean)",
        id="aka-not-mapping",
    ),
    pytest.param(
        bob("- impi: bob@ims.example.test\n  passwd: x\n" + SETS),
        BOB + "key 'passwd': unknown key; expected one of: impi, password, aka, implicit_sets, barred, "
        "max_devices, service_profile",
        id="unknown-key",
    ),
    pytest.param(
        bob("- password: x\n" + SETS),
        NO_ENTRY + "required key missing; expected a private identity user@realm",
        id="impi-missing",
    ),
    pytest.param(
        bob("- impi: bob\n  password: x\n" + SETS),
        NO_ENTRY + "expected a private identity user@realm (a NAI, TS 23.003 §13.3), got 'bob'",
        id="impi-not-nai",
    ),
    pytest.param(
        bob("- impi: bob@ims..example.test\n  password: x\n" + SETS),
        NO_ENTRY + "expected a private identity user@realm (a NAI, "
        "TS 23.003 §13.3), got 'bob@ims..example.test'",
        id="impi-bad-realm",
    ),
    pytest.param(
        bob("- impi: 5\n  password: x\n" + SETS),
        NO_ENTRY + "expected a private identity user@realm, got 5 (a number)",
        id="impi-number",
    ),
    pytest.param(
        bob("- impi: 999990123456789@ims.mnc001.mcc001.3gppnetwork.org\n  password: x\n" + SETS),
        NO_ENTRY + "expected <IMSI>@ims.mnc001.mcc001.3gppnetwork.org with an "
        "IMSI of 6 to 15 digits starting with 001001 or 00101 (MCC 001, MNC 001; TS 23.003 §13.3), "
        "got '999990123456789@ims.mnc001.mcc001.3gppnetwork.org'",
        id="impi-imsi-of-another-network",
    ),
    pytest.param(
        bob("- impi: alice@IMS.example.test\n  password: x\n" + SETS),
        "subs.yaml: subscribers[1] (alice@IMS.example.test): key 'impi': expected each IMPI once, "
        "already subscribers[0] (alice@ims.example.test)",
        id="impi-twice",
    ),
    pytest.param(
        bob("- impi: bob@ims.example.test\n" + SETS),
        BOB
        + "key 'password': required unless 'aka' is given; expected a Digest password, AKA credentials "
        "or both",
        id="no-credentials",
    ),
    pytest.param(
        bob("- impi: bob@ims.example.test\n  password: ''\n" + SETS),
        BOB + "key 'password': expected a non-empty string, got an empty string",
        id="password-empty",
    ),
    pytest.param(
        bob("- impi: bob@ims.example.test\n  password: [bob-secret]\n" + SETS),
        BOB + "key 'password': expected a non-empty string, got a list",
        id="password-list",
    ),
    pytest.param(
        bob("- impi: bob@ims.example.test\n  password: 1.5\n" + SETS),
        BOB + "key 'password': expected a non-empty string, got a number (value not shown)",
        id="password-float",
    ),
    pytest.param(
        bob("- impi: bob@ims.example.test\n  password: x\n"),
        BOB
        + "key 'implicit_sets': required key missing; expected a list of implicit registration sets, "
        "each a list of IMPUs",
        id="sets-missing",
    ),
    pytest.param(
        bob("- impi: bob@ims.example.test\n  password: x\n  implicit_sets: []\n"),
        BOB
        + "key 'implicit_sets': expected a list of implicit registration sets, each a list of IMPUs, "
        "got an empty list",
        id="sets-empty",
    ),
    pytest.param(
        bob(
            "- impi: bob@ims.example.test\n  password: x\n  implicit_sets: [sip:bob@ims.example.test]\n"
        ),
        BOB + "key 'implicit_sets[0]': expected a list of IMPUs, the default one first, got "
        "'sip:bob@ims.example.test' (write [sip:bob@ims.example.test] for a set of one)",
        id="set-not-list",
    ),
    pytest.param(
        bob("- impi: bob@ims.example.test\n  password: x\n  implicit_sets: [[]]\n"),
        BOB
        + "key 'implicit_sets[0]': expected a list of IMPUs, the default one first, got an empty list",
        id="set-empty",
    ),
    pytest.param(
        bob("- impi: bob@ims.example.test\n  password: x\n  implicit_sets: [[bob]]\n"),
        IMPU0 + "expected a sip:, sips: or tel: URI, got 'bob'",
        id="impu-not-uri",
    ),
    pytest.param(
        bob("- impi: bob@ims.example.test\n  password: x\n  implicit_sets: [[12]]\n"),
        IMPU0 + "expected a sip:, sips: or tel: URI, got 12 (a number)",
        id="impu-number",
    ),
    pytest.param(
        one_impu("mailto:bob@ims.example.test"),
        IMPU0 + "expected a sip:, sips: or tel: URI, got 'mailto:bob@ims.example.test'",
        id="impu-other-scheme",
    ),
    pytest.param(
        one_impu("sip:ims.example.test"),
        IMPU0 + "expected a SIP IMPU with a user part (sip:user@domain), got 'sip:ims.example.test'",
        id="impu-no-user",
    ),
    pytest.param(
        one_impu("sip:bob@ims.example.test:5060"),
        IMPU0 + "expected a SIP IMPU without a port, got 'sip:bob@ims.example.test:5060'",
        id="impu-port",
    ),
    pytest.param(
        one_impu("sip:bob:pw@ims.example.test"),
        IMPU0 + "expected a SIP IMPU without a password, got sip:bob:...",
        id="impu-password",
    ),
    pytest.param(
        one_impu("sip:bob@ims.example.test?a=b"),
        IMPU0 + "expected a SIP IMPU without ?headers, got 'sip:bob@ims.example.test?a=b'",
        id="impu-headers",
    ),
    pytest.param(
        bob(
            "- impi: bob@ims.example.test\n  password: x\n"
            "  implicit_sets: [['sip:bob@ims.example.test;transport=tcp']]\n"
        ),
        IMPU0 + "expected no URI parameter other than user=phone, got "
        "'sip:bob@ims.example.test;transport=tcp'",
        id="impu-parameter",
    ),
    pytest.param(
        bob(
            "- impi: bob@ims.example.test\n  password: x\n"
            "  implicit_sets: [['sip:+1-555-123-0002@ims.example.test;user=phone']]\n"
        ),
        IMPU0 + "expected a global number without visual separators before '@' "
        "with user=phone (sip:+<digits>@domain;user=phone), got "
        "'sip:+1-555-123-0002@ims.example.test;user=phone'",
        id="impu-user-phone-separators",
    ),
    pytest.param(
        bob(
            "- impi: bob@ims.example.test\n  password: x\n"
            "  implicit_sets: [['tel:1234;phone-context=ims.example.test']]\n"
        ),
        IMPU0 + "expected a global number tel:+<digits> (TS 23.003 §13.4), got "
        "'tel:1234;phone-context=ims.example.test'",
        id="impu-tel-local",
    ),
    pytest.param(
        one_impu("tel:+15551230002;isub=1"),
        IMPU0 + "expected a tel IMPU without parameters, got 'tel:+15551230002;isub=1'",
        id="impu-tel-parameter",
    ),
    pytest.param(
        bob(
            "- impi: bob@ims.example.test\n  password: x\n"
            "  implicit_sets: [[sip:bob@ims.example.test], ['tel:+1-555-123-0001']]\n"
        ),
        BOB + "key 'implicit_sets[1][0]': tel:+1-555-123-0001 is already an IMPU of subscribers[0] "
        "(alice@ims.example.test), at 'implicit_sets[0][1]'",
        id="impu-of-another-subscriber",
    ),
    pytest.param(
        bob(
            "- impi: bob@ims.example.test\n  password: x\n"
            "  implicit_sets: [[sip:bob@ims.example.test], ['sip:bob@IMS.example.test']]\n"
        ),
        BOB + "key 'implicit_sets[1][0]': sip:bob@IMS.example.test is already in implicit_sets[0][0]; "
        "expected each IMPU in one implicit set",
        id="impu-in-two-sets",
    ),
    pytest.param(
        bob(
            "- impi: bob@ims.example.test\n  password: x\n"
            "  implicit_sets: [[sip:bob@ims.example.test, 'sip:%62ob@ims.example.test']]\n"
        ),
        BOB + "key 'implicit_sets[0][1]': sip:%62ob@ims.example.test is already in implicit_sets[0][0]; "
        "expected each IMPU in one implicit set",
        id="impu-twice-in-a-set",
    ),
    pytest.param(
        bob(
            "- impi: bob@ims.example.test\n  password: x\n"
            "  implicit_sets: [['sip:alice.old@ims.example.test']]\n"
        ),
        IMPU0 + "sip:alice.old@ims.example.test is already an IMPU of subscribers[0] "
        "(alice@ims.example.test), at 'barred[0]'",
        id="impu-barred-for-another-subscriber",
    ),
    pytest.param(
        bob(
            "- impi: bob@ims.example.test\n  password: x\n"
            + SETS
            + "  barred: [sip:alice@ims.example.test]\n"
        ),
        BOB + "key 'barred[0]': sip:alice@ims.example.test is already an IMPU of subscribers[0] "
        "(alice@ims.example.test), at 'implicit_sets[0][0]'",
        id="barred-of-another-subscriber",
    ),
    pytest.param(
        bob(
            "- impi: bob@ims.example.test\n  password: x\n"
            + SETS
            + "  barred: [sip:bob@ims.example.test]\n"
        ),
        BOB + "key 'barred[0]': sip:bob@ims.example.test is the default IMPU, at 'implicit_sets[0][0]'; "
        "expected the default IMPU of a set to be unbarred (put another IMPU first)",
        id="barred-default",
    ),
    pytest.param(
        bob(
            "- impi: bob@ims.example.test\n  password: x\n"
            + SETS
            + "  barred: [sip:b@ims.example.test, sip:b@IMS.example.test]\n"
        ),
        BOB + "key 'barred[1]': sip:b@IMS.example.test is already barred[0]; expected each IMPU once",
        id="barred-twice",
    ),
    pytest.param(
        bob(
            "- impi: bob@ims.example.test\n  password: x\n" + SETS + "  barred: sip:b@ims.example.test\n"
        ),
        BOB + "key 'barred': expected a list of IMPUs, got 'sip:b@ims.example.test'",
        id="barred-not-list",
    ),
    pytest.param(
        bob("- impi: bob@ims.example.test\n  password: x\n" + SETS + "  barred: [tel:5]\n"),
        BOB + "key 'barred[0]': expected a sip:, sips: or tel: URI, got 'tel:5'",
        id="barred-not-impu",
    ),
    pytest.param(
        bob("- impi: bob@ims.example.test\n  password: x\n" + SETS + "  max_devices: 0\n"),
        BOB + "key 'max_devices': expected a positive integer (1 or more) or null, got 0 (a number)",
        id="max-devices-zero",
    ),
    pytest.param(
        bob("- impi: bob@ims.example.test\n  password: x\n" + SETS + "  max_devices: '3'\n"),
        BOB + "key 'max_devices': expected a positive integer (1 or more) or null, got '3'",
        id="max-devices-string",
    ),
    pytest.param(
        bob("- impi: bob@ims.example.test\n  password: x\n" + SETS + "  max_devices: true\n"),
        BOB + "key 'max_devices': expected a positive integer (1 or more) or null, got true (a boolean)",
        id="max-devices-bool",
    ),
    pytest.param(
        bob("- impi: bob@ims.example.test\n  password: x\n" + SETS + "  max_devices: 2.5\n"),
        BOB + "key 'max_devices': expected a positive integer (1 or more) or null, got 2.5 (a number)",
        id="max-devices-float",
    ),
    pytest.param(
        "subscribers:\n  - alice\n",
        "subs.yaml: subscribers[0]: expected a mapping with keys: impi, password, aka, implicit_sets, "
        "barred, max_devices, service_profile, got 'alice'",
        id="entry-not-mapping",
    ),
    pytest.param(
        "",
        "subs.yaml: expected a mapping with the key 'subscribers', got an empty document",
        id="empty-file",
    ),
    pytest.param(
        "- alice\n",
        "subs.yaml: expected a mapping with the key 'subscribers', got a list",
        id="top-level-list",
    ),
    pytest.param(
        "subscribers: []\nusers: []\n",
        "subs.yaml: key 'users': unknown key; expected: subscribers",
        id="top-level-unknown-key",
    ),
    pytest.param(
        "{}\n",
        "subs.yaml: key 'subscribers': required key missing; expected a list of subscribers",
        id="subscribers-missing",
    ),
    pytest.param(
        "subscribers: {}\n",
        "subs.yaml: key 'subscribers': expected a list of subscribers, got a mapping",
        id="subscribers-not-list",
    ),
    pytest.param(
        "subscribers:\n  - impi: bob@ims.example.test\n    implicit_sets: [[sip:bob@ims.example.test]\n"
        "    password: bob-secret\n",
        "subs.yaml: line 4, column 5: invalid YAML: expected ',' or ']', but got '<scalar>' "
        "(while parsing a flow sequence)",
        id="yaml-syntax",
    ),
    pytest.param(
        "subscribers:\n  - impi: bob@ims.example.test\n    password: bob-secret\n"
        "    password: bob-secret\n",
        "subs.yaml: line 4, column 5: invalid YAML: duplicate key 'password'",
        id="yaml-duplicate-key",
    ),
    pytest.param(
        "subscribers: !!python/object:os.system {}\n",
        "subs.yaml: line 1, column 14: invalid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object:os.system'",
        id="yaml-unsafe-tag",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_validation_message(write: Writer, text: str, expected: str) -> None:
    assert message_of(write(text)) == expected


def test_error_attributes(write: Writer) -> None:
    with pytest.raises(SubscriberError) as info:
        load_subscribers(write(aka(amf="b9b")))
    error = info.value
    assert (error.source, error.index, error.impi, error.key) == (
        FILE,
        1,
        "bob@ims.example.test",
        "aka.amf",
    )
    assert error.detail == "expected 4 hex digits (2 octets), got 'b9b'"


def test_missing_file(write: Writer) -> None:
    assert message_of("nowhere.yaml") == "nowhere.yaml: cannot read the subscriber file: no such file"


def test_not_utf8(write: Writer, tmp_path: Path) -> None:
    (tmp_path / FILE).write_bytes(b"subscribers: []\n# \xff\n")
    assert (
        message_of(FILE)
        == "subs.yaml: cannot read the subscriber file: not UTF-8 text (byte 18 is 0xff)"
    )


def test_a_directory_is_not_a_file(write: Writer, tmp_path: Path) -> None:
    (tmp_path / "dir.yaml").mkdir()
    assert message_of("dir.yaml").startswith("dir.yaml: cannot read the subscriber file: ")


# --------------------------------------------------------------------------------------------------
# Look-ups


@pytest.fixture
def demo() -> SubscriberDirectory:
    return load_subscribers(DEMO)


@pytest.mark.parametrize(
    ("uri", "impi"),
    [
        ("sip:alice@ims.example.test", "alice@ims.example.test"),
        ("sip:alice@IMS.Example.TEST", "alice@ims.example.test"),  # host in any case
        ("sip:alice@ims.example.test.", "alice@ims.example.test"),  # trailing dot of a FQDN
        ("sip:%61lice@ims.example.test", "alice@ims.example.test"),  # escapes decoded
        ("sip:alice@ims.example.test;transport=tcp", "alice@ims.example.test"),  # parameters dropped
        ("tel:+15551230001", "alice@ims.example.test"),
        ("tel:+1-555-123-0001", "alice@ims.example.test"),  # visual separators
        ("tel:+1.555.(123).0001", "alice@ims.example.test"),
        ("sip:alice.work@ims.example.test", "alice@ims.example.test"),
        ("sip:alice.old@ims.example.test", "alice@ims.example.test"),  # barred: still alice's
        ("sip:bob@ims.example.test", "bob@ims.example.test"),
        (
            "sip:+15551230003@ims.example.test;user=phone",
            "001010123456789@ims.mnc001.mcc001.3gppnetwork.org",
        ),
        ("sip:+15551230003@ims.example.test", "001010123456789@ims.mnc001.mcc001.3gppnetwork.org"),
        ("tel:+15551230003", "001010123456789@ims.mnc001.mcc001.3gppnetwork.org"),
        ("tel:+1-555-123-0003", "001010123456789@ims.mnc001.mcc001.3gppnetwork.org"),
    ],
)
def test_lookup_by_impu(demo: SubscriberDirectory, uri: str, impi: str) -> None:
    for key in (uri, parse_uri(uri)):
        found = demo.by_impu(key)
        assert found is not None and found.impi == impi
        assert found.owns(key)


@pytest.mark.parametrize(
    "uri",
    [
        "sip:Alice@ims.example.test",  # the user part is case-sensitive (RFC 3261 §19.1.4)
        "sips:alice@ims.example.test",  # another scheme is another address of record
        "sip:alice@ims.example.test:5060",  # so is another port
        "sip:+15551230001@ims.example.test;user=phone",  # tel and sip are not aliased
        "tel:+15551230002",
        "sip:carol@ims.example.test",
        "mailto:alice@ims.example.test",
        "not a uri",
    ],
)
def test_lookup_by_unknown_impu(demo: SubscriberDirectory, uri: str) -> None:
    assert demo.by_impu(uri) is None
    assert not any(s.owns(uri) for s in demo)


def test_lookup_by_impi(demo: SubscriberDirectory) -> None:
    alice = demo.by_impi("alice@ims.example.test")
    assert alice is not None and alice is demo.by_impi("alice@IMS.EXAMPLE.test")  # realm in any case
    assert demo.by_impi("Alice@ims.example.test") is None  # the user name as written
    assert demo.by_impi("001010123456789@ims.mnc001.mcc001.3gppnetwork.org") is not None
    assert demo.by_impi("carol@ims.example.test") is None
    assert demo.by_impi("") is None


def test_directory_iteration_and_len(demo: SubscriberDirectory) -> None:
    assert len(demo) == 3
    assert [s.impi.split("@")[0] for s in demo] == ["alice", "bob", "001010123456789"]
    assert "3 subscribers" in repr(demo)


def test_implicit_sets(demo: SubscriberDirectory) -> None:
    alice = demo.by_impi("alice@ims.example.test")
    assert alice is not None
    first, work = alice.implicit_sets
    assert first.default == SipUri.parse("sip:alice@ims.example.test")
    assert alice.default_impu == first.default
    assert alice.implicit_set_of("tel:+1-555-123-0001") is first
    assert alice.implicit_set_of(parse_uri("sip:alice@IMS.example.test")) is first
    assert alice.implicit_set_of("sip:alice.work@ims.example.test") is work
    assert alice.implicit_set_of("sip:alice.old@ims.example.test") is None  # barred, in no set
    assert alice.implicit_set_of("sip:bob@ims.example.test") is None
    assert "tel:+15551230001" in first and TelUri("+1-555-123-0001") in first
    assert "sip:alice.work@ims.example.test" not in first and 42 not in first
    assert len(first) == 2 and list(first) == list(first.impus)
    assert first.keys == ("sip:alice@ims.example.test", "tel:+15551230001")
    assert [str(u) for u in alice.impus] == [
        "sip:alice@ims.example.test",
        "tel:+15551230001",
        "sip:alice.work@ims.example.test",
    ]
    assert alice.aors[-1] == "sip:alice.old@ims.example.test"


def test_barred_identities(write: Writer) -> None:
    text = ALICE.replace(
        "      - [sip:alice@ims.example.test, tel:+15551230001]\n",
        "      - [sip:alice@ims.example.test, tel:+15551230001, sip:alice.kid@ims.example.test]\n",
    ).replace(
        "barred: [sip:alice.old@ims.example.test]",
        "barred: [sip:alice.old@ims.example.test, sip:alice.kid@IMS.example.test]",
    )
    alice = load_subscribers(write(text)).by_impi("alice@ims.example.test")
    assert alice is not None
    assert alice.barred == frozenset(
        {"sip:alice.old@ims.example.test", "sip:alice.kid@ims.example.test"}
    )
    # barred and in a set: part of the set, but left out of what the registrar advertises
    assert alice.is_barred("sip:alice.kid@ims.example.test") and alice.owns(
        "sip:alice.kid@ims.example.test"
    )
    kid_set = alice.implicit_set_of("sip:alice.kid@ims.example.test")
    assert kid_set is alice.implicit_sets[0] and len(kid_set) == 3
    assert [str(u) for u in alice.associated_uris("tel:+15551230001")] == [
        "sip:alice@ims.example.test",
        "tel:+15551230001",
    ]
    # barred and in no set: owned, not in any set, nothing to advertise
    assert alice.is_barred("sip:alice.old@ims.example.test") and alice.owns(
        "sip:alice.old@ims.example.test"
    )
    assert alice.associated_uris("sip:alice.old@ims.example.test") == ()
    assert not alice.is_barred("sip:alice@ims.example.test") and not alice.is_barred("junk")


def test_hook_record(demo: SubscriberDirectory) -> None:
    carol = demo.by_impu("tel:+15551230003")
    assert carol is not None
    record = carol.hook_record()
    assert isinstance(record, hook_types.Subscriber)
    assert record == hook_types.Subscriber(
        impi="001010123456789@ims.mnc001.mcc001.3gppnetwork.org",
        implicit_sets=(("sip:+15551230003@ims.example.test;user=phone", "tel:+15551230003"),),
        auth_schemes=("aka",),
    )


# --------------------------------------------------------------------------------------------------
# Secrets stay out of reprs and messages


def test_secrets_absent_from_reprs(write: Writer) -> None:
    directory = load_subscribers(write(ISSUE_EXAMPLE))
    store = MemorySubscriberStore(directory)
    (alice,) = directory
    assert alice.aka is not None
    texts = [repr(directory), repr(store), repr(alice), str(alice), repr(alice.aka), str(alice.aka)]
    texts += [repr(list(directory)), repr(alice.hook_record()), f"{alice!r:}"]
    for text in texts:
        for secret in ("alice-secret", K_HEX, OP_HEX):
            assert secret not in text.lower()
        for octets in (alice.aka.k, alice.aka.op):
            assert repr(octets) not in text and str(octets) not in text
    assert "password=<hidden>" in repr(alice)
    assert (
        repr(alice.aka)
        == "AkaCredentials(k=<16 octets>, op=<16 octets>, opc=None, amf='b9b9', sqn=0xff9bb4d0b607)"
    )


@pytest.mark.parametrize("field", ["k", "op", "opc"])
@pytest.mark.parametrize(
    "mangle", [lambda s: s + "0", lambda s: s[:-1], lambda s: s[:-1] + "g", lambda s: s * 2]
)
def test_secrets_absent_from_messages(write: Writer, field: str, mangle: Callable[[str], str]) -> None:
    secret = {"k": K_HEX, "op": OP_HEX, "opc": OPC_HEX}[field]
    fields = {field: mangle(secret)} if field != "opc" else {"op": "-", "opc": mangle(secret)}
    text = message_of(write(aka(**fields)))
    assert f"key 'aka.{field}'" in text and "(value not shown)" in text
    assert secret[:8] not in text.lower()


def test_password_never_in_messages(write: Writer) -> None:
    for body in ("  password: [alice-secret]\n", "  password: {alice-secret: 1}\n", "  password: yes\n"):
        text = message_of(write(bob("- impi: bob@ims.example.test\n" + body + SETS)))
        assert "alice-secret" not in text and "True" not in text and "true" not in text


def test_sip_impu_with_password_is_not_echoed() -> None:
    with pytest.raises(ValueError) as info:
        parse_impu("sip:bob:bob-secret@ims.example.test")
    assert "bob-secret" not in str(info.value)


def test_model_errors_name_no_secret() -> None:
    with pytest.raises(ValueError) as info:
        AkaCredentials(
            k=bytes.fromhex(K_HEX)[:15], op=bytes.fromhex(OP_HEX), opc=None, amf=b"\0\0", sqn=0
        )
    assert str(info.value) == "AKA K must be 16 octets"
    with pytest.raises(ValueError, match="exactly one of OP and OPc"):
        AkaCredentials(k=bytes(16), op=bytes(16), opc=bytes(16), amf=b"\0\0", sqn=0)
    with pytest.raises(ValueError, match="exactly one of OP and OPc"):
        AkaCredentials(k=bytes(16), op=None, opc=None, amf=b"\0\0", sqn=0)
    with pytest.raises(ValueError, match="AMF must be 2 octets"):
        AkaCredentials(k=bytes(16), op=bytes(16), opc=None, amf=b"\0", sqn=0)
    with pytest.raises(ValueError, match="SQN"):
        AkaCredentials(k=bytes(16), op=bytes(16), opc=None, amf=b"\0\0", sqn=1 << 48)


# --------------------------------------------------------------------------------------------------
# The model built in code


def _set(*uris: str) -> ImplicitSet:
    return ImplicitSet(tuple(parse_impu(u) for u in uris))


def test_subscriber_invariants() -> None:
    one = (_set("sip:x@y.test"),)
    assert Subscriber("x@y.test", password="pw", implicit_sets=one).auth_schemes == ("digest",)
    with pytest.raises(ValueError, match="needs a Digest password, AKA credentials or both"):
        Subscriber("x@y.test", implicit_sets=one)
    with pytest.raises(ValueError, match="user@realm"):
        Subscriber("x", password="pw", implicit_sets=one)
    with pytest.raises(ValueError, match="max_devices"):
        Subscriber("x@y.test", password="pw", implicit_sets=one, max_devices=0)
    with pytest.raises(ValueError, match="two implicit registration sets"):
        Subscriber("x@y.test", password="pw", implicit_sets=(*one, _set("sip:x@Y.test")))
    with pytest.raises(ValueError, match="default IMPU"):
        Subscriber("x@y.test", password="pw", implicit_sets=one, barred=frozenset({"sip:x@y.test"}))
    with pytest.raises(ValueError, match="at least one IMPU"):
        ImplicitSet(())
    with pytest.raises(ValueError, match="twice in one implicit registration set"):
        _set("tel:+15550100", "tel:+1-555-0100")


def test_an_implicit_sets_aor_is_its_default_impus() -> None:
    for uris in (("sip:X%41@Y.Test.", "tel:+15550100"), ("tel:+1-555-0100", "sip:x@y.test")):
        implicit_set = _set(*uris)
        assert implicit_set.aor == implicit_set.default.aor == implicit_set.keys[0]
    assert _set("sip:XA@y.test").aor == "sip:XA@y.test"


def test_directory_rejects_repeats() -> None:
    x = Subscriber("x@y.test", password="pw", implicit_sets=(_set("sip:x@y.test"),))
    x2 = Subscriber("x@Y.TEST", password="pw", implicit_sets=(_set("sip:x2@y.test"),))
    z = Subscriber("z@y.test", password="pw", implicit_sets=(_set("sip:z@y.test", "sip:x@y.test"),))
    with pytest.raises(ValueError, match=r"IMPI x@Y\.TEST is listed twice"):
        SubscriberDirectory([x, x2])
    with pytest.raises(ValueError, match=r"sip:x@y\.test belongs to both x@y\.test and z@y\.test"):
        SubscriberDirectory([x, z])


@pytest.mark.parametrize(
    "impi",
    [
        "alice@ims.example.test",
        "001010123456789@ims.mnc001.mcc001.3gppnetwork.org",  # MNC 01, written 001 in the realm
        "310150123456789@ims.mnc150.mcc310.3gppnetwork.org",  # a three-digit MNC
        "user.name+tag@example.test",
    ],
)
def test_good_impis(impi: str) -> None:
    assert check_impi(impi) == impi


@pytest.mark.parametrize(
    "impi",
    [
        "alice",
        "@ims.example.test",
        "alice@",
        "a b@x.test",
        "a@-x.test",
        "00101@ims.mnc001.mcc001.3gppnetwork.org",
        "0020101234@ims.mnc001.mcc001.3gppnetwork.org",
    ],
)
def test_bad_impis(impi: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        check_impi(impi)


# --------------------------------------------------------------------------------------------------
# The provider


def test_memory_store_is_a_subscriber_store(demo: SubscriberDirectory) -> None:
    store = MemorySubscriberStore(demo)
    assert isinstance(store, SubscriberStore)

    async def scenario() -> list[str | None]:
        found = [
            await store.get_by_impi("alice@ims.example.test"),
            await store.get_by_impu("tel:+1-555-123-0001"),
            await store.get_by_impu(parse_uri("sip:+15551230003@ims.example.test;user=phone")),
            await store.get_by_impu("sip:nobody@ims.example.test"),
            await store.get_by_impi("nobody@ims.example.test"),
        ]
        return [None if s is None else s.impi for s in found]

    assert asyncio.run(scenario()) == [
        "alice@ims.example.test",
        "alice@ims.example.test",
        "001010123456789@ims.mnc001.mcc001.3gppnetwork.org",
        None,
        None,
    ]


def test_memory_store_from_file(write: Writer) -> None:
    store = MemorySubscriberStore.from_file(write(ISSUE_EXAMPLE))
    found = asyncio.run(store.get_by_impu("sip:alice.work@ims.example.test"))
    assert found is not None and found.max_devices == 3
    with pytest.raises(SubscriberError, match=r"^subs\.yaml: "):
        MemorySubscriberStore.from_file(write("subscribers: 1\n"))


def test_a_vendor_store_fits_the_protocol() -> None:
    class Ldap:
        async def get_by_impi(self, impi: str) -> Subscriber | None:
            return None

        async def get_by_impu(self, uri: object) -> Subscriber | None:
            return None

    assert isinstance(Ldap(), SubscriberStore)
    assert not isinstance(object(), SubscriberStore)


# --------------------------------------------------------------------------------------------------
# The documentation page


def test_documentation_examples() -> None:
    page = REPO_ROOT / "docs" / "subscribers.rst"
    result = doctest.testfile(
        str(page),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False,
    )
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {page} failed"
