"""Every schema change of the catalog and of the capture databases, in order.

A database's PRAGMA user_version counts the steps it has run (store/database.py: migrate).
A released step is never edited: a database that ran it keeps what it did, so a change is
a new step appended at the end. Some early steps were edited before this rule held
(catalog 4-6 began as placeholders, capture 1 gained and lost columns); the steps that
reconcile those databases (catalog 8, capture 4) are idempotent: they add only what is
missing.

Steps are SQL scripts or functions of the connection; each runs in its own transaction.
The functions use sqlite-utils (store/database.py: tables) for introspection and columns.
"""

from __future__ import annotations

import os
import re

from apppaccap.store import recovery
from apppaccap.store.database import run_script
from apppaccap.store.database import tables

# Ids the API hands out and lets callers delete: a deleted id must never come back (a
# capture's database file is named by its id, an old search names its capture...).
# table → (table, column) pairs that may still name an id of it, for the high-water mark.
NEVER_REUSED = {
    "captures": [("searches", "capture_id"), ("search_results", "capture_id"),
                 ("triggers", "last_capture_id"), ("extracted_files", "capture_id"),
                 ("capture_processes", "capture_id")],
    "searches": [("search_results", "search_id")],
    "triggers": [("trigger_actions", "trigger_id")],
    "actions": [("trigger_actions", "action_id")],
    "processes": [("threads", "process_id"), ("captures", "process_id"),
                  ("capture_processes", "process_id")],
}


def _never_reuse_ids(conn) -> None:
    """Migration 7: AUTOINCREMENT on every table whose ids the API deletes, keeping the
    rows and continuing after the highest id ever seen (rows, references, and for
    captures the database files under captures/)."""
    for table, refs in NEVER_REUSED.items():
        row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                           (table,)).fetchone()
        if row is None or "AUTOINCREMENT" in row[0].upper():
            continue
        _rebuild_autoincrement(conn, table, row[0])
        high = _highest_id(conn, table, refs)
        if table == "captures":
            high = max(high, recovery.highest_capture_file(_data_dir(conn)))
        raise_sequence(conn, table, high)


def _rebuild_autoincrement(conn, table: str, sql: str) -> None:
    """SQLite's way to change a column: new table, copy, drop, rename, indexes again."""
    new_sql, n = re.subn(r"\bid\s+INTEGER\s+PRIMARY\s+KEY\b(?!\s+AUTOINCREMENT)",
                         "id INTEGER PRIMARY KEY AUTOINCREMENT", sql, count=1, flags=re.I)
    if n != 1:
        raise RuntimeError(f"catalog table {table}: no 'id INTEGER PRIMARY KEY' column")
    new_sql = re.sub(r"^CREATE TABLE\s+\S+", f"CREATE TABLE {table}_autoinc", new_sql,
                     count=1, flags=re.I)
    indexes = [r[0] for r in conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
        "AND sql IS NOT NULL", (table,))]
    conn.execute(new_sql)
    conn.execute(f"INSERT INTO {table}_autoinc SELECT * FROM {table}")
    conn.execute(f"DROP TABLE {table}")
    conn.execute(f"ALTER TABLE {table}_autoinc RENAME TO {table}")
    for index in indexes:
        conn.execute(index)


def _highest_id(conn, table: str, refs) -> int:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    parts = [f"(SELECT max(id) FROM {table})"]
    parts += [f"(SELECT max({col}) FROM {ref})" for ref, col in refs if ref in tables]
    return max(conn.execute("SELECT " + ", ".join(f"coalesce({p}, 0)" for p in parts))
               .fetchone())


def raise_sequence(conn, table: str, high: int) -> None:
    """The next id of an AUTOINCREMENT `table` will be above `high`."""
    cur = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    if cur is None:
        if high > 0:
            conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)", (table, high))
    elif cur[0] < high:
        conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (high, table))


def _data_dir(conn) -> str:
    path = next(r[2] for r in conn.execute("PRAGMA database_list") if r[1] == "main")
    return os.path.dirname(path) if path else ""


def _reconcile_catalog(conn) -> None:
    """Catalog migration 8: a catalog whose steps 4-6 ran while they were placeholders
    (tables _slot4.._slot6) lacks searches, triggers/actions or extracted_files; the
    service used to create some of them at run time, after step 7, so without
    AUTOINCREMENT. Drop the placeholders, create what is missing as steps 4-6 define it
    (CREATE ... IF NOT EXISTS), then give step 7's tables their AUTOINCREMENT where they
    lack it (a no-op for a catalog made by steps 1-7 as they are)."""
    db = tables(conn)
    for placeholder in ("_slot4", "_slot5", "_slot6"):
        db[placeholder].drop(ignore=True)
    for step in CATALOG[3:6]:
        run_script(conn, step)
    _never_reuse_ids(conn)


def _reconcile_capture(conn) -> None:
    """Capture migration 4: step 1 gained interfaces.ticks_per_second and packets.ts_raw
    after databases had run it; add them where missing. (Columns step 1 once had and lost -
    packets.eth_src, eth_dst, summary - stay: readers use a stored summary when present.)"""
    db = tables(conn)
    if "ticks_per_second" not in db["interfaces"].columns_dict:
        db["interfaces"].add_column("ticks_per_second", int, not_null_default=1_000_000_000)
    if "ts_raw" not in db["packets"].columns_dict:
        db["packets"].add_column("ts_raw", str)


def _alert_label(conn) -> None:
    """Catalog migration 12: alerts.label (idempotent, as the last step must be)."""
    db = tables(conn)
    if "label" not in db["alerts"].columns_dict:
        db["alerts"].add_column("label", str, not_null_default="")


def _usage_labels(conn) -> None:
    """Catalog migration 13: usage_minute's nDPI labels of the program × remote endpoint
    (usage/applabel.py); NULL on rows counted before (idempotent, as the last step must be)."""
    db = tables(conn)
    have = db["usage_minute"].columns_dict
    for column in ("app_proto", "app", "category"):
        if column not in have:
            db["usage_minute"].add_column(column, str)


CATALOG = [
    # 1: foundation
    """
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE users (name TEXT PRIMARY KEY, salt BLOB NOT NULL, hash BLOB NOT NULL,
                        n INTEGER NOT NULL, r INTEGER NOT NULL, p INTEGER NOT NULL,
                        created INTEGER NOT NULL);
    CREATE TABLE processes (
        id INTEGER PRIMARY KEY, pid INTEGER NOT NULL, ppid INTEGER, name TEXT, path TEXT,
        cmdline TEXT, user TEXT, start_time INTEGER NOT NULL, end_time INTEGER,
        packets INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,
        UNIQUE (pid, start_time));
    CREATE TABLE threads (
        id INTEGER PRIMARY KEY, process_id INTEGER NOT NULL REFERENCES processes(id),
        tid INTEGER NOT NULL, name TEXT, first_seen INTEGER, last_seen INTEGER,
        live INTEGER NOT NULL DEFAULT 1, packets INTEGER NOT NULL DEFAULT 0,
        UNIQUE (process_id, tid))
    """,
    # 2: captures and what they aggregate globally
    """
    CREATE TABLE captures (
        id INTEGER PRIMARY KEY, type INTEGER NOT NULL, state INTEGER NOT NULL,
        name TEXT NOT NULL DEFAULT '', filter TEXT NOT NULL DEFAULT '',
        flags INTEGER NOT NULL DEFAULT 0, adapters TEXT NOT NULL DEFAULT '',
        process_id INTEGER, pid INTEGER, thread_id INTEGER, process_name TEXT,
        process_path TEXT, start_time INTEGER NOT NULL, end_time INTEGER,
        packet_count INTEGER NOT NULL DEFAULT 0, byte_count INTEGER NOT NULL DEFAULT 0,
        dropped_count INTEGER NOT NULL DEFAULT 0, connection_count INTEGER NOT NULL DEFAULT 0,
        notes TEXT NOT NULL DEFAULT '', source_file TEXT NOT NULL DEFAULT '',
        message TEXT NOT NULL DEFAULT '');
    CREATE TABLE capture_processes (capture_id INTEGER NOT NULL, process_id INTEGER NOT NULL,
        PRIMARY KEY (capture_id, process_id));
    CREATE TABLE ips (
        id INTEGER PRIMARY KEY, ip TEXT NOT NULL UNIQUE, hostname TEXT NOT NULL DEFAULT '',
        country TEXT NOT NULL DEFAULT '', city TEXT NOT NULL DEFAULT '',
        lat REAL NOT NULL DEFAULT 0, lng REAL NOT NULL DEFAULT 0, data TEXT NOT NULL DEFAULT '',
        packets INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,
        first_time INTEGER, last_time INTEGER);
    CREATE TABLE stats_minute (
        minute INTEGER NOT NULL, proto INTEGER NOT NULL,
        packets INTEGER NOT NULL, bytes INTEGER NOT NULL, PRIMARY KEY (minute, proto));
    CREATE TABLE stats_key (
        kind TEXT NOT NULL, key TEXT NOT NULL, packets INTEGER NOT NULL, bytes INTEGER NOT NULL,
        PRIMARY KEY (kind, key))
    """,
    # 3: asynchronous commands and exports
    """
    CREATE TABLE commands (
        uid TEXT PRIMARY KEY, type TEXT NOT NULL, state INTEGER NOT NULL,
        progress INTEGER NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '',
        result TEXT NOT NULL DEFAULT '', params TEXT NOT NULL DEFAULT '{}',
        created INTEGER NOT NULL, started INTEGER, finished INTEGER)
    """,
    # 4: searches (rows: store/searches.py)
    """
    CREATE TABLE IF NOT EXISTS searches (
        id INTEGER PRIMARY KEY, filter TEXT NOT NULL, capture_id INTEGER,
        start_ns INTEGER, end_ns INTEGER, state INTEGER NOT NULL,
        progress INTEGER NOT NULL DEFAULT 0, result_count INTEGER NOT NULL DEFAULT 0,
        scanned_packets INTEGER NOT NULL DEFAULT 0, total_packets INTEGER NOT NULL DEFAULT 0,
        captures TEXT NOT NULL DEFAULT '[]', message TEXT NOT NULL DEFAULT '',
        created INTEGER NOT NULL, started INTEGER, finished INTEGER);
    CREATE TABLE IF NOT EXISTS search_results (
        search_id INTEGER NOT NULL, item_id INTEGER NOT NULL, capture_id INTEGER NOT NULL,
        packet_id INTEGER NOT NULL, ts INTEGER NOT NULL,
        PRIMARY KEY (search_id, item_id)) WITHOUT ROWID
    """,
    # 5: triggers and actions (rows: store/triggers.py)
    """
    CREATE TABLE IF NOT EXISTS triggers (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL, type INTEGER NOT NULL,
        path TEXT NOT NULL, filter TEXT NOT NULL DEFAULT '', flags INTEGER NOT NULL DEFAULT 0,
        fire_count INTEGER NOT NULL DEFAULT 0, last_fired INTEGER, last_capture_id INTEGER,
        last_error TEXT NOT NULL DEFAULT '', created INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS actions (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL, type INTEGER NOT NULL,
        path TEXT NOT NULL, params TEXT NOT NULL DEFAULT '', created INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS trigger_actions (
        trigger_id INTEGER NOT NULL, action_id INTEGER NOT NULL,
        PRIMARY KEY (trigger_id, action_id));
    CREATE INDEX IF NOT EXISTS trigger_actions_by_action ON trigger_actions(action_id)
    """,
    # 6: extracted files (rows: store/extracted.py)
    """
    CREATE TABLE IF NOT EXISTS extracted_files (
        id INTEGER PRIMARY KEY AUTOINCREMENT, capture_id INTEGER NOT NULL,
        stream_id INTEGER NOT NULL, file_name TEXT NOT NULL, path TEXT NOT NULL,
        size INTEGER NOT NULL, mime_type TEXT NOT NULL DEFAULT '', sha256 TEXT NOT NULL,
        created INTEGER NOT NULL);
    CREATE INDEX IF NOT EXISTS extracted_files_capture ON extracted_files(capture_id, stream_id)
    """,
    # 7: ids are never reused (AUTOINCREMENT), existing rows and high-water marks kept
    _never_reuse_ids,
    # 8: what placeholder-era catalogs lack (see _reconcile_catalog)
    _reconcile_catalog,
    # 9: usage accounting, per minute (rows: store/usage.py)
    """
    CREATE TABLE IF NOT EXISTS usage_minute (
        minute INTEGER NOT NULL, process_id INTEGER NOT NULL, remote_ip TEXT NOT NULL,
        remote_port INTEGER NOT NULL, proto INTEGER NOT NULL, dir INTEGER NOT NULL,
        packets INTEGER NOT NULL, bytes INTEGER NOT NULL,
        PRIMARY KEY (minute, process_id, remote_ip, remote_port, proto, dir));
    CREATE INDEX IF NOT EXISTS usage_minute_process ON usage_minute(process_id, minute)
    """,
    # 10: usage accounting, hostnames from the DNS answers seen (rows: store/usage.py)
    """
    CREATE TABLE IF NOT EXISTS usage_hostname (
        ip TEXT PRIMARY KEY, name TEXT NOT NULL, minute INTEGER NOT NULL);
    CREATE INDEX IF NOT EXISTS usage_hostname_minute ON usage_hostname(minute)
    """,
    # 11: when the system-wide statistics were last reset (rows: store/stats.py); alerts,
    # their events and what they have seen (rows: store/alerts.py)
    """
    CREATE TABLE IF NOT EXISTS stats_reset (
        id INTEGER PRIMARY KEY CHECK (id = 0), time INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, type INTEGER NOT NULL,
        group_by TEXT NOT NULL DEFAULT '', metric TEXT NOT NULL DEFAULT '',
        direction TEXT NOT NULL DEFAULT 'both', threshold INTEGER NOT NULL DEFAULT 0,
        win TEXT NOT NULL DEFAULT '', win_seconds INTEGER NOT NULL DEFAULT 0,
        process_path TEXT NOT NULL DEFAULT '',
        action_id INTEGER NOT NULL DEFAULT 0, every INTEGER NOT NULL DEFAULT 5,
        enabled INTEGER NOT NULL DEFAULT 1, fire_count INTEGER NOT NULL DEFAULT 0,
        last_fired INTEGER, created INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS alert_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, alert_id INTEGER NOT NULL, time INTEGER NOT NULL,
        pid INTEGER NOT NULL DEFAULT 0, process_name TEXT NOT NULL DEFAULT '',
        process_path TEXT NOT NULL DEFAULT '', remote_ip TEXT NOT NULL DEFAULT '',
        remote_port INTEGER NOT NULL DEFAULT 0, value INTEGER NOT NULL DEFAULT 0,
        group_key TEXT NOT NULL DEFAULT '', message TEXT NOT NULL DEFAULT '');
    CREATE INDEX IF NOT EXISTS alert_events_by_alert ON alert_events(alert_id, id);
    CREATE TABLE IF NOT EXISTS alert_known (
        kind TEXT NOT NULL, key TEXT NOT NULL, first_time INTEGER NOT NULL,
        PRIMARY KEY (kind, key)) WITHOUT ROWID
    """,
    # 12: LABEL alerts' application label (rows: store/alerts.py)
    _alert_label,
    # 13: usage accounting's application labels (rows: store/usage.py)
    _usage_labels,
]

# captures/<id>.db (store/capturedb.py)
CAPTURE = [
    # 1: packets, blocks, connections and their aggregates
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
    CREATE TABLE interfaces (id INTEGER PRIMARY KEY, name TEXT, linktype INTEGER NOT NULL,
        ticks_per_second INTEGER NOT NULL DEFAULT 1000000000);
    CREATE TABLE blocks (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
    CREATE TABLE packets (
        id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, len INTEGER NOT NULL,
        caplen INTEGER NOT NULL, iface INTEGER NOT NULL, l3 INTEGER NOT NULL,
        proto INTEGER NOT NULL, src TEXT, dst TEXT, sport INTEGER NOT NULL,
        dport INTEGER NOT NULL, tcp_flags INTEGER NOT NULL, ttl INTEGER NOT NULL,
        vlan INTEGER, icmp_type INTEGER,
        direction INTEGER NOT NULL, conn_id INTEGER, process_id INTEGER, pid INTEGER NOT NULL,
        tid INTEGER NOT NULL, notes TEXT,
        blk INTEGER NOT NULL, off INTEGER NOT NULL, ts_raw TEXT);
    CREATE INDEX packets_conn ON packets(conn_id);
    CREATE TABLE connections (
        id INTEGER PRIMARY KEY, proto INTEGER NOT NULL, local_ip TEXT, local_port INTEGER,
        remote_ip TEXT, remote_port INTEGER, process_id INTEGER, pid INTEGER NOT NULL DEFAULT 0,
        tid INTEGER NOT NULL DEFAULT 0, first_time INTEGER, last_time INTEGER,
        packets_out INTEGER NOT NULL DEFAULT 0, bytes_out INTEGER NOT NULL DEFAULT 0,
        packets_in INTEGER NOT NULL DEFAULT 0, bytes_in INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT '', hostname TEXT NOT NULL DEFAULT '',
        peer_process_id INTEGER, peer_pid INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX connections_local ON connections(local_ip, local_port);
    CREATE INDEX connections_remote ON connections(remote_ip, remote_port);
    CREATE TABLE processes (
        process_id INTEGER PRIMARY KEY, pid INTEGER, ppid INTEGER, name TEXT, path TEXT,
        cmdline TEXT, user TEXT, start_time INTEGER, end_time INTEGER,
        packets INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE threads (
        pid INTEGER NOT NULL, tid INTEGER NOT NULL, packets INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (pid, tid));
    CREATE TABLE ips (
        id INTEGER PRIMARY KEY, ip TEXT NOT NULL UNIQUE, hostname TEXT NOT NULL DEFAULT '',
        country TEXT NOT NULL DEFAULT '', city TEXT NOT NULL DEFAULT '',
        lat REAL NOT NULL DEFAULT 0, lng REAL NOT NULL DEFAULT 0, data TEXT NOT NULL DEFAULT '',
        packets INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,
        first_time INTEGER, last_time INTEGER);
    CREATE TABLE agg (
        minute INTEGER NOT NULL, kind INTEGER NOT NULL, key TEXT NOT NULL, proto INTEGER NOT NULL,
        packets INTEGER NOT NULL, bytes INTEGER NOT NULL,
        PRIMARY KEY (kind, key, minute, proto)) WITHOUT ROWID
    """,
    # 2: files found by the extractor (apppaccap/extract/service.py); id = StreamId,
    # spool = the body's file name under <data-dir>/extract-spool/<capture_id>/
    """
    CREATE TABLE extract_streams (
        id INTEGER PRIMARY KEY AUTOINCREMENT, conn_id INTEGER NOT NULL, protocol TEXT NOT NULL,
        direction TEXT NOT NULL, file_name TEXT NOT NULL, mime_type TEXT, sniffed_mime TEXT,
        size INTEGER NOT NULL, complete INTEGER NOT NULL, truncated INTEGER NOT NULL,
        missing_bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, ts INTEGER NOT NULL, uri TEXT,
        host TEXT, method TEXT, status INTEGER, declared_size INTEGER, content_encoding TEXT,
        depth INTEGER NOT NULL DEFAULT 0, spool TEXT NOT NULL)
    """,
    # 3: a block's bytes may live in the capture's side file (store/blocks.py)
    """
    ALTER TABLE blocks ADD COLUMN file_off INTEGER;
    ALTER TABLE blocks ADD COLUMN size INTEGER;
    """,
    # 4: columns step 1 gained after databases had run it (see _reconcile_capture)
    _reconcile_capture,
    # 5: per-second aggregates (series of short ranges in second buckets), per-process
    # packets/bytes by second and direction, and the exact first/last packet time
    # (rows: store/capturedb.py write_batch; empty in captures written before)
    """
    CREATE TABLE agg_sec (
        sec INTEGER NOT NULL, kind INTEGER NOT NULL, key TEXT NOT NULL, proto INTEGER NOT NULL,
        packets INTEGER NOT NULL, bytes INTEGER NOT NULL,
        PRIMARY KEY (kind, key, sec, proto)) WITHOUT ROWID;
    CREATE TABLE proc_sec (
        process_id INTEGER NOT NULL, sec INTEGER NOT NULL, direction INTEGER NOT NULL,
        packets INTEGER NOT NULL, bytes INTEGER NOT NULL,
        PRIMARY KEY (process_id, sec, direction)) WITHOUT ROWID;
    CREATE TABLE span (
        id INTEGER PRIMARY KEY CHECK (id = 0), first INTEGER NOT NULL, last INTEGER NOT NULL)
    """,
    # 6: application labels from nDPI (capture/applabels.py): AppProtocol, App, Category;
    # NULL where the connection was not labelled (no nDPI, or a capture written before);
    # names learned for IPs: domains (DNS answers, TLS SNI, HTTP Host), HTTP user agents
    """
    ALTER TABLE connections ADD COLUMN app_proto TEXT;
    ALTER TABLE connections ADD COLUMN app TEXT;
    ALTER TABLE connections ADD COLUMN category TEXT;
    CREATE TABLE ip_names (ip TEXT NOT NULL, kind INTEGER NOT NULL, name TEXT NOT NULL,
        PRIMARY KEY (ip, kind, name)) WITHOUT ROWID;
    """,
]
