-- A capture database as commit d3702cd created it (store/capturedb.py migration 1 before
-- it was edited: no interfaces.ticks_per_second, no packets.ts_raw; eth_src, eth_dst and a
-- NOT NULL summary since dropped from the step).
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE interfaces (id INTEGER PRIMARY KEY, name TEXT, linktype INTEGER NOT NULL);
CREATE TABLE blocks (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE packets (
        id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, len INTEGER NOT NULL,
        caplen INTEGER NOT NULL, iface INTEGER NOT NULL, l3 INTEGER NOT NULL,
        proto INTEGER NOT NULL, src TEXT, dst TEXT, sport INTEGER NOT NULL,
        dport INTEGER NOT NULL, tcp_flags INTEGER NOT NULL, ttl INTEGER NOT NULL,
        vlan INTEGER, eth_src TEXT, eth_dst TEXT, icmp_type INTEGER,
        direction INTEGER NOT NULL, conn_id INTEGER, process_id INTEGER, pid INTEGER NOT NULL,
        tid INTEGER NOT NULL, summary TEXT NOT NULL, notes TEXT,
        blk INTEGER NOT NULL, off INTEGER NOT NULL);
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
        PRIMARY KEY (kind, key, minute, proto)) WITHOUT ROWID;
PRAGMA user_version = 1;
