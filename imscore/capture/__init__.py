"""Captures of SIP traffic: records, pcap files and ladder diagrams.

A :class:`MessageRecord` is one SIP message as on the wire (time, transport, source, destination,
octets); a :class:`Capture` collects them. :mod:`~imscore.capture.pcap` writes them as a libpcap file
that Wireshark, tshark and sngrep open; :mod:`~imscore.capture.ladder` draws them as a ladder
diagram in text, SVG or HTML. Live, :class:`~imscore.transport.Transports` calls its ``tap`` with a
record for every message received and sent, and ``imscore serve --pcap FILE`` writes them to FILE.

This package depends on nothing else in imscore, so the transports, the server and the lab can all
use it.
"""

from .ladder import Mark, Note, html_ladder, svg_ladder, text_ladder
from .pcap import PcapWriter, read_pcap, write_pcap
from .record import Capture, CaptureError, MessageRecord, Summary, summarize

__all__ = [
    "Capture",
    "CaptureError",
    "Mark",
    "MessageRecord",
    "Note",
    "PcapWriter",
    "Summary",
    "html_ladder",
    "read_pcap",
    "summarize",
    "svg_ladder",
    "text_ladder",
    "write_pcap",
]
