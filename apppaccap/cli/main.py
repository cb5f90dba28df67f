"""The `apppaccap` command: serve, user, call, ingest, export."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
import urllib.error

from apppaccap.auth import MIN_PASSWORD
from apppaccap.auth import Users
from apppaccap.cli.client import post
from apppaccap.cli.ingest_export import add_commands
from apppaccap.context import Config
from apppaccap.context import build_context
from apppaccap.errors import AppError
from apppaccap.server import make_private
from apppaccap.server import start_services
from apppaccap.server import stop_on_signals
from apppaccap.server import stop_services
from apppaccap.server import tune_gc
from apppaccap.settings import check as settings_check
from apppaccap.store.catalog import Catalog
from apppaccap.web.app import create_app
from apppaccap.web.pages import default_themes_dir
from apppaccap.web.server import make_door_server
from apppaccap.wire import ErrorCode

log = logging.getLogger("apppaccap")


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def build_server_context(args):
    """Context with every engine the server runs (captures, jobs) started."""

    make_private(args.data_dir, skip=[args.export_dir])  # umask 077, data dir 0700
    auth = args.auth == "on" if args.auth else not _is_loopback(args.host)
    config = Config(host=args.host, port=args.port, data_dir=args.data_dir,
                    themes_dir=os.path.abspath(args.themes_dir or default_themes_dir()),
                    auth=auth, export_dir=os.path.abspath(args.export_dir),
                    export_roots=_roots(args.export_root), ingest_roots=_roots(args.ingest_root),
                    open_door=not auth and not _is_loopback(args.host),
                    local_group=args.local_group)
    ctx = build_context(config)
    start_services(ctx)
    return ctx


def _roots(values) -> list[str]:
    """Repeated --export-root/--ingest-root values; each may also list several directories
    separated by os.pathsep (":")."""
    out = []
    for value in values or ():
        out += [os.path.abspath(p) for p in value.split(os.pathsep) if p]
    return out


def check_open_door(args) -> None:
    """`--auth off` on a network address hands root to anyone who can reach it: only with
    --i-know-this-is-open, and never quietly."""
    if args.auth != "off" or _is_loopback(args.host):
        return
    if not args.i_know_this_is_open:
        raise SystemExit(f"refusing to serve {args.host} with --auth off: anyone who can reach "
                         "that address could run programs as root. Use --auth on (and "
                         "`apppaccap user add`), or add --i-know-this-is-open.")
    log.warning("AUTHENTICATION IS OFF on %s: anyone who can reach port %d, every local "
                "account included, can capture traffic and run programs as root",
                args.host, args.port)


def cmd_serve(args) -> int:

    check_open_door(args)
    ctx = build_server_context(args)
    _fleet_options(ctx, args)
    if ctx.config.auth and not ctx.users.names():
        log.warning("authentication is on but no user exists: add one with "
                    "`apppaccap user add NAME --data-dir %s`", ctx.config.data_dir)
    _check_local_group(ctx)
    server = make_door_server(args.host, args.port, create_app(ctx), ctx.settings)
    log.info("serving on http://%s:%d/ (data in %s, auth %s)", args.host, args.port,
             ctx.config.data_dir, "on" if ctx.config.auth else "off")
    stop_on_signals(server)
    tune_gc()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop_services(ctx)
    return 0


def _fleet_options(ctx, args) -> None:
    """--fleet-url / --fleet-host set the settings of the same names (kept for next time)."""
    for name in ("fleet_url", "fleet_host"):
        value = getattr(args, name, None)
        if value is None:
            continue
        try:
            settings_check(name, value)
        except ValueError as err:
            raise SystemExit(f"--{name.replace('_', '-')}: {err}") from None
        ctx.settings.set(name, value)


def _check_local_group(ctx) -> None:
    """Say at start-up who may call without a token (web/callers.py)."""
    import grp  # Unix only: the rest of this module also serves Windows
    if ctx.config.auth or ctx.config.open_door:
        return
    group = ctx.config.local_group
    try:
        grp.getgrnam(group)
        log.info("without a token: root and members of group %r; other local accounts "
                 "must log in", group)
    except KeyError:
        log.warning("group %r (--local-group) does not exist: only root may call "
                    "without a token; create it with `groupadd %s`", group, group or "apppaccap")


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"Password (at least {MIN_PASSWORD} characters): ")
        if getpass.getpass("Again: ") != first:
            raise SystemExit("passwords differ")
        return first
    lines = sys.stdin.read().splitlines()
    if not lines:
        raise SystemExit("no password on standard input")
    if len(lines) >= 2 and lines[1] and lines[1] != lines[0]:
        raise SystemExit("passwords differ")
    return lines[0]


def cmd_user(args) -> int:

    catalog = Catalog(os.path.abspath(args.data_dir))
    users = Users(catalog)
    try:
        if args.op == "list":
            for name in users.names():
                print(name)
        elif not args.name:
            raise SystemExit(f"user {args.op}: NAME is required")
        elif args.op == "add":
            users.add(args.name, _read_password())
            print(f"user {args.name} saved")
        else:
            users.remove(args.name)
            print(f"user {args.name} removed")
    except AppError as err:
        print(err.message, file=sys.stderr)
        return 1
    finally:
        catalog.close()
    return 0


def _kv(pairs) -> dict:
    fields: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected key=value, got {pair!r}")
        fields.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in fields.items()}


def cmd_call(args) -> int:
    fields = _kv(args.params)
    fields["action"] = args.action
    if args.token:
        fields["token"] = args.token
    try:
        body = post(args.url, fields)
    except (urllib.error.URLError, OSError) as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(body, indent=2))
    return 0 if body.get("ErrorCode") == ErrorCode.SUCCESS else 1


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="apppaccap", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the service")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8733)
    s.add_argument("--data-dir", default="./data")
    s.add_argument("--themes-dir", default="")
    s.add_argument("--export-dir", default="./export")
    s.add_argument("--export-root", action="append", metavar="DIR",
                   help="exports may also be written below DIR (repeat, or join with "
                        f"{os.pathsep!r}); default: only the export directory")
    s.add_argument("--ingest-root", action="append", metavar="DIR",
                   help="pcap_ingest_file may also read below DIR (repeat, or join with "
                        f"{os.pathsep!r}); default: only <data-dir>/import")
    s.add_argument("--auth", choices=["on", "off"], default=None,
                   help="default: off on loopback (root and group local_group call without a "
                        "token, other local accounts log in), on for any other address")
    s.add_argument("--local-group", default="apppaccap", metavar="NAME",
                   help="with authentication off on loopback, root and members of this group "
                        "call without a token (default apppaccap; installer/install.sh "
                        "creates it)")
    s.add_argument("--fleet-url", default=None, metavar="URL",
                   help="ship to the fleet's ClickHouse, clickhouse://HOST:9000/apppaccap "
                        "(sets the fleet_url setting; empty = no fleet; docs/FLEET.md)")
    s.add_argument("--fleet-host", default=None, metavar="NAME",
                   help="this sensor's name in the fleet (sets fleet_host; default the host "
                        "name)")
    s.add_argument("--i-know-this-is-open", action="store_true",
                   help="allow --auth off on a non-loopback address (no login for anyone)")
    s.set_defaults(func=cmd_serve)

    about = "manage users (password from a prompt or stdin, at least 10 characters)"
    u = sub.add_parser("user", help=about, description=about)
    u.add_argument("op", choices=["add", "remove", "list"])
    u.add_argument("name", nargs="?")
    u.add_argument("--data-dir", default="./data")
    u.set_defaults(func=cmd_user)

    c = sub.add_parser("call", help="call one action and print the envelope")
    c.add_argument("action")
    c.add_argument("params", nargs="*", metavar="key=value")
    c.add_argument("--url", default="http://127.0.0.1:8733")
    c.add_argument("--token", default=None)
    c.set_defaults(func=cmd_call)
    add_commands(sub)  # ingest / export live with their progress-bar code
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # APScheduler logs every run of every periodic job at INFO: noise, not news.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return args.func(args)
