"""The catalog's usage accounting (`usage_minute`, `usage_hostname`): the only writer, and
its readers.

The usage recorder (usage/recorder.py) adds one minute's counters at a time, the usage
service rolls old minutes up to hours and drops what is past retention; api/usage.py
reads them. A row: (minute, process_id, remote_ip, remote_port, proto, dir) → packets,
bytes; dir is 0 in (to the program), 1 out; process_id 0 is traffic nobody owned.
A row also carries nDPI's label of the program × remote endpoint (app_proto, app,
category; NULL until one of its flows was labelled, usage/applabel.py).
`usage_hostname`: ip → the name a DNS answer gave it, with the minute it was last seen.
"""

from __future__ import annotations

MINUTE = 60_000_000_000


COLUMNS = ("minute, process_id, remote_ip, remote_port, proto, dir, packets, bytes, "
           "app_proto, app, category")
_NO_LABEL = (None, None, None)


def add(conn, rows: dict, apps: dict | None = None) -> None:
    """rows: (minute, process_id, remote_ip, remote_port, proto, dir) → [packets, bytes];
    apps: (process_id, remote_ip, remote_port, proto) → (AppProtocol, App, Category), the
    rows' labels where known. Inside the caller's write transaction (a minute written
    twice adds up; a label written keeps the newest)."""
    apps = apps or {}
    conn.executemany(
        f"INSERT INTO usage_minute ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT(minute, process_id, remote_ip, remote_port, proto, dir) DO UPDATE "
        "SET packets=packets+excluded.packets, bytes=bytes+excluded.bytes, "
        "app_proto=coalesce(excluded.app_proto, app_proto), "
        "app=coalesce(excluded.app, app), category=coalesce(excluded.category, category)",
        [(*k, p, b, *apps.get(k[1:5], _NO_LABEL)) for k, (p, b) in rows.items()])


def add_names(conn, names: dict, minute: int) -> None:
    """ip → hostname learnt from DNS answers up to `minute` (the newest answer wins)."""
    conn.executemany(
        "INSERT INTO usage_hostname VALUES (?,?,?) ON CONFLICT(ip) DO UPDATE "
        "SET name=excluded.name, minute=excluded.minute",
        [(ip, name, minute) for ip, name in names.items()])


def roll_up(conn, hourly_before: int, drop_before: int) -> None:
    """Retention, inside the caller's write transaction: rows before minute `drop_before`
    go; rows before `hourly_before` (an hour's first minute) become one row per hour, kept
    at the hour's first minute (a minute series of such a range shows them there)."""
    conn.execute("DELETE FROM usage_minute WHERE minute < ?", (drop_before,))
    conn.execute("DELETE FROM usage_hostname WHERE minute < ?", (drop_before,))
    # the hour's label: its latest labelled minute's (SQLite takes bare columns from the
    # row a lone max() picked)
    conn.execute(
        f"INSERT INTO usage_minute ({COLUMNS}) SELECT h, process_id, remote_ip, remote_port, "
        "proto, dir, p, b, app_proto, app, category FROM (SELECT (minute / 60) * 60 AS h, "
        "process_id, remote_ip, remote_port, proto, dir, sum(packets) AS p, sum(bytes) AS b, "
        "max(CASE WHEN app_proto IS NULL THEN -1 ELSE minute END), app_proto, app, category "
        "FROM usage_minute WHERE minute < ? AND minute % 60 != 0 GROUP BY 1, 2, 3, 4, 5, 6) "
        "WHERE 1 ON CONFLICT(minute, process_id, remote_ip, remote_port, proto, dir) DO UPDATE "
        "SET packets=packets+excluded.packets, bytes=bytes+excluded.bytes, "
        "app_proto=coalesce(excluded.app_proto, app_proto), "
        "app=coalesce(excluded.app, app), category=coalesce(excluded.category, category)",
        (hourly_before,))
    conn.execute("DELETE FROM usage_minute WHERE minute < ? AND minute % 60 != 0",
                 (hourly_before,))


def per_minute(catalog, first_minute: int, last_minute: int, minutes_per_bucket: int):
    """(bucket_minute, process_id, dir, packets, bytes) over minutes first..last."""
    return catalog.tuples(
        "SELECT (minute / ?) * ?, process_id, dir, sum(packets), sum(bytes) FROM usage_minute "
        "WHERE minute BETWEEN ? AND ? GROUP BY 1, 2, 3 ORDER BY 1",
        (minutes_per_bucket, minutes_per_bucket, first_minute, last_minute)).fetchall()


def last_minute(catalog) -> int:
    """The latest minute with a row, -1 when there is none."""
    row = catalog.one("SELECT max(minute) FROM usage_minute")
    return -1 if row is None or row[0] is None else row[0]


def processes(catalog, ids) -> dict:
    """process_id → (pid, name, path) from the catalog's processes table."""
    ids = [i for i in ids if i]
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    return {r[0]: (r[1], r[2], r[3]) for r in catalog.tuples(
        f"SELECT id, pid, name, path FROM processes WHERE id IN ({marks})", ids).fetchall()}


def per_remote(catalog, first_minute: int, last_minute: int, process_id: int = 0):
    """(remote_ip, remote_port, proto, process_id, dir, first minute, last minute, packets,
    bytes) over minutes first..last, for one program or (0) all."""
    only = " AND process_id = ?" if process_id else ""
    args = (first_minute, last_minute) + ((process_id,) if process_id else ())
    return catalog.tuples(
        "SELECT remote_ip, remote_port, proto, process_id, dir, min(minute), max(minute), "
        "sum(packets), sum(bytes) FROM usage_minute WHERE minute BETWEEN ? AND ?" + only +
        " GROUP BY 1, 2, 3, 4, 5", args).fetchall()


def labels(catalog, first_minute: int, last_minute: int) -> dict:
    """(process_id, remote_ip, remote_port, proto) → (AppProtocol, App, Category) over
    minutes first..last: the label of each endpoint's latest labelled minute."""
    return {r[:4]: r[5:] for r in catalog.tuples(
        "SELECT process_id, remote_ip, remote_port, proto, max(minute), app_proto, app, "
        "category FROM usage_minute WHERE minute BETWEEN ? AND ? AND app_proto IS NOT NULL "
        "GROUP BY 1, 2, 3, 4", (first_minute, last_minute)).fetchall()}


def hostnames(catalog, ips=None, limit: int = 20000) -> dict:
    """ip → hostname: of the given ips, or the `limit` most recently seen (oldest first)."""
    if ips is None:
        rows = catalog.tuples("SELECT ip, name FROM (SELECT ip, name, minute FROM "
                              "usage_hostname ORDER BY minute DESC LIMIT ?) ORDER BY minute",
                              (limit,)).fetchall()
        return dict(rows)
    out = {}
    ips = list(ips)
    for i in range(0, len(ips), 500):
        chunk = ips[i:i + 500]
        marks = ",".join("?" * len(chunk))
        out.update(catalog.tuples(f"SELECT ip, name FROM usage_hostname WHERE ip IN ({marks})",
                                  chunk).fetchall())
    return out
