"""``imscore lab run`` and ``imscore lab compare``: run a scenario under profiles, show the table,
write ladders and pcaps."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

from imscore.profile import Profile, ProfileError, load_profile

from .report import comparison_table, new_output_dir, write_comparison, write_run
from .runner import LabRun, run_real, run_virtual
from .scenario import ScenarioError, load_scenario, shipped_scenarios

__all__ = ["add_lab_parser", "run_lab"]


def add_lab_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``lab run`` and ``lab compare`` to the command line."""
    lab = commands.add_parser(
        "lab", help="run a scenario under one or more profiles and compare (virtual time by default)"
    )
    actions = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    shipped = ", ".join(shipped_scenarios()) or "none"
    for name, helptext in (
        ("run", "run a scenario under one profile"),
        ("compare", "run a scenario under several profiles, side by side"),
    ):
        action = actions.add_parser(name, help=helptext)
        action.add_argument("scenario", help=f"a scenario file, or a shipped scenario ({shipped})")
        if name == "run":
            action.add_argument("--profile", default="default", help="profile name or file")
        else:
            action.add_argument(
                "--profiles",
                required=True,
                help="comma-separated profile names or files (e.g. legacy-single-registration,ims)",
            )
        action.add_argument(
            "--out",
            type=Path,
            default=None,
            help="folder for the table (comparison.txt/.md/.json), ladders and pcaps "
            "(default: a new lab-* folder)",
        )
        action.add_argument(
            "--real-time",
            action="store_true",
            help="run over loopback UDP sockets in real time instead of virtual time",
        )
        action.add_argument("--seed", type=int, default=1, help="seed of a virtual run (default 1)")
        action.add_argument(
            "--progress",
            choices=("auto", "always", "never"),
            default="auto",
            help="show a progress bar (auto: when stderr is a terminal)",
        )


def _progress_printer(stream: TextIO, label: str, mode: str) -> object:
    show = mode == "always" or (mode == "auto" and stream.isatty())
    if not show:
        return None

    def progress(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        stream.write(f"\r{label:<28} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} steps")
        if done == total:
            stream.write("\n")
        stream.flush()

    return progress


def run_lab(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run ``imscore lab run|compare``; returns the exit status (2 for a bad scenario or profile)."""
    try:
        scenario = load_scenario(args.scenario)
        names = (
            [args.profile]
            if args.lab_command == "run"
            else [p.strip() for p in args.profiles.split(",") if p.strip()]
        )
        if not names:
            raise ProfileError("--profiles", "expected one profile name at least")
        profiles: list[Profile] = [load_profile(name) for name in names]
    except (ScenarioError, ProfileError) as exc:
        print(f"imscore: {exc}", file=err)
        return 2
    runs: list[LabRun] = []
    started = time.perf_counter()
    for profile in profiles:
        progress = _progress_printer(err, profile.name, args.progress)
        if args.real_time:
            runs.append(run_real(scenario, profile, progress=progress))  # type: ignore[arg-type]
        else:
            runs.append(run_virtual(scenario, profile, seed=args.seed, progress=progress))  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    out.write(comparison_table(runs))
    try:
        folder = args.out if args.out is not None else new_output_dir(scenario.name)
        written = write_comparison(runs, folder)
        written += [path for run in runs for path in write_run(run, folder)]
    except OSError as exc:
        print(f"imscore: cannot write the lab output: {exc}", file=err)
        return 2
    mode = "real" if args.real_time else "virtual"
    out.write(
        f"\n{len(runs)} run(s) in {elapsed:.2f} s wall ({mode} time: "
        + ", ".join(f"{run.profile} {run.duration:.1f} s" for run in runs)
        + f"); table, ladders and pcaps in {folder}/ ({len(written)} files)\n"
    )
    return 0
