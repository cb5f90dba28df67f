"""apc_flush — delete saved data by category (never while anything is capturing)."""

from __future__ import annotations

import os
import shutil

from apppaccap.api.captures import delete_capture_files
from apppaccap.api.registry import endpoint
from apppaccap.errors import Busy
from apppaccap.errors import Malformed
from apppaccap.wire import ApcFlush
from apppaccap.wire import CaptureState
from apppaccap.wire import DataType


def _tables(conn) -> set:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


@endpoint(DataType.INT)
def apc_flush(ctx, *, flags: int) -> int:
    """Delete saved data; BUSY while any capture is active.

    - flags: APC_FLUSH_* bits: CAPTURES 0x1, IPS 0x2, STATS 0x4, SEARCHES 0x8, EXPORTS 0x10, EXTRACTED 0x20, PROCESSES 0x40, ALL 0xffff
    """
    if flags <= 0 or flags & ~ApcFlush.ALL:
        raise Malformed("flags: must be a non-zero combination of APC_FLUSH_* bits (≤ 0xffff)")
    if ctx.captures is not None and ctx.captures.live:
        raise Busy("flags: stop the active captures first (apc_flush needs no capture running)")
    if flags & ApcFlush.CAPTURES:
        for row in ctx.catalog.read("SELECT id FROM captures WHERE state != ?",
                                    (CaptureState.ACTIVE,)):
            delete_capture_files(ctx, row["id"])
    if flags & ApcFlush.EXPORTS:
        for name in os.listdir(ctx.config.export_dir):
            path = os.path.join(ctx.config.export_dir, name)
            if os.path.isfile(path) and name.lower().endswith((".pcapng", ".pcap")):
                os.remove(path)
    if flags & ApcFlush.EXTRACTED:
        shutil.rmtree(os.path.join(ctx.config.data_dir, "extracted"), ignore_errors=True)

    def wipe(conn):
        tables = _tables(conn)
        plan = [(ApcFlush.CAPTURES, "DELETE FROM capture_processes"),
                (ApcFlush.CAPTURES,
                 f"DELETE FROM captures WHERE state != {CaptureState.ACTIVE:d}"),
                (ApcFlush.IPS, "DELETE FROM ips"),
                (ApcFlush.STATS, "DELETE FROM stats_minute"),
                (ApcFlush.STATS, "DELETE FROM stats_key"),
                (ApcFlush.SEARCHES, "DELETE FROM search_results"),
                (ApcFlush.SEARCHES, "DELETE FROM searches"),
                (ApcFlush.EXTRACTED, "DELETE FROM extracted_files"),
                (ApcFlush.PROCESSES, "DELETE FROM threads"),
                (ApcFlush.PROCESSES, "DELETE FROM processes WHERE id NOT IN "
                                     "(SELECT process_id FROM capture_processes)")]
        for bit, sql in plan:
            table = sql.split("FROM ")[1].split()[0]
            if flags & bit and table in tables:
                conn.execute(sql)
    ctx.catalog.write(wipe)
    if flags & ApcFlush.PROCESSES:
        ctx.processes.forget_all()
    return 0
