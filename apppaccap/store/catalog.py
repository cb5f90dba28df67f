"""catalog.db: captures, processes, threads, IPs, settings, users and the rest.

The schema is a list of migrations applied in order (PRAGMA user_version);
append to MIGRATIONS, never edit a released step.
"""

from __future__ import annotations

import logging
import os
import re

from apppaccap.store import recovery
from apppaccap.store.capturedb import IPS_COLUMNS
from apppaccap.store.database import Database

log = logging.getLogger(__name__)

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


MIGRATIONS = [
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
    CREATE TABLE ips (IPS_COLUMNS);
    CREATE TABLE stats_minute (
        minute INTEGER NOT NULL, proto INTEGER NOT NULL,
        packets INTEGER NOT NULL, bytes INTEGER NOT NULL, PRIMARY KEY (minute, proto));
    CREATE TABLE stats_key (
        kind TEXT NOT NULL, key TEXT NOT NULL, packets INTEGER NOT NULL, bytes INTEGER NOT NULL,
        PRIMARY KEY (kind, key))
    """.replace("IPS_COLUMNS", IPS_COLUMNS),
    # 3: asynchronous commands and exports
    """
    CREATE TABLE commands (
        uid TEXT PRIMARY KEY, type TEXT NOT NULL, state INTEGER NOT NULL,
        progress INTEGER NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '',
        result TEXT NOT NULL DEFAULT '', params TEXT NOT NULL DEFAULT '{}',
        created INTEGER NOT NULL, started INTEGER, finished INTEGER)
    """,
    # 4: searches (owned by apppaccap/search/)
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
    # 5: triggers and actions (owned by apppaccap/triggers.py) — placeholder
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
    # 6: extracted files (owned by apppaccap/extract/) — placeholder
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
]


class Catalog(Database):
    """The catalog database plus the small helpers every module needs.

    Opening checks it first (recovery.py): a damaged catalog, or an empty one while
    capture databases exist, is set aside and the captures are registered again."""

    def __init__(self, data_dir: str):
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        path = os.path.join(data_dir, "catalog.db")
        damage = recovery.examine(path, data_dir)
        if damage:
            aside = recovery.set_aside(path, damage)
        super().__init__(path, MIGRATIONS)
        if damage:
            found = recovery.reregister(self, data_dir)
            log.error("catalog %s was %s: set aside as %s; a new catalog holds the %d "
                      "capture(s) found under captures/ (users, settings, triggers and "
                      "searches of the old catalog are not recovered)",
                      path, damage, os.path.basename(aside), found)
        # A catalog restored from a backup must not hand out an id a capture database
        # file already carries.
        high = recovery.highest_capture_file(data_dir)
        if high:
            self.write(lambda c: raise_sequence(c, "captures", high))
