"""Reading a search's results: SEARCHLIST pages, and the packets behind them for export.

Results store (capture, packet, time) only; a page's Summary and Info are decoded from
the capture's bytes when asked for, which keeps the catalog small and the search's
writes cheap.
"""

from __future__ import annotations

import json
import os

from apppaccap.dissect.decode import decode
from apppaccap.dissect.info import info
from apppaccap.filetime import from_ns
from apppaccap.search.scope import open_readonly
from apppaccap.store.blocks import BlockReader
from apppaccap.store.capturedb import capture_path


def read_page(ctx, meta: dict, last_id: int, limit: int) -> dict:
    """SEARCHLIST: results with ItemId > last_id, at most `limit`, plus LastId and More."""
    sid = meta["SearchId"]
    rows = ctx.catalog.read(
        "SELECT item_id, capture_id, packet_id, ts FROM search_results WHERE search_id = ? "
        "AND item_id > ? ORDER BY item_id LIMIT ?", (sid, last_id, limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    by_capture: dict = {}
    for r in rows:
        by_capture.setdefault(r["capture_id"], []).append(r["packet_id"])
    summaries = {}
    for cid, ids in by_capture.items():
        for pid, text in packet_summaries(ctx.config.data_dir, cid, ids).items():
            summaries[(cid, pid)] = text
    return {"Version": 1, "SearchId": sid, "LastId": rows[-1]["item_id"] if rows else last_id,
            "More": more, "State": meta["State"], "ResultCount": meta["ResultCount"],
            "Results": [{"ItemId": r["item_id"], "CaptureId": r["capture_id"],
                         "PacketId": r["packet_id"], "Time": from_ns(r["ts"]),
                         "Summary": summaries.get((r["capture_id"], r["packet_id"]), ("", ""))[0],
                         "Info": summaries.get((r["capture_id"], r["packet_id"]), ("", ""))[1]}
                        for r in rows]}


def packet_summaries(data_dir: str, capture_id: int, ids: list[int]) -> dict:
    """packet id → (summary, Info) from the bytes ({} for a capture deleted since)."""
    path = capture_path(data_dir, capture_id)
    if not ids or not os.path.exists(path):
        return {}
    conn = open_readonly(path)
    try:
        arg = json.dumps(ids)
        lts = dict(conn.execute("SELECT id, linktype FROM interfaces"))
        out = {}
        blocks = BlockReader(conn, path)
        try:
            for pid, iface, blk, off, caplen in conn.execute(
                    "SELECT id, iface, blk, off, caplen FROM packets WHERE id IN "
                    "(SELECT value FROM json_each(?))", (arg,)).fetchall():
                dec = decode(lts.get(iface, 1), blocks.packet(blk, off, caplen))
                out[pid] = (dec.summary, info(dec))
        finally:
            blocks.close()
        return out
    finally:
        conn.close()
