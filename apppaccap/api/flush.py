"""apc_flush — delete saved data by category (never while anything is capturing)."""

from __future__ import annotations

import os
import shutil

from apppaccap.api.captures import delete_capture_files
from apppaccap.api.envelope import Busy
from apppaccap.api.envelope import Malformed
from apppaccap.api.registry import INT
from apppaccap.api.registry import action

CAPTURES, IPS, STATS, SEARCHES, EXPORTS, EXTRACTED, PROCESSES = 1, 2, 4, 8, 0x10, 0x20, 0x40
ALL = 0xFFFF


def _tables(conn) -> set:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


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
        for row in ctx.catalog.read("SELECT id FROM captures WHERE state != 1"):
            delete_capture_files(ctx, row["id"])
    if flags & EXPORTS:
        for name in os.listdir(ctx.config.export_dir):
            path = os.path.join(ctx.config.export_dir, name)
            if os.path.isfile(path) and name.lower().endswith((".pcapng", ".pcap")):
                os.remove(path)
    if flags & EXTRACTED:
        shutil.rmtree(os.path.join(ctx.config.data_dir, "extracted"), ignore_errors=True)

    def wipe(conn):
        tables = _tables(conn)
        plan = [(CAPTURES, "DELETE FROM capture_processes"),
                (CAPTURES, "DELETE FROM captures WHERE state != 1"),
                (IPS, "DELETE FROM ips"), (STATS, "DELETE FROM stats_minute"),
                (STATS, "DELETE FROM stats_key"), (SEARCHES, "DELETE FROM search_results"),
                (SEARCHES, "DELETE FROM searches"), (EXTRACTED, "DELETE FROM extracted_files"),
                (PROCESSES, "DELETE FROM threads"),
                (PROCESSES, "DELETE FROM processes WHERE id NOT IN "
                            "(SELECT process_id FROM capture_processes)")]
        for bit, sql in plan:
            table = sql.split("FROM ")[1].split()[0]
            if flags & bit and table in tables:
                conn.execute(sql)
    ctx.catalog.write(wipe)
    if flags & PROCESSES:
        ctx.processes.forget_all()
    return 0
