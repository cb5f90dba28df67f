"""What the compiler needs to know about one capture: its schema, interfaces, id range,
and small "dictionaries" (IPs, processes, connections) that turn predicates on values into
sets of keys SQL can use (`src IN (…)`, `process_id IN (…)`, `conn_id IN (…)`).

A Scope reads through its own read-only SQLite connection, bounded to the packets that
existed when it was opened (`max_id`), so a search of an active capture sees a snapshot.
"""

from __future__ import annotations

import operator
import os
import sqlite3
import threading
from itertools import islice

_SORTED_CACHE: dict = {}   # (path, inode, first id, first ts) → (checked up to id, last ts, ok)
_SORTED_LOCK = threading.Lock()


def open_readonly(path: str) -> sqlite3.Connection:
    """Our own read-only connection (cursors stream; the Database helper fetches all rows)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                           timeout=30)
    conn.execute("PRAGMA query_only = 1")
    return conn


class Scope:
    """One capture as seen by one search or export."""

    def __init__(self, conn: sqlite3.Connection, capture_id: int, path: str = "", *,
                 force_python: bool = False):
        self.conn, self.capture_id, self.path = conn, capture_id, path
        self.force_python = force_python  # tests: evaluate every field from the bytes
        self.columns = {r[1] for r in conn.execute("PRAGMA table_info(packets)")}
        self.linktypes = {r[0]: r[1] & 0x0FFFFFFF for r in
                          conn.execute("SELECT id, linktype FROM interfaces")}
        # two statements: SQLite answers a lone min() or max() from the b-tree's ends
        lo = conn.execute("SELECT min(id) FROM packets").fetchone()[0]
        hi = conn.execute("SELECT max(id) FROM packets").fetchone()[0]
        self.min_id, self.max_id = (lo or 1), (hi or 0)
        row = conn.execute("SELECT ts FROM packets WHERE id = ?", (self.min_id,)).fetchone()
        self.first_ts = row[0] if row else 0
        self._ips = self._procs = self._conns = self._apps = None
        self._ranks: dict = {}
        self._sorted = None

    @property
    def packets(self) -> int:
        """Packets in the snapshot (ids are dense: 1..n in arrival order)."""
        return max(0, self.max_id - self.min_id + 1)

    @property
    def eth_ifaces(self) -> str:
        """Interface ids with Ethernet link type, as SQL list text (ints from our own table)."""
        ids = [str(i) for i, lt in sorted(self.linktypes.items()) if lt == 1]
        return ", ".join(ids) or "NULL"

    # -- dictionaries ---------------------------------------------------------------
    def ips(self) -> list[str]:
        """Every address that occurs as a packet's src or dst (the recorder keeps them all)."""
        if self._ips is None:
            self._ips = [r[0] for r in self.conn.execute("SELECT ip FROM ips")]
        return self._ips

    def processes(self) -> dict:
        if self._procs is None:
            self._procs = {r[0]: {"name": r[1], "path": r[2], "cmdline": r[3]} for r in
                           self.conn.execute("SELECT process_id, name, path, cmdline "
                                             "FROM processes")}
        return self._procs

    def process(self, process_id):
        return None if process_id is None else self.processes().get(process_id)

    def connections(self) -> list[tuple]:
        """(id, proto, local_ip, local_port, remote_ip, remote_port, packets) by id."""
        if self._conns is None:
            self._conns = self.conn.execute(
                "SELECT id, proto, local_ip, local_port, remote_ip, remote_port, "
                "packets_in + packets_out FROM connections ORDER BY id").fetchall()
        return self._conns

    def app_labels(self) -> dict:
        """conn id → {"proto", "name", "category"}: nDPI's labels (capture/applabels.py);
        a label that is NULL or "" is absent."""
        if self._apps is None:
            self._apps = {r[0]: {"proto": r[1] or None, "name": r[2] or None,
                                 "category": r[3] or None} for r in
                          self.conn.execute("SELECT id, app_proto, app, category FROM "
                                            "connections WHERE app_proto IS NOT NULL")}
        return self._apps

    def stream_ids(self, proto: int) -> list[int]:
        """Connection ids of one protocol in order of first packet (= tshark's stream order)."""
        return [c[0] for c in self.connections() if c[1] == proto]

    def stream_rank(self, proto: int, conn_id) -> list:
        ranks = self._ranks.get(proto)
        if ranks is None:
            ranks = self._ranks[proto] = {cid: i for i, cid in enumerate(self.stream_ids(proto))}
        r = ranks.get(conn_id)
        return [] if r is None else [r]

    # -- time ordering ----------------------------------------------------------------
    def ts_sorted(self) -> bool:
        """Do timestamps never decrease with the packet id? Then a time range is an id range.

        Checked with one pass over the ts column, remembered per capture file and extended
        to new packets only (an active capture is re-checked from where the last check
        stopped).
        """
        if self._sorted is None:
            try:
                inode = os.stat(self.path).st_ino if self.path else None
            except OSError:
                inode = None
            key = (self.path, inode, self.min_id, self.first_ts)
            with _SORTED_LOCK:
                upto, last, ok = _SORTED_CACHE.get(key, (self.min_id - 1, None, True))
            if ok and upto < self.max_id:
                ok, last = self._check_sorted(upto, last)
                with _SORTED_LOCK:
                    if len(_SORTED_CACHE) > 1000:
                        _SORTED_CACHE.clear()
                    _SORTED_CACHE[key] = (self.max_id, last, ok)
            self._sorted = ok
        return self._sorted

    def _check_sorted(self, after: int, prev) -> tuple[bool, int | None]:
        # one pass in id order, compared in C (map/operator) a page at a time: ~0.3 s per
        # million packets, where SQLite's lag() window takes seconds
        cur = self.conn.execute("SELECT ts FROM packets WHERE id > ? AND id <= ? ORDER BY id",
                                (after, self.max_id))
        while True:
            page = [r[0] for r in cur.fetchmany(65536)]
            if not page:
                return True, prev
            if prev is not None and page[0] < prev:
                return False, prev
            if not all(map(operator.le, page, islice(page, 1, None))):
                return False, prev
            prev = page[-1]

    def first_id_at(self, ns: int, *, after: bool = False) -> int:
        """Smallest id whose ts >= ns (> ns with after); max_id + 1 when none. Needs ts_sorted."""
        lo, hi = self.min_id, self.max_id + 1
        op = (lambda t: t > ns) if after else (lambda t: t >= ns)
        while lo < hi:
            mid = (lo + hi) // 2
            row = self.conn.execute("SELECT ts FROM packets WHERE id = ?", (mid,)).fetchone()
            if row is None or op(row[0]):
                hi = mid
            else:
                lo = mid + 1
        return lo
