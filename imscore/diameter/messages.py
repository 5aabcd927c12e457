"""Building and reading Diameter messages: answers to requests, result codes, common AVPs."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable
from typing import Final

from imscore.diameter import dictionary as d
from imscore.diameter.codec import Avp, Message

__all__ = [
    "IdSource",
    "answer",
    "cx_application_avp",
    "error_answer",
    "experimental_result",
    "result_code",
    "result_of",
    "text_of",
]


class IdSource:
    """Hop-by-hop and end-to-end identifiers and Session-Ids for one node (RFC 6733 §3, §8.8).

    End-to-end identifiers start with the low 12 bits of the start time in their high bits, as
    RFC 6733 §3 suggests; hop-by-hop identifiers count from a random start.
    """

    def __init__(self, origin_host: str) -> None:
        self.origin_host = origin_host
        seed = int(time.time())
        self._hbh = itertools.count(int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF)
        low = int.from_bytes(os.urandom(3), "big") & 0xFFFFF
        self._e2e = itertools.count(((seed & 0xFFF) << 20) | low)
        self._session = itertools.count(1)
        self._high = seed

    def hop_by_hop(self) -> int:
        """The next hop-by-hop identifier."""
        return next(self._hbh) & 0xFFFFFFFF

    def end_to_end(self) -> int:
        """The next end-to-end identifier."""
        return next(self._e2e) & 0xFFFFFFFF

    def session_id(self) -> str:
        """A new Session-Id, ``<origin host>;<high 32 bits>;<low 32 bits>`` (RFC 6733 §8.8)."""
        return f"{self.origin_host};{self._high};{next(self._session)}"


def cx_application_avp() -> Avp:
    """Vendor-Specific-Application-Id { Vendor-Id 10415, Auth-Application-Id 16777216 }."""
    return Avp.group(
        d.VENDOR_SPECIFIC_APPLICATION_ID,
        [Avp.u32(d.VENDOR_ID, d.VENDOR_3GPP), Avp.u32(d.AUTH_APPLICATION_ID, d.CX_APPLICATION)],
    )


def experimental_result(code: int, vendor: int = d.VENDOR_3GPP) -> Avp:
    """Experimental-Result { Vendor-Id, Experimental-Result-Code }."""
    return Avp.group(
        d.EXPERIMENTAL_RESULT,
        [Avp.u32(d.VENDOR_ID, vendor), Avp.u32(d.EXPERIMENTAL_RESULT_CODE, code)],
    )


def answer(request: Message, avps: Iterable[Avp], *, error: bool = False) -> Message:
    """The answer to ``request``: same command, application and identifiers, R clear, P copied
    (RFC 6733 §6.2). The Session-Id of the request goes first when it had one."""
    body = list(avps)
    session = request.find(d.SESSION_ID)
    if session is not None and not any(a.code == d.SESSION_ID and a.vendor == 0 for a in body):
        body.insert(0, session)
    return Message(
        command=request.command,
        application=request.application,
        avps=tuple(body),
        request=False,
        proxiable=request.proxiable,
        error=error,
        hop_by_hop=request.hop_by_hop,
        end_to_end=request.end_to_end,
    )


def error_answer(
    request: Message, code: int, origin: Iterable[Avp], message: str | None = None
) -> Message:
    """An answer with the E flag and a protocol error Result-Code (RFC 6733 §7.2)."""
    avps = [Avp.u32(d.RESULT_CODE, code), *origin]
    if message:
        avps.append(Avp.utf8(d.ERROR_MESSAGE, message[:200], mandatory=False))
    return answer(request, avps, error=True)


def result_code(code: int) -> Avp:
    """A Result-Code AVP."""
    return Avp.u32(d.RESULT_CODE, code)


#: result_of's vendor for a plain Result-Code
BASE: Final = 0


def result_of(message: Message) -> tuple[int, int] | None:
    """The answer's result as ``(code, vendor)``: ``(Result-Code, 0)``, or
    ``(Experimental-Result-Code, its Vendor-Id)``; ``None`` when it carries neither."""
    found = message.find(d.RESULT_CODE)
    if found is not None:
        return found.as_u32(), BASE
    exp = message.find(d.EXPERIMENTAL_RESULT)
    if exp is not None:
        code = exp.find(d.EXPERIMENTAL_RESULT_CODE)
        vendor = exp.find(d.VENDOR_ID)
        if code is not None:
            return code.as_u32(), vendor.as_u32() if vendor is not None else BASE
    return None


def text_of(message: Message | Avp, code: int, vendor: int = 0) -> str | None:
    """The text of the first AVP ``code``/``vendor`` (of a message or a Grouped AVP), or ``None``."""
    found = message.find(code, vendor)
    return None if found is None else found.as_str()
