"""The catalog's system-wide statistics (`stats_minute`, `stats_key`, `stats_reset`): the
only writer.

Live captures fold each batch in (capture/manager.py); stats_reset and apc_flush clear
them. api/stats.py reads them.
"""

from __future__ import annotations

import time


def add(conn, minutes: dict, keys: dict) -> None:
    """minutes: (minute, proto) → (packets, bytes); keys: (kind, key) → (packets, bytes);
    inside the caller's write transaction."""
    conn.executemany(
        "INSERT INTO stats_minute VALUES (?,?,?,?) ON CONFLICT(minute, proto) DO UPDATE "
        "SET packets=packets+excluded.packets, bytes=bytes+excluded.bytes",
        [(m, pr, p, b) for (m, pr), (p, b) in minutes.items()])
    conn.executemany(
        "INSERT INTO stats_key VALUES (?,?,?,?) ON CONFLICT(kind, key) DO UPDATE "
        "SET packets=packets+excluded.packets, bytes=bytes+excluded.bytes",
        [(k, key, p, b) for (k, key), (p, b) in keys.items()])


def clear(conn) -> None:
    """Empty the counters and remember when (connections seen since count from then)."""
    conn.execute("DELETE FROM stats_minute")
    conn.execute("DELETE FROM stats_key")
    conn.execute("INSERT OR REPLACE INTO stats_reset(id, time) VALUES (0, ?)", (time.time_ns(),))


def reset_time(catalog) -> int:
    """When the counters were last cleared (ns), 0 when never."""
    row = catalog.one("SELECT time FROM stats_reset WHERE id = 0")
    return row[0] if row else 0
