"""What a person sees of lab runs: the comparison table (text, Markdown, JSON), and per run a ladder
(text, SVG, HTML), a pcap and the step results written to an output folder.

The table has one block per step and one column per run. Every step shows who is registered after
it; a REGISTER step the algorithm the device answered (``auth``) and what it got (``done``); a call
shows who rang (sent 180 or answered), who was cancelled, who answered, what the caller got, and one
row per device the call was offered to under any profile: what became of its branch (``rang,
answered``, ``busy (486)``, ``no answer (offline)`` …). Times written to files are rounded to the
microsecond.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imscore.capture import Capture, html_ladder, svg_ladder, text_ladder, write_pcap

from .runner import LabRun, StepResult

__all__ = [
    "ROWS",
    "TABLE_FILES",
    "Table",
    "comparison_json",
    "comparison_markdown",
    "comparison_table",
    "new_output_dir",
    "table",
    "write_comparison",
    "write_run",
]

#: the rows shown for each step (a call shows all of them, then one row per device)
ROWS = ("registered", "auth", "rang", "cancelled", "answered", "caller got")
#: the files :func:`write_comparison` writes
TABLE_FILES = ("comparison.txt", "comparison.md", "comparison.json")
#: digits kept of times (seconds) written to files: microseconds
DIGITS = 6


def _cell(result: StepResult, row: str, device: bool) -> str:
    if device:
        return result.devices.get(row) or "-"
    if row == "registered":
        return ", ".join(result.registered) or "-"
    if row == "auth":
        return result.auth or "-"
    if row == "rang":
        return ", ".join(result.rang) or "-"
    if row == "cancelled":
        return ", ".join(result.cancelled) or "-"
    if row == "answered":
        return result.answered or "-"
    return result.caller_got or result.detail or "-"


@dataclass(frozen=True)
class TableRow:
    """One row of a step's block: its label, whether it is a device's row, one cell per run."""

    label: str
    device: bool
    cells: tuple[str, ...]


@dataclass(frozen=True)
class TableStep:
    """One step's block of the table."""

    index: int
    step: str
    rows: tuple[TableRow, ...]


@dataclass(frozen=True)
class Table:
    """The comparison: the scenario, the runs' profiles, a block per step."""

    scenario: str
    mode: str
    profiles: tuple[str, ...]
    steps: tuple[TableStep, ...]


def _row_names(
    first: StepResult, results: Sequence[StepResult | None], order: Sequence[str]
) -> list[tuple[str, bool]]:
    """The rows worth showing for this step (a call shows all, then its devices in ``order``;
    others what changed)."""
    if first.step.startswith("call "):
        rows = [(row, False) for row in ROWS if row != "auth"]
        offered = {d for result in results if result is not None for d in result.devices}
        devices = [name for name in order if name in offered]
        devices += sorted(offered - set(devices))
        return rows + [(name, True) for name in devices]
    rows = [("registered", False)]
    if first.step.startswith("register "):
        rows.append(("auth", False))
    if first.detail:
        rows.append(("caller got", False))
    return rows


def table(runs: Sequence[LabRun]) -> Table:
    """The comparison of ``runs`` (the same scenario under several profiles) as data."""
    if not runs:
        return Table("", "", (), ())
    steps: list[TableStep] = []
    for index, first in enumerate(runs[0].steps):
        results = [run.steps[index] if index < len(run.steps) else None for run in runs]
        rows: list[TableRow] = []
        for name, device in _row_names(first, results, runs[0].order):
            label = "done" if name == "caller got" and not first.step.startswith("call ") else name
            cells = tuple("?" if r is None else _cell(r, name, device) for r in results)
            rows.append(TableRow(label, device, cells))
        steps.append(TableStep(first.index, first.step, tuple(rows)))
    return Table(runs[0].scenario, runs[0].mode, tuple(run.profile for run in runs), tuple(steps))


def comparison_table(runs: Sequence[LabRun]) -> str:
    """Per step and per profile: who is registered, who rang, who was cancelled, who answered, what
    the caller got (or what the step did), what became of each device's branch. One column per run;
    device rows are indented."""
    data = table(runs)
    if not data.profiles:
        return ""
    labels = [("    " if row.device else "  ") + row.label for step in data.steps for row in step.rows]
    label_width = max([len(r) + 2 for r in ROWS] + [len(label) for label in labels]) + 2
    widths = []
    for column, profile in enumerate(data.profiles):
        sizes = [len(profile)] + [len(row.cells[column]) for step in data.steps for row in step.rows]
        widths.append(min(max(sizes) + 2, 64))
    lines = [f"scenario {data.scenario} ({data.mode} time)"]
    header = " " * label_width + "".join(
        profile.ljust(w) for profile, w in zip(data.profiles, widths, strict=True)
    )
    for step in data.steps:
        lines.append("")
        lines.append(f"step {step.index}  {step.step}")
        lines.append(header.rstrip())
        for row in step.rows:
            cells: list[str] = []
            for text, width in zip(row.cells, widths, strict=True):
                if len(text) > width - 2:
                    text = text[: width - 3] + "…"
                cells.append(text.ljust(width))
            label = ("    " if row.device else "  ") + row.label
            lines.append(label.ljust(label_width) + "".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def comparison_markdown(runs: Sequence[LabRun]) -> str:
    """The comparison as Markdown: a heading and a table per step (cells in full, device rows in
    italics)."""
    data = table(runs)
    if not data.profiles:
        return ""
    lines = [f"# Scenario {_md(data.scenario)} ({data.mode} time)", ""]
    for step in data.steps:
        lines += [f"## Step {step.index}: {_md(step.step)}", ""]
        lines.append("| | " + " | ".join(_md(p) for p in data.profiles) + " |")
        lines.append("|---|" + "---|" * len(data.profiles))
        for row in step.rows:
            label = f"*{_md(row.label)}*" if row.device else _md(row.label)
            lines.append(f"| {label} | " + " | ".join(_md(c) for c in row.cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _rounded(value: Any) -> Any:
    """``value`` with every float rounded to :data:`DIGITS` (no ``1.0399999999999996``)."""
    if isinstance(value, float):
        return round(value, DIGITS)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def comparison_json(runs: Sequence[LabRun]) -> str:
    """The comparison as JSON: ``scenario``, ``mode``, ``profiles``, and per step its ``rows``, each
    ``{"row", "device", "cells": {profile: text}}``; then each run's step results in full."""
    data = table(runs)
    document = {
        "scenario": data.scenario,
        "mode": data.mode,
        "profiles": list(data.profiles),
        "steps": [
            {
                "index": step.index,
                "step": step.step,
                "rows": [
                    {
                        "row": row.label,
                        "device": row.device,
                        "cells": dict(zip(data.profiles, row.cells, strict=True)),
                    }
                    for row in step.rows
                ],
            }
            for step in data.steps
        ],
        "runs": {
            run.profile: {
                "policies": run.policies,
                "duration": run.duration,
                "steps": [asdict(s) for s in run.steps],
            }
            for run in runs
        },
    }
    return json.dumps(_rounded(document), indent=2, ensure_ascii=False) + "\n"


def write_comparison(runs: Sequence[LabRun], folder: Path) -> list[Path]:
    """Write the table as ``comparison.txt`` (what is printed), ``.md`` and ``.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = {
        "comparison.txt": comparison_table(runs),
        "comparison.md": comparison_markdown(runs),
        "comparison.json": comparison_json(runs),
    }
    written = []
    for name, text in texts.items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def new_output_dir(scenario: str, base: Path | None = None) -> Path:
    """A new folder ``lab-<scenario>-<n>`` in ``base`` (the working directory by default)."""
    base = base or Path.cwd()
    for n in range(1, 10_000):
        candidate = base / f"lab-{scenario}-{n}"
        if not candidate.exists():
            candidate.mkdir(parents=True)
            return candidate
    raise OSError(f"no free lab-{scenario}-N folder name in {base}")


def _capture(run: LabRun) -> Capture:
    capture = Capture(names=dict(run.names))
    for record in run.records:
        capture.add(record)
    return capture


#: characters per column of a lab's text ladder: room for ``180 from softphone``-sized labels
TEXT_COLUMN = 24


def write_run(run: LabRun, folder: Path) -> list[Path]:
    """Write ``<profile>.ladder.txt``, ``.svg``, ``.html``, ``.pcap`` and ``.steps.json`` for a run;
    returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    capture = _capture(run)
    order = list(run.order)
    notes = list(run.notes)
    stem = folder / run.profile
    written = []
    columns = len(capture.participants(order))
    width = max(120, 10 + TEXT_COLUMN * columns)
    steps = [_rounded(asdict(step)) for step in run.steps]
    texts = {
        ".ladder.txt": text_ladder(capture, notes, participants=order, width=width),
        ".ladder.svg": svg_ladder(capture, notes, participants=order),
        ".ladder.html": html_ladder(
            capture, notes, participants=order, title=f"{run.scenario} — {run.profile}"
        ),
        ".steps.json": json.dumps(steps, indent=2) + "\n",
    }
    for suffix, text in texts.items():
        path = stem.with_name(stem.name + suffix)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    pcap = stem.with_name(stem.name + ".pcap")
    write_pcap(pcap, run.records)
    written.append(pcap)
    return written
