"""The ``imscore`` command: ``serve``, ``profile check`` and ``profile show``.

Every start-up problem (a bad profile, a bad ``--listen``, a store that cannot be opened, a port in
use) ends the command with one message on standard error naming what was wrong, and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from imscore import __version__
from imscore.profile import (
    BUILTIN_PLUGINS,
    ListenError,
    ProfileError,
    check_store_url,
    dump_profile,
    load_profile,
    parse_listen,
    shipped_profiles,
)

if TYPE_CHECKING:
    from imscore.subscribers import SubscriberDirectory

__all__ = ["main"]

EXIT_USAGE = 2


class CliError(Exception):
    """A start-up problem, already worded for the user."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imscore",
        description="An IMS-flavoured SIP core: S-CSCF shaped registrar and forking proxy.",
    )
    parser.add_argument("--version", action="version", version=f"imscore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the SIP server until SIGINT or SIGTERM")
    serve.add_argument(
        "--profile",
        default="default",
        metavar="NAME|PATH",
        help=f"a shipped profile ({', '.join(shipped_profiles())}) or a YAML file (default: default)",
    )
    serve.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="TRANSPORT:HOST:PORT",
        help="listen here instead of the profile's listeners (repeatable), e.g. udp:127.0.0.1:5060, "
        "tcp:[::1]:5060, tls:127.0.0.1:5061",
    )
    serve.add_argument(
        "--subscribers",
        metavar="FILE",
        help="subscriber file (YAML; default: the shipped demo subscribers)",
    )
    serve.add_argument("--store", metavar="URL", help="memory: or sqlite:PATH (default: the profile's)")
    serve.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log level (default: INFO)",
    )

    profile = commands.add_parser("profile", help="check or show profiles")
    profile_commands = profile.add_subparsers(dest="profile_command", required=True, metavar="ACTION")
    check = profile_commands.add_parser("check", help="validate a profile file")
    check.add_argument("file", metavar="FILE")
    show = profile_commands.add_parser("show", help="print a profile's effective settings")
    show.add_argument("name", metavar="NAME|PATH")
    return parser


def _known_plugins() -> dict[str, frozenset[str]]:
    return {decision: frozenset(names) for decision, names in BUILTIN_PLUGINS.items()}


def _load_subscribers(path: str | None) -> tuple[str, SubscriberDirectory]:
    """Load and check the subscriber file (the demo one when none is given)."""
    from imscore.subscribers import SubscriberError, demo_subscribers_path, load_subscribers

    source = path or str(demo_subscribers_path())
    try:
        return source, load_subscribers(source)
    except SubscriberError as exc:
        raise CliError(str(exc)) from None


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    profile = load_profile(args.profile, known_plugins=_known_plugins())
    try:
        listeners = [parse_listen(text) for text in args.listen]
    except ListenError as exc:
        raise CliError(f"--listen: {exc}") from None
    if args.store is not None:
        try:
            check_store_url(args.store)
        except ValueError as exc:
            raise CliError(f"--store: {exc}") from None
    source, directory = _load_subscribers(args.subscribers)
    logging.getLogger("imscore").info("subscribers: %d from %s", len(directory), source)
    from imscore.server.runtime import Server, ServerError, run_until_signalled
    from imscore.subscribers import MemorySubscriberStore

    server = Server(
        profile,
        listeners=listeners,
        store_url=args.store,
        source=args.profile,
        subscribers=MemorySubscriberStore(directory),
    )
    try:
        asyncio.run(run_until_signalled(server))
    except ServerError as exc:
        raise CliError(str(exc)) from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.profile_command == "check":
            profile = load_profile(args.file, known_plugins=_known_plugins())
            listeners = ", ".join(str(listener) for listener in profile.listeners)
            domains = ", ".join(profile.domains)
            print(f"{args.file}: OK (profile {profile.name}; domains {domains}; {listeners})")
            return 0
        print(dump_profile(load_profile(args.name, known_plugins=_known_plugins())), end="")
        return 0
    except (ProfileError, CliError) as exc:
        print(f"imscore: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
