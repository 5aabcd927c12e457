"""Diameter (RFC 6733) and the Cx/Dx application (3GPP TS 29.228 / TS 29.229), imscore's own.

- :mod:`~imscore.diameter.codec`: messages and AVPs to and from bytes (sans-IO).
- :mod:`~imscore.diameter.framer`: a TCP stream cut into messages (sans-IO).
- :mod:`~imscore.diameter.dictionary`: the base and Cx commands, AVPs and result codes.
- :mod:`~imscore.diameter.messages`: answers, result codes and identifiers.
- :mod:`~imscore.diameter.userdata`: the User-Data XML (TS 29.228 Annex E).
- :mod:`~imscore.diameter.hss`: the HSS's Cx answers from a subscriber store.
- :mod:`~imscore.diameter.peer`, :mod:`~imscore.diameter.server`,
  :mod:`~imscore.diameter.client`: connections over asyncio TCP, ``imscore hss``, a Cx client.

Why not PyPI ``python-diameter``: it maps the MAR/MAA authentication data to the RFC 4740 vendor-0
AVPs 376/377/378/382 where TS 29.229 uses SIP-Auth-Data-Item 612, SIP-Authentication-Scheme 608,
SIP-Item-Number 613 and SIP-Number-Auth-Items 607 of vendor 10415, and its CER lacks
Vendor-Specific-Application-Id; a Cx peer such as Kamailio's cdp needs both right. The codec is
small, so we keep our own.
"""

from __future__ import annotations

from .codec import Avp, DiameterDecodeError, Header, Message, decode_header, decode_message
from .framer import FramingError, StreamFramer

__all__ = [
    "Avp",
    "DiameterDecodeError",
    "FramingError",
    "Header",
    "Message",
    "StreamFramer",
    "decode_header",
    "decode_message",
]
