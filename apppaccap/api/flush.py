"""apc_flush — delete saved data by category (never while anything is capturing)."""

from __future__ import annotations

import os
import shutil

from apppaccap.api.captures import delete_capture_files
from apppaccap.api.registry import endpoint
from apppaccap.errors import Busy
from apppaccap.errors import Malformed
from apppaccap.store import captures as capture_table
from apppaccap.store import commands
from apppaccap.store import extracted
from apppaccap.store import ips
from apppaccap.store import processes as process_table
from apppaccap.store import searches
from apppaccap.store import stats as stats_table
from apppaccap.wire import ApcFlush
from apppaccap.wire import CaptureState
from apppaccap.wire import CommandState
from apppaccap.wire import DataType


@endpoint(DataType.INT)
def apc_flush(ctx, *, flags: int) -> int:
    """Delete saved data; BUSY while any capture is active.

    Finished COMMANDs and searches that point at what was deleted (a capture, a search,
    an exported file) go with it.
    - flags: APC_FLUSH_* bits, e.g. CAPTURES 1, STATS 4, ALL 0xffff (every bit: Constants)
    """
    if flags <= 0 or flags & ~ApcFlush.ALL:
        raise Malformed("flags: must be a non-zero combination of APC_FLUSH_* bits (≤ 0xffff)")
    if ctx.captures is not None and ctx.captures.live:
        raise Busy("flags: stop the active captures first (apc_flush needs no capture running)")
    if flags & ApcFlush.CAPTURES:
        for capture_id in capture_table.ids_not_in_state(ctx.catalog, CaptureState.ACTIVE):
            delete_capture_files(ctx, capture_id)
    removed = []
    if flags & ApcFlush.EXPORTS:
        for name in os.listdir(ctx.config.export_dir):
            path = os.path.join(ctx.config.export_dir, name)
            if os.path.isfile(path) and name.lower().endswith((".pcapng", ".pcap")):
                os.remove(path)
                removed.append(path)
    if flags & ApcFlush.EXTRACTED:
        shutil.rmtree(os.path.join(ctx.config.data_dir, "extracted"), ignore_errors=True)

    def wipe(conn):
        # in this order: processes are judged unreferenced by the capture links left
        plan = [(ApcFlush.CAPTURES,
                 lambda: capture_table.clear(conn, keep_state=CaptureState.ACTIVE)),
                (ApcFlush.IPS, lambda: ips.clear(conn)),
                (ApcFlush.STATS, lambda: stats_table.clear(conn)),
                (ApcFlush.SEARCHES, lambda: searches.clear(conn)),
                (ApcFlush.CAPTURES, lambda: searches.forget_missing_captures(conn)),
                (ApcFlush.EXTRACTED, lambda: extracted.clear(conn)),
                (ApcFlush.PROCESSES, lambda: process_table.clear(conn))]
        for bit, clear in plan:
            if flags & bit:
                clear()
        finished = (CommandState.COMPLETED, CommandState.FAILED, CommandState.CANCELLED)
        commands.forget_pointing(conn, finished, removed)
    ctx.catalog.write(wipe)
    if flags & ApcFlush.PROCESSES:
        ctx.processes.forget_all()
    return 0
