"""The ``imscore`` command: ``serve``, ``profile check``, ``profile show`` and ``bindings``.

Every start-up problem (a bad profile, a bad ``--listen``, a store that cannot be opened, a port in
use) ends the command with one message on standard error naming what was wrong, and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

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
from imscore.sip import ParseError, SipUri, parse_uri

if TYPE_CHECKING:
    from imscore.registrar import StoredBinding

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

    bindings = commands.add_parser(
        "bindings", help="list the registrations in the binding store (like kamctl ul show)"
    )
    bindings.add_argument(
        "--store", metavar="URL", help="memory: or sqlite:PATH (default: the profile's store)"
    )
    bindings.add_argument(
        "--profile",
        default="default",
        metavar="NAME|PATH",
        help="the profile whose store to read when --store is not given (default: default)",
    )
    bindings.add_argument(
        "--aor",
        metavar="URI",
        help="only this address-of-record: any IMPU form (sip:, sips:, tel:, sip:+N@host;user=phone)",
    )
    bindings.add_argument(
        "--subscribers",
        metavar="FILE",
        help="subscriber file used to resolve --aor to its implicit set (a tel: URI or an alias)",
    )
    bindings.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def _known_plugins() -> dict[str, frozenset[str]]:
    """The builtin policy names plus those the installed plugins declare (``ims_policy_names``)."""
    from imscore.plugin import PluginError, create_plugin_manager

    names = {decision: set(builtin) for decision, builtin in BUILTIN_PLUGINS.items()}
    try:
        declared = create_plugin_manager().hook.ims_policy_names()
    except PluginError as exc:
        raise CliError(f"plugins: {exc}") from None
    for mapping in declared:
        for decision, more in (mapping or {}).items():
            names.setdefault(decision, set()).update(more)
    return {decision: frozenset(found) for decision, found in names.items()}


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


# -- imscore bindings ----------------------------------------------------------------------------------

_NON_ROUTABLE_V4: Final = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
    )
)
_NON_ROUTABLE_V6: Final = tuple(ipaddress.ip_network(n) for n in ("::1/128", "fc00::/7", "fe80::/10"))


def _bindings_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of a host (IPv6 in brackets or not; IPv4-mapped IPv6 unwrapped), or None."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _bindings_private(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """RFC 1918, RFC 6598 shared, loopback and link-local IPv4; loopback, ULA and link-local IPv6."""
    networks = _NON_ROUTABLE_V4 if address.version == 4 else _NON_ROUTABLE_V6
    return any(address in network for network in networks)


def _bindings_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _bindings_nat(binding: StoredBinding) -> tuple[bool, str]:
    """The NAT rule of the registrar: a Contact whose host is a private address, or that differs
    from the flow's remote address (host, and port for UDP, whose source port is the device's
    listening port unless a NAT rewrote it), is behind a NAT; requests go to the flow."""
    try:
        uri = parse_uri(binding.uri)
    except ParseError:
        return False, f"Contact {binding.uri!r} does not parse"
    if not isinstance(uri, SipUri):
        return False, "Contact is not a SIP URI"
    transport = (uri.params.get("transport") or "").lower()
    default_port = 5061 if uri.scheme == "sips" or transport == "tls" else 5060
    port = uri.port if uri.port is not None else default_port
    contact = f"Contact {_bindings_hostport(uri.host, port)}"
    address = _bindings_address(uri.host)
    flow = binding.flow
    private = address is not None and _bindings_private(address)
    if flow is None:
        if private:
            return True, f"{contact} is a private address; no flow recorded"
        return False, f"{contact}; no flow recorded"
    seen = f"flow from {_bindings_hostport(*flow.remote)}"
    remote = _bindings_address(flow.remote[0])
    if address is None or remote is None or address != remote:
        differs = f"differs from the {seen}"
    elif flow.transport == "udp" and port != flow.remote[1]:
        differs = f"differs from the {seen} (port)"
    else:
        differs = ""
    if private and differs:
        return True, f"{contact} is a private address and {differs}"
    if private:
        return True, f"{contact} is a private address; {seen}"
    if differs:
        return True, f"{contact} {differs}"
    return False, f"{contact} is the flow's remote address"


def _bindings_time(seconds: float) -> str:
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")
    return stamp.replace("+00:00", "Z")


def _bindings_plain(binding: StoredBinding, now: float) -> dict[str, object]:
    """One binding as JSON-ready data."""
    behind_nat, nat_reason = _bindings_nat(binding)
    flow = binding.flow
    return {
        "aor": binding.aor,
        "impi": binding.impi,
        "contact": binding.contact,
        "uri": binding.uri,
        "expires_in": binding.remaining(now),
        "expired": binding.expired(now),
        "expires_at": _bindings_time(binding.expires_at),
        "q": binding.q,
        "instance_id": binding.instance_id,
        "reg_id": binding.reg_id,
        "registered_at": _bindings_time(binding.registered_at),
        "call_id": binding.call_id,
        "cseq": binding.cseq,
        "path": list(binding.path),
        "user_agent": binding.user_agent,
        "flow": None
        if flow is None
        else {
            "transport": flow.transport,
            "remote": [flow.remote[0], flow.remote[1]],
            "local": [flow.local[0], flow.local[1]],
            "connection": flow.connection,
        },
        "reachable": binding.reachable,
        "behind_nat": behind_nat,
        "nat_reason": nat_reason,
    }


def _bindings_text(plain: dict[str, object]) -> list[str]:
    """One binding as text lines (kamctl ul show style); absent values are ``-``."""

    def show(value: object) -> str:
        return "-" if value is None or value == [] or value == "" else str(value)

    expires = f"{plain['expires_in']} s" + (" (expired)" if plain["expired"] else "")
    flow = plain["flow"]
    if isinstance(flow, dict):
        remote = _bindings_hostport(*flow["remote"])
        local = _bindings_hostport(*flow["local"])
        flow_text = f"{flow['transport']} {remote} -> {local}, connection {show(flow['connection'])}"
    else:
        flow_text = "-"
    path = plain["path"]
    assert isinstance(path, list)
    nat = (
        f"behind NAT: requests go to the flow ({plain['nat_reason']})"
        if plain["behind_nat"]
        else f"no ({plain['nat_reason']})"
    )
    return [
        f"  Contact: {plain['contact']}",
        f"    IMPI: {plain['impi']}",
        f"    Expires in: {expires}",
        f"    q: {show(plain['q'])}",
        f"    Instance: {show(plain['instance_id'])}",
        f"    Reg-id: {show(plain['reg_id'])}",
        f"    Registered at: {plain['registered_at']}",
        f"    Call-ID/CSeq: {show(plain['call_id'])} / {plain['cseq']}",
        f"    Path: {', '.join(str(p) for p in path) if path else '-'}",
        f"    User-Agent: {show(plain['user_agent'])}",
        f"    Flow: {flow_text}",
        f"    State: {'reachable' if plain['reachable'] else 'unreachable'}",
        f"    NAT: {nat}",
    ]


def _bindings_aor_key(text: str, subscribers: str | None) -> str:
    """The AOR key a ``--aor`` value is filed under: the implicit set's default IMPU when the
    subscriber file knows the IMPU, else the URI's own AOR key."""
    try:
        uri = parse_uri(text if ":" in text else f"sip:{text}")
    except ParseError:
        raise CliError(
            f"--aor: {text!r} is not a URI; expected e.g. sip:alice@ims.example.test"
        ) from None
    if subscribers is not None:
        _, directory = _load_subscribers(subscribers)
        subscriber = directory.by_impu(uri)
        implicit_set = None if subscriber is None else subscriber.implicit_set_of(uri)
        if implicit_set is not None:
            return implicit_set.default.aor
    return uri.aor


def _bindings(args: argparse.Namespace) -> int:
    """``imscore bindings``: the registrations in the store, per AOR."""
    from imscore.registrar.store import open_binding_store
    from imscore.store import StoreError

    if args.store is not None:
        url, option = args.store, "--store"
    else:
        profile = load_profile(args.profile, known_plugins=_known_plugins())
        url, option = profile.store, f"profile {args.profile!r}"
    try:
        url = check_store_url(url)
    except ValueError as exc:
        raise CliError(f"{option}: {exc}") from None
    if url.startswith("sqlite:") and not Path(url[len("sqlite:") :]).exists():
        raise CliError(f"{option}: store {url!r}: no such file (the server creates it when it starts)")
    aor = None if args.aor is None else _bindings_aor_key(args.aor, args.subscribers)
    if url == "memory:":
        print(
            "imscore: a memory: store lives inside the server process; nothing to list", file=sys.stderr
        )

    async def read() -> list[StoredBinding]:
        store = open_binding_store(url)
        try:
            return await (store.all() if aor is None else store.load(aor))
        finally:
            await store.close()

    try:
        stored = asyncio.run(read())
    except StoreError as exc:
        raise CliError(f"{option}: {exc}") from None
    now = time.time()
    by_aor: dict[str, list[dict[str, object]]] = {}
    for binding in stored:
        by_aor.setdefault(binding.aor, []).append(_bindings_plain(binding, now))
    if args.json:
        aors = [{"aor": key, "bindings": plains} for key, plains in by_aor.items()]
        print(json.dumps({"store": url, "now": _bindings_time(now), "aors": aors}, indent=2))
        return 0
    for key, plains in by_aor.items():
        count = f"{len(plains)} binding" + ("" if len(plains) == 1 else "s")
        print(f"AOR: {key} ({count})")
        for plain in plains:
            for line in _bindings_text(plain):
                print(line)
    total = sum(len(plains) for plains in by_aor.values())
    print(f"{len(by_aor)} AOR(s), {total} binding(s) in {url}" + (f" for {aor}" if aor else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "bindings":
            return _bindings(args)
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
