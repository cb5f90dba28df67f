"""capture_filter_packets: the capture view's quick filter, a display filter (docs/FILTERS.md)
evaluated on the server one bounded page at a time.

It is the search engine without the catalog: the same checked filter (search_verify_filter
validates it as you type), the same compile_plan and scan over one capture, so a quick
filter and a search with the same text find the same packets. Each request scans at most
a fixed number of packet ids after last_id (fewer when the plan must test packet bytes in
Python), so a filter that matches little never turns into one unbounded scan: the answer
then has fewer packets than asked (maybe none) with More true, and the client asks again
from LastId.
"""

from __future__ import annotations

from apppaccap.api.captures import captures
from apppaccap.api.packets import packets_by_id
from apppaccap.api.registry import endpoint
from apppaccap.api.search import checked_filter
from apppaccap.errors import Malformed
from apppaccap.search.compiler import compile_plan
from apppaccap.search.scan import scan
from apppaccap.search.scope import Scope
from apppaccap.search.scope import open_readonly
from apppaccap.wire import DataType

# Packet ids looked at per request: SQL alone decides an exact plan (~1 µs a row), a plan
# that tests bytes decodes every candidate in Python (~10-30 µs a row). Both keep one
# request well under a second on this machine.
SCAN_EXACT = 200_000
SCAN_TESTED = 20_000
CHUNK = 8192


@endpoint(DataType.JSON, aliases={"q": "filter"})
def capture_filter_packets(ctx, *, capture_id: int, filter: str, last_id: int = 0,
                           limit: int = 1000, flags: int = 0) -> dict:
    """Packets of a capture (active or completed) that match a display filter, a page at a time.

    Scans at most a bounded number of packets after last_id per request (200000 when SQL
    decides the filter, 20000 when packet bytes must be tested), so a page may hold fewer
    than `limit` packets — even none — while More is true: ask again with last_id = LastId
    until More is false. Every match comes exactly once across the pages, in packet order.
    Answer: CaptureId, Filter, Packets (PACKET list, as capture_read), LastId (the last
    packet id examined), More, Matched (packets in this page), ScannedTo (= LastId) and
    MaxId (the capture's last packet id when the page was read).
    - capture_id: the capture
    - filter: display filter (docs/FILTERS.md, as search_verify_filter checks); blank = all
    - last_id: examine packets with PacketId > last_id (0 = from the start)
    - limit: most packets returned, 1-10000
    - flags: 1 adds the packet bytes (Data, hex)
    """
    if flags not in (0, 1):
        raise Malformed("flags: must be 0 (metadata) or 1 (with packet bytes)")
    flt = checked_filter(filter)
    db = captures(ctx).db(capture_id)
    conn = open_readonly(db.path)
    try:
        scope = Scope(conn, capture_id, db.path)
        plan = compile_plan(flt, scope)
        ids, upto = _page(scope, plan, last_id, limit)
    finally:
        conn.close()
    packets = packets_by_id(db, capture_id, ids, flags == 1)
    return {"Version": 1, "CaptureId": capture_id, "Filter": filter, "Packets": packets,
            "LastId": upto, "More": upto < scope.max_id, "Matched": len(packets),
            "ScannedTo": upto, "MaxId": scope.max_id}


def _page(scope, plan, last_id: int, limit: int) -> tuple[list[int], int]:
    """(matching ids, last id examined) for one request."""
    start, end = max(last_id + 1, scope.min_id), scope.max_id
    if plan.empty or start > end:
        return [], max(last_id, end)
    if plan.ids is not None:  # a time range at the top: only these ids can match
        if start > plan.ids[1]:
            return [], max(last_id, end)
        start = max(start, plan.ids[0])
    stop = min(end, start - 1 + (SCAN_EXACT if plan.exact else SCAN_TESTED))
    found: list[int] = []
    lo = start
    while lo <= stop:
        hi = min(stop, lo + CHUNK - 1)
        for _n, hits in scan(scope, plan, chunk=CHUNK, first=lo, last=hi):
            found.extend(pid for pid, _ts in hits)
        if len(found) >= limit:
            return found[:limit], found[limit - 1]
        lo = hi + 1
    if plan.ids is not None and stop >= plan.ids[1]:
        stop = end  # nothing after the time range can match
    return found, stop
