"""The catalog's system-wide statistics (`stats_minute`, `stats_key`): the only writer.

Live captures fold each batch in (capture/manager.py); stats_reset and apc_flush clear
them. api/stats.py reads them.
"""

from __future__ import annotations


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
    conn.execute("DELETE FROM stats_minute")
    conn.execute("DELETE FROM stats_key")
