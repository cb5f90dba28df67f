"""search_start, search_read, search_open, search_list, search_cancel, search_delete,
search_export, search_verify_filter, search_count — the filter language: docs/FILTERS.md.
"""

from __future__ import annotations

import os

from apppaccap.api.captures import captures
from apppaccap.api.packets import packets_by_id
from apppaccap.api.registry import endpoint
from apppaccap.api.timerange import relative_problem
from apppaccap.api.timerange import relative_range
from apppaccap.errors import Busy
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.errors import Unsupported
from apppaccap.filetime import from_ns
from apppaccap.filetime import to_ns_clamped
from apppaccap.ingest import export
from apppaccap.ingest.search_export import write_results
from apppaccap.safefs.writing import release_target
from apppaccap.search import FilterError
from apppaccap.search import parse_filter
from apppaccap.search.compiler import compile_plan
from apppaccap.search.engine import engine_for
from apppaccap.search.results import read_page
from apppaccap.search.scope import Scope
from apppaccap.search.scope import open_readonly
from apppaccap.store.capturedb import capture_path
from apppaccap.wire import CaptureState
from apppaccap.wire import CommandState
from apppaccap.wire import DataType

_MAX_FILETIME = from_ns((1 << 63) - 1)  # packet times are signed 64-bit ns since 1970


def checked_filter(text: str):
    """A checked Filter, None for a blank one (every packet); MALFORMED names `filter`."""
    if not text.strip():
        return None
    try:
        return parse_filter(text)
    except FilterError as err:
        raise Malformed(err.api_message) from None


def _time_range(start_dtg: int, end_dtg: int, relative_time: str):
    """(start_ns, end_ns) inclusive, either end None; None when unbounded."""
    problems = []
    if start_dtg < 0:
        problems.append("start_dtg: must be a FILETIME (>= 0; 0 = no lower bound)")
    if end_dtg < 0:
        problems.append("end_dtg: must be a FILETIME (>= 0; 0 = no upper bound)")
    for name, value in (("start_dtg", start_dtg), ("end_dtg", end_dtg)):
        if value > _MAX_FILETIME:
            problems.append(f"{name}: beyond the last time a packet can carry (year 2262)")
    if problems:
        raise Malformed("; ".join(problems))
    start = to_ns_clamped(start_dtg) if start_dtg > 0 else None
    # the whole last tick: up to 99 ns after it
    end = min(to_ns_clamped(end_dtg) + 99, (1 << 63) - 1) if end_dtg > 0 else None
    problem = relative_problem(relative_time, start_dtg, end_dtg)
    if problem:
        problems.append(problem)
    elif relative_time.strip():
        # 999999999w: before every packet; the end stays open
        start = relative_range(relative_time, floor=-(1 << 63))[0]
    if start_dtg > 0 and end_dtg > 0 and end_dtg < start_dtg:  # FILETIMEs: before clamping
        problems.append("end_dtg: must not be before start_dtg")
    if problems:
        raise Malformed("; ".join(problems))
    return None if start is None and end is None else (start, end)


def _captures(ctx, capture_id: int) -> list[int]:
    if ctx.captures is None:
        raise Unsupported("capture_id: the capture engine is not running in this process")
    if capture_id:
        ctx.captures.get(capture_id)  # NOT_FOUND for an unknown id
        return [capture_id]
    # every capture that is not active (an ingest in progress is active too)
    return [r["id"] for r in ctx.catalog.read(
        "SELECT id FROM captures WHERE state != ? ORDER BY id", (CaptureState.ACTIVE,))]


def _scope(ctx, text: str, capture_id: int, start: int, end: int, relative: str):
    """search_start's and search_count's checks, in order: the capture, the filter, the
    range; then (filter, time window, capture ids)."""
    if capture_id < 0:
        raise NotFound(f"capture_id: no capture {capture_id}")
    flt = checked_filter(text)
    return flt, _time_range(start, end, relative), _captures(ctx, capture_id)


@endpoint(DataType.JSON, aliases={"q": "filter"})
def search_start(ctx, *, filter: str, capture_id: int = 0, start_dtg: int = 0,
                 end_dtg: int = 0, relative_time: str = "") -> dict:
    """Start an asynchronous search; returns its SEARCHMETA at once (State QUEUED or RUNNING).

    Poll search_open for State/Progress and page the results with search_read while it runs.
    Without capture_id every capture that is not active is searched; an active capture named
    by capture_id is searched up to the packets it had when the search started. Two searches
    run at a time (others wait QUEUED); beyond the setting max_active_searches (default 4)
    searches queued or running, BUSY. A search cut off by a service stop (or crash) is
    CANCELLED with Message "interrupted: the service stopped" and keeps its results.
    - filter: display filter (docs/FILTERS.md); also accepted as `q`; blank = every packet
    - capture_id: search only this capture; 0 = every capture that is not active
    - start_dtg: only packets at or after this UTC FILETIME; 0 = no lower bound
    - end_dtg: only packets at or before this UTC FILETIME; 0 = no upper bound
    - relative_time: the last interval up to now, e.g. 30s, 15m, 24h, 7d (see Time ranges)
    """
    flt, window, ids = _scope(ctx, filter, capture_id, start_dtg, end_dtg, relative_time)
    return engine_for(ctx).start(flt, filter, ids, capture_id, window)


@endpoint(DataType.JSON)
def search_open(ctx, *, search_id: int) -> dict:
    """One search's SEARCHMETA: State (COMMAND_STATE_*), Progress, ResultCount, ScannedPackets.

    - search_id: the SearchId from search_start or search_list
    """
    return engine_for(ctx).get(search_id)


@endpoint(DataType.JSON, paged=("SearchId", "Searches"))
def search_list(ctx) -> list:
    """Every search, running and finished (SEARCHMETA list, oldest first)."""
    return engine_for(ctx).list()


@endpoint(DataType.JSON)
def search_read(ctx, *, search_id: int, last_id: int = 0, limit: int = 1000) -> dict:
    """A page of a search's results (SEARCHLIST), also while the search still runs.

    Results are in capture order, then packet order; `More` says more results are stored
    beyond this page (a running search may add more later: see State). Each result has
    ItemId, CaptureId, PacketId, Time, Summary and, from its packet (as capture_read gives
    it), ProcessName, Pid, Protocol, SrcIp, SrcPort, DstIp, DstPort, Length (and Info
    when the packet has one).
    - search_id: the SearchId
    - last_id: return results with ItemId > last_id (0 = from the start)
    - limit: page size, 1-10000
    """
    if not 1 <= limit <= 10000:
        raise Malformed("limit: must be 1-10000")
    if last_id < 0:
        raise Malformed("last_id: must be >= 0")
    meta = engine_for(ctx).get(search_id)
    page = read_page(ctx, meta, last_id, limit)
    _with_packet_fields(ctx, page["Results"])
    return page


# What a result shows of its packet (Summary and the theme's Process, PID, Protocol and Info
# columns); taken from the PACKET objects capture_read builds, so they always agree and each
# packet is decoded once.
_RESULT_FIELDS = ("Summary", "ProcessName", "Pid", "Protocol", "SrcIp", "SrcPort", "DstIp",
                  "DstPort", "Length", "Info")


def _with_packet_fields(ctx, results: list) -> None:
    by_capture: dict = {}
    for r in results:
        by_capture.setdefault(r["CaptureId"], []).append(r)
    for cid, rows in by_capture.items():
        try:
            db = captures(ctx).db(cid)
        except (NotFound, Unsupported):
            continue  # deleted since the search: Summary and Info stay blank
        packets = {p["PacketId"]: p for p in packets_by_id(db, cid, [r["PacketId"] for r in rows])}
        for r in rows:
            p = packets.get(r["PacketId"])
            if p is not None:
                r.update((k, p[k]) for k in _RESULT_FIELDS if k in p)


@endpoint(DataType.INT)
def search_cancel(ctx, *, search_id: int) -> int:
    """Cancel a queued or running search; it keeps the results found so far (State CANCELLED).

    - search_id: the SearchId
    """
    engine_for(ctx).cancel(search_id)
    return 0


@endpoint(DataType.INT)
def search_delete(ctx, *, search_id: int) -> int:
    """Cancel a search if it runs, then delete it and its results.

    - search_id: the SearchId
    """
    engine_for(ctx).delete(search_id)
    return 0


@endpoint(DataType.JSON)
def search_export(ctx, *, search_id: int, path: str = "", overwrite: int = 0) -> dict:
    """Write a finished search's result packets to one PCAPNG file (several captures merged).

    Returns an EXPORT COMMAND whose Result is the written path. Each capture's interfaces
    become interfaces of the file; packets are merged by time. BUSY while the search runs.
    The file is written below the export roots only, as capture_export writes.
    - search_id: a search that is not queued or running
    - path: absolute file path below an export root; blank = a new name in the export directory
    - overwrite: 1 = replace an existing regular file (never a symlink, device or FIFO)
    """
    meta = engine_for(ctx).get(search_id)
    if meta["State"] < CommandState.COMPLETED:
        raise Busy(f"search_id: search {search_id} is still running; wait or cancel it")
    if ctx.jobs is None:
        raise Unsupported("search_id: the command scheduler is not running in this process")
    ctx.jobs.check_room()  # BUSY before a file name is taken (max_queued_commands)
    target = export.resolve_path(ctx, path, f"search-{search_id}",
                                 overwrite=export.check_overwrite(overwrite))

    def run(progress):
        write_results(ctx, search_id, target, progress)
        return target.path

    try:
        return ctx.jobs.submit("EXPORT", {"search_id": search_id, "path": target.path}, run)
    except BaseException:
        release_target(target)
        raise


@endpoint(DataType.JSON)
def search_verify_filter(ctx, *, filter: str) -> dict:
    """Check a filter without running it (SEARCHSYNTAX: Valid, Filter, Error, Position).

    Error is the exact MALFORMED_REQUEST message search_start and capture_export give for
    that filter; Position is its 0-based character offset (-1 when valid).
    - filter: the display filter to check; blank is valid (every packet)
    """
    out = {"Version": 1, "Valid": True, "Filter": filter, "Error": "", "Position": -1}
    if filter.strip():
        try:
            parse_filter(filter)
        except FilterError as err:
            out.update(Valid=False, Error=err.api_message, Position=err.position)
    return out


@endpoint(DataType.JSON, aliases={"q": "filter"})
def search_count(ctx, *, filter: str, capture_id: int = 0, start_dtg: int = 0,
                 end_dtg: int = 0, relative_time: str = "") -> dict:
    """How many packets a search would find, answered at once when the filter needs no
    packet bytes: {Filter, Exact, Count, Captures, Message}.

    A filter the compiler turns into exact SQL over the packet rows (addresses, ports,
    protocols, lengths, times, flags, processes: docs/FILTERS.md) is counted in SQL
    without reading a packet's bytes; Exact is true and Count the number of matching
    packets. A filter that needs the bytes (payload tests, fields decoded from the
    frame) is not counted: Exact is false, Count -1 and Message says a full search
    (search_start) is needed. Scope and range as search_start's.
    - filter: display filter (docs/FILTERS.md); also accepted as `q`; blank = every packet
    - capture_id: count only this capture; 0 = every capture that is not active
    - start_dtg: only packets at or after this UTC FILETIME; 0 = no lower bound
    - end_dtg: only packets at or before this UTC FILETIME; 0 = no upper bound
    - relative_time: the last interval up to now, e.g. 30s, 15m, 24h, 7d (see Time ranges)
    """
    flt, window, ids = _scope(ctx, filter, capture_id, start_dtg, end_dtg, relative_time)
    out = {"Version": 1, "Filter": filter, "Exact": True, "Count": 0, "Captures": ids,
           "Message": ""}
    total = 0
    for cid in ids:
        path = capture_path(ctx.config.data_dir, cid)
        if not os.path.exists(path):
            continue  # deleted meanwhile
        conn = open_readonly(path)
        try:
            scope = Scope(conn, cid, path)
            plan = compile_plan(flt, scope, window)
            if not plan.exact:
                out.update(Exact=False, Count=-1, Message=(
                    "the filter tests packet bytes (fields decoded from the frame or its "
                    "payload): counting it needs a full search (search_start)"))
                return out
            if plan.empty or scope.max_id < scope.min_id:
                continue
            lo, hi = scope.min_id, scope.max_id
            if plan.ids is not None:
                lo, hi = max(lo, plan.ids[0]), min(hi, plan.ids[1])
            if lo > hi:
                continue
            total += conn.execute(f"SELECT count(*) FROM packets WHERE id >= ? AND id <= ? "
                                  f"AND ({plan.where})", (lo, hi, *plan.params)).fetchone()[0]
        finally:
            conn.close()
    out["Count"] = total
    return out
