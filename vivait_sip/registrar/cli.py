"""`vivait-sip user ...` and `vivait-sip ctl registrations|unregister|bans|unban` commands.

User commands edit DATA_DIR/vivait.db directly, so they work with no server running;
then they ask a running server (if any) to reload its users through the admin API.
Passwords are hashed here with the realm, which must be the server's realm
(`Config.effective_realm()`): pass `--realm` or `--config`.  DATA_DIR is `--data-dir`,
else the `--config` file's `data_dir`, else the server's default
(`paths.default_data_dir()`), so a command run from any directory finds the server's store.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import sys
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError

from .. import ctlclient as cli
from ..config import ConfigError, load_config, validation_errors
from ..paths import DATA_DIR_HELP, default_data_dir
from ..store import Store, StoreError
from . import demo
from .config import UserConfig
from .users import UserRecord, find_conflicts, make_user, records_from_rows, user_from_config

DEFAULT_REALM = "vivait"
EXIT_INVALID = 2
CSV_COLUMNS = ("number", "password", "name", "extension", "web_extension", "class_of_service")
CSV_REQUIRED = ("number", "password")


def add_commands(sub: Any, ctl_sub: Any) -> None:
    """The `command_hooks` entry: adds `user` and two `ctl` subcommands."""
    user = sub.add_parser(
        "user", help="manage users in the store (works with or without a running server)"
    )
    user_sub = user.add_subparsers(dest="user_command", title="commands")

    add = user_sub.add_parser("add", help="add or replace a user")
    add.add_argument("number", help="the user's number, e.g. 6140 (also the digest username)")
    add.add_argument(
        "--password",
        help="stored only as MD5 and SHA-256 HA1 digests; omitted: asked for (twice) on a "
        "terminal, else one line read from stdin, so it stays out of the shell history",
    )
    add.add_argument("--name", default="", help="display name")
    add.add_argument("--extension", help="hard extension (default: the number itself)")
    add.add_argument("--web-extension", help="fixed web extension for the webfon")
    add.add_argument(
        "--class-of-service",
        choices=["open", "closed"],
        default="open",
        help="open (default) or closed: may the user call out",
    )
    _common(add, realm=True)
    add.set_defaults(func=cmd_user_add)

    password = user_sub.add_parser(
        "password",
        help="set a new password for a user (asked for, or read from stdin)",
        description="Set a new password, keeping the user's other fields. Without --password "
        "it is asked for twice on a terminal, or read as one line from stdin. Users from the "
        "config file change there; the demo's users (6140-6143) change here too.",
    )
    password.add_argument("number", help="the user's number")
    password.add_argument("--password", help="the new password (prefer the prompt or stdin)")
    _common(password, realm=True)
    password.set_defaults(func=cmd_user_password)

    remove = user_sub.add_parser("remove", help="remove a user (exit 1 if there is none)")
    remove.add_argument("number", help="the user's number")
    _common(remove, realm=False)
    remove.set_defaults(func=cmd_user_remove)

    lst = user_sub.add_parser("list", help="list users (no digests)")
    lst.add_argument("--json", action="store_true", help="JSON output")
    _data_dir_options(lst)
    _config_option(lst)
    lst.set_defaults(func=cmd_user_list)

    imp = user_sub.add_parser(
        "import",
        help="add or replace users from a CSV file",
        description="CSV with a header row; columns: "
        + ",".join(CSV_COLUMNS)
        + " (number and password required, others optional). All rows are checked first: "
        "one bad row imports nothing.",
    )
    imp.add_argument("file", help="CSV file (UTF-8)")
    _common(imp, realm=True)
    imp.set_defaults(func=cmd_user_import)

    regs = ctl_sub.add_parser("registrations", help="list registered contacts (all, or one AOR)")
    regs.add_argument("aor", nargs="?", help="sip:6140@example.com, or just 6140 for any domain")
    regs.add_argument("--json", action="store_true", help="raw JSON")
    regs.description = "List the registered contacts; with an AOR, exit 1 when it has none."
    regs.set_defaults(func=cmd_ctl_registrations)

    unreg = ctl_sub.add_parser(
        "unregister", help="remove every binding of an AOR (exit 1 if it has none)"
    )
    unreg.add_argument("aor", help="sip:6140@example.com, or just 6140 for any domain")
    unreg.set_defaults(func=cmd_ctl_unregister)

    bans = ctl_sub.add_parser("bans", help="sources banned after too many authentication failures")
    bans.add_argument("--json", action="store_true", help="raw JSON")
    bans.set_defaults(func=cmd_ctl_bans)

    unban = ctl_sub.add_parser("unban", help="lift the ban on a source address at once")
    unban.add_argument("source", help="IP address, as `ctl bans` shows it")
    unban.set_defaults(func=cmd_ctl_unban)


def _data_dir_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"the server's data directory (default: the --config file's data_dir, else {DATA_DIR_HELP})",
    )


def _common(parser: argparse.ArgumentParser, *, realm: bool) -> None:
    _data_dir_options(parser)
    parser.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="admin API of a running server to notify (default: the --config file's, else 127.0.0.1:8081)",
    )
    parser.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="admin token of that server (default DIR/admin-token, or the --config file's admin.token_file)",
    )
    if realm:
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--realm", help=f"digest realm (default {DEFAULT_REALM!r}, the demo's)")
        _config_option(group)
    else:
        _config_option(parser)


def _config_option(parser: Any) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the server's config file: its realm, data directory and admin API",
    )


def read_password(given: str | None, *, stdin: Any = None) -> str:
    """`--password`, else a prompt (twice) on a terminal, else the first line of stdin."""
    if given is not None:
        return given
    stream = sys.stdin if stdin is None else stdin
    if stream.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Repeat it: "):
            raise PasswordError("the passwords do not match")
        password = first
    else:
        password = stream.readline().rstrip("\r\n")
    if not password:
        raise PasswordError("empty password (give it with --password, at the prompt or on stdin)")
    return password


class PasswordError(ValueError):
    """No usable password was given."""


def _realm(args: argparse.Namespace) -> str:
    if args.config:
        return load_config(args.config).effective_realm()
    return str(args.realm or DEFAULT_REALM)


def data_dir(args: argparse.Namespace) -> str:
    """`--data-dir`, else the `--config` file's `data_dir`, else the server's default."""
    if args.data_dir:
        return str(args.data_dir)
    if getattr(args, "config", None):
        return load_config(args.config).data_dir
    return str(default_data_dir())


def _open_store(args: argparse.Namespace) -> Store:
    return Store.open(data_dir(args))


def _notify(args: argparse.Namespace) -> None:
    """Tell a running server to reload its users; say whether one answered.  Its token is
    in the data directory the command used (or --admin-token-file)."""
    admin = args.admin  # and the token: set by `vivait-sip` itself (cli._reach_admin)
    try:
        reply = cli.admin_request(admin, "POST", "/api/users/reload")
    except cli.AdminError as exc:
        print(f"no running server notified ({exc.message}); a server loads the store when it starts")
        return
    print(f"running server at {admin} notified: {reply.get('users')} users loaded")


def _messages(exc: ValidationError) -> list[str]:
    """`field: message`, or just the message for whole-user problems."""
    return [line.removeprefix("(root): ") for line in validation_errors(exc)]


def _save(args: argparse.Namespace, records: list[UserRecord]) -> int:
    store = _open_store(args)
    try:
        problems = find_conflicts(records_from_rows(store.list_users()), records)
        if problems:
            for line in problems:
                print(f"error: {line}", file=sys.stderr)
            return EXIT_INVALID
        store.upsert_users(records)
    finally:
        store.close()
    return 0


def _run(fn: Any, args: argparse.Namespace) -> int:
    """Turn store and config problems into one error line and exit code 2."""
    try:
        return int(fn(args))
    except (StoreError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"config error: {line}", file=sys.stderr)
    return EXIT_INVALID


def cmd_user_add(args: argparse.Namespace) -> int:
    return _run(_user_add, args)


def _user_add(args: argparse.Namespace) -> int:
    try:
        password = read_password(args.password)
    except PasswordError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        config = UserConfig(
            number=args.number,
            password=password,
            name=args.name,
            extension=args.extension,
            web_extension=args.web_extension,
            class_of_service=args.class_of_service,
        )
    except ValidationError as exc:
        for line in _messages(exc):
            print(f"error: {line}", file=sys.stderr)
        return EXIT_INVALID
    realm = _realm(args)
    status = _save(args, [user_from_config(config, realm, origin="cli")])
    if status:
        return status
    print(f"user {config.number} saved (extension {config.hard_extension}, realm {realm!r})")
    _notify(args)
    return 0


def cmd_user_password(args: argparse.Namespace) -> int:
    return _run(_user_password, args)


def _user_password(args: argparse.Namespace) -> int:
    store = _open_store(args)
    try:
        row = store.get_user(args.number)
        if row is None:
            print(f"error: no user {args.number}", file=sys.stderr)
            return 1
        directory = data_dir(args)
        is_demo = row.origin == "demo" or demo.load(directory).get(row.number) is not None
        if row.origin == "config" and not is_demo:
            print(
                f"error: user {row.number} comes from the config file (registrar.users or "
                "registrar.ranges); change its password there and reload",
                file=sys.stderr,
            )
            return EXIT_INVALID
        try:
            password = read_password(args.password)
        except PasswordError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INVALID
        realm = _realm(args) if (args.realm or args.config) else row.realm
        record = make_user(
            row.number,
            password,
            realm,
            name=row.name,
            extension=row.extension,
            web_extension=row.web_extension,
            web_pool=row.web_pool,
            class_of_service=row.class_of_service,
            origin=row.origin,
        )
        if is_demo:
            demo.set_password(directory, row.number, password)
        store.upsert_users([record])
    finally:
        store.close()
    print(f"password of user {row.number} changed (realm {realm!r})")
    _notify(args)
    return 0


def cmd_user_remove(args: argparse.Namespace) -> int:
    return _run(_user_remove, args)


def _user_remove(args: argparse.Namespace) -> int:
    store = _open_store(args)
    try:
        removed = store.remove_user(args.number)
    finally:
        store.close()
    if not removed:
        print(f"error: no user {args.number}", file=sys.stderr)
        return 1
    print(f"user {args.number} removed")
    _notify(args)
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    return _run(_user_list, args)


def _user_list(args: argparse.Namespace) -> int:
    store = _open_store(args)
    try:
        users = records_from_rows(store.list_users())
    finally:
        store.close()
    if args.json:
        print(json.dumps([u.public() for u in users], indent=2))
        return 0
    rows = [("NUMBER", "EXTENSION", "WEB", "COS", "REALM", "ORIGIN", "NAME")]
    rows += [
        (
            u.number,
            u.extension,
            u.web_extension or u.web_pool or "-",
            u.class_of_service,
            u.realm,
            u.origin,
            u.name,
        )
        for u in users
    ]
    _table(rows)
    print(f"{len(users)} user(s)")
    return 0


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def cmd_user_import(args: argparse.Namespace) -> int:
    return _run(_user_import, args)


def read_users_csv(path: str) -> tuple[list[UserConfig], list[str]]:
    """Validate every row; returns the users and `line N: ...` errors."""
    users: list[UserConfig] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return [], ["line 1: empty file; expected a header row: " + ",".join(CSV_COLUMNS)]
        columns = [h.strip().lower() for h in header]
        unknown = [c for c in columns if c not in CSV_COLUMNS]
        missing = [c for c in CSV_REQUIRED if c not in columns]
        if unknown or missing or len(set(columns)) != len(columns):
            detail = "; ".join(
                part
                for part in (
                    f"unknown column(s) {', '.join(unknown)}" if unknown else "",
                    f"missing column(s) {', '.join(missing)}" if missing else "",
                    "a column is repeated" if len(set(columns)) != len(columns) else "",
                )
                if part
            )
            return [], [f"line 1: bad header ({detail}); columns are {','.join(CSV_COLUMNS)}"]
        for row in _rows(reader):
            line, cells = row
            if len(cells) != len(columns):
                errors.append(f"line {line}: {len(cells)} fields, the header has {len(columns)}")
                continue
            data = {c: v.strip() for c, v in zip(columns, cells, strict=True) if v.strip()}
            try:
                user = UserConfig.model_validate(data)
            except ValidationError as exc:
                errors += [f"line {line}: {msg}" for msg in _messages(exc)]
                continue
            if user.number in seen:
                errors.append(
                    f"line {line}: user {user.number} already on line {seen[user.number]}"
                )
                continue
            seen[user.number] = line
            users.append(user)
    return users, errors


def _rows(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """(line number where the row starts, cells), skipping blank lines."""
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        if any(c.strip() for c in cells):
            yield line, cells


def _user_import(args: argparse.Namespace) -> int:
    configs, errors = read_users_csv(args.file)
    if errors:
        for line in errors:
            print(f"{args.file}: {line}", file=sys.stderr)
        print(f"{args.file}: {len(errors)} error(s); nothing imported", file=sys.stderr)
        return EXIT_INVALID
    realm = _realm(args)
    records = [user_from_config(c, realm, origin="cli") for c in configs]
    status = _save(args, records)
    if status:
        return status
    print(f"{len(records)} user(s) imported (realm {realm!r})")
    _notify(args)
    return 0


def _aor_query(aor: str | None) -> str:
    return f"?aor={quote(aor, safe='')}" if aor else ""


def cmd_ctl_registrations(args: argparse.Namespace) -> int:
    reply = cli.admin_request(args.admin, "GET", "/api/registrations" + _aor_query(args.aor))
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return 0
    rows = [("AOR", "CONTACT", "TRANSPORT", "SOURCE", "EXPIRES", "Q", "USER-AGENT")]
    rows += [
        (
            r["aor"],
            r["contact"],
            r["transport"],
            r["source"],
            f"{r['expires_in']}s",
            str(r["q"]),
            r["user_agent"],
        )
        for r in reply["registrations"]
    ]
    if not reply["registrations"]:
        if args.aor:
            print(f"no binding for {args.aor}", file=sys.stderr)
            return 1
        print("no bindings: no phone is registered")
        return 0
    _table(rows)
    print(f"{len(reply['registrations'])} binding(s)")
    return 0


def cmd_ctl_unregister(args: argparse.Namespace) -> int:
    reply = cli.admin_request(args.admin, "DELETE", "/api/registrations" + _aor_query(args.aor))
    removed = int(reply["removed"])
    if not removed:
        print(f"error: no binding found for {args.aor}; nothing removed", file=sys.stderr)
        return 1
    print(f"{removed} binding(s) removed for {args.aor}")
    return 0


def cmd_ctl_bans(args: argparse.Namespace) -> int:
    reply = cli.admin_request(args.admin, "GET", "/api/bans")
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return 0
    rows = [("SOURCE", "SECONDS LEFT")]
    rows += [(b["source"], str(b["seconds_left"])) for b in reply["bans"]]
    _table(rows)
    print(f"{len(reply['bans'])} banned source(s); {reply['auth_failures']} authentication failure(s) since start")
    return 0


def cmd_ctl_unban(args: argparse.Namespace) -> int:
    reply = cli.admin_request(args.admin, "DELETE", "/api/bans?" + urllib.parse.urlencode({"source": args.source}))
    if not reply["unbanned"]:
        print(f"error: {args.source} was not banned; nothing done", file=sys.stderr)
        return 1
    print(f"{args.source} unbanned")
    return 0
