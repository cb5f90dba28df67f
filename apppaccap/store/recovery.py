"""The catalog at start-up: checked, set aside when damaged, captures found again.

A damaged catalog (garbage, a truncated file: SQLite says "not a database" or
"malformed", or `PRAGMA quick_check` finds faults), or an empty one while capture
databases exist, is renamed to catalog.db.damaged-<time> (with its -wal/-shm) and a new
catalog is created. Each captures/<id>.db is then registered again under its id: Type,
Name, Filter, adapters and process as the capture database remembers them (meta 'capture',
written when the capture starts by store/capturedb.py: remember), counters and times from
its rows; State COMPLETED when it was stopped cleanly (meta 'ended'), INTERRUPTED
otherwise. Nothing is forgotten
silently: what cannot be read is registered INTERRUPTED with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time

from apppaccap.store import captures
from apppaccap.store import processes
from apppaccap.wire import CaptureState
from apppaccap.wire import CaptureType

log = logging.getLogger(__name__)

SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26
CAPTURE_FILE = re.compile(r"^([1-9][0-9]{0,17})\.db$")


def capture_files(data_dir: str) -> dict[int, str]:
    """Capture id → path of every captures/<id>.db."""
    if not data_dir:
        return {}  # an in-memory catalog has no data directory
    folder = os.path.join(data_dir, "captures")
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    found = {}
    for name in names:
        m = CAPTURE_FILE.match(name)
        if m:
            found[int(m.group(1))] = os.path.join(folder, name)
    return found


def highest_capture_file(data_dir: str) -> int:
    return max(capture_files(data_dir), default=0)


def _damaged(exc: sqlite3.Error) -> bool:
    """Is this error the file's fault (not a lock, a permission or a full disk)?"""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text


def examine(path: str, data_dir: str) -> str:
    """Why the catalog at `path` must be set aside ('' when it is fine or absent)."""
    if not os.path.exists(path):
        return ""
    files = capture_files(data_dir)
    wal = path + "-wal"
    if os.path.getsize(path) == 0 and not (os.path.exists(wal) and os.path.getsize(wal)):
        return f"empty (0 bytes) while captures/ holds {len(files)} capture database(s)" \
            if files else ""
    try:
        conn = sqlite3.connect(path, timeout=30)
    except sqlite3.Error as exc:
        if _damaged(exc):
            return f"damaged ({exc})"
        raise
    try:
        faults = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
        if faults != ["ok"]:
            return "damaged (quick_check: " + "; ".join(faults)[:300] + ")"
        has_captures = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'captures'").fetchone()
        if files and not has_captures:
            return f"empty (no tables) while captures/ holds {len(files)} capture database(s)"
        return ""
    except sqlite3.Error as exc:
        if _damaged(exc):
            return f"damaged ({exc})"
        raise
    finally:
        conn.close()


def set_aside(path: str, why: str) -> str:
    """Rename the catalog (and its -wal/-shm) to <path>.damaged-<time>; returns the name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = f"{path}.damaged-{stamp}"
    n = 1
    while os.path.exists(aside):
        n += 1
        aside = f"{path}.damaged-{stamp}-{n}"
    try:
        for suffix in ("-wal", "-shm", ""):  # the main file last: it marks the set-aside
            if os.path.exists(path + suffix):
                os.replace(path + suffix, aside + suffix)
    except OSError as exc:
        # no traceback for this: one line says what is wrong and what to do
        raise SystemExit(f"apppaccap: the catalog {path} is {why} and cannot be set aside "
                         f"({exc.strerror}); move it away by hand and start again") from None
    return aside


def reregister(catalog, data_dir: str) -> int:
    """Register every captures/<id>.db in the (new) catalog; returns how many."""
    files = capture_files(data_dir)
    for capture_id, path in sorted(files.items()):
        try:
            row, procs = _read_capture(path)
        except (sqlite3.Error, ValueError) as exc:  # ValueError: a meta row not JSON
            log.error("capture database %s cannot be read (%s): registered as INTERRUPTED",
                      path, exc)
            row, procs = {"type": CaptureType.SYSTEM, "name": f"capture {capture_id}",
                          "start_time": 0,
                          "state": CaptureState.INTERRUPTED,
                          "message": f"recovered: its database cannot be read ({exc})"}, []
        row["id"] = capture_id
        catalog.write(lambda c, row=row, procs=procs: _insert(c, row, procs))
    return len(files)


def _read_capture(path: str) -> tuple[dict, list]:
    conn = sqlite3.connect(path, timeout=30)  # read-write: it may need its WAL replayed
    conn.row_factory = sqlite3.Row
    try:
        meta = {r["key"]: r["value"] for r in conn.execute("SELECT key, value FROM meta")}
        facts = json.loads(meta.get("capture") or "{}")
        ended = json.loads(meta.get("ended") or "null")
        packets, size, first, last = conn.execute(
            "SELECT count(*), coalesce(sum(len), 0), min(ts), max(ts) FROM packets").fetchone()
        conns = conn.execute("SELECT count(*) FROM connections").fetchone()[0]
        ifaces = [r[0] or "" for r in conn.execute("SELECT name FROM interfaces ORDER BY id")]
        procs = [dict(r) for r in conn.execute("SELECT * FROM processes")]
    finally:
        conn.close()
    row = {"type": facts.get("type") or _guess_type(path, meta, ifaces),
           "name": facts.get("name") or "", "adapters": ",".join(n for n in ifaces if n)}
    row.update({k: v for k, v in facts.items() if v is not None})
    row["start_time"] = row.get("start_time") or first or 0
    row.update(packet_count=packets, byte_count=size, connection_count=conns)
    if ended:  # stopped by the service; a message says why when a write failed
        why = ended.get("message") or ""
        row.update(state=CaptureState.INTERRUPTED if why else CaptureState.COMPLETED,
                   end_time=ended.get("end_time") or last)
    else:
        why = "the service stopped while capturing"
        row.update(state=CaptureState.INTERRUPTED, end_time=last)
    row["message"] = "; ".join(filter(None, (
        "registered again from its database (the catalog was set aside)", why)))
    return row, procs


def _guess_type(path: str, meta: dict, ifaces: list) -> int:
    """A capture database older than meta 'capture': live adapters of this machine mean
    a live capture; anything else came from a file."""
    if "block_framing" in meta or os.path.exists(path[:-3] + ".bytes"):
        return CaptureType.FILE
    live = ifaces and all(n and os.path.exists(f"/sys/class/net/{n}") for n in ifaces)
    return CaptureType.SYSTEM if live else CaptureType.FILE


def _insert(conn, row: dict, procs: list) -> None:
    captures.register(conn, row)
    processes.register(conn, procs)
    for p in procs:
        captures.link_process(conn, row["id"], p["process_id"])
