"""Ladder (sequence) diagrams of a :class:`~imscore.capture.Capture`: text, SVG and HTML.

One column per participant (a name from :attr:`Capture.names <imscore.capture.Capture.names>`, else
``ip:port``; addresses sharing a name share a column), ordered as given then by first appearance;
one row per message, top to bottom in capture order, with its time in milliseconds since the first
record, an arrow from sender to receiver and a short label (``INVITE bob``,
``180 Ringing (INVITE)``, ``401 Unauthorized (REGISTER, AKAv1-MD5)``, see
:func:`~imscore.capture.record.summarize`). Requests are solid arrows, responses dashed; a legend
says so. A response a participant relays from another (same ``Call-ID`` and ``To`` tag, as a forking
proxy relays each device's 180) names where it came from: ``180 Ringing (INVITE) from desk``.

Annotations are placed among the messages by time (before a message at the same time, in the order
given):

- notes, ``(time, text)`` rows such as ``step 3: register softphone``;
- :class:`Mark` rows: a participant's state from then on (``offline``, ``busy``, ``unregistered``,
  or ``""`` for the usual), with an optional text (``binding replaced by desk``). The participant's
  lifeline is drawn in that state, and a message to an ``offline`` participant is drawn as lost.

A pause of ``gap`` seconds or more between two rows is marked with a gap row (``+5.0 s``). Labels
stay between the lifelines they sit between: a label goes in the gap next to the arrow's receiver,
and is shortened (its short form, then clipped) to fit. Everything is deterministic: the same
capture gives the same output.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from .record import Capture, MessageRecord, format_address, summarize

__all__ = ["GAP", "STATES", "Mark", "Note", "html_ladder", "svg_ladder", "text_ladder"]

#: a note row: (time in seconds, on the capture's clock; text)
Note = tuple[float, str]

#: the lifeline states a :class:`Mark` may set, and how the text ladder draws each lifeline
STATES: Final[Mapping[str, str]] = {"": "|", "unregistered": ":", "offline": ".", "busy": "#"}
#: seconds between two rows from which a gap row is shown
GAP: Final = 1.0

SVG_NS: Final = "http://www.w3.org/2000/svg"
_XML_BAD: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True, slots=True)
class Mark:
    """From ``time`` on, ``participant`` (a column label) is in ``state`` (a key of
    :data:`STATES`: ``"offline"``, ``"busy"``, ``"unregistered"``, ``""`` for the usual; another
    name is drawn as the usual). ``text``, if any, is shown at the participant's lifeline."""

    time: float
    participant: str
    state: str = ""
    text: str = ""


@dataclass(frozen=True, slots=True)
class _Row:
    """One row of a ladder: a message, a note, a mark or a gap."""

    time: float
    kind: str  # "start" (the first row: nothing but the lifelines), "message", "note", "mark", "gap"
    text: str
    index: int = 0  # the message's number (1-based), 0 for the others
    record: MessageRecord | None = None
    short: str = ""
    participant: str = ""  # a mark's
    response: bool = False
    lost: bool = False  # a message to an offline participant
    #: each participant's lifeline state during this row (only those not in the usual state)
    states: Mapping[str, str] = field(default_factory=dict)


def _rows(
    capture: Capture, notes: Iterable[Note | Mark], gap: float | None = GAP
) -> tuple[list[_Row], float]:
    """Messages, notes, marks and gaps in order, each with the lifeline states; the time origin."""
    records = list(capture)
    annotations: list[Note | Mark] = [
        n if isinstance(n, Mark) else (float(n[0]), str(n[1])) for n in notes
    ]

    def when(item: Note | Mark) -> float:
        return item.time if isinstance(item, Mark) else item[0]

    times = [r.time for r in records] or [when(n) for n in annotations] or [0.0]
    origin = records[0].time if records else min(times)
    pending = sorted(annotations, key=when)  # stable: the given order at the same time
    state: dict[str, str] = {}
    initial: dict[str, str] = {}
    origins: dict[tuple[str, str], str] = {}
    rows: list[_Row] = []

    def add(row: _Row) -> None:
        if gap is not None and rows and row.time - rows[-1].time >= gap:
            rows.append(_Row(row.time, "gap", f"+{row.time - rows[-1].time:.1f} s", states=dict(state)))
        rows.append(row)

    def annotate(item: Note | Mark) -> None:
        if isinstance(item, Mark):
            if not rows and item.text:  # the first line of lifelines: the state before this mark
                initial[item.participant] = state.get(item.participant, "")
            if item.state:
                state[item.participant] = item.state
            else:
                state.pop(item.participant, None)
            if item.text:
                add(_Row(item.time, "mark", item.text, participant=item.participant, states=dict(state)))
        else:
            add(_Row(item[0], "note", item[1], states=dict(state)))

    for index, record in enumerate(records, 1):
        while pending and when(pending[0]) <= record.time:
            annotate(pending.pop(0))
        summary = summarize(record.data)
        label, short = summary.label, summary.short
        sender = capture.name(record.src)
        if summary.kind == "response" and summary.to_tag:
            first = origins.setdefault((summary.call_id, summary.to_tag), sender)
            if first != sender:
                label, short = f"{label} from {first}", f"{summary.status} from {first}"
        receiver = capture.name(record.dst)
        add(
            _Row(
                record.time,
                "message",
                label,
                index,
                record,
                short,
                response=summary.kind == "response",
                lost=state.get(receiver) == "offline",
                states=dict(state),
            )
        )
    for item in pending:
        annotate(item)
    if rows:  # a first row standing for the start: the states before the first row's changes
        start = {**rows[0].states, **initial}
        rows.insert(0, _Row(rows[0].time, "start", "", states={k: v for k, v in start.items() if v}))
    return rows, origin


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _clip(text: str, size: int) -> str:
    if size <= 0:
        return ""
    return text if len(text) <= size else text[: max(size - 2, 0)] + ".."[:size]


def _ascii(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _label_gap(a: int, b: int, positions: Sequence[int]) -> tuple[int, int]:
    """The stretch of an arrow from ``a`` to ``b`` where its label goes: between the receiver's
    lifeline and the nearest lifeline the arrow passes (so the label crosses none)."""
    lo, hi = min(a, b), max(a, b)
    inner = sorted(p for p in positions if lo < p < hi)
    if not inner:
        return lo, hi
    return (inner[-1], hi) if b > a else (lo, inner[0])


#: the text ladder's legend, item by item (shown below the ladder, wrapped to its width)
TEXT_LEGEND: Final = (
    "---> request",
    "- - > response",
    "---x lost (receiver offline)",
    "| lifeline",
    ": not registered",
    ". offline",
    "# busy",
    "* state change",
    "~ pause",
)


def _legend_lines(width: int) -> list[str]:
    lines, line = [], "legend:"
    for item in TEXT_LEGEND:
        if len(line) + 2 + len(item) > width and line != "legend:":
            lines.append(line)
            line = "       "
        line += "  " + item
    return [*lines, line]


# --- text ---------------------------------------------------------------------------------------------
def text_ladder(
    capture: Capture,
    notes: Iterable[Note | Mark] = (),
    *,
    participants: Sequence[str] = (),
    width: int = 120,
    gap: float | None = GAP,
    legend: bool = True,
) -> str:
    """The ladder as ASCII text (one line per row, ending in a newline).

    :param capture: the messages.
    :param notes: ``(time, text)`` notes and :class:`Mark` rows, placed among the messages by time.
    :param participants: column order (labels); others follow by first appearance.
    :param width: the line width to aim for; columns get narrower (down to 12 characters) and labels
        are shortened with ``..`` to fit. Many participants may still exceed it.
    :param gap: seconds from which a pause between two rows gets a gap row (``None``: never).
    :param legend: add a legend below the ladder (when it has messages).
    """
    rows, origin = _rows(capture, notes, gap)
    columns = capture.participants(participants)
    time_width = max(
        [len("ms")]
        + [len(_ms(row.time - origin)) if row.kind != "gap" else len(row.text) for row in rows]
    )
    left = time_width + 2
    count = max(len(columns), 1)
    spacing = max(12, min(32, (width - left - 1) // count))
    first = left + spacing // 2
    position = {name: first + i * spacing for i, name in enumerate(columns)}
    xs = sorted(position.values())
    line_width = first + (count - 1) * spacing + spacing // 2
    lines: list[str] = []

    header = [" "] * line_width
    header[:time_width] = list("ms".rjust(time_width))
    for name, x in position.items():
        label = _ascii(_clip(name, spacing - 1))
        start = max(left, x - len(label) // 2)
        header[start : start + len(label)] = list(label)
    lines.append("".join(header).rstrip())

    def blank(states: Mapping[str, str], glyph: str | None = None) -> list[str]:
        line = [" "] * line_width
        for name, x in position.items():
            line[x] = glyph or STATES.get(states.get(name, ""), "|")
        return line

    if not rows:
        lines.append("")
    for row in rows:
        if row.kind == "start":
            lines.append("".join(blank(row.states)).rstrip())
            continue
        if row.kind == "gap":
            line = blank(row.states, "~")
            line[:time_width] = list(row.text.rjust(time_width))
            lines.append("".join(line).rstrip())
            continue
        line = blank(row.states)
        line[:time_width] = list(_ms(row.time - origin).rjust(time_width))
        if row.kind == "mark" and row.participant in position:
            x = position[row.participant]
            later = [p for p in xs if p > x]
            room = (later[0] - x - 2) if later else len(row.text) + 2
            text = _ascii(f"* {row.text}")
            if len(text) <= room:
                line[x : x + len(text)] = list(text)
                lines.append("".join(line).rstrip())
                continue
        if row.kind in ("note", "mark"):  # a banner: the row is the text alone, no lifelines
            text = row.text if row.kind == "note" else f"{row.participant}: {row.text}"
            banner = _ascii(f"*** {text} ***")
            lines.append((_ms(row.time - origin).rjust(time_width) + "  " + banner).rstrip())
            continue
        record = row.record
        assert record is not None
        a = position[capture.name(record.src)]
        b = position[capture.name(record.dst)]
        label = _ascii(row.text)
        if a == b:  # to itself
            text = _clip(f"<-+ {label}", line_width - a - 1)
            line[a + 1 : a + 1 + len(text)] = list(text)
        else:
            lo, hi = min(a, b), max(a, b)
            size = hi - lo - 1
            dashed = row.response
            # dashes counted from the sender's end
            tail = 0 if b > a else size - 1
            shaft = ["-" if not dashed or (i - tail) % 2 == 0 else " " for i in range(size)]
            head = "x" if row.lost else (">" if b > a else "<")
            if b > a:
                shaft[-1] = head
            else:
                shaft[0] = head
            g_lo, g_hi = _label_gap(a, b, xs)
            room = g_hi - g_lo - 1 - 4  # keep the arrow's ends and a space either side
            if len(label) > room:
                label = _ascii(row.short)
            if room > 0:
                text = f" {_clip(label, room)} "
                start = (g_lo - lo) + (g_hi - g_lo - 1 - len(text)) // 2
                shaft[start : start + len(text)] = list(text)
            line[lo + 1 : hi] = shaft
        lines.append("".join(line).rstrip())
    if legend and any(row.kind == "message" for row in rows):
        lines += ["", *_legend_lines(max(line_width, 60))]
    return "\n".join(lines) + "\n"


# --- SVG ----------------------------------------------------------------------------------------------
_COLUMN: Final = 200
_LEFT: Final = 90
_TOP: Final = 56
_ROW: Final = 30
#: the width of one character of the SVG's 12 px monospace text (0.6 em), for fitting labels
_CHAR: Final = 7.2
_STYLE: Final = (
    "text{font-family:monospace;font-size:12px}"
    ".participant rect{fill:#eef3fb;stroke:#36c}"
    ".lifeline{stroke:#999;stroke-dasharray:4 4}"
    ".lifeline.unregistered{stroke:#ccc;stroke-dasharray:1 5}"
    ".lifeline.offline{stroke:#c33;stroke-dasharray:1 3;stroke-width:2}"
    ".lifeline.busy{stroke:#d80;stroke-dasharray:none;stroke-width:4}"
    ".message line{stroke:#222;stroke-width:1.2}"
    ".message.response line{stroke:#36c;stroke-dasharray:6 3}"
    ".message.lost line{stroke:#c33}"
    ".message:hover line{stroke-width:2.5}"
    ".message text,.mark text{paint-order:stroke;stroke:#fff;stroke-width:3px}"
    ".time{fill:#666}"
    ".note rect{fill:#fff7d6;stroke:#c90}"
    ".mark rect{fill:#fdeaea;stroke:#c33}"
    ".gap text{fill:#666;font-style:italic}"
    ".gap path{stroke:#999;fill:none}"
    ".legend rect{fill:#fafafa;stroke:#ccc}"
)


def _xml_text(text: str) -> str:
    """Text XML 1.0 can carry (other control characters become U+FFFD)."""
    return _XML_BAD.sub("\ufffd", text)


def _message_text(record: MessageRecord) -> str:
    head = f"{record.transport.upper()} {format_address(record.src)} -> {format_address(record.dst)}"
    return _xml_text(head + "\n\n" + record.data.decode("utf-8", "replace").replace("\r\n", "\n"))


def _fit(texts: Sequence[str], pixels: float) -> str:
    """The first of ``texts`` that fits in ``pixels``, else the last one clipped to fit."""
    chars = max(int(pixels / _CHAR), 0)
    for text in texts:
        if len(text) <= chars:
            return text
    return _clip(texts[-1], chars)


def _arrow_markers(defs: ET.Element) -> None:
    attributes = {
        "viewBox": "0 0 10 10",
        "refX": "10",
        "refY": "5",
        "markerWidth": "8",
        "markerHeight": "8",
        "orient": "auto-start-reverse",
    }
    marker = ET.SubElement(defs, "marker", {"id": "arrow", **attributes})
    ET.SubElement(marker, "path", {"d": "M 0 0 L 10 5 L 0 10 z", "fill": "context-stroke"})
    cross = ET.SubElement(defs, "marker", {"id": "lost", **attributes, "refX": "5"})
    ET.SubElement(cross, "path", {"d": "M 1 1 L 9 9 M 9 1 L 1 9", "stroke": "#c33", "stroke-width": "2"})


def _svg_legend(svg: ET.Element, x: int, y: int, width: int) -> None:
    """Samples of each kind of arrow and lifeline, in a box at (x, y)."""
    group = ET.SubElement(svg, "g", {"class": "legend"})
    ET.SubElement(group, "rect", {"x": str(x), "y": str(y), "width": str(width), "height": "52"})
    samples = [
        ("message", "request"),
        ("message response", "response"),
        ("message lost", "lost (receiver offline)"),
    ]
    for i, (kind, text) in enumerate(samples):
        sx = x + 12 + i * 210
        sample = ET.SubElement(group, "g", {"class": f"sample {kind}"})
        marker = "url(#lost)" if "lost" in kind else "url(#arrow)"
        ET.SubElement(
            sample,
            "line",
            {
                "x1": str(sx),
                "y1": str(y + 16),
                "x2": str(sx + 50),
                "y2": str(y + 16),
                "marker-end": marker,
            },
        )
        ET.SubElement(group, "text", {"x": str(sx + 58), "y": str(y + 20)}).text = text
    lifelines = [
        ("", "lifeline"),
        ("unregistered", "not registered"),
        ("offline", "offline"),
        ("busy", "busy"),
    ]
    for i, (state, text) in enumerate(lifelines):
        sx = x + 12 + i * 160
        ET.SubElement(
            group,
            "line",
            {
                "class": f"lifeline {state}".strip(),
                "x1": str(sx),
                "y1": str(y + 38),
                "x2": str(sx + 40),
                "y2": str(y + 38),
            },
        )
        ET.SubElement(group, "text", {"x": str(sx + 48), "y": str(y + 42)}).text = text


def _svg_element(
    capture: Capture,
    notes: Iterable[Note | Mark],
    participants: Sequence[str],
    links: bool,
    gap: float | None,
) -> ET.Element:
    rows, origin = _rows(capture, notes, gap)
    start: Mapping[str, str] = rows.pop(0).states if rows else {}
    columns = capture.participants(participants)
    position = {name: _LEFT + _COLUMN // 2 + i * _COLUMN for i, name in enumerate(columns)}
    xs = sorted(position.values())
    width = max(_LEFT + max(len(columns), 1) * _COLUMN + 10, 700)
    legend_y = _TOP + (len(rows) + 1) * _ROW
    height = legend_y + 52 + 10
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
    _arrow_markers(ET.SubElement(svg, "defs"))
    bottom = legend_y - 10
    ET.SubElement(svg, "text", {"x": "8", "y": str(_TOP - 24), "class": "time"}).text = "ms"

    def row_y(n: int) -> int:
        return _TOP + n * _ROW + _ROW // 2

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
        # the lifeline, one segment per state
        segments: list[tuple[int, str]] = [(34, start.get(name, ""))]
        for n, row in enumerate(rows):
            current = row.states.get(name, "")
            if current != segments[-1][1]:
                segments.append((row_y(n) - _ROW // 2, current))
        for (y1, current), (y2, _) in zip(segments, [*segments[1:], (bottom, "")], strict=True):
            if y2 > y1:
                ET.SubElement(
                    group,
                    "line",
                    {
                        "class": f"lifeline {current}".strip(),
                        "x1": str(x),
                        "y1": str(y1),
                        "x2": str(x),
                        "y2": str(y2),
                    },
                )
    for n, row in enumerate(rows):
        y = row_y(n)
        if row.kind == "gap":
            group = ET.SubElement(svg, "g", {"class": "gap"})
            ET.SubElement(group, "text", {"x": "8", "y": str(y + 4)}).text = row.text
            for x in xs:  # a break on each lifeline
                ET.SubElement(
                    group, "path", {"d": f"M {x - 6} {y - 2} l 12 -4 M {x - 6} {y + 4} l 12 -4"}
                )
            continue
        ET.SubElement(svg, "text", {"x": "8", "y": str(y + 4), "class": "time"}).text = _ms(
            row.time - origin
        )
        fits = int(len(row.text) * _CHAR) + 12 <= _COLUMN - 16  # within the neighbours' lifelines
        if row.kind == "mark" and row.participant in position and fits:
            x = position[row.participant]
            group = ET.SubElement(
                svg, "g", {"class": f"mark {row.states.get(row.participant, '')}".strip()}
            )
            text = _xml_text(row.text)
            box = int(len(text) * _CHAR) + 12
            ET.SubElement(
                group,
                "rect",
                {"x": str(x - box // 2), "y": str(y - 10), "width": str(box), "height": "20", "rx": "8"},
            )
            ET.SubElement(
                group, "text", {"x": str(x), "y": str(y + 4), "text-anchor": "middle"}
            ).text = text
            continue
        record = row.record
        if record is None:  # a note, or a mark too wide for its lifeline's gap
            text = row.text if row.kind == "note" else f"{row.participant}: {row.text}"
            group = ET.SubElement(svg, "g", {"class": "note"})
            ET.SubElement(
                group,
                "rect",
                {"x": str(_LEFT), "y": str(y - 10), "width": str(width - _LEFT - 10), "height": "20"},
            )
            ET.SubElement(group, "text", {"x": str(_LEFT + 8), "y": str(y + 4)}).text = _xml_text(text)
            continue
        kind = "response" if row.response else "request"
        parent: ET.Element = svg
        if links:
            parent = ET.SubElement(svg, "a", {"href": f"#msg-{row.index}"})
        group = ET.SubElement(
            parent,
            "g",
            {"class": f"message {kind}" + (" lost" if row.lost else ""), "id": f"arrow-{row.index}"},
        )
        ET.SubElement(group, "title").text = _message_text(record)
        a = position[capture.name(record.src)]
        b = position[capture.name(record.dst)]
        transport = f" [{record.transport}]"
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
            later = [p for p in xs if p > a]
            room = (later[0] - a - 44) if later else len(row.text + transport) * _CHAR
            label = _fit([row.text + transport, row.text, row.short + transport, row.short], room)
            ET.SubElement(group, "text", {"x": str(a + 36), "y": str(y + 4)}).text = _xml_text(label)
            continue
        ET.SubElement(
            group,
            "line",
            {
                "x1": str(a),
                "y1": str(y),
                "x2": str(b),
                "y2": str(y),
                "marker-end": "url(#lost)" if row.lost else "url(#arrow)",
            },
        )
        g_lo, g_hi = _label_gap(a, b, xs)
        label = _fit(
            [row.text + transport, row.text, row.short + transport, row.short], g_hi - g_lo - 16
        )
        ET.SubElement(
            group, "text", {"x": str((g_lo + g_hi) // 2), "y": str(y - 4), "text-anchor": "middle"}
        ).text = _xml_text(label)
    _svg_legend(svg, _LEFT, legend_y, width - _LEFT - 10)
    return svg


def svg_ladder(
    capture: Capture,
    notes: Iterable[Note | Mark] = (),
    *,
    participants: Sequence[str] = (),
    gap: float | None = GAP,
) -> str:
    """The ladder as a standalone SVG document (UTF-8 text with an XML declaration).

    :param capture: the messages.
    :param notes: ``(time, text)`` notes and :class:`Mark` rows, placed among the messages by time.
    :param participants: column order (labels); others follow by first appearance.
    :param gap: seconds from which a pause between two rows gets a gap row (``None``: never).
    """
    svg = _svg_element(capture, notes, participants, links=False, gap=gap)
    ET.indent(svg)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(svg, encoding="unicode") + "\n"


def html_ladder(
    capture: Capture,
    notes: Iterable[Note | Mark] = (),
    *,
    participants: Sequence[str] = (),
    title: str = "imscore ladder",
    gap: float | None = GAP,
) -> str:
    """An HTML page: the SVG ladder, then every message in full (click an arrow to jump to it).

    :param capture: the messages.
    :param notes: ``(time, text)`` notes and :class:`Mark` rows, placed among the messages by time.
    :param participants: column order (labels); others follow by first appearance.
    :param title: the page title and heading.
    :param gap: seconds from which a pause between two rows gets a gap row (``None``: never).
    """
    notes = list(notes)
    svg = _svg_element(capture, notes, participants, links=True, gap=gap)
    ET.indent(svg)
    origin = next(iter(capture)).time if len(capture) else 0.0
    labels = {row.index: row.text for row in _rows(capture, notes, None)[0] if row.kind == "message"}
    items = []
    for index, record in enumerate(capture, 1):
        src, dst = html.escape(capture.name(record.src)), html.escape(capture.name(record.dst))
        heading = (
            f"{index}. {_ms(record.time - origin)} ms {src} \u2192 {dst}: "
            f'<a href="#arrow-{index}">{html.escape(labels[index])}</a>'
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
