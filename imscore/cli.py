"""The ``imscore`` command: ``serve``, ``profile check``, ``profile show`` and ``bindings``.

Every start-up problem (a bad profile, a bad ``--listen``, a store that cannot be opened, a port in
use) ends the command with one message on standard error naming what was wrong, and exit status 2.
A reader that closes standard output early (``imscore bindings --json | head``) ends the command
quietly with status 141 (128 + SIGPIPE, as a shell reports a command a closed pipe ended).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imscore import __version__, build_info
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
from imscore.profile.loader import unknown_transport
from imscore.profile.model import Profile
from imscore.sip import ParseError, parse_uri

if TYPE_CHECKING:
    from imscore.registrar import StoredBinding
    from imscore.server.workers import WorkerSetup

if TYPE_CHECKING:
    from imscore.subscribers import SubscriberDirectory

__all__ = ["main"]

EXIT_USAGE = 2
#: the status of a command whose standard output was closed before it finished (128 + SIGPIPE)
EXIT_PIPE_CLOSED = 128 + int(getattr(signal, "SIGPIPE", 13))


class CliError(Exception):
    """A start-up problem, already worded for the user."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imscore",
        description="An IMS-flavoured SIP core: S-CSCF shaped registrar and forking proxy.",
    )
    parser.add_argument(
        "--version", action="version", version=f"imscore {__version__} ({build_info.describe()})"
    )
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
        help="subscriber file (YAML, or a bulk file *.jsonl: one JSON object per line; default: the "
        "shipped demo subscribers), or SCHEME:... of a "
        "plugin's subscriber store (ims_register_subscriber_stores)",
    )
    serve.add_argument("--store", metavar="URL", help="memory: or sqlite:PATH (default: the profile's)")
    serve.add_argument(
        "--dns",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="DNS server for RFC 3263 next hops instead of the profile's dns.nameservers (repeatable), "
        "e.g. 127.0.0.1:5353, [::1]:53",
    )
    serve.add_argument(
        "--pcap",
        metavar="FILE",
        help="write every SIP message received and sent to FILE (pcap, for Wireshark or sngrep; "
        "replaced if it exists)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="serve the UDP listeners with N worker processes, one per core (default 1; needs a store "
        "all can share, such as the default SQLite one; see docs/running.rst)",
    )
    serve.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log level (default: INFO; INFO has one line per finished transaction)",
    )
    serve.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text (default) or json: one JSON object a line, for log shippers",
    )
    serve.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics and a health check on /healthz "
        "(needs prometheus_client: the 'metrics' extra)",
    )
    serve.add_argument(
        "--node-id",
        metavar="NAME",
        help="this node's name in a pool sharing a Redis store: in every log line and in the bindings "
        "it stores (docs/deployment.rst)",
    )

    profile = commands.add_parser("profile", help="check or show profiles")
    profile_commands = profile.add_subparsers(dest="profile_command", required=True, metavar="ACTION")
    check = profile_commands.add_parser("check", help="validate a profile file")
    check.add_argument("file", metavar="FILE")
    show = profile_commands.add_parser("show", help="print a profile's effective settings")
    show.add_argument("name", metavar="NAME|PATH")

    from imscore.lab.cli import add_lab_parser  # the lab imports the server: load it only here

    add_lab_parser(commands)
    from imscore.diameter.cli import add_hss_parser

    add_hss_parser(commands)
    from imscore.subscribers.cli import add_subscribers_parser

    add_subscribers_parser(commands)
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
        help="subscriber file used to resolve --aor to its implicit set (a tel: URI or another IMPU "
        "of the set); default: the shipped demo subscribers, as for serve",
    )
    bindings.add_argument("--json", action="store_true", help="print JSON instead of text")
    bindings.add_argument(
        "--watch",
        action="store_true",
        help="a live table in the terminal, redrawn every --interval seconds, with the latest "
        "registrations and de-registrations (Ctrl-C quits)",
    )
    bindings.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="--watch: seconds between reads"
    )
    bindings.add_argument(
        "--frames", type=int, default=None, metavar="N", help="--watch: stop after N frames"
    )
    return parser


def _load_profile(name_or_path: str) -> Profile:
    """Load a profile checking plugin and transport names against what is installed."""
    plugins, transports = _known_plugins(), _known_transports()
    return load_profile(name_or_path, known_plugins=plugins, known_transports=transports)


def _known_transports() -> dict[str, str | None]:
    """The built-in transports plus those the installed plugins offer (``ims_register_transports``)."""
    from imscore.plugin import PluginError, create_plugin_manager
    from imscore.transport import TransportError
    from imscore.transport.registry import collect_transports, known_transports

    try:
        return known_transports(collect_transports(create_plugin_manager()))
    except (PluginError, TransportError) as exc:
        raise CliError(f"plugins: {exc}") from None


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
    from imscore.logformat import configure

    configure(args.log_level, args.log_format, sys.stderr)
    if args.node_id is not None:
        from imscore.server.nodeid import check_node_id, name_node_in_logs

        try:
            name_node_in_logs(check_node_id(args.node_id))
        except ValueError as exc:
            raise CliError(f"--node-id: {exc}") from None
    profile = _load_profile(args.profile)
    metrics_address: tuple[str, int] | None = None
    if args.metrics is not None:
        from imscore.server.metrics import MetricsError, parse_metrics_address

        try:
            metrics_address = parse_metrics_address(args.metrics)
        except MetricsError as exc:
            raise CliError(str(exc)) from None
        if args.workers != 1:
            raise CliError("--metrics: not with --workers yet (each worker counts on its own)")
    try:
        listeners = [parse_listen(text, any_transport=True) for text in args.listen]
    except ListenError as exc:
        raise CliError(f"--listen: {exc}") from None
    for listener in listeners:
        problem = unknown_transport(listener.transport, _known_transports())
        if problem is not None:
            raise CliError(f"--listen: {problem}")
    if args.store is not None:
        try:
            check_store_url(args.store)
        except ValueError as exc:
            raise CliError(f"--store: {exc}") from None
    if args.dns:
        import dataclasses

        from imscore.profile import parse_nameserver

        try:
            nameservers = tuple(parse_nameserver(text) for text in args.dns)
        except ValueError as exc:
            raise CliError(f"--dns: {exc}") from None
        profile = dataclasses.replace(
            profile, dns=dataclasses.replace(profile.dns, nameservers=nameservers)
        )
    from imscore.server.providers import scheme_of
    from imscore.server.runtime import Server, ServerError, run_until_signalled
    from imscore.subscribers import MemorySubscriberStore

    plugin_source: str | None = None
    subscribers: MemorySubscriberStore | None = None
    given = args.subscribers
    if given is not None and not Path(given).exists() and scheme_of(given) is not None:
        plugin_source = given  # e.g. ldap://…: a plugin's subscriber store, opened at start
    else:
        source, directory = _load_subscribers(given)
        # said once the server is up, so a start-up error stays the only line on stderr
        subscribers = MemorySubscriberStore(directory, f"{len(directory)} from {source}")

    def make_server(worker: WorkerSetup | None = None) -> Server:
        server = Server(
            profile,
            listeners=listeners,
            store_url=args.store,
            source=args.profile,
            subscribers=subscribers,
            subscriber_source=plugin_source,
            pcap_path=args.pcap,
            worker=worker,
            metrics_address=metrics_address,
        )
        server.node_id = args.node_id
        return server

    if args.workers != 1:
        from imscore.server.workers import check_workers, serve_workers

        problem = check_workers(
            args.workers, listeners or profile.listeners, args.store or profile.store, args.pcap
        )
        if problem is not None:
            raise CliError(f"--workers: {problem}")
        try:
            return serve_workers(args.workers, listeners or profile.listeners, make_server)
        except OSError as exc:
            raise CliError(str(exc)) from None
    server = make_server()
    from imscore.server.gctune import tune_for_serving

    tune_for_serving()  # the subscribers are loaded: keep them out of garbage collections
    try:
        asyncio.run(run_until_signalled(server))
    except ServerError as exc:
        raise CliError(str(exc)) from None
    return 0


# -- imscore bindings ----------------------------------------------------------------------------------

def _bindings_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _bindings_nat(binding: StoredBinding) -> tuple[bool, str]:
    """Whether requests to this device go to its registration flow, and why: the proxy's own rule
    (:func:`imscore.proxy.router.nat_decision`)."""
    from imscore.proxy.router import nat_decision

    flow, reason = nat_decision(binding)
    return flow is not None, reason


def _bindings_time(seconds: float) -> str:
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")
    return stamp.replace("+00:00", "Z")


def _bindings_gruus(binding: StoredBinding, key: bytes | None) -> tuple[str | None, str | None]:
    """The public GRUU of a binding with an instance, and the temporary GRUU its last REGISTER
    got (only with the server's GRUU key, read from the store file; RFC 5627)."""
    from imscore.registrar.gruu import Gruus, public_gruu

    if binding.instance_id is None:
        return None, None
    try:
        pub: str | None = public_gruu(binding.aor, binding.instance_id)
    except (ValueError, ParseError):
        pub = None
    return pub, None if key is None else Gruus(key).temporary(binding)


def _bindings_plain(
    binding: StoredBinding, now: float, gruu_key: bytes | None = None
) -> dict[str, object]:
    """One binding as JSON-ready data."""
    behind_nat, nat_reason = _bindings_nat(binding)
    pub_gruu, temp_gruu = _bindings_gruus(binding, gruu_key)
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
        "pub_gruu": pub_gruu,
        "temp_gruu": temp_gruu,
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
        f"requests go to the flow ({plain['nat_reason']})"
        if plain["behind_nat"]
        else f"requests go to the Contact ({plain['nat_reason']})"
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
        *(
            [f"    Public GRUU: {plain['pub_gruu']}", f"    Temporary GRUU: {show(plain['temp_gruu'])}"]
            if plain.get("pub_gruu")
            else []
        ),
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
    from imscore.registrar.identity import phone_number
    from imscore.server.providers import scheme_of

    if subscribers is not None and not Path(subscribers).exists() and scheme_of(subscribers):
        return uri.aor  # a plugin's subscriber store (ldap://…): not readable from here
    _, directory = _load_subscribers(subscribers)  # the same default as serve: the demo file
    for form in (uri, phone_number(uri)):
        subscriber = None if form is None else directory.by_impu(form)
        implicit_set = None if subscriber is None or form is None else subscriber.implicit_set_of(form)
        if implicit_set is not None:
            return implicit_set.default.aor
    return uri.aor


def _plugin_store(url: str) -> Any:
    """The binding store a provider offers for ``url`` (the builtin Redis one, or a plugin's)."""
    from imscore.plugin import create_plugin_manager
    from imscore.registrar import redis_provider
    from imscore.server.providers import ProviderError, collect, open_provided, scheme_of
    from imscore.store import StoreError

    plugins = create_plugin_manager(extra_plugins=[redis_provider])
    try:
        offered = collect(plugins, "ims_register_binding_stores", "binding store")
        scheme = scheme_of(url)
        if scheme is None or scheme not in offered:
            return open_provided(offered, url, "store")  # raises, naming the known schemes
    except ProviderError as exc:
        raise StoreError(str(exc)) from None
    return offered.get(scheme)(url)  # its StoreError names the URL and the cause


def _bindings(args: argparse.Namespace) -> int:
    """``imscore bindings``: the registrations in the store, per AOR."""
    from imscore.registrar.store import open_binding_store
    from imscore.store import StoreError

    if args.store is not None:
        url, option = args.store, "--store"
    else:
        profile = _load_profile(args.profile)
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

    gruu_key: list[bytes | None] = [None]

    async def read() -> list[StoredBinding]:
        store = open_binding_store(url) if url.startswith(("memory:", "sqlite:")) else _plugin_store(url)
        connection = getattr(store, "connection", None)
        if connection is not None and url.startswith("sqlite:"):  # the temp GRUUs' key, if made
            from imscore.registrar.gruu import stored_key

            gruu_key[0] = stored_key(connection)
        try:
            if connection is not None and hasattr(store, "pool"):  # a pool's Redis: its GRUU key
                from imscore.registrar.gruu import KEY_NAME

                gruu_key[0] = connection.existing_secret(KEY_NAME)
            return await (store.all() if aor is None else store.load(aor))
        finally:
            await store.close()

    if args.watch:
        if args.json or url == "memory:":
            raise CliError(
                "--watch: needs a store another process can read (sqlite:PATH), without --json"
            )
        if args.interval <= 0:
            raise CliError("--watch: --interval must be > 0")
        from imscore.watch import watch

        try:
            asyncio.run(watch(read, sys.stdout, url, interval=args.interval, frames=args.frames))
        except StoreError as exc:
            raise CliError(f"{option}: {exc}") from None
        except KeyboardInterrupt:
            print()
        return 0

    try:
        stored = asyncio.run(read())
    except StoreError as exc:
        raise CliError(f"{option}: {exc}") from None
    now = time.time()
    by_aor: dict[str, list[dict[str, object]]] = {}
    for binding in stored:
        by_aor.setdefault(binding.aor, []).append(_bindings_plain(binding, now, gruu_key[0]))
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
    """Run the command line; returns the exit status (:data:`EXIT_PIPE_CLOSED` when the reader of
    standard output went away before everything was written, without a traceback)."""
    try:
        try:
            status = _main(argv)
        finally:  # (--help's SystemExit too) here, not at exit, where it could only be reported
            sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_PIPE_CLOSED
    return status


def _silence_stdout() -> None:
    """Point standard output at the null device, so that the interpreter's final flush of what is
    still buffered does not fail again on the closed pipe."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):  # no file descriptor behind sys.stdout
        pass


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "bindings":
            return _bindings(args)
        if args.command == "hss":
            from imscore.diameter.cli import HssCliError, run_hss

            try:
                return run_hss(args)
            except HssCliError as exc:
                raise CliError(str(exc)) from None
        if args.command == "subscribers":
            from imscore.subscribers import SubscriberError
            from imscore.subscribers.cli import run_subscribers

            try:
                print(run_subscribers(args))
            except (SubscriberError, ValueError) as exc:
                raise CliError(str(exc)) from None
            return 0
        if args.command == "lab":
            from imscore.lab.cli import run_lab

            return run_lab(args)
        if args.profile_command == "check":
            profile = _load_profile(args.file)
            listeners = ", ".join(str(listener) for listener in profile.listeners)
            domains = ", ".join(profile.domains)
            print(f"{args.file}: OK (profile {profile.name}; domains {domains}; {listeners})")
            return 0
        print(dump_profile(_load_profile(args.name)), end="")
        return 0
    except (ProfileError, CliError) as exc:
        print(f"imscore: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
