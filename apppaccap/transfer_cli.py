"""`apppaccap ingest FILE...` and `apppaccap export CAPTURE_ID FILE`: commands with a progress
bar, driven through the server's /ajax door like any other client."""

from __future__ import annotations

import os
import sys
import time
import urllib.error

DONE = (3, 4, 5)  # COMMAND_STATE_COMPLETED / FAILED / CANCELLED


def bar(label: str, percent: int, width: int = 30, out=sys.stderr) -> None:
    filled = width * percent // 100
    out.write(f"\r{label[:40]:<40} [{'#' * filled}{'.' * (width - filled)}] {percent:3d}%")
    out.flush()


def follow(url: str, token: str | None, body: dict, label: str) -> dict:
    """Poll a COMMAND until it ends, drawing its progress; returns the final COMMAND."""
    from apppaccap.cli import post
    if body.get("ErrorCode") != 0:
        raise RuntimeError(str(body.get("ReturnValue")))
    cmd = body["ReturnValue"]
    while cmd["State"] not in DONE:
        bar(label, cmd["Progress"])
        time.sleep(0.2)
        fields = {"action": "command_query", "command_uid": cmd["CommandUid"]}
        if token:
            fields["token"] = token
        reply = post(url, fields)
        if reply.get("ErrorCode") != 0:
            raise RuntimeError(str(reply.get("ReturnValue")))
        cmd = reply["ReturnValue"]
    bar(label, 100 if cmd["State"] == 3 else cmd["Progress"])
    sys.stderr.write("\n")
    return cmd


def _fields(args, **kw) -> dict:
    if args.token:
        kw["token"] = args.token
    return kw


def cmd_ingest(args) -> int:
    from apppaccap.cli import post
    status = 0
    for path in args.files:
        full = os.path.abspath(path)
        try:
            body = post(args.url, _fields(args, action="pcap_ingest_file", path=full))
            cmd = follow(args.url, args.token, body, os.path.basename(full))
        except (RuntimeError, urllib.error.URLError, OSError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = 1
            continue
        if cmd["State"] == 3:
            print(f"{path}: capture {cmd['Result']}")
        else:
            print(f"{path}: failed: {cmd['Message']}", file=sys.stderr)
            status = 1
    return status


def cmd_export(args) -> int:
    from apppaccap.cli import post
    path = os.path.abspath(args.file) if args.file else ""
    try:
        body = post(args.url, _fields(args, action="capture_export",
                                      capture_id=args.capture_id, path=path,
                                      filter=args.filter))
        cmd = follow(args.url, args.token, body, f"capture {args.capture_id}")
    except (RuntimeError, urllib.error.URLError, OSError) as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 1
    if cmd["State"] != 3:
        print(f"export failed: {cmd['Message']}", file=sys.stderr)
        return 1
    print(cmd["Result"])
    return 0


def add_commands(sub) -> None:
    i = sub.add_parser("ingest", help="ingest capture files through the running server")
    i.add_argument("files", nargs="+", metavar="FILE")
    e = sub.add_parser("export", help="export a capture to pcapng through the running server")
    e.add_argument("capture_id", type=int)
    e.add_argument("file", nargs="?", default="", help="default: the export directory")
    e.add_argument("--filter", default="", help="display filter (search language)")
    for p, fn in ((i, cmd_ingest), (e, cmd_export)):
        p.add_argument("--url", default="http://127.0.0.1:8733")
        p.add_argument("--token", default=None)
        p.set_defaults(func=fn)
