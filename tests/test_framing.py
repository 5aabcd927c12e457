"""Framing: datagrams per RFC 3261 §18.3 and the incremental stream framer (TCP/TLS)."""

from __future__ import annotations

import pytest

from imscore.sip import (
    KeepAlive,
    MessageTooLarge,
    ParseError,
    Request,
    Response,
    SipError,
    StreamFramer,
    parse_datagram,
)


def message(body: bytes = b"", *, length: int | None = None, cseq: int = 1, extra: str = "") -> bytes:
    cl = len(body) if length is None else length
    head = (
        "MESSAGE sip:bob@ims.example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bK-{cseq}\r\n"
        "Max-Forwards: 70\r\n"
        "To: <sip:bob@ims.example.test>\r\n"
        "From: <sip:alice@ims.example.test>;tag=a1\r\n"
        "Call-ID: framing-1@192.0.2.10\r\n"
        f"CSeq: {cseq} MESSAGE\r\n"
        f"{extra}"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {cl}\r\n\r\n"
    )
    return head.encode() + body


def response(body: bytes = b"", *, length: int | None = None) -> bytes:
    cl = len(body) if length is None else length
    return (
        "SIP/2.0 200 OK\r\n"
        "Via: SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bK-1\r\n"
        "To: <sip:bob@ims.example.test>;tag=b1\r\n"
        "From: <sip:alice@ims.example.test>;tag=a1\r\n"
        "Call-ID: framing-1@192.0.2.10\r\n"
        "CSeq: 1 MESSAGE\r\n"
        f"Content-Length: {cl}\r\n\r\n"
    ).encode() + body


# --- datagrams ------------------------------------------------------------------------------------
def test_datagram_keepalive_and_leading_crlf() -> None:
    assert parse_datagram(b"\r\n\r\n") is None
    assert parse_datagram(b"\r\n") is None
    m = parse_datagram(b"\r\n\r\n" + message(b"hi"))
    assert isinstance(m, Request) and m.body == b"hi"


def test_datagram_extra_octets_are_discarded() -> None:
    m = parse_datagram(message(b"hello") + b"GARBAGE AFTER THE BODY")
    assert m is not None and m.body == b"hello"


def test_datagram_without_content_length_takes_the_rest() -> None:
    data = message(b"abc").replace(b"Content-Length: 3\r\n", b"")
    m = parse_datagram(data)
    assert m is not None and m.body == b"abc" and m.content_length is None


def test_datagram_short_body_request_is_400_with_message() -> None:
    with pytest.raises(ParseError) as info:
        parse_datagram(message(b"abc", length=10))
    assert info.value.status == 400 and info.value.is_request is True
    assert isinstance(info.value.message, Request)


def test_datagram_short_body_response_is_marked_for_dropping() -> None:
    with pytest.raises(SipError) as info:
        parse_datagram(response(b"abc", length=10))
    assert info.value.is_request is False


def test_datagram_too_large() -> None:
    with pytest.raises(MessageTooLarge) as info:
        parse_datagram(message(b"x" * 2000), max_size=1000)
    assert info.value.status == 513


# --- streams --------------------------------------------------------------------------------------
def feed_all(framer: StreamFramer, chunks: list[bytes]) -> list[object]:
    return [event for chunk in chunks for event in framer.feed(chunk)]


def stream_of(*messages: bytes) -> bytes:
    return b"".join(messages)


STREAM = stream_of(message(b"one", cseq=1), response(b""), message(b"three\r\n\r\nx", cseq=3))


def chunkings(data: bytes) -> list[list[bytes]]:
    return [
        [data],
        [data[i : i + 1] for i in range(len(data))],
        [data[i : i + 7] for i in range(0, len(data), 7)],
        [data[: len(data) // 2], data[len(data) // 2 :]],
    ]


@pytest.mark.parametrize("chunks", chunkings(STREAM), ids=["whole", "bytewise", "by7", "halves"])
def test_stream_any_chunking_gives_the_same_messages(chunks: list[bytes]) -> None:
    framer = StreamFramer()
    events = feed_all(framer, chunks)
    assert [type(e) for e in events] == [Request, Response, Request]
    first, second, third = events
    assert isinstance(first, Request) and first.body == b"one"
    assert isinstance(second, Response) and second.body == b""
    assert isinstance(third, Request) and third.body == b"three\r\n\r\nx"
    assert framer.buffered == 0


@pytest.mark.parametrize("split", [0, 1, 50, 120])
def test_stream_keeps_trailing_partial_data(split: int) -> None:
    whole = message(b"body")
    nxt = message(b"next", cseq=2)
    framer = StreamFramer()
    events = framer.feed(whole + nxt[:split])
    assert len(events) == 1 and framer.buffered == split
    events = framer.feed(nxt[split:])
    assert len(events) == 1 and isinstance(events[0], Request) and events[0].body == b"next"


def test_stream_keepalives() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == [KeepAlive(ping=True)]
    assert framer.feed(b"\r\n") == []  # could still become a ping
    assert framer.feed(b"\r\n") == [KeepAlive(ping=True)]
    events = framer.feed(b"\r\n" + message(b"x"))
    assert events[0] == KeepAlive(ping=False)
    assert isinstance(events[1], Request)
    # a ping split across three chunks, then a message
    events = feed_all(framer, [b"\r", b"\n\r", b"\n" + message(b"y")])
    assert events[0] == KeepAlive(ping=True) and isinstance(events[1], Request)


def test_stream_broken_messages_with_known_length_keep_the_connection() -> None:
    bad_version = message(b"v?").replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1)
    no_colon = message(b"bad!", cseq=2, extra="a line without a colon\r\n")
    bad_value = message(b"lazy", cseq=3, extra="Max-Forwards: lots\r\n")
    framer = StreamFramer()
    events = framer.feed(bad_version + no_colon + bad_value + message(b"good", cseq=4))
    first = events[0]
    assert isinstance(first, SipError) and first.status == 505
    assert first.is_request is True and not first.fatal
    # header lines and values are parsed lazily: the check every element runs finds them
    for event, status_reason in zip(events[1:3], ("without ':'", "Max-Forwards"), strict=True):
        assert isinstance(event, Request)
        with pytest.raises(ParseError) as info:
            event.check_framing_headers()
        assert info.value.status == 400 and status_reason in info.value.reason
        assert info.value.message is event
    last = events[3]
    assert isinstance(last, Request) and last.body == b"good"
    last.check_framing_headers()


def test_stream_disagreeing_lengths_are_fatal() -> None:
    framer = StreamFramer()
    data = message(b"abc", extra="Content-Length: 99\r\n")
    with pytest.raises(SipError) as info:
        framer.feed(data)
    assert info.value.fatal and info.value.status == 400
    with pytest.raises(SipError):
        framer.feed(message(b"later"))  # the framer stays failed


def test_stream_negative_length_is_fatal() -> None:
    data = message(b"").replace(b"Content-Length: 0", b"Content-Length: -999")
    with pytest.raises(SipError) as info:
        StreamFramer().feed(data)
    assert info.value.fatal


def test_stream_without_content_length_has_an_empty_body() -> None:
    data = message(b"").replace(b"Content-Length: 0\r\n", b"")
    events = StreamFramer().feed(data + message(b"z", cseq=2))
    assert [type(e) for e in events] == [Request, Request]


def test_stream_header_section_too_long_is_fatal_513() -> None:
    framer = StreamFramer(max_size=500)
    framer.feed(message(b"")[:100])
    with pytest.raises(MessageTooLarge) as info:
        framer.feed(b"X-Filler: " + b"a" * 600 + b"\r\n")
    assert info.value.status == 513 and info.value.fatal


def test_stream_body_too_large_is_fatal_413() -> None:
    framer = StreamFramer(max_size=1000)
    with pytest.raises(MessageTooLarge) as info:
        framer.feed(message(b"", length=5000))
    assert info.value.status == 413 and info.value.fatal
    assert isinstance(info.value.message, Request)


def test_stream_waits_for_a_body_that_has_not_arrived() -> None:
    framer = StreamFramer()
    assert framer.feed(message(b"abc", length=10)) == []
    assert framer.buffered > 0
    events = framer.feed(b"defghij")
    assert len(events) == 1 and isinstance(events[0], Request) and events[0].body == b"abcdefghij"


def test_a_fatal_error_keeps_the_messages_completed_before_it() -> None:
    good = message(b"first")
    fatal = message(b"abc", cseq=2, extra="Content-Length: 99\r\n")
    with pytest.raises(SipError) as info:
        StreamFramer().feed(good + fatal)
    assert info.value.fatal
    (before,) = info.value.completed
    assert isinstance(before, Request) and before.body == b"first"
