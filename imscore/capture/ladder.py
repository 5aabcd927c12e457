"""Ladder (sequence) diagrams of a :class:`~imscore.capture.Capture`: text, SVG and HTML.

One column per participant (a name from :attr:`Capture.names <imscore.capture.Capture.names>`, else
``ip:port``; addresses sharing a name share a column), ordered as given then by first appearance;
one row per message, top to bottom in capture order, with its time in milliseconds since the first
record, an arrow from sender to receiver and a short label (``INVITE bob``,
``180 Ringing (INVITE)``, see :func:`~imscore.capture.record.summarize`). Notes — ``(time, text)``
rows such as ``alice-desk goes offline`` — are placed among the messages by time (before a message
at the same time). Everything is deterministic: the same capture gives the same output.

- :func:`text_ladder`: plain ASCII for a terminal, about 120 columns for five participants.
- :func:`svg_ladder`: a standalone SVG document; each arrow is a ``<g class="message">`` whose
  ``<title>`` (the tooltip) is the full message.
- :func:`html_ladder`: an HTML page with the SVG and the full text of every message below it;
  clicking an arrow jumps to its message.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from .record import Capture, MessageRecord, format_address, summarize

__all__ = ["Note", "html_ladder", "svg_ladder", "text_ladder"]

#: a note row: (time in seconds, on the capture's clock; text)
Note = tuple[float, str]

SVG_NS: Final = "http://www.w3.org/2000/svg"
_XML_BAD: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True, slots=True)
class _Row:
    """One row of a ladder: a message (``record`` set) or a note."""

    time: float
    record: MessageRecord | None
    text: str
    index: int  # the message's number (1-based), 0 for a note


def _rows(capture: Capture, notes: Iterable[Note]) -> tuple[list[_Row], float]:
    """Messages and notes merged by time (stable), and the time origin."""
    records = list(capture)
    note_list = [(float(when), str(text)) for when, text in notes]
    times = [r.time for r in records] or [when for when, _ in note_list] or [0.0]
    origin = records[0].time if records else min(times)
    rows = [_Row(r.time, r, summarize(r.data).label, i) for i, r in enumerate(records, 1)]
    # a note goes before the first message that is not earlier than it
    merged: list[_Row] = []
    pending = sorted(note_list, key=lambda n: n[0])
    for row in rows:
        while pending and pending[0][0] <= row.time:
            when, text = pending.pop(0)
            merged.append(_Row(when, None, text, 0))
        merged.append(row)
    merged.extend(_Row(when, None, text, 0) for when, text in pending)
    return merged, origin


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _clip(text: str, size: int) -> str:
    if size <= 0:
        return ""
    return text if len(text) <= size else text[: max(size - 2, 0)] + ".."[:size]


def _ascii(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)


# --- text ---------------------------------------------------------------------------------------------
def text_ladder(
    capture: Capture,
    notes: Iterable[Note] = (),
    *,
    participants: Sequence[str] = (),
    width: int = 120,
) -> str:
    """The ladder as ASCII text (one line per row, ending in a newline).

    :param capture: the messages.
    :param notes: ``(time, text)`` rows placed among the messages by time.
    :param participants: column order (labels); others follow by first appearance.
    :param width: the line width to aim for; columns get narrower (down to 12 characters) and labels
        are shortened with ``..`` to fit. Many participants may still exceed it.
    """
    rows, origin = _rows(capture, notes)
    columns = capture.participants(participants)
    time_width = max([len("ms")] + [len(_ms(row.time - origin)) for row in rows])
    left = time_width + 2
    count = max(len(columns), 1)
    spacing = max(12, min(32, (width - left - 1) // count))
    first = left + spacing // 2
    position = {name: first + i * spacing for i, name in enumerate(columns)}
    line_width = first + (count - 1) * spacing + spacing // 2
    lines: list[str] = []

    header = [" "] * line_width
    header[:time_width] = list("ms".rjust(time_width))
    for name, x in position.items():
        label = _ascii(_clip(name, spacing - 1))
        start = max(left, x - len(label) // 2)
        header[start : start + len(label)] = list(label)
    lines.append("".join(header).rstrip())

    def blank() -> list[str]:
        line = [" "] * line_width
        for x in position.values():
            line[x] = "|"
        return line

    lines.append("".join(blank()).rstrip())
    for row in rows:
        line = blank()
        line[:time_width] = list(_ms(row.time - origin).rjust(time_width))
        record = row.record
        if record is None:
            text = _ascii(f"*** {row.text} ***")
            room = line_width - left
            text = _clip(text, room)
            line[left : left + len(text)] = list(text)
            lines.append("".join(line).rstrip())
            continue
        a = position[capture.name(record.src)]
        b = position[capture.name(record.dst)]
        label = _ascii(row.text)
        if a == b:  # to itself
            text = _clip(f"<-+ {label}", line_width - a - 1)
            line[a + 1 : a + 1 + len(text)] = list(text)
        else:
            lo, hi = min(a, b), max(a, b)
            shaft = ["-"] * (hi - lo - 1)
            if b > a:
                shaft[-1] = ">"
            else:
                shaft[0] = "<"
            room = len(shaft) - 4
            if len(label) > room:
                label = _ascii(summarize(record.data).short)
            if room > 0:
                text = f" {_clip(label, room)} "
                start = (len(shaft) - len(text)) // 2
                shaft[start : start + len(text)] = list(text)
            line[lo + 1 : hi] = shaft
        lines.append("".join(line).rstrip())
    return "\n".join(lines) + "\n"


# --- SVG ----------------------------------------------------------------------------------------------
_COLUMN: Final = 190
_LEFT: Final = 90
_TOP: Final = 56
_ROW: Final = 30
_STYLE: Final = (
    "text{font-family:monospace;font-size:12px}"
    ".participant rect{fill:#eef3fb;stroke:#36c}"
    ".lifeline{stroke:#999;stroke-dasharray:4 4}"
    ".message line{stroke:#222;stroke-width:1.2}"
    ".message.response line{stroke:#36c}"
    ".message:hover line{stroke-width:2.5}"
    ".time{fill:#666}"
    ".note rect{fill:#fff7d6;stroke:#c90}"
)


def _xml_text(text: str) -> str:
    """Text XML 1.0 can carry (other control characters become U+FFFD)."""
    return _XML_BAD.sub("\ufffd", text)


def _message_text(record: MessageRecord) -> str:
    head = f"{record.transport.upper()} {format_address(record.src)} -> {format_address(record.dst)}"
    return _xml_text(head + "\n\n" + record.data.decode("utf-8", "replace").replace("\r\n", "\n"))


def _svg_element(
    capture: Capture, notes: Iterable[Note], participants: Sequence[str], links: bool
) -> ET.Element:
    rows, origin = _rows(capture, notes)
    columns = capture.participants(participants)
    position = {name: _LEFT + _COLUMN // 2 + i * _COLUMN for i, name in enumerate(columns)}
    width = _LEFT + max(len(columns), 1) * _COLUMN + 10
    height = _TOP + (len(rows) + 1) * _ROW + 10
    svg = ET.Element(
        "svg",
        {
            "xmlns": SVG_NS,
            "width": str(width),
            "height": str(height),
            "viewBox": f"0 0 {width} {height}",
            "class": "ladder",
        },
    )
    ET.SubElement(svg, "style").text = _STYLE
    defs = ET.SubElement(svg, "defs")
    marker = ET.SubElement(
        defs,
        "marker",
        {
            "id": "arrow",
            "viewBox": "0 0 10 10",
            "refX": "10",
            "refY": "5",
            "markerWidth": "8",
            "markerHeight": "8",
            "orient": "auto-start-reverse",
        },
    )
    ET.SubElement(marker, "path", {"d": "M 0 0 L 10 5 L 0 10 z", "fill": "context-stroke"})
    bottom = height - 10
    ET.SubElement(svg, "text", {"x": "8", "y": str(_TOP - 24), "class": "time"}).text = "ms"
    for name, x in position.items():
        group = ET.SubElement(svg, "g", {"class": "participant"})
        ET.SubElement(group, "title").text = _xml_text(name)
        ET.SubElement(
            group,
            "rect",
            {
                "x": str(x - _COLUMN // 2 + 8),
                "y": "8",
                "width": str(_COLUMN - 16),
                "height": "26",
                "rx": "4",
            },
        )
        ET.SubElement(group, "text", {"x": str(x), "y": "26", "text-anchor": "middle"}).text = _xml_text(
            _clip(name, 24)
        )
        ET.SubElement(
            group,
            "line",
            {"class": "lifeline", "x1": str(x), "y1": "34", "x2": str(x), "y2": str(bottom)},
        )
    for n, row in enumerate(rows):
        y = _TOP + n * _ROW + _ROW // 2
        ET.SubElement(svg, "text", {"x": "8", "y": str(y + 4), "class": "time"}).text = _ms(
            row.time - origin
        )
        record = row.record
        if record is None:
            group = ET.SubElement(svg, "g", {"class": "note"})
            ET.SubElement(
                group,
                "rect",
                {"x": str(_LEFT), "y": str(y - 10), "width": str(width - _LEFT - 10), "height": "20"},
            )
            ET.SubElement(group, "text", {"x": str(_LEFT + 8), "y": str(y + 4)}).text = _xml_text(
                row.text
            )
            continue
        summary = summarize(record.data)
        parent: ET.Element = svg
        if links:
            parent = ET.SubElement(svg, "a", {"href": f"#msg-{row.index}"})
        group = ET.SubElement(
            parent, "g", {"class": f"message {summary.kind}", "id": f"arrow-{row.index}"}
        )
        ET.SubElement(group, "title").text = _message_text(record)
        a = position[capture.name(record.src)]
        b = position[capture.name(record.dst)]
        label = _xml_text(f"{row.text} [{record.transport}]")
        if a == b:  # to itself: a small loop
            ET.SubElement(
                group,
                "path",
                {
                    "d": f"M {a} {y - 6} h 30 v 12 h -28",
                    "fill": "none",
                    "stroke": "#222",
                    "marker-end": "url(#arrow)",
                },
            )
            ET.SubElement(group, "text", {"x": str(a + 36), "y": str(y + 4)}).text = label
            continue
        ET.SubElement(
            group,
            "line",
            {"x1": str(a), "y1": str(y), "x2": str(b), "y2": str(y), "marker-end": "url(#arrow)"},
        )
        ET.SubElement(
            group, "text", {"x": str((a + b) // 2), "y": str(y - 4), "text-anchor": "middle"}
        ).text = label
    return svg


def svg_ladder(capture: Capture, notes: Iterable[Note] = (), *, participants: Sequence[str] = ()) -> str:
    """The ladder as a standalone SVG document (UTF-8 text with an XML declaration).

    :param capture: the messages.
    :param notes: ``(time, text)`` rows placed among the messages by time.
    :param participants: column order (labels); others follow by first appearance.
    """
    svg = _svg_element(capture, notes, participants, links=False)
    ET.indent(svg)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(svg, encoding="unicode") + "\n"


def html_ladder(
    capture: Capture,
    notes: Iterable[Note] = (),
    *,
    participants: Sequence[str] = (),
    title: str = "imscore ladder",
) -> str:
    """An HTML page: the SVG ladder, then every message in full (click an arrow to jump to it).

    :param capture: the messages.
    :param notes: ``(time, text)`` rows placed among the messages by time.
    :param participants: column order (labels); others follow by first appearance.
    :param title: the page title and heading.
    """
    notes = list(notes)
    svg = _svg_element(capture, notes, participants, links=True)
    ET.indent(svg)
    origin = next(iter(capture)).time if len(capture) else 0.0
    items = []
    for index, record in enumerate(capture, 1):
        summary = summarize(record.data)
        src, dst = html.escape(capture.name(record.src)), html.escape(capture.name(record.dst))
        heading = (
            f"{index}. {_ms(record.time - origin)} ms {src} \u2192 {dst}: "
            f'<a href="#arrow-{index}">{html.escape(summary.label)}</a>'
        )
        items.append(
            f'<li id="msg-{index}"><h3>{heading}</h3>'
            f"<pre>{html.escape(_message_text(record))}</pre></li>"
        )
    safe_title = html.escape(_xml_text(title))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8"/>\n'
        f"<title>{safe_title}</title>\n"
        "<style>body{font-family:sans-serif;margin:1em}pre{background:#f6f6f6;padding:.5em;"
        "overflow-x:auto}li:target pre{outline:2px solid #36c}li{list-style:none}"
        "h3{font-size:1em;font-family:monospace}</style>\n"
        f"</head>\n<body>\n<h1>{safe_title}</h1>\n"
        f"{ET.tostring(svg, encoding='unicode')}\n"
        f"<h2>Messages</h2>\n<ol>\n" + "\n".join(items) + "\n</ol>\n</body>\n</html>\n"
    )
