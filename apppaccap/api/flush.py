"""apc_flush — delete saved data by category (never while anything is capturing)."""

from __future__ import annotations

import os
import shutil

from apppaccap.api.captures import delete_capture_files
from apppaccap.api.envelope import Busy
from apppaccap.api.envelope import Malformed
from apppaccap.api.registry import INT
from apppaccap.api.registry import action
from apppaccap.capture.manager import ACTIVE
from apppaccap.store import captures as capture_table
from apppaccap.store import extracted
from apppaccap.store import ips
from apppaccap.store import processes as process_table
from apppaccap.store import searches
from apppaccap.store import stats as stats_table

CAPTURES, IPS, STATS, SEARCHES, EXPORTS, EXTRACTED, PROCESSES = 1, 2, 4, 8, 0x10, 0x20, 0x40
ALL = 0xFFFF


@action(INT)
def apc_flush(ctx, *, flags: int) -> int:
    """Delete saved data; BUSY while any capture is active.

    - flags: APC_FLUSH_* bits: CAPTURES 0x1, IPS 0x2, STATS 0x4, SEARCHES 0x8, EXPORTS 0x10, EXTRACTED 0x20, PROCESSES 0x40, ALL 0xffff
    """
    if flags <= 0 or flags & ~ALL:
        raise Malformed("flags: must be a non-zero combination of APC_FLUSH_* bits (≤ 0xffff)")
    if ctx.captures is not None and ctx.captures.sessions:
        raise Busy("flags: stop the active captures first (apc_flush needs no capture running)")
    if flags & CAPTURES:
        for capture_id in capture_table.ids_not_in_state(ctx.catalog, ACTIVE):
            delete_capture_files(ctx, capture_id)
    if flags & EXPORTS:
        for name in os.listdir(ctx.config.export_dir):
            path = os.path.join(ctx.config.export_dir, name)
            if os.path.isfile(path) and name.lower().endswith((".pcapng", ".pcap")):
                os.remove(path)
    if flags & EXTRACTED:
        shutil.rmtree(os.path.join(ctx.config.data_dir, "extracted"), ignore_errors=True)

    def wipe(conn):
        # in this order: processes are judged unreferenced by the capture links left
        plan = [(CAPTURES, lambda: capture_table.clear(conn, keep_state=ACTIVE)),
                (IPS, lambda: ips.clear(conn)), (STATS, lambda: stats_table.clear(conn)),
                (SEARCHES, lambda: searches.clear(conn)),
                (EXTRACTED, lambda: extracted.clear(conn)),
                (PROCESSES, lambda: process_table.clear(conn))]
        for bit, clear in plan:
            if flags & bit:
                clear()
    ctx.catalog.write(wipe)
    if flags & PROCESSES:
        ctx.processes.forget_all()
    return 0
