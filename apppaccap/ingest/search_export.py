"""A search's results (packets of one or several captures) → one pcapng file.

Like export.write_capture, with what a merge needs: every capture's interfaces become
interfaces of the output (described "capture N: name"), and the packets of the captures
are merged by time (each capture's results in packet order), as mergecap would. Process
comments, pid/tid and direction options are written as capture_export writes them.
"""

from __future__ import annotations

import heapq
import json
import os

from apppaccap.ingest.export import atomic_file
from apppaccap.ingest.export import epb_comment
from apppaccap.pcap.pcapng_writer import EPB_FLAGS
from apppaccap.pcap.pcapng_writer import PcapngWriter
from apppaccap.search.scope import open_readonly
from apppaccap.store.blocks import BlockReader
from apppaccap.store.capturedb import capture_path

PAGE = 20000
_COLS = ("id", "iface", "ts", "len", "caplen", "blk", "off", "process_id", "pid", "tid",
         "direction", "notes", "ts_raw")


def write_results(ctx, search_id: int, path, progress=None) -> int:
    """Write every result of the search to `path` (a WriteTarget or a plain path, through
    export.atomic_file); returns packets written."""
    caps = [(r[0], r[1]) for r in ctx.catalog.read(
        "SELECT capture_id, count(*) FROM search_results WHERE search_id = ? "
        "GROUP BY capture_id ORDER BY capture_id", (search_id,))
        # a capture deleted since the search has nothing left to export
        if os.path.exists(capture_path(ctx.config.data_dir, r[0]))]
    total = max(1, sum(n for _, n in caps))
    conns = {cid: open_readonly(capture_path(ctx.config.data_dir, cid)) for cid, _ in caps}
    written = 0
    try:
        with atomic_file(path) as fh:
            w = PcapngWriter(fh, comment=f"AppPacCap search {search_id}")
            streams = []
            for cid, _ in caps:
                ifmap = {}
                for iid, name, linktype, tps in conns[cid].execute(
                        "SELECT id, name, linktype, ticks_per_second FROM interfaces ORDER BY id"):
                    ifmap[iid] = w.add_interface(linktype, name or None,
                                                 tsresol_ns=tps > 1_000_000,
                                                 description=f"capture {cid}: {name or iid}")
                streams.append(_packets(ctx, search_id, cid, conns[cid], ifmap))
            batch = []
            for _ts, row in heapq.merge(*streams, key=lambda item: item[0]):
                batch.append(row)
                if len(batch) >= 4096:
                    written += w.write_packets(batch)
                    batch = []
                    if progress is not None:
                        progress(100.0 * written / total)
            written += w.write_packets(batch)
            w.close()
    finally:
        for c in conns.values():
            c.close()
    return written


def _packets(ctx, search_id, cid, conn, ifmap):
    """(ts, EPB row) of one capture's results, in result order."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(packets)")}
    cols = ", ".join(c if c in have else "NULL" for c in _COLS)
    procs = {r[0]: (r[1], r[2] or r[3], r[4]) for r in conn.execute(
        "SELECT process_id, pid, path, name, cmdline FROM processes")}
    blocks = BlockReader(conn)
    try:
        comments: dict = {}
        last_item = 0
        while True:
            page = ctx.catalog.read(
                "SELECT item_id, packet_id FROM search_results WHERE search_id = ? "
                "AND capture_id = ? AND item_id > ? ORDER BY item_id LIMIT ?",
                (search_id, cid, last_item, PAGE))
            if not page:
                return
            last_item = page[-1][0]
            ids = json.dumps([r[1] for r in page])
            rows = conn.execute(f"SELECT {cols} FROM packets WHERE id IN "
                                "(SELECT value FROM json_each(?)) ORDER BY id", (ids,))
            for (_pid, iface, ts, length, caplen, blk, off, process_id, pid, tid, direction,
                 notes, ts_raw) in rows:
                data = blocks.get(blk)[off:off + caplen]
                comment = epb_comment(procs, process_id, tid, notes, comments)
                stamp = int(ts_raw) if ts_raw else ts
                yield stamp, (ifmap.get(iface, 0), stamp, data, length, comment,
                              EPB_FLAGS.get(direction), pid or None, tid or None)
    finally:
        blocks.close()
