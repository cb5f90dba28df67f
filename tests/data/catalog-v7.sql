-- The catalog schema as commit b04a8ec created it (store/catalog.py migrations 1-7).
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE users (name TEXT PRIMARY KEY, salt BLOB NOT NULL, hash BLOB NOT NULL,
                        n INTEGER NOT NULL, r INTEGER NOT NULL, p INTEGER NOT NULL,
                        created INTEGER NOT NULL);
CREATE TABLE threads (
        id INTEGER PRIMARY KEY, process_id INTEGER NOT NULL REFERENCES processes(id),
        tid INTEGER NOT NULL, name TEXT, first_seen INTEGER, last_seen INTEGER,
        live INTEGER NOT NULL DEFAULT 1, packets INTEGER NOT NULL DEFAULT 0,
        UNIQUE (process_id, tid));
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
        PRIMARY KEY (kind, key));
CREATE TABLE commands (
        uid TEXT PRIMARY KEY, type TEXT NOT NULL, state INTEGER NOT NULL,
        progress INTEGER NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '',
        result TEXT NOT NULL DEFAULT '', params TEXT NOT NULL DEFAULT '{}',
        created INTEGER NOT NULL, started INTEGER, finished INTEGER);
CREATE TABLE search_results (
        search_id INTEGER NOT NULL, item_id INTEGER NOT NULL, capture_id INTEGER NOT NULL,
        packet_id INTEGER NOT NULL, ts INTEGER NOT NULL,
        PRIMARY KEY (search_id, item_id)) WITHOUT ROWID;
CREATE TABLE trigger_actions (
        trigger_id INTEGER NOT NULL, action_id INTEGER NOT NULL,
        PRIMARY KEY (trigger_id, action_id));
CREATE INDEX trigger_actions_by_action ON trigger_actions(action_id);
CREATE TABLE extracted_files (
        id INTEGER PRIMARY KEY AUTOINCREMENT, capture_id INTEGER NOT NULL,
        stream_id INTEGER NOT NULL, file_name TEXT NOT NULL, path TEXT NOT NULL,
        size INTEGER NOT NULL, mime_type TEXT NOT NULL DEFAULT '', sha256 TEXT NOT NULL,
        created INTEGER NOT NULL);
CREATE INDEX extracted_files_capture ON extracted_files(capture_id, stream_id);
CREATE TABLE "captures" (
        id INTEGER PRIMARY KEY AUTOINCREMENT, type INTEGER NOT NULL, state INTEGER NOT NULL,
        name TEXT NOT NULL DEFAULT '', filter TEXT NOT NULL DEFAULT '',
        flags INTEGER NOT NULL DEFAULT 0, adapters TEXT NOT NULL DEFAULT '',
        process_id INTEGER, pid INTEGER, thread_id INTEGER, process_name TEXT,
        process_path TEXT, start_time INTEGER NOT NULL, end_time INTEGER,
        packet_count INTEGER NOT NULL DEFAULT 0, byte_count INTEGER NOT NULL DEFAULT 0,
        dropped_count INTEGER NOT NULL DEFAULT 0, connection_count INTEGER NOT NULL DEFAULT 0,
        notes TEXT NOT NULL DEFAULT '', source_file TEXT NOT NULL DEFAULT '',
        message TEXT NOT NULL DEFAULT '');
CREATE TABLE "searches" (
        id INTEGER PRIMARY KEY AUTOINCREMENT, filter TEXT NOT NULL, capture_id INTEGER,
        start_ns INTEGER, end_ns INTEGER, state INTEGER NOT NULL,
        progress INTEGER NOT NULL DEFAULT 0, result_count INTEGER NOT NULL DEFAULT 0,
        scanned_packets INTEGER NOT NULL DEFAULT 0, total_packets INTEGER NOT NULL DEFAULT 0,
        captures TEXT NOT NULL DEFAULT '[]', message TEXT NOT NULL DEFAULT '',
        created INTEGER NOT NULL, started INTEGER, finished INTEGER);
CREATE TABLE "triggers" (
        id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, type INTEGER NOT NULL,
        path TEXT NOT NULL, filter TEXT NOT NULL DEFAULT '', flags INTEGER NOT NULL DEFAULT 0,
        fire_count INTEGER NOT NULL DEFAULT 0, last_fired INTEGER, last_capture_id INTEGER,
        last_error TEXT NOT NULL DEFAULT '', created INTEGER NOT NULL);
CREATE TABLE "actions" (
        id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, type INTEGER NOT NULL,
        path TEXT NOT NULL, params TEXT NOT NULL DEFAULT '', created INTEGER NOT NULL);
CREATE TABLE "processes" (
        id INTEGER PRIMARY KEY AUTOINCREMENT, pid INTEGER NOT NULL, ppid INTEGER, name TEXT, path TEXT,
        cmdline TEXT, user TEXT, start_time INTEGER NOT NULL, end_time INTEGER,
        packets INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,
        UNIQUE (pid, start_time));
PRAGMA user_version = 7;
