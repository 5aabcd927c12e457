"""What a person sees of lab runs: the comparison table, and per run a ladder (text, SVG, HTML) and a
pcap written to an output folder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from imscore.capture import Capture, html_ladder, svg_ladder, text_ladder, write_pcap

from .runner import LabRun, StepResult

__all__ = ["ROWS", "comparison_table", "new_output_dir", "write_run"]

#: the rows shown for each step: label and how to read it from a step result
ROWS = ("registered", "rang", "cancelled", "answered", "caller got")


def _cell(result: StepResult, row: str) -> str:
    if row == "registered":
        return ", ".join(result.registered) or "-"
    if row == "rang":
        return ", ".join(result.rang) or "-"
    if row == "cancelled":
        return ", ".join(result.cancelled) or "-"
    if row == "answered":
        return result.answered or "-"
    return result.caller_got or result.detail or "-"


def _rows_for(result: StepResult) -> list[str]:
    """The rows worth showing for this step (a call shows all; others what changed)."""
    if result.step.startswith("call "):
        return list(ROWS)
    return ["registered", "caller got"] if result.detail else ["registered"]


def comparison_table(runs: Sequence[LabRun]) -> str:
    """Per step and per profile: who is registered, who rang, who was cancelled, who answered, what
    the caller got (or what the step did). One column per run."""
    if not runs:
        return ""
    label_width = max(len(r) for r in ROWS) + 4
    widths: list[int] = []
    for run in runs:
        sizes = [len(run.profile)] + [len(_cell(step, row)) for step in run.steps for row in ROWS]
        widths.append(min(max(sizes) + 2, 48))
    lines = [f"scenario {runs[0].scenario} ({runs[0].mode} time)"]
    header = " " * label_width + "".join(
        run.profile.ljust(w) for run, w in zip(runs, widths, strict=True)
    )
    for index, first in enumerate(runs[0].steps):
        lines.append("")
        lines.append(f"step {first.index}  {first.step}")
        lines.append(header.rstrip())
        for row in _rows_for(first):
            label = "done" if row == "caller got" and not first.step.startswith("call ") else row
            cells: list[str] = []
            for run, width in zip(runs, widths, strict=True):
                text = _cell(run.steps[index], row) if index < len(run.steps) else "?"
                if len(text) > width - 2:
                    text = text[: width - 3] + "…"
                cells.append(text.ljust(width))
            lines.append(("  " + label).ljust(label_width) + "".join(cells).rstrip())
    return "\n".join(lines) + "\n"


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


def write_run(run: LabRun, folder: Path) -> list[Path]:
    """Write ``<profile>.ladder.txt``, ``.svg``, ``.html``, ``.pcap`` and ``.steps.json`` for a run;
    returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    capture = _capture(run)
    order = list(run.order)
    notes = list(run.notes)
    stem = folder / run.profile
    written = []
    texts = {
        ".ladder.txt": text_ladder(capture, notes, participants=order),
        ".ladder.svg": svg_ladder(capture, notes, participants=order),
        ".ladder.html": html_ladder(
            capture, notes, participants=order, title=f"{run.scenario} — {run.profile}"
        ),
        ".steps.json": json.dumps([vars(step) for step in run.steps], indent=2) + "\n",
    }
    for suffix, text in texts.items():
        path = stem.with_name(stem.name + suffix)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    pcap = stem.with_name(stem.name + ".pcap")
    write_pcap(pcap, run.records)
    written.append(pcap)
    return written
