"""Reading a search's results: SEARCHLIST pages of (capture, packet, time).

Results store (capture, packet, time) only, which keeps the catalog small and the search's
writes cheap; the page's packet columns (Summary, Info, process, addresses) are filled by
the caller from the capture's own PACKET objects (api/search.py), decoded once.
"""

from __future__ import annotations

from apppaccap.filetime import from_ns


def read_page(ctx, meta: dict, last_id: int, limit: int) -> dict:
    """SEARCHLIST: results with ItemId > last_id, at most `limit`, plus LastId and More.
    Summary and Info are "" here; the caller fills them with the packet's other columns."""
    sid = meta["SearchId"]
    rows = ctx.catalog.read(
        "SELECT item_id, capture_id, packet_id, ts FROM search_results WHERE search_id = ? "
        "AND item_id > ? ORDER BY item_id LIMIT ?", (sid, last_id, limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    return {"Version": 1, "SearchId": sid, "LastId": rows[-1]["item_id"] if rows else last_id,
            "More": more, "State": meta["State"], "ResultCount": meta["ResultCount"],
            "Results": [{"ItemId": r["item_id"], "CaptureId": r["capture_id"],
                         "PacketId": r["packet_id"], "Time": from_ns(r["ts"]),
                         "Summary": "", "Info": ""}
                        for r in rows]}
