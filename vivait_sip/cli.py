"""`vivait-sip` command line: serve, check-config, ctl, flow import (and feature commands)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
from typing import Any

from . import __version__
from .config import ConfigError, CoreConfig, default_config, load_config
from .ctlclient import DEFAULT_ADMIN, AdminError, admin_request, print_json
from .ctlclient import configure as configure_admin_client
from .features import feature_classes
from .paths import DATA_DIR_HELP, resolve_data_dir
from .sip.address import Listener, parse_hostport

EXIT_CONFIG = 2
EXIT_USAGE = 2


HIDDEN_COMMANDS = frozenset(("worker",))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vivait-sip", description="SIP registrar, B2BUA and WebRTC gateway.")
    parser.add_argument("--version", action="version", version=f"vivait-sip {__version__}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", title="commands")

    serve = sub.add_parser(
        "serve",
        help="run the server",
        description="Run the server. Without --config: the embedded demo (loopback only, demo users, "
        "self-signed certificate made on first start). It prints its data directory, each "
        "listener, then `ready`.",
    )
    serve.add_argument("--config", metavar="FILE", help="JSON config file (see docs/config.md); checked whole before any socket opens")
    serve.add_argument(
        "--listen",
        metavar="TRANSPORT:HOST:PORT",
        action="append",
        help="SIP listener, repeatable; replaces the config's list. TRANSPORT is udp, tcp, tls, ws or wss "
        "(ws/wss are served on the --http port at /sip). Example: --listen udp:127.0.0.1:5070",
    )
    serve.add_argument("--http", metavar="HOST:PORT", help="HTTPS server: webfon, REST, SIP over WSS on /sip (default 127.0.0.1:8443)")
    serve.add_argument("--no-http", action="store_true", help="do not start the HTTP(S) server")
    serve.add_argument("--admin", metavar="HOST:PORT", help=f"admin API and /metrics (default {DEFAULT_ADMIN})")
    serve.add_argument("--data-dir", metavar="DIR", help=f"store, certificates, admin token (default: the config's data_dir, else {DATA_DIR_HELP})")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="least severe level logged (default info)")
    serve.add_argument("--log-format", choices=["kv", "json"], help="key=value lines (default) or JSON lines")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes sharing the UDP sockets (sip.workers; default 1). One per core; see docs/deployment.md",
    )
    serve.set_defaults(func=cmd_serve)
    # Started by `serve` itself for workers 1..N-1 (vivait_sip/workers.py), never by hand:
    # no help, so it is in no listing (HIDDEN_COMMANDS keeps it out of the usage line).
    worker = sub.add_parser("worker", description=argparse.SUPPRESS)
    worker.set_defaults(func=cmd_worker)

    check = sub.add_parser(
        "check-config",
        help="validate a config file: exit 0, or list every error and exit 2",
        description="Validate a config file without starting anything: every error at once, each "
        "with its JSON path (listen[1], registrar.users[3].extension), prefixed with the file name.",
    )
    check.add_argument("file", metavar="FILE", help="the JSON config file to check")
    check.set_defaults(func=cmd_check_config)

    ctl = sub.add_parser(
        "ctl",
        help="talk to a running server's admin API",
        description="Talk to a running server through its admin API (the token is read from its "
        "data directory). Exits 1 when the server refuses, or when nothing was done.",
    )
    ctl.add_argument(
        "--admin", metavar="HOST:PORT",
        help=f"admin API address (default: the --config file's, else {DEFAULT_ADMIN}; https://HOST:PORT with admin.tls)",
    )
    ctl.add_argument("--data-dir", metavar="DIR", help=f"the server's data directory, where its admin token is (default: the --config file's data_dir, else {DATA_DIR_HELP})")
    ctl.add_argument("--admin-token-file", metavar="FILE", help="the admin token (default DIR/admin-token, or the --config file's admin.token_file)")
    ctl.add_argument("--config", metavar="FILE", help="the server's config file: its admin address, data directory and token file")
    ctl_sub = ctl.add_subparsers(dest="ctl_command", title="commands")
    ctl_status = ctl_sub.add_parser("status", help="uptime, listeners and counters")
    ctl_status.add_argument("--json", action="store_true", help="raw JSON")
    ctl_status.set_defaults(func=cmd_ctl_status)
    ctl_reload = ctl_sub.add_parser("reload", help="re-read the config file (like SIGHUP); exit 1 if it has errors or there is none")
    ctl_reload.set_defaults(func=cmd_ctl_reload)

    for feature in feature_classes():
        feature.add_commands(sub, ctl_sub)
    finish_parsers(parser)
    return parser


def finish_parsers(parser: argparse.ArgumentParser) -> None:
    """A command given without its subcommand (`vivait-sip ctl`) prints the subcommands
    with their help instead of "required: ctl_command"; hidden commands stay out of every
    usage line."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        action.required = False
        action.metavar = "COMMAND"  # never `{serve,worker,…}`: hidden commands stay hidden
        parser.set_defaults(func=functools.partial(_missing_subcommand, parser))
        for child in action.choices.values():
            finish_parsers(child)


def _missing_subcommand(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    parser.print_help(sys.stderr)
    print(f"\n{parser.prog}: a command is needed (one of those above)", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("ctl", "user"):
            _reach_admin(args)
        else:
            configure_admin_client(getattr(args, "data_dir", None), getattr(args, "admin_token_file", None))
    except ConfigError as exc:
        for line in exc.lines():
            print(f"config error: {line}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        result: int | None = args.func(args)
    except AdminError as exc:
        for number, line in enumerate(exc.lines()):
            print(f"error: {line}" if number == 0 else line, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `vivait-sip ctl status | head`: the reader left; not an error worth a traceback.
        sys.stderr.close()
        return 0
    return result or 0


def _reach_admin(args: argparse.Namespace) -> None:
    """Where `ctl` and `user` find the server: the options, else its config file's
    (`--config`: admin address, data directory, token file), else the defaults, the
    same data directory a server started without them uses."""
    config = load_config(args.config) if getattr(args, "config", None) else None
    if getattr(args, "admin", "") is None:
        args.admin = admin_address(config) if config is not None else DEFAULT_ADMIN
    data_dir = getattr(args, "data_dir", None) or (config.data_dir if config is not None else None)
    token_file = getattr(args, "admin_token_file", None) or (config.admin.token_file if config is not None else None)
    configure_admin_client(data_dir, token_file)


def admin_address(config: CoreConfig) -> str:
    """How a client on this host reaches the admin API a config describes."""
    admin = config.admin
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(admin.host, admin.host)
    shown = f"[{host}]" if ":" in host else host
    return f"{'https://' if admin.tls else ''}{shown}:{admin.port}"


# ---- serve ----------------------------------------------------------------------------------
def apply_overrides(config: CoreConfig, args: argparse.Namespace) -> CoreConfig:
    update: dict[str, Any] = {}
    if args.listen:
        update["listen"] = [str(Listener.parse(item)) for item in args.listen]
    if args.http:
        host, port = parse_hostport(args.http, "--http")
        update["http"] = config.http.model_copy(update={"host": host, "port": port})
    if args.no_http:
        update["http"] = config.http.model_copy(update={"enabled": False})
    if args.admin:
        host, port = parse_hostport(args.admin, "--admin")
        update["admin"] = config.admin.model_copy(update={"host": host, "port": port})
    if args.data_dir:
        update["data_dir"] = str(resolve_data_dir(args.data_dir))  # relative: to the working directory
    log_update = {k: v for k, v in (("level", args.log_level), ("format", args.log_format)) if v}
    if log_update:
        update["log"] = config.log.model_copy(update=log_update)
    if args.workers is not None:
        if not 1 <= args.workers <= 64:
            raise ValueError("--workers must be between 1 and 64")
        update["sip"] = config.sip.model_copy(update={"workers": args.workers})
    return config.model_copy(update=update)


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import Application, StartupError
    from .logs import setup_logging

    try:
        config = load_config(args.config) if args.config else default_config()
        config = apply_overrides(config, args)
    except ConfigError as exc:
        for line in exc.lines():
            print(f"config error: {line}", file=sys.stderr)
        print(f"{exc.summary()}; nothing started", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log.level, config.log.format)
    _install_uvloop()

    async def run() -> int:
        app = Application(config, args.config, demo=args.config is None)
        try:
            await app.start()
        except StartupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            await app.stop()
            return 1
        app.install_signal_handlers()
        print(f"data dir {app.data_dir}", flush=True)
        for opened in app.opened:
            print(f"listening {opened}", flush=True)
        if app.cluster is not None:
            print(f"workers {app.cluster.count} (pids {os.getpid()} {' '.join(str(p.pid) for p in app.worker_procs.values())})", flush=True)
        for line in app.banner:
            print(line, flush=True)
        print("ready", flush=True)
        await app.run_forever()
        return app.exit_code

    return asyncio.run(run())


def _install_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


def cmd_worker(args: argparse.Namespace) -> int:
    """Worker 1..N-1: the spec (sockets, config) comes from worker 0 in the environment."""
    from .app import Application
    from .config import config_from_json
    from .logs import setup_logging
    from .workers import BOOTSTRAP_CALL, ENV_SPEC, Cluster, WorkerSpec

    text = os.environ.get(ENV_SPEC)
    if not text:
        print("error: `worker` is started by `vivait-sip serve --workers N`, not by hand", file=sys.stderr)
        return 2
    spec = WorkerSpec.from_env(text)
    _install_uvloop()

    async def run() -> int:
        cluster = Cluster(spec.index, spec.count, b"")
        await cluster.connect(spec.link_fds)
        boot = await cluster.call(0, BOOTSTRAP_CALL)
        cluster.secret = bytes.fromhex(boot["secret"])
        config = config_from_json(boot["config"])
        setup_logging(config.log.level, config.log.format)
        app = Application(config, spec.config_path, demo=spec.demo, worker=(spec, cluster))
        await app.start()
        app.install_signal_handlers()
        await app.run_forever()
        return 0

    return asyncio.run(run())


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        load_config(args.file)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        print(exc.summary(), file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.file}: ok")
    return 0


# ---- ctl ------------------------------------------------------------------------------------
def cmd_ctl_reload(args: argparse.Namespace) -> int:
    reply = admin_request(args.admin, "POST", "/api/reload")
    print(f"config reloaded from {reply.get('path', 'the config file')}")
    return 0


def cmd_ctl_status(args: argparse.Namespace) -> int:
    from .statusview import render_status

    status = admin_request(args.admin, "GET", "/api/status")
    if args.json:
        return print_json(status)
    print(render_status(status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
