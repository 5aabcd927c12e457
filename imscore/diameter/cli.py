"""The ``imscore hss`` command: serve a subscriber file over Diameter Cx until SIGINT or SIGTERM.

The logic of the command lives here; :mod:`imscore.cli` only adds the parser and calls
:func:`run_hss`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Final

__all__ = ["DEFAULT_PORT", "add_hss_parser", "parse_diameter_listen", "run_hss"]

#: the Diameter port (RFC 6733 §2.1)
DEFAULT_PORT: Final = 3868


class HssCliError(Exception):
    """A start-up problem of ``imscore hss``, worded for the user."""


def add_hss_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hss`` to the ``imscore`` subcommands."""
    hss = commands.add_parser("hss", help="serve the subscriber file as an HSS over Diameter Cx")
    hss.add_argument(
        "--listen",
        default=f"tcp:127.0.0.1:{DEFAULT_PORT}",
        metavar="tcp|sctp:HOST:PORT",
        help=f"where to listen, over TCP or SCTP (default: tcp:127.0.0.1:{DEFAULT_PORT}; port 0 "
        "picks a free one)",
    )
    hss.add_argument(
        "--subscribers",
        metavar="FILE",
        help="subscriber file (YAML or .jsonl; default: the shipped demo subscribers), or SCHEME:... "
        "for a plugin's subscriber store",
    )
    hss.add_argument(
        "--profile",
        default="default",
        metavar="NAME|PATH",
        help="the profile whose first domain gives the default origin realm (default: default)",
    )
    hss.add_argument("--origin-host", metavar="FQDN", help="Origin-Host (default: hss.<realm>)")
    hss.add_argument(
        "--origin-realm", metavar="REALM", help="Origin-Realm (default: the profile's first domain)"
    )
    hss.add_argument(
        "--scscf",
        metavar="SIP-URI",
        help="the S-CSCF named in first-registration UAAs and LIAs (default: none, the answer "
        "carries Server-Capabilities and the I-CSCF chooses)",
    )
    hss.add_argument(
        "--control",
        metavar="PATH",
        help="a Unix socket (mode 0600) on which `imscore hss rtr` and `imscore hss ppr` reach this "
        "HSS (default: none)",
    )
    actions = hss.add_subparsers(dest="hss_action", metavar="ACTION")
    rtr = actions.add_parser("rtr", help="de-register a user from its S-CSCF (RTR) via --control")
    ppr = actions.add_parser(
        "ppr", help="re-read the subscriber file and push a user's profile (PPR) via --control"
    )
    for action in (rtr, ppr):
        action.add_argument("--control", required=True, metavar="PATH", help="the HSS's --control")
        action.add_argument("--impi", required=True, metavar="IMPI", help="the private identity")
    from imscore.diameter.control import REASONS

    rtr.add_argument(
        "--reason",
        choices=list(REASONS),
        default="permanent",
        help="Deregistration-Reason's Reason-Code (default: permanent)",
    )


def parse_diameter_listen(text: str) -> tuple[str, int, str]:
    """``tcp:HOST:PORT`` or ``sctp:HOST:PORT`` (``tcp:[::1]:3868`` for IPv6) as
    ``(host, port, transport)``.

    :raises ValueError: with what was expected.
    """
    transport, sep, rest = text.partition(":")
    transport = transport.lower()
    if not sep or transport not in ("tcp", "sctp"):
        raise ValueError(
            f"expected tcp:HOST:PORT or sctp:HOST:PORT (Diameter over TCP or SCTP), got {text!r}"
        )
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or not tail.startswith(":"):
            raise ValueError(f"expected {transport}:[IPv6]:PORT, got {text!r}")
        port_text = tail[1:]
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise ValueError(f"expected {transport}:HOST:PORT, got {text!r}")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected {transport}:HOST:PORT with a port from 0 to 65535, got {text!r}")
    return host, int(port_text), transport


def run_hss(args: argparse.Namespace) -> int:
    """Run ``imscore hss``; returns the exit status. Start-up problems raise :class:`HssCliError`
    wrapped by the caller's error type through ``str()``."""
    if getattr(args, "hss_action", None) is not None:
        return _control(args)
    from imscore.diameter.control import ControlServer
    from imscore.diameter.hss import CxHss
    from imscore.diameter.sctp import SctpUnavailableError
    from imscore.diameter.server import HssServer
    from imscore.diameter.sources import SourceError, open_source
    from imscore.profile import ProfileError, load_profile

    try:
        host, port, transport = parse_diameter_listen(args.listen)
    except ValueError as exc:
        raise HssCliError(f"--listen: {exc}") from None
    try:
        source = open_source(args.subscribers)
    except SourceError as exc:
        raise HssCliError(str(exc)) from None
    realm = args.origin_realm
    if realm is None:
        try:
            realm = load_profile(args.profile).domains[0]
        except ProfileError as exc:
            raise HssCliError(str(exc)) from None
    origin_host = args.origin_host or f"hss.{realm}"
    hss = CxHss(
        source.store,
        origin_host,
        realm,
        server_name=args.scscf,
    )
    server = HssServer(hss)
    control = ControlServer(server, source.reload)

    async def serve() -> None:
        try:
            await server.start(host, port, transport)
        except SctpUnavailableError as exc:
            raise HssCliError(f"--listen {args.listen}: {exc}") from None
        except OSError as exc:
            raise HssCliError(f"--listen {args.listen}: {exc.strerror or exc}") from None
        if args.control:
            try:
                await control.start(args.control)
            except OSError as exc:
                await server.close()
                raise HssCliError(f"--control {args.control}: {exc.strerror or exc}") from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        bound = ", ".join(
            f"{transport}:[{h}]:{p}" if ":" in h else f"{transport}:{h}:{p}" for h, p in server.addresses
        )
        print(
            f"imscore hss: Cx on {bound} as {origin_host} (realm {realm}), {source.description}",
            file=sys.stderr,
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            await control.close()
            await server.close()

    asyncio.run(serve())
    return 0


def _control(args: argparse.Namespace) -> int:
    """``imscore hss rtr|ppr``: one command to the running HSS; prints its JSON answer."""
    import json

    from imscore.diameter.control import send_control

    order = {"command": args.hss_action, "impi": args.impi}
    if args.hss_action == "rtr":
        order["reason"] = args.reason
    try:
        reply = send_control(args.control, order)
    except (OSError, TimeoutError, ValueError) as exc:
        raise HssCliError(f"--control {args.control}: {exc}") from None
    print(json.dumps(reply))
    return 0 if reply.get("ok") else 1
