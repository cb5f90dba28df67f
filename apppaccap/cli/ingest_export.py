"""`apppaccap ingest FILE...` and `apppaccap export CAPTURE_ID FILE`: commands with a progress
bar, driven through the server's /ajax door like any other client.

`ingest` asks the server to read the file by path (pcap_ingest_file) and, when the file is
outside the server's ingest roots, uploads it instead (pcap_ingest_post): the file is then
read by this command, with the permissions of whoever runs it, never by the root service."""

from __future__ import annotations

import os
import stat
import sys
import time
import urllib.error

from apppaccap.cli.client import post
from apppaccap.cli.client import post_file
from apppaccap.wire import DONE_STATES
from apppaccap.wire import CommandState
from apppaccap.wire import ErrorCode


def bar(label: str, percent: int, width: int = 30, out=sys.stderr) -> None:
    filled = width * percent // 100
    out.write(f"\r{label[:40]:<40} [{'#' * filled}{'.' * (width - filled)}] {percent:3d}%")
    out.flush()


def follow(url: str, token: str | None, body: dict, label: str) -> dict:
    """Poll a COMMAND until it ends, drawing its progress; returns the final COMMAND."""
    if body.get("ErrorCode") != ErrorCode.SUCCESS:
        raise RuntimeError(str(body.get("ReturnValue")))
    cmd = body["ReturnValue"]
    while cmd["State"] not in DONE_STATES:
        bar(label, cmd["Progress"])
        time.sleep(0.2)
        fields = {"action": "command_query", "command_uid": cmd["CommandUid"]}
        if token:
            fields["token"] = token
        reply = post(url, fields)
        if reply.get("ErrorCode") != ErrorCode.SUCCESS:
            raise RuntimeError(str(reply.get("ReturnValue")))
        cmd = reply["ReturnValue"]
    bar(label, 100 if cmd["State"] == CommandState.COMPLETED else cmd["Progress"])
    sys.stderr.write("\n")
    return cmd


def _fields(args, **kw) -> dict:
    if args.token:
        kw["token"] = args.token
    return kw


def _start_ingest(args, full: str) -> dict:
    """pcap_ingest_file when the server may read the file (below its ingest roots); else
    the file is uploaded (pcap_ingest_post), read here with the caller's own permissions."""
    body = post(args.url, _fields(args, action="pcap_ingest_file", path=full))
    if body.get("ErrorCode") != ErrorCode.INVALID_PERMISSIONS:
        return body
    try:
        st = os.stat(full)  # as the user running the command
    except FileNotFoundError:
        raise RuntimeError("no such file") from None
    if not stat.S_ISREG(st.st_mode):
        raise RuntimeError("not a regular file")
    return post_file(args.url, _fields(args, action="pcap_ingest_post"), full)


def cmd_ingest(args) -> int:
    status = 0
    for path in args.files:
        full = os.path.abspath(path)
        try:
            body = _start_ingest(args, full)
            cmd = follow(args.url, args.token, body, os.path.basename(full))
        except (RuntimeError, urllib.error.URLError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print(f"{path}: {reason}", file=sys.stderr)
            status = 1
            continue
        if cmd["State"] == CommandState.COMPLETED:
            print(f"{path}: capture {cmd['Result']}")
        else:
            print(f"{path}: failed: {cmd['Message']}", file=sys.stderr)
            status = 1
    return status


def cmd_export(args) -> int:
    path = os.path.abspath(args.file) if args.file else ""
    try:
        body = post(args.url, _fields(args, action="capture_export",
                                      capture_id=args.capture_id, path=path,
                                      filter=args.filter))
        cmd = follow(args.url, args.token, body, f"capture {args.capture_id}")
    except (RuntimeError, urllib.error.URLError, OSError) as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 1
    if cmd["State"] != CommandState.COMPLETED:
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
