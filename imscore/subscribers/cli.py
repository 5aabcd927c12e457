"""``imscore subscribers``: work on subscriber files (``convert`` a YAML file to a bulk file)."""

from __future__ import annotations

import argparse

__all__ = ["add_subscribers_parser", "run_subscribers"]


def add_subscribers_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``subscribers`` command and its actions to the top-level parser."""
    parser = commands.add_parser("subscribers", help="work on subscriber files")
    actions = parser.add_subparsers(dest="subscribers_command", required=True, metavar="ACTION")
    convert = actions.add_parser(
        "convert",
        help="write a YAML subscriber file as a bulk file (JSON Lines, one subscriber per line), "
        "checked and read back",
    )
    convert.add_argument("source", metavar="IN.yaml", help="the YAML subscriber file")
    convert.add_argument("target", metavar="OUT.jsonl", help="the bulk file to write (.jsonl)")


def run_subscribers(args: argparse.Namespace) -> str:
    """Run ``imscore subscribers ACTION``; returns the line to print.

    :raises SubscriberError: for an invalid source or a target that cannot be written.
    :raises ValueError: for a target whose name does not end in ``.jsonl``.
    """
    from .bulk import convert
    from .loader import BULK_SUFFIX

    if not str(args.target).endswith(BULK_SUFFIX):
        raise ValueError(f"{args.target}: expected a bulk file name ending in {BULK_SUFFIX}")
    count = convert(args.source, args.target)
    return f"{args.target}: {count} subscribers written from {args.source}"
