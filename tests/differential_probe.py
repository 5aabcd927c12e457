"""What one build of imscore's SIP parser makes of a list of datagrams, as JSON-ready data.

Run by tests/test_differential.py twice: in the test process (the installed build, compiled in
the ``tests-compiled`` tox env) and as ``python differential_probe.py SOURCE_ROOT IN OUT`` against the
plain-Python sources of the checkout. Every step that may fail is recorded as its error (class,
status, text), so a difference in a verdict shows as well as a difference in bytes.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from typing import Any


def _step(record: dict[str, Any], name: str, action: Callable[[], object]) -> object:
    try:
        value = action()
    except Exception as exc:  # a SipError is the expected kind; anything else is a finding too
        status = getattr(exc, "status", None)
        record[name] = {"error": type(exc).__name__, "status": status, "text": str(exc)[:300]}
        return None
    if isinstance(value, bytes):
        record[name] = value.decode("utf-8", "surrogateescape")
    elif isinstance(value, list):
        record[name] = [str(v) for v in value]
    else:
        record[name] = None if value is None else str(value)
    return value


def outcome(data: bytes) -> dict[str, Any]:
    """Parse ``data`` as a datagram, then read, check, reserialise and answer it."""
    from imscore.sip import Request
    from imscore.sip.framing import parse_datagram

    record: dict[str, Any] = {}
    try:
        message = parse_datagram(data)
    except Exception as exc:
        status = getattr(exc, "status", None)
        record["parse"] = {"error": type(exc).__name__, "status": status, "text": str(exc)[:300]}
        partial = getattr(exc, "message", None)
        if isinstance(partial, Request):
            _step(
                record,
                "error_response",
                lambda: _bytes(partial.make_error_response(400, None, to_tag="t")),
            )
        return record
    if message is None:
        record["parse"] = "keep-alive"
        return record
    record["parse"] = "ok"
    _step(record, "start", message.start_line)
    _step(record, "framing", message.check_framing_headers)
    _step(record, "validate", message.validate)
    _step(record, "bytes", message.to_bytes)
    _step(record, "top_via", lambda: message.top_via)
    _step(record, "from", lambda: message.from_)
    _step(record, "to", lambda: message.to)
    _step(record, "call_id", lambda: message.call_id)
    _step(record, "cseq", lambda: (message.cseq.seq, message.cseq.method))
    _step(record, "contacts", lambda: message.contacts)
    _step(record, "authorization", lambda: [a.params for a in message.authorization])
    if isinstance(message, Request):
        _step(record, "uri", lambda: message.uri)
        _step(
            record,
            "ok",
            lambda: message.make_response(200, None, [("X-Probe", "1")], to_tag="t").to_bytes(),
        )
        _step(
            record, "error_response", lambda: _bytes(message.make_error_response(400, None, to_tag="t"))
        )
    return record


def _bytes(message: Any) -> bytes | None:
    return None if message is None else bytes(message.to_bytes())


def main(argv: list[str]) -> None:
    source, infile, outfile = argv
    sys.path.insert(0, source)
    import imscore.sip

    assert imscore.sip.__file__ is not None and imscore.sip.__file__.startswith(source), (
        imscore.sip.__file__
    )
    with open(infile) as handle:
        datagrams = [base64.b64decode(item) for item in json.load(handle)]
    with open(outfile, "w") as handle:
        json.dump([outcome(d) for d in datagrams], handle)


if __name__ == "__main__":
    main(sys.argv[1:])
