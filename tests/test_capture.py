"""imscore.capture: records, pcap bytes (checked by hand and by tshark), ladders, the transport tap."""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from imscore.capture import (
    Capture,
    CaptureError,
    Mark,
    MessageRecord,
    PcapWriter,
    html_ladder,
    read_pcap,
    summarize,
    svg_ladder,
    text_ladder,
    write_pcap,
)
from imscore.capture.pcap import MAX_UDP_PAYLOAD_V4
from imscore.sip import Request, Response, parse_datagram
from imscore.transport import Flow, Transports

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(
    TSHARK is None, reason="tshark not installed (apt-get install tshark; listed in .ci/run)"
)
SVG = "{http://www.w3.org/2000/svg}"

ALICE = ("127.0.0.1", 5070)
CORE = ("127.0.0.1", 5060)
BOB = ("127.0.0.1", 5080)
BOB6 = ("::1", 5090)


def request(method: str, uri: str, branch: str, transport: str = "UDP", body: bytes = b"") -> bytes:
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:5070;branch=z9hG4bK{branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        "To: <sip:bob@ims.example.test>\r\n"
        "From: <sip:alice@ims.example.test>;tag=a1\r\n"
        f"Call-ID: {branch}@test\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def response(status: str, method: str, branch: str, transport: str = "UDP") -> bytes:
    return (
        f"SIP/2.0 {status}\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:5070;branch=z9hG4bK{branch}\r\n"
        "To: <sip:bob@ims.example.test>;tag=b1\r\n"
        "From: <sip:alice@ims.example.test>;tag=a1\r\n"
        f"Call-ID: {branch}@test\r\n"
        f"CSeq: 1 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def exchange(
    transport: str, a: tuple[str, int], b: tuple[str, int], n: int, t0: float = 100.0
) -> list[MessageRecord]:
    """n OPTIONS from a to b, each answered 200."""
    records = []
    for i in range(n):
        branch = f"{transport}{i}"
        records.append(MessageRecord(t0 + i, transport, a, b, request("OPTIONS", "sip:bob@x", branch)))
        records.append(
            MessageRecord(t0 + i + 0.001, transport, b, a, response("200 OK", "OPTIONS", branch))
        )
    return records


def checksum_ok(data: bytes) -> bool:
    """The Internet checksum over data that includes its checksum field sums to 0xFFFF."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def packets(blob: bytes) -> list[tuple[int, int, bytes]]:
    """(seconds, microseconds, frame) of each packet after the 24-octet global header."""
    out, offset = [], 24
    while offset < len(blob):
        sec, usec, incl, orig = struct.unpack("<IIII", blob[offset : offset + 16])
        assert incl == orig
        out.append((sec, usec, blob[offset + 16 : offset + 16 + incl]))
        offset += 16 + incl
    assert offset == len(blob)
    return out


def written(records: list[MessageRecord]) -> bytes:
    buffer = io.BytesIO()
    writer = PcapWriter(buffer)
    for record in records:
        writer.write(record)
    writer.close()
    return buffer.getvalue()


# --- records ------------------------------------------------------------------------------------------
def test_record_normalizes_addresses_and_rejects_bad_ones() -> None:
    record = MessageRecord(1.5, "TLS", ("[::0001]", 5061), ("127.0.0.1", 1), bytearray(b"x"))
    assert record.transport == "tls" and record.src == ("::1", 5061) and record.data == b"x"
    with pytest.raises(CaptureError, match=r"'alice\.example' is not an IPv4 or IPv6"):
        MessageRecord(0, "udp", ("alice.example", 5060), CORE, b"x")
    with pytest.raises(CaptureError, match="port must be an integer from 0 to 65535"):
        MessageRecord(0, "udp", ("127.0.0.1", 70000), CORE, b"x")
    with pytest.raises(CaptureError, match="bad transport"):
        MessageRecord(0, "u d p", ALICE, CORE, b"x")
    with pytest.raises(CaptureError, match="time must be"):
        MessageRecord(-1, "udp", ALICE, CORE, b"x")
    with pytest.raises(CaptureError, match="data must be bytes"):
        MessageRecord(0, "udp", ALICE, CORE, "text")  # type: ignore[arg-type]


def test_summaries() -> None:
    assert summarize(request("INVITE", "sip:bob@ims.example.test", "1")).label == "INVITE bob"
    assert summarize(request("REGISTER", "sip:ims.example.test", "1")).label == "REGISTER"
    assert summarize(request("MESSAGE", "tel:+15551230001", "1")).label == "MESSAGE +15551230001"
    ok = summarize(response("401 Unauthorized", "REGISTER", "1"))
    assert (ok.kind, ok.status, ok.method) == ("response", 401, "REGISTER")
    assert ok.label == "401 Unauthorized (REGISTER)" and ok.short == "401 (REGISTER)"
    garbage = summarize(b"\x00\xffnot sip at all")
    assert garbage.kind == "unknown" and garbage.label.startswith("? ")


# --- pcap bytes ---------------------------------------------------------------------------------------
def test_pcap_udp_ipv4_headers_lengths_and_checksums() -> None:
    data = request("OPTIONS", "sip:bob@x", "v4")
    blob = written([MessageRecord(1700000000.25, "udp", ALICE, CORE, data)])
    magic, major, minor, zone, sigfigs, snaplen, linktype = struct.unpack("<IHHiIII", blob[:24])
    assert (magic, major, minor, zone, sigfigs, linktype) == (0xA1B2C3D4, 2, 4, 0, 0, 1)
    assert blob[:4] == bytes.fromhex("d4c3b2a1") and snaplen >= 65535
    ((sec, usec, frame),) = packets(blob)
    assert (sec, usec) == (1700000000, 250000)
    assert frame[0:6] == bytes([2, 0, 127, 0, 0, 1]) == frame[6:12]  # MACs made from the IPs
    assert frame[12:14] == b"\x08\x00"
    ip = frame[14:34]
    assert ip[0] == 0x45 and ip[9] == 17 and ip[8] == 64
    assert struct.unpack("!H", ip[2:4])[0] == 20 + 8 + len(data) == len(frame) - 14
    assert checksum_ok(ip)
    assert ip[12:16] == bytes([127, 0, 0, 1])
    udp = frame[34:]
    sport, dport, length, checksum = struct.unpack("!HHHH", udp[:8])
    assert (sport, dport, length) == (5070, 5060, 8 + len(data))
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, length)
    assert checksum != 0 and checksum_ok(pseudo + udp)
    assert udp[8:] == data


def test_pcap_udp_ipv6_checksum_is_computed() -> None:
    data = request("OPTIONS", "sip:bob@x", "v6")
    ((_, _, frame),) = packets(written([MessageRecord(5, "udp", ("::1", 5070), ("::1", 5060), data)]))
    assert frame[12:14] == b"\x86\xdd"
    ip = frame[14:54]
    assert ip[0] >> 4 == 6 and ip[6] == 17 and ip[7] == 64
    assert struct.unpack("!H", ip[4:6])[0] == 8 + len(data)
    udp = frame[54:]
    assert struct.unpack("!H", udp[6:8])[0] != 0
    pseudo = ip[8:40] + struct.pack("!I3xB", len(udp), 17)
    assert checksum_ok(pseudo + udp)


def test_pcap_mixed_families_are_written_as_ipv6_with_a_mapped_address() -> None:
    record = MessageRecord(5, "udp", ("::", 5060), ("127.0.0.1", 5070), b"SIP/2.0 200 OK\r\n\r\n")
    ((_, _, frame),) = packets(written([record]))
    assert frame[12:14] == b"\x86\xdd"
    assert frame[14 + 24 : 14 + 40] == bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1])


def test_pcap_tcp_sequence_numbers_follow_each_direction() -> None:
    first = request("OPTIONS", "sip:bob@x", "t1", "TCP")
    second = request("OPTIONS", "sip:bob@x", "t2", "TCP")
    answer = response("200 OK", "OPTIONS", "t1", "TCP")
    records = [
        MessageRecord(1, "tcp", ALICE, CORE, first),
        MessageRecord(2, "tcp", ALICE, CORE, second),
        MessageRecord(3, "tcp", CORE, ALICE, answer),
    ]
    segments = []
    for _, _, frame in packets(written(records)):
        ip = frame[14:34]
        assert ip[9] == 6 and checksum_ok(ip)
        tcp = frame[34:]
        pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
        assert checksum_ok(pseudo + tcp)
        sport, _, seq, ack, offset, flags = struct.unpack("!HHIIBB", tcp[:14])
        assert offset >> 4 == 5 and flags == 0x18  # PSH|ACK, no SYN
        segments.append((sport, seq, ack, tcp[20:]))
    (_, seq1, ack1, p1), (_, seq2, ack2, p2), (sport3, seq3, ack3, p3) = segments
    assert (p1, p2, p3) == (first, second, answer)
    assert seq2 == seq1 + len(first) and ack2 == ack1
    assert sport3 == 5060 and seq3 == ack1 and ack3 == seq2 + len(second)


def test_pcap_large_tcp_message_is_split_and_read_back() -> None:
    body = b"x" * 150_000
    big = request("MESSAGE", "sip:bob@x", "big", "TCP", body)
    records = [MessageRecord(1, "tcp", ALICE, CORE, big), *exchange("tcp", ALICE, CORE, 1, t0=2)]
    blob = written(records)
    frames = packets(blob)
    assert len(frames) == 3 + 2  # 150 kB in 65,495-octet segments, then the exchange
    assert all(len(frame) <= 14 + 65535 for _, _, frame in frames)


def test_pcap_oversized_udp_message_is_skipped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    too_big = request("MESSAGE", "sip:bob@x", "big", body=b"y" * MAX_UDP_PAYLOAD_V4)
    buffer = io.BytesIO()
    writer = PcapWriter(buffer)
    writer.write(MessageRecord(1, "udp", ALICE, CORE, too_big))
    writer.write(exchange("udp", ALICE, CORE, 1)[0])
    assert (writer.skipped, writer.written, writer.packets) == (1, 1, 1)
    assert "larger than one datagram" in caplog.text


def test_pcap_is_deterministic_and_timestamps_round_to_microseconds(tmp_path: Path) -> None:
    records = exchange("udp", ALICE, CORE, 2) + exchange("tcp", ALICE, BOB6, 2)
    records.append(MessageRecord(1.9999996, "udp", ALICE, CORE, b"OPTIONS sip:x SIP/2.0\r\n\r\n"))
    write_pcap(tmp_path / "a.pcap", records)
    write_pcap(tmp_path / "b.pcap", records)
    blob = (tmp_path / "a.pcap").read_bytes()
    assert blob == (tmp_path / "b.pcap").read_bytes()
    assert packets(blob)[-1][:2] == (2, 0)


def test_read_pcap_round_trip(tmp_path: Path) -> None:
    records = (
        exchange("udp", ALICE, CORE, 2)
        + exchange("tcp", ALICE, BOB, 2)
        + exchange("udp", ("::1", 5070), BOB6, 1)
        + exchange("tls", ALICE, ("127.0.0.1", 5061), 1)
    )
    path = tmp_path / "c.pcap"
    assert write_pcap(path, records) == len(records)
    back = read_pcap(path)
    assert [(r.transport, r.src, r.dst, r.data) for r in back] == [
        (r.transport, r.src, r.dst, r.data) for r in records
    ]
    assert [round(r.time, 6) for r in back] == [round(r.time, 6) for r in records]


def test_read_pcap_rejects_what_is_not_a_pcap(tmp_path: Path) -> None:
    path = tmp_path / "not.pcap"
    path.write_bytes(b"hello, this is not a capture file")
    with pytest.raises(CaptureError, match=r"not\.pcap: not a classic pcap file"):
        read_pcap(path)
    path.write_bytes(written(exchange("udp", ALICE, CORE, 1))[:-5])
    with pytest.raises(CaptureError, match="truncated packet"):
        read_pcap(path)


def tshark_sip(path: Path, *options: str) -> list[list[str]]:
    """One row per SIP message tshark dissects: method, status code, transport protocol."""
    assert TSHARK is not None
    done = subprocess.run(
        [
            TSHARK,
            "-n",
            "-r",
            str(path),
            *options,
            "-Y",
            "sip",
            "-T",
            "fields",
            "-e",
            "sip.Method",
            "-e",
            "sip.Status-Code",
            "-e",
            "ip.version",
            "-e",
            "ipv6.version",
            "-e",
            "udp.srcport",
            "-e",
            "tcp.srcport",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [line.split("\t") for line in done.stdout.splitlines()]


@needs_tshark
@pytest.mark.parametrize(
    ("transport", "a", "b"),
    [
        ("udp", ALICE, ("127.0.0.1", 34567)),
        ("tcp", ALICE, ("127.0.0.1", 34568)),
        ("udp", ("::1", 40000), ("::1", 34569)),
        ("tcp", ("::1", 40001), ("::1", 34570)),
        ("tls", ALICE, ("127.0.0.1", 5061)),
    ],
    ids=["udp", "tcp", "udp-ipv6", "tcp-ipv6", "tls-as-tcp"],
)
def test_tshark_dissects_every_sip_message(
    tmp_path: Path, transport: str, a: tuple[str, int], b: tuple[str, int]
) -> None:
    records = exchange(transport, a, b, 3)
    path = tmp_path / f"{transport}.pcap"
    write_pcap(path, records)
    rows = tshark_sip(path)
    assert len(rows) == len(records)
    assert [r[0] for r in rows] == ["OPTIONS", ""] * 3
    assert [r[1] for r in rows] == ["", "200"] * 3
    port_column = 4 if transport == "udp" else 5
    assert [int(r[port_column]) for r in rows] == [a[1], b[1]] * 3
    if ":" in a[0]:
        assert all(r[3] == "6" for r in rows)


@needs_tshark
def test_tshark_finds_every_checksum_good_and_reassembles_a_long_message(tmp_path: Path) -> None:
    big = request("MESSAGE", "sip:bob@x", "big", "TCP", b"z" * 100_000)
    records = (
        exchange("udp", ALICE, CORE, 1)
        + exchange("udp", ("::1", 5070), BOB6, 1)
        + [MessageRecord(200, "tcp", ALICE, BOB, big)]
        + exchange("tcp", ALICE, BOB, 1, t0=201)
    )
    path = tmp_path / "checks.pcap"
    write_pcap(path, records)
    checks = [
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
        "-o",
        "tcp.check_checksum:TRUE",
    ]
    assert TSHARK is not None
    good = subprocess.run(
        [
            TSHARK,
            "-n",
            "-r",
            str(path),
            *checks,
            "-T",
            "fields",
            "-e",
            "ip.checksum.status",
            "-e",
            "udp.checksum.status",
            "-e",
            "tcp.checksum.status",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    lines = good.stdout.splitlines()
    assert len(lines) == 4 + 2 + 2  # the 100 kB message takes two segments
    for line in lines:  # 1 is "good" (0 would be "bad", 2 "unverified")
        statuses = [value for value in line.split("\t") if value]
        assert statuses and all(value == "1" for value in statuses), line
    rows = tshark_sip(path, *checks)
    assert [r[0] or r[1] for r in rows] == [
        "OPTIONS",
        "200",
        "OPTIONS",
        "200",
        "MESSAGE",
        "OPTIONS",
        "200",
    ]


# --- ladders ------------------------------------------------------------------------------------------
def small_capture() -> Capture:
    records = [
        MessageRecord(10.0, "udp", ALICE, CORE, request("REGISTER", "sip:ims.example.test", "r1")),
        MessageRecord(10.0012, "udp", CORE, ALICE, response("401 Unauthorized", "REGISTER", "r1")),
        MessageRecord(10.05, "udp", ALICE, CORE, request("INVITE", "sip:bob@ims.example.test", "i1")),
        MessageRecord(10.06, "tcp", CORE, BOB, request("INVITE", "sip:bob@ims.example.test", "i1")),
        MessageRecord(10.07, "tls", CORE, BOB6, request("INVITE", "sip:bob@ims.example.test", "i1")),
        MessageRecord(10.08, "tcp", BOB, CORE, response("180 Ringing", "INVITE", "i1")),
    ]
    names = {ALICE: "alice-phone", CORE: "imscore", BOB: "bob-desk", BOB6: "bob-mobile"}
    return Capture(records, names=names)


LADDER = """\
  ms        alice-phone              imscore               bob-desk              bob-mobile
                 |                      |                      |                      |
 0.0             |------ REGISTER ----->|                      |                      |
 1.2             |<-  401 (REGISTER) - -|                      |                      |
50.0             |----- INVITE bob ---->|                      |                      |
60.0             |                      |----- INVITE bob ---->|                      |
65.0  *** alice-desk goes offline ***
70.0             |                      |---------------------------- INVITE bob ---->|
80.0             |                      |<- - 180 (INVITE)  - -|                      |

legend:  ---> request  - - > response  ---x lost (receiver offline)  | lifeline  : not registered
         . offline  # busy  * state change  ~ pause
"""


def test_text_ladder_snapshot() -> None:
    capture = small_capture()
    text = text_ladder(capture, [(10.065, "alice-desk goes offline")], width=100)
    assert text == LADDER
    again = text_ladder(capture, [(10.065, "alice-desk goes offline")], width=100)
    assert again == text  # deterministic


def test_text_ladder_fits_120_columns_for_five_participants_and_keeps_the_given_order() -> None:
    capture = small_capture()
    capture.add(
        MessageRecord(10.09, "udp", CORE, ("127.0.0.1", 5099), request("BYE", "sip:carol@x", "b"))
    )
    capture.names[("127.0.0.1", 5099)] = "carol-with-a-very-long-device-name"
    text = text_ladder(capture, participants=["imscore"])
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120
    assert lines[0].split()[1:3] == ["imscore", "alice-phone"]
    assert len(lines) == 2 + len(capture) + 3  # header, blank lifelines, messages, legend
    assert "BYE carol" in lines[2 + len(capture) - 1]
    assert lines[-2].startswith("legend:  ---> request  - - > response")


def test_participants_sharing_a_name_share_a_column() -> None:
    capture = Capture(
        exchange("udp", ALICE, CORE, 1) + exchange("tcp", ("127.0.0.1", 40000), CORE, 1),
        names={ALICE: "alice", ("127.0.0.1", 40000): "alice", CORE: "imscore"},
    )
    assert capture.participants() == ["alice", "imscore"]
    assert text_ladder(capture).splitlines()[0].split() == ["ms", "alice", "imscore"]


def test_svg_ladder_is_well_formed_with_one_arrow_per_message() -> None:
    capture = small_capture()
    capture.add(MessageRecord(10.1, "udp", CORE, CORE, b"\x00garbage <&>\x07\r\n"))
    root = ET.fromstring(svg_ladder(capture, [(10.065, "alice-desk goes offline")]))
    assert root.tag == f"{SVG}svg"
    groups = root.findall(f".//{SVG}g")
    arrows = [g for g in groups if g.get("class", "").startswith("message")]
    assert len(arrows) == len(capture)
    assert len([g for g in groups if g.get("class") == "participant"]) == 4
    assert len([g for g in groups if g.get("class") == "note"]) == 1
    tooltip = arrows[0].findtext(f"{SVG}title") or ""
    assert tooltip.startswith("UDP 127.0.0.1:5070 -> 127.0.0.1:5060")
    assert "REGISTER sip:ims.example.test SIP/2.0\nVia:" in tooltip and "Call-ID: r1@test" in tooltip
    assert "garbage <&>" in (arrows[-1].findtext(f"{SVG}title") or "")
    labels = [g.findtext(f"{SVG}text") or "" for g in arrows]
    # the full label would run over the lifelines either side: the short one fits between them
    assert labels[1] == "401 (REGISTER) [udp]"
    lifelines = sorted(
        {
            float(x.get("x1") or 0)
            for x in root.iter(f"{SVG}line")
            if "lifeline" in (x.get("class") or "") and x.get("x1") == x.get("x2")
        }
    )
    for group, label in zip(arrows[:-1], labels[:-1], strict=True):
        line = group.find(f"{SVG}line")
        assert line is not None
        ends = sorted((float(line.get("x1") or 0), float(line.get("x2") or 0)))
        centre = float(group.find(f"{SVG}text").get("x") or 0)  # type: ignore[union-attr]
        half = len(label) * 7.2 / 2
        # between two neighbouring lifelines, inside the arrow
        assert not any(centre - half < x < centre + half for x in lifelines), label
        assert ends[0] < centre - half and centre + half < ends[1], label
    assert [g.get("class") for g in arrows[:2]] == ["message request", "message response"]
    assert root.find(f"{SVG}g[@class='legend']") is not None


def test_html_ladder_wraps_the_svg_and_lists_every_message() -> None:
    page = html_ladder(small_capture(), [(10.065, "offline")], title="A & B")
    root = ET.fromstring(page)  # the page is also well-formed XML
    assert root.findtext("head/title") == "A & B"
    assert root.find(f"body/{SVG}svg") is not None
    items = root.findall("body/ol/li")
    assert [item.get("id") for item in items] == [f"msg-{i}" for i in range(1, 7)]
    assert "To: <sip:bob@ims.example.test>" in (items[0].findtext("pre") or "")
    links = root.findall(f".//{SVG}a")
    assert [a.get("href") for a in links] == [f"#msg-{i}" for i in range(1, 7)]


# --- the transport tap --------------------------------------------------------------------------------
def test_transport_tap_sees_what_is_received_and_sent() -> None:
    async def scenario() -> tuple[list[MessageRecord], bytes, int]:
        seen: list[MessageRecord] = []
        transports: Transports

        def handler(message: Request | Response, flow: Flow) -> None:
            assert isinstance(message, Request)
            transports.send_response(message.make_response(200, "OK", to_tag="t"), flow)

        transports = Transports(handler)
        transports.tap = seen.append
        host, port = await transports.listen("udp", "127.0.0.1", 0)
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                answers.put_nowait(data)

        client, _ = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
        mine = client.get_extra_info("sockname")[1]
        client.sendto(request("OPTIONS", "sip:bob@x", "tap1"), (host, port))
        first = await asyncio.wait_for(answers.get(), 5)
        # a tap that fails is logged; the traffic goes on
        transports.tap = lambda record: 1 / 0  # type: ignore[func-returns-value]
        client.sendto(request("OPTIONS", "sip:bob@x", "tap2"), (host, port))
        await asyncio.wait_for(answers.get(), 5)
        transports.tap = seen.append
        client.sendto(b"OPTIONS sip:x SIP/2.0\r\nVia: broken\r\n\r\n", (host, port))
        await asyncio.sleep(0.2)
        client.close()
        await transports.close()
        return seen, first, mine

    seen, first, mine = asyncio.run(scenario())
    assert [r.transport for r in seen] == ["udp", "udp", "udp"]
    received, sent, bad = seen
    assert received.src == ("127.0.0.1", mine) and received.dst[1] == sent.src[1]
    assert received.data == request("OPTIONS", "sip:bob@x", "tap1")  # before the Via is stamped
    assert sent.dst == ("127.0.0.1", mine) and sent.data == first
    parsed = parse_datagram(sent.data)
    assert isinstance(parsed, Response) and parsed.status == 200
    assert bad.data.startswith(b"OPTIONS sip:x") and received.time <= sent.time <= bad.time


# --- imscore serve --pcap -----------------------------------------------------------------------------
def register(transport: str, branch: str) -> bytes:
    return (
        "REGISTER sip:ims.example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:5999;branch=z9hG4bK{branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        "To: <sip:alice@ims.example.test>\r\n"
        f"From: <sip:alice@ims.example.test>;tag={branch}\r\n"
        f"Call-ID: {branch}@test\r\n"
        "CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:alice@127.0.0.1:5999;transport={transport.lower()}>\r\n"
        "Expires: 600\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@needs_tshark
def test_serve_pcap_records_udp_and_tcp_traffic(tmp_path: Path) -> None:
    import socket

    from test_serve import options, serve, stream_exchange, udp_exchange

    pcap = tmp_path / "live.pcap"
    running = serve("--listen", "udp:127.0.0.1:0", "--listen", "tcp:127.0.0.1:0", "--pcap", str(pcap))
    sent: list[bytes] = []
    statuses: list[int] = []
    try:
        for data in (options("127.0.0.1", 5999, "UDP", "pu1"), register("UDP", "pu2")):
            answer = udp_exchange(running.addresses["udp"], data)
            assert answer is not None
            sent.append(data)
            statuses.append(answer.status)
        with socket.create_connection(running.addresses["tcp"]) as sock:
            for data in (options("127.0.0.1", 5999, "TCP", "pt1"), register("TCP", "pt2")):
                (event,) = stream_exchange(sock, data)
                assert isinstance(event, Response)
                sent.append(data)
                statuses.append(event.status)
    finally:
        assert running.stop() == 0, "\n".join(running.log)
    assert statuses == [200, 401, 200, 401]
    assert any("pcap: 8 messages written" in line for line in running.log), running.log
    rows = tshark_sip(pcap)
    assert [r[0] for r in rows] == ["OPTIONS", "", "REGISTER", ""] * 2
    assert [r[1] for r in rows] == ["", "200", "", "401"] * 2
    assert all(r[4] for r in rows[:4]) and all(r[5] for r in rows[4:])  # UDP first, then TCP
    server_ports = {running.addresses["udp"][1], running.addresses["tcp"][1]}
    assert {int(r[4] or r[5]) for r in rows[1::2]} <= server_ports  # responses come from the server
    records = read_pcap(pcap)
    assert [r.data for r in records[0::2]] == sent  # received octets, before the Via is stamped
    assert [r.transport for r in records] == ["udp"] * 4 + ["tcp"] * 4


def test_serve_pcap_that_cannot_be_opened_exits_2_with_one_line(tmp_path: Path) -> None:
    import sys

    target = tmp_path / "no-such-folder" / "x.pcap"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "imscore",
            "serve",
            "--store",
            "memory:",
            "--listen",
            "udp:127.0.0.1:0",
            "--pcap",
            str(target),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("imscore:")]
    assert errors == [
        f"imscore: pcap file {str(target)!r}: cannot open for writing: No such file or directory"
    ]


def test_running_page_capture_examples() -> None:
    import doctest

    from conftest import REPO_ROOT

    result = doctest.testfile(
        str(REPO_ROOT / "docs" / "running.rst"),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False,
    )
    assert result.attempted >= 8 and result.failed == 0


def test_ladders_of_an_empty_capture_and_of_notes_alone() -> None:
    empty = Capture()
    assert text_ladder(empty) == "ms\n\n"  # no messages: no legend
    assert text_ladder(empty, [(5.0, "start")]).splitlines()[-1] == "0.0  *** start ***"
    root = ET.fromstring(svg_ladder(empty, [(5.0, "start")]))
    groups = [g.get("class") for g in root.findall(f".//{SVG}g")]
    assert groups.count("note") == 1 and not any(
        c.startswith("message") for c in groups if c != "legend"
    )
    assert ET.fromstring(html_ladder(empty)).findall("body/ol/li") == []


# --- ladders: forks, states, gaps, challenges ---------------------------------------------------------
CAROL, APP, DESK, PHONE = (
    ("127.0.0.1", 5101),
    ("127.0.0.1", 5102),
    ("127.0.0.1", 5103),
    ("127.0.0.1", 5104),
)


def tagged(status: str, tag: str, call_id: str = "c1@test") -> bytes:
    return (
        f"SIP/2.0 {status}\r\nVia: SIP/2.0/UDP 127.0.0.1:5101;branch=z9hG4bKx\r\n"
        f"To: <sip:alice@ims.example.test>;tag={tag}\r\nFrom: <sip:carol@example.org>;tag=c\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def challenge(algorithm: str | None) -> bytes:
    params = f", algorithm={algorithm}" if algorithm else ""
    return (
        "SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKr\r\n"
        "To: <sip:alice@ims.example.test>;tag=s1\r\nCall-ID: r@test\r\nCSeq: 1 REGISTER\r\n"
        f'WWW-Authenticate: Digest realm="ims.example.test", nonce="n"{params}\r\n'
        "Content-Length: 0\r\n\r\n"
    ).encode()


def fork_capture() -> Capture:
    """Carol calls alice: imscore forks to the app (offline), the desk (busy) and the phone."""
    invite = request("INVITE", "sip:alice@ims.example.test", "c1")
    records = [
        MessageRecord(20.0, "udp", CAROL, CORE, invite),
        MessageRecord(20.01, "udp", CORE, APP, request("INVITE", "sip:app@x", "c1")),
        MessageRecord(20.01, "udp", CORE, DESK, request("INVITE", "sip:desk@x", "c1")),
        MessageRecord(20.01, "udp", CORE, PHONE, request("INVITE", "sip:phone@x", "c1")),
        MessageRecord(20.02, "udp", DESK, CORE, tagged("486 Busy Here", "desk")),
        MessageRecord(20.02, "udp", PHONE, CORE, tagged("180 Ringing", "phone")),
        MessageRecord(20.03, "udp", CORE, CAROL, tagged("180 Ringing", "phone")),
        MessageRecord(24.03, "udp", PHONE, CORE, tagged("200 OK", "phone")),
        MessageRecord(24.04, "udp", CORE, CAROL, tagged("200 OK", "phone")),
    ]
    names = {CAROL: "carol", CORE: "imscore", APP: "app", DESK: "desk", PHONE: "phone"}
    return Capture(records, names=names)


FORK_MARKS = [
    Mark(19.0, "phone", "unregistered"),
    Mark(19.5, "desk", "busy", "busy"),
    Mark(19.6, "app", "offline", "offline"),
    Mark(20.005, "phone", ""),  # registered: the usual lifeline from here
    Mark(25.0, "app", "unregistered", "binding replaced by phone"),
]


def test_summaries_name_the_challenge_and_the_to_tag() -> None:
    aka = summarize(challenge("AKAv1-MD5"))
    assert aka.label == "401 Unauthorized (REGISTER, AKAv1-MD5)" and aka.short == "401 AKAv1-MD5"
    assert aka.auth == "AKAv1-MD5" and aka.to_tag == "s1" and aka.call_id == "r@test"
    assert summarize(challenge(None)).label == "401 Unauthorized (REGISTER, Digest)"
    assert summarize(challenge("MD5")).short == "401 MD5"
    assert summarize(tagged("180 Ringing", "desk")).to_tag == "desk"
    assert summarize(response("200 OK", "OPTIONS", "1")).auth == ""


def test_text_ladder_marks_states_lost_messages_relays_and_pauses() -> None:
    capture = fork_capture()
    lines = text_ladder(capture, FORK_MARKS, width=110).splitlines()
    header = lines[0]
    x = {
        name: header.index(name) + len(name) // 2
        for name in ("carol", "imscore", "app", "desk", "phone")
    }
    rows = {line.split()[0]: line for line in lines[2:] if line[:8].strip()}

    def at(line: str, name: str) -> str:
        return line[x[name]] if x[name] < len(line) else " "

    # the state changes, each on its participant's lifeline
    marks = [line for line in lines if "* " in line and "***" not in line]
    assert [m[x["desk"] :].split("  ")[0] for m in marks if at(m, "desk") == "*"] == ["* busy"]
    assert [m[x["app"] :].split("  ")[0] for m in marks if at(m, "app") == "*"] == ["* offline"]
    # a mark too long for its gap is a banner of its own
    assert lines[-4].split(None, 1)[1] == "*** app: binding replaced by phone ***"
    invite_app = next(line for line in lines if "INVITE app" in line)
    assert invite_app[x["app"] - 1] == "x" and at(invite_app, "app") == "."  # lost: app is offline
    assert at(invite_app, "desk") == "#" and at(invite_app, "phone") == "|"
    first = lines[1]  # before the phone registers its lifeline is dotted, and the desk not yet busy
    assert (at(first, "phone"), at(first, "app"), at(first, "desk")) == (":", "|", "|")
    invite_alice = next(line for line in lines if "INVITE alice" in line)
    assert (at(invite_alice, "phone"), at(invite_alice, "app")) == (":", ".")
    # the relayed 180 and 200 say where they came from; the device's own do not
    relayed = [line for line in lines if at(line, "carol") == "|" and "from phone" in line]
    assert len(relayed) == 2 and "180 from phone" in relayed[0] and "200 from phone" in relayed[1]
    assert "from" not in next(line for line in lines if "486" in line)
    # the 4 s between the 180 and the 200 is marked
    pause = next(line for line in lines if line.lstrip().startswith("+4.0 s"))
    assert at(pause, "imscore") == "~" and at(pause, "carol") == "~"
    # requests solid, responses dashed
    assert "- -" in next(line for line in lines if "486" in line)
    assert "- -" not in invite_app
    assert rows  # the ladder has timed rows


def test_text_labels_stay_between_the_lifelines_they_sit_between() -> None:
    capture = fork_capture()
    text = text_ladder(capture, width=110)
    lines = text.splitlines()
    header = lines[0]
    xs = [header.index(n) + len(n) // 2 for n in ("carol", "imscore", "app", "desk", "phone")]
    for line in lines[2:]:
        for match in re.finditer(r" ([0-9A-Z][^-<>|]*?) ", line[12:]):
            start, end = match.start(1) + 12, match.end(1) + 12
            assert not any(start <= x < end for x in xs), (line, match.group(1))
    # the INVITE to the phone crosses app's and desk's lifelines: its label sits next to the phone
    invite = next(line for line in lines if "INVITE phone" in line)
    assert xs[3] < invite.index("INVITE phone") < xs[4]


def test_svg_ladder_draws_states_lost_messages_gaps_and_a_legend() -> None:
    capture = fork_capture()
    capture.add(MessageRecord(24.05, "udp", CORE, ALICE, challenge("AKAv1-MD5")))
    root = ET.fromstring(svg_ladder(capture, FORK_MARKS))
    classes = [g.get("class") or "" for g in root.iter(f"{SVG}g")]
    arrows = [g for g in root.iter(f"{SVG}g") if (g.get("class") or "").startswith("message")]
    lost = [g for g in arrows if "lost" in (g.get("class") or "").split()]
    assert len(lost) == 1 and lost[0].findtext(f"{SVG}text", "").startswith("INVITE app")
    line = lost[0].find(f"{SVG}line")
    assert line is not None and line.get("marker-end") == "url(#lost)"
    texts = [g.findtext(f"{SVG}text") or "" for g in arrows]
    relayed = [t for t in texts if t.startswith("180") and "from phone" in t]
    assert len(relayed) == 1 and relayed[0] in ("180 from phone [udp]", "180 from phone"), texts
    assert any(t.startswith("401") and "AKAv1-MD5" in t for t in texts), texts
    lifelines = {
        (ln.get("class"), ln.get("x1"))
        for ln in root.iter(f"{SVG}line")
        if (ln.get("class") or "").startswith("lifeline") and ln.get("x1") == ln.get("x2")
    }
    assert {c for c, _ in lifelines} >= {
        "lifeline",
        "lifeline busy",
        "lifeline offline",
        "lifeline unregistered",
    }
    marks = [g for g in root.iter(f"{SVG}g") if (g.get("class") or "").startswith("mark")]
    assert [g.findtext(f"{SVG}text") for g in marks] == ["busy", "offline"]
    notes = [g.findtext(f"{SVG}text") for g in root.iter(f"{SVG}g") if g.get("class") == "note"]
    assert notes == ["app: binding replaced by phone"]  # too long for the gap: a note across
    gaps = [g.findtext(f"{SVG}text") for g in root.iter(f"{SVG}g") if g.get("class") == "gap"]
    assert gaps == ["+4.0 s"]
    legend = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "legend")
    words = [t.text for t in legend.iter(f"{SVG}text")]
    assert words[:3] == ["request", "response", "lost (receiver offline)"] and "busy" in words
    assert classes.count("legend") == 1
