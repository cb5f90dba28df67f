"""Asynchronous searches: a catalog row per search (SEARCHMETA), its results in
`search_results`, and a small pool of search threads of our own.

Why not the command scheduler: a search is not a COMMAND in the reference (it has its own
object and actions), and a long search must not hold one of the two workers that ingests
and exports run on. Results are written chunk by chunk as the scan finds them, so
`search_read` pages through them while the search runs.

Restart: a search cut off by a service stop becomes CANCELLED with the results it had
written (message "interrupted: the service stopped") — when the service stops, or at the
next start after a crash; run it again with search_start. Captures covered: the one asked
for (an active capture is searched up to its packets at the start), or every capture that
is not active.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

from apppaccap.errors import Busy
from apppaccap.errors import NotFound
from apppaccap.filetime import from_ns
from apppaccap.filetime import now_ns
from apppaccap.search.compiler import compile_plan
from apppaccap.search.scan import scan
from apppaccap.search.scope import Scope
from apppaccap.search.scope import open_readonly
from apppaccap.store import searches
from apppaccap.store.capturedb import capture_path
from apppaccap.wire import CommandState

log = logging.getLogger(__name__)

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = 1, 2, 3, 4, 5
WORKERS = 2
_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ENGINES_LOCK = threading.Lock()


def engine_for(ctx) -> SearchEngine:
    """The one engine of this catalog (created on first use, recovering old searches)."""
    with _ENGINES_LOCK:
        eng = _ENGINES.get(ctx.catalog)
        if eng is None:
            eng = _ENGINES[ctx.catalog] = SearchEngine(ctx)
        return eng


def recover(ctx) -> int:
    """At start-up: searches left QUEUED/RUNNING become CANCELLED (results kept)."""
    return engine_for(ctx).recovered


def shutdown(ctx) -> None:
    """Stop every running search (they end CANCELLED) and the search threads."""
    with _ENGINES_LOCK:
        eng = _ENGINES.pop(ctx.catalog, None)
    if eng is not None:
        eng.shutdown()


class SearchEngine:
    def __init__(self, ctx):
        self.ctx = ctx
        self.catalog = ctx.catalog
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="search")
        self.flags: dict[int, threading.Event] = {}
        self.lock = threading.Lock()
        self.stopping = False
        self.recovered = searches.interrupt_unfinished(
            self.catalog, state=CommandState.CANCELLED,
            unfinished=(CommandState.QUEUED, CommandState.RUNNING), finished=now_ns())

    # -- lifecycle --------------------------------------------------------------------
    def start(self, flt, text: str, capture_ids: list[int], capture_id: int,
              time_range) -> dict:
        """Queue a search of `capture_ids`; returns its SEARCHMETA."""
        start, end = time_range or (None, None)
        limit = self.ctx.settings.get_int("max_active_searches")
        flag = threading.Event()
        with self.lock:  # held over the insert: two starts cannot both take the last place
            if len(self.flags) >= limit:
                raise Busy(f"search: {limit} searches are queued or running, the most the "
                           "setting max_active_searches allows; wait, cancel one "
                           "(search_cancel), or raise the setting")
            sid = searches.add(self.catalog, text=text, capture_id=capture_id or None,
                               start=start, end=end, state=CommandState.QUEUED,
                               capture_ids=capture_ids,
                               created=now_ns())
            self.flags[sid] = flag
        self.pool.submit(self._run, sid, flt, capture_ids, time_range, flag)
        return self.get(sid)

    def cancel(self, sid: int) -> None:
        self.get(sid)
        with self.lock:
            flag = self.flags.get(sid)
        if flag is not None:
            flag.set()
        # a queued search may not have started: mark it now (the worker checks the flag)
        searches.cancel_queued(self.catalog, sid, state=CommandState.CANCELLED,
                               queued=CommandState.QUEUED,
                               finished=now_ns())

    def delete(self, sid: int) -> None:
        self.cancel(sid)
        searches.delete(self.catalog, sid)

    def shutdown(self) -> None:
        self.stopping = True
        with self.lock:
            for flag in self.flags.values():
                flag.set()
        self.pool.shutdown(wait=True)

    # -- reading ----------------------------------------------------------------------
    def get(self, sid: int) -> dict:
        row = searches.get(self.catalog, sid)
        if row is None:
            raise NotFound(f"search_id: no search {sid}")
        return search_object(row)

    def list(self) -> list:
        return [search_object(r) for r in searches.all_rows(self.catalog)]

    # -- the worker -------------------------------------------------------------------
    def _run(self, sid, flt, capture_ids, time_range, flag: threading.Event) -> None:
        state, message = CommandState.COMPLETED, ""
        try:
            if flag.is_set():
                return  # cancelled while queued (already marked)
            searches.started(self.catalog, sid, state=CommandState.RUNNING, when=now_ns())
            self._search(sid, flt, capture_ids, time_range, flag)
            if flag.is_set():
                state, message = CommandState.CANCELLED, ("interrupted: the service stopped"
                                             if self.stopping else "cancelled")
        except searches.Gone:
            return
        except Exception as exc:  # noqa: BLE001 - a failing search fails itself, not the service
            log.exception("search %s failed", sid)
            state, message = CommandState.FAILED, f"{type(exc).__name__}: {exc}"
        finally:
            with self.lock:
                self.flags.pop(sid, None)
        searches.finish(self.catalog, sid, state=state, message=message, finished=now_ns(),
                        completed=CommandState.COMPLETED)

    def _search(self, sid, flt, capture_ids, time_range, flag) -> None:
        data_dir = self.ctx.config.data_dir
        sizes = {}
        for cid in capture_ids:  # the total first, so Progress means something
            path = capture_path(data_dir, cid)
            sizes[cid] = _packet_count(path) if os.path.exists(path) else 0
        total = max(1, sum(sizes.values()))
        covered = results = 0
        last_write = 0.0
        pending: list = []
        for cid in capture_ids:
            path = capture_path(data_dir, cid)
            if not os.path.exists(path):
                continue  # deleted since the search started
            conn = open_readonly(path)
            try:
                scope = Scope(conn, cid, path)
                plan = compile_plan(flt, scope, time_range)
                done_here = 0
                for n, found in scan(scope, plan, cancelled=flag.is_set):
                    done_here += n
                    for pid, ts in found:
                        results += 1
                        pending.append((sid, results, cid, pid, ts))
                    now = time.monotonic()
                    # stream: hand results over as found, at most ~4 catalog writes a second
                    if len(pending) >= 50000 or now - last_write > 0.25:
                        self._write(sid, pending, covered + done_here, total, results)
                        pending, last_write = [], now
                covered += done_here
            finally:
                conn.close()
            if flag.is_set():
                break
        self._write(sid, pending, covered, total, results)

    def _write(self, sid, rows, covered, total, results) -> None:
        total = max(total, covered)  # an active capture may have grown since it was counted
        progress = min(99, int(100 * covered / total))

        self.catalog.write(lambda c: searches.add_results(
            c, sid, rows, progress=progress, scanned=covered, total=total, found=results),
            timeout=None)


def _packet_count(path: str) -> int:
    conn = open_readonly(path)
    try:
        # two statements: a lone min()/max() is read from the b-tree's end, not a scan
        lo = conn.execute("SELECT min(id) FROM packets").fetchone()[0]
        hi = conn.execute("SELECT max(id) FROM packets").fetchone()[0]
        return 0 if hi is None else hi - lo + 1
    finally:
        conn.close()


def search_object(row) -> dict:
    """SEARCHMETA (docs/API.md, search_open) plus the scope of the search."""
    return {"Version": 1, "SearchId": row["id"], "Filter": row["filter"], "State": row["state"],
            "Progress": row["progress"], "ResultCount": row["result_count"],
            "ScannedPackets": row["scanned_packets"], "TotalPackets": row["total_packets"],
            "Started": from_ns(row["started"]), "Finished": from_ns(row["finished"]),
            "Created": from_ns(row["created"]), "CaptureId": row["capture_id"] or 0,
            "CaptureIds": json.loads(row["captures"] or "[]"),
            "StartTime": from_ns(row["start_ns"]) if row["start_ns"] is not None else 0,
            "EndTime": from_ns(row["end_ns"]) if row["end_ns"] is not None else 0,
            "Message": row["message"]}
