"""What this sensor ships, read from its databases after the writers committed it (never
from the capture path): connections of its captures, usage accounting's minute rows, alert
events. Each reader keeps a watermark so a poll reads only what may have changed.

Connections are updated in place while a capture runs (counters, state, labels), and their
rows have no change counter, so a live capture's rows are re-read when new (id above the
highest shipped) or active lately (last_time within MARGIN of the newest shipped), and sent
again only when what they carry differs from what was last sent (a digest per recent row).
A capture that has ended is read whole once more and then marked done.
"""

from __future__ import annotations

import functools
import os
import socket
import time

from apppaccap.fleet.schema import day_of
from apppaccap.store import captures as capture_rows
from apppaccap.store.capturedb import capture_path
from apppaccap.store.database import connect
from apppaccap.wire import CaptureState

SECOND = 1_000_000_000
MARGIN = 30 * SECOND  # rows active this long before the newest shipped one are re-read
MINUTE = 60 * SECOND

CONN_SQL = (
    "SELECT c.id, coalesce(c.first_time, 0), coalesce(c.last_time, 0), c.proto, "
    "coalesce(c.local_ip, ''), coalesce(c.local_port, 0), coalesce(c.remote_ip, ''), "
    "coalesce(c.remote_port, 0), coalesce(c.process_id, 0), c.pid, c.tid, "
    "coalesce(p.name, ''), coalesce(p.path, ''), coalesce(p.user, ''), "
    "coalesce(c.app_proto, ''), coalesce(c.app, ''), coalesce(c.category, ''), "
    "c.packets_out, c.bytes_out, c.packets_in, c.bytes_in, c.state, c.hostname "
    "FROM connections c LEFT JOIN processes p ON p.process_id = c.process_id ")


@functools.lru_cache(maxsize=65536)
def _ip_forms(text: str) -> tuple:
    """(IPv4 as an integer or 0, IPv6 as 32 hex digits or ''): sortable forms the fleet's
    filter compares ranges (CIDR blocks) against. inet_pton, not ipaddress: the shipper's
    hottest line (5x faster), and addresses repeat (cached)."""
    try:
        if ":" in text:
            return 0, socket.inet_pton(socket.AF_INET6, text.split("%")[0]).hex()
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"), ""
    except (OSError, ValueError):
        return 0, ""


def next_version(state: dict) -> int:
    """A row version: the time in ns, but always above the last one handed out (kept in
    state.json), so a clock stepped back never lets older counters win under FINAL."""
    version = max(time.time_ns(), state.get("version", 0) + 1)
    state["version"] = version
    return version


def connection_row(host: str, capture_id: int, r, version: int) -> list:
    (cid, first, last, proto, lip, lport, rip, rport, process_id, pid, tid, name, path,
     user, app_proto, app, category, pout, bout, pin, bin_, state, hostname) = r
    l4, l6 = _ip_forms(lip)
    r4, r6 = _ip_forms(rip)
    return [host, capture_id, cid, day_of(first), first, last, proto, lip, lport, rip, rport,
            l4, r4, l6, r6, process_id, pid or 0, tid or 0, name, path, user, app_proto, app,
            category, pout, bout, pin, bin_, state or "", hostname or "", version]


class ConnectionReader:
    """Connections of every capture, with per-capture watermarks kept in `state["conns"]`
    ({capture_id (text): {"wm": ns, "id": max id, "done": bool}})."""

    def __init__(self, ctx, state: dict):
        self.ctx = ctx
        self.root = state
        self.state = state.setdefault("conns", {})
        self.digests: dict = {}  # (capture, id) → what was last sent, for recent rows

    def poll(self, host: str) -> list:
        rows: list = []
        manager = self.ctx.captures
        if manager is None:
            return rows
        for capture_id in capture_rows.ids_not_in_state(self.ctx.catalog, -1):
            mark = self.state.setdefault(str(capture_id), {"wm": 0, "id": 0, "done": False})
            if mark["done"]:
                continue
            live = manager.live.get(capture_id)
            if live is not None:
                rows.extend(self._read(host, capture_id, live.db.tuples, mark, whole=False))
                continue
            row = capture_rows.get(self.ctx.catalog, capture_id)
            if row is None or row["state"] == CaptureState.ACTIVE:
                continue  # deleted meanwhile, or a file being ingested: shipped once complete
            rows.extend(self._read_finished(host, capture_id, mark))
            mark["done"] = True
            self._forget(capture_id)
        return rows

    def _read_finished(self, host: str, capture_id: int, mark: dict) -> list:
        """A capture that has ended, read whole through a connection of our own, closed
        after (the capture manager's would keep a writer thread and a reader per capture)."""
        path = capture_path(self.ctx.config.data_dir, capture_id)
        if not os.path.exists(path):
            return []
        conn = connect(path, readonly=True)
        conn.row_factory = None
        try:
            return self._read(host, capture_id, conn.execute, mark, whole=True)
        finally:
            conn.close()

    def _read(self, host, capture_id, execute, mark, whole: bool) -> list:
        if whole:
            found = execute(CONN_SQL + "ORDER BY c.id").fetchall()
        else:
            found = execute(CONN_SQL + "WHERE c.id > ? OR c.last_time >= ? ORDER BY c.id",
                            (mark["id"], mark["wm"] - MARGIN)).fetchall()
        version = next_version(self.root)
        out = []
        for r in found:
            if not whole:  # a finished capture is read once: nothing to compare with
                key = (capture_id, r[0])
                digest = r[2:]
                if self.digests.get(key) == digest:
                    continue
                self.digests[key] = digest
            out.append(connection_row(host, capture_id, r, version))
            mark["id"] = max(mark["id"], r[0])
            mark["wm"] = max(mark["wm"], r[2])
        if not whole:
            self._prune(capture_id, mark["wm"] - MARGIN)
        return out

    def _prune(self, capture_id: int, before: int) -> None:
        old = [k for k, d in self.digests.items() if k[0] == capture_id and d[0] < before]
        for k in old:
            del self.digests[k]

    def _forget(self, capture_id: int) -> None:
        self._prune(capture_id, 1 << 63)


class UsageReader:
    """Usage accounting's minute rows: the minutes from the last one shipped (it may have
    grown since) on. `state["usage_minute"]`: the newest minute shipped."""

    def __init__(self, ctx, state: dict):
        self.ctx = ctx
        self.state = state
        self.sent: dict = {}  # key → (packets, bytes) last sent, for the minutes re-read

    def poll(self, host: str) -> list:
        since = self.state.get("usage_minute", -1)
        found = self.ctx.catalog.tuples(
            "SELECT u.minute, u.process_id, coalesce(p.name, ''), coalesce(p.path, ''), "
            "u.remote_ip, u.remote_port, u.proto, u.dir, u.packets, u.bytes "
            "FROM usage_minute u LEFT JOIN processes p ON p.id = u.process_id "
            "WHERE u.minute >= ? ORDER BY u.minute", (since,)).fetchall()
        version = next_version(self.state)
        out = []
        newest = since
        for minute, pid, name, path, rip, rport, proto, d, packets, size in found:
            key = (minute, pid, rip, rport, proto, d)
            if self.sent.get(key) == (packets, size):
                continue
            self.sent[key] = (packets, size)
            newest = max(newest, minute)
            out.append([host, day_of(minute * MINUTE), minute, pid, name, path, rip, rport,
                        proto, d, packets, size, version])
        self.state["usage_minute"] = newest
        self.sent = {k: v for k, v in self.sent.items() if k[0] >= newest}
        return out


class AlertReader:
    """Alert events, appended only: by id. `state["alert_id"]`: the newest id shipped."""

    def __init__(self, ctx, state: dict):
        self.ctx = ctx
        self.state = state

    def poll(self, host: str) -> list:
        since = self.state.get("alert_id", 0)
        found = self.ctx.catalog.tuples(
            "SELECT id, alert_id, time, pid, process_name, process_path, remote_ip, "
            "remote_port, value, group_key, message FROM alert_events WHERE id > ? "
            "ORDER BY id LIMIT 10000", (since,)).fetchall()
        version = next_version(self.state)
        out = []
        for eid, aid, t, pid, name, path, rip, rport, value, key, message in found:
            out.append([host, day_of(t), t, eid, aid, pid, name, path, rip, rport,
                        float(value), key, message, version])
            self.state["alert_id"] = eid
        return out
