"""catalog.db: captures, processes, threads, IPs, settings, users and the rest.

The schema is a list of migrations applied in order (PRAGMA user_version);
append to MIGRATIONS, never edit a released step.
"""

from __future__ import annotations

import os

from apppaccap.store.capturedb import IPS_COLUMNS
from apppaccap.store.database import Database

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
]


class Catalog(Database):
    """The catalog database plus the small helpers every module needs."""

    def __init__(self, data_dir: str):
        os.makedirs(data_dir, exist_ok=True)
        super().__init__(os.path.join(data_dir, "catalog.db"), MIGRATIONS)
