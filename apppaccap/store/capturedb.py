"""One SQLite file per capture: slim packet rows, packet bytes in blocks, connections,
IPs, processes and per-minute aggregates.

What can be derived from the bytes (Ethernet addresses, the Summary line) is not
stored: it is decoded again when a packet is read, which keeps ingest fast.

Packet bytes are concatenated per write batch into one `blocks` row; a packet keeps
(blk, off) into it. That keeps the per-packet row small and the write path to a
couple of executemany calls per batch (docs/ARCHITECTURE.md, Decisions: the storage write path).
"""

from __future__ import annotations

import os
import struct

from apppaccap.store.blocks import BlockReader
from apppaccap.store.blocks import add_block
from apppaccap.store.database import Database

# The IP table's columns, shared with the catalog's global list (catalog.py).
IPS_COLUMNS = """
        id INTEGER PRIMARY KEY, ip TEXT NOT NULL UNIQUE, hostname TEXT NOT NULL DEFAULT '',
        country TEXT NOT NULL DEFAULT '', city TEXT NOT NULL DEFAULT '',
        lat REAL NOT NULL DEFAULT 0, lng REAL NOT NULL DEFAULT 0, data TEXT NOT NULL DEFAULT '',
        packets INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,
        first_time INTEGER, last_time INTEGER"""

MIGRATIONS = [
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
    CREATE TABLE ips (IPS_COLUMNS);
    CREATE TABLE agg (
        minute INTEGER NOT NULL, kind INTEGER NOT NULL, key TEXT NOT NULL, proto INTEGER NOT NULL,
        packets INTEGER NOT NULL, bytes INTEGER NOT NULL,
        PRIMARY KEY (kind, key, minute, proto)) WITHOUT ROWID
    """.replace("IPS_COLUMNS", IPS_COLUMNS),
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
]


def _insert_packed(conn, plain: bytes, blk: int) -> None:
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS packed ({PLAIN_FIELDS})")
    conn.executemany(f"INSERT INTO temp.packed VALUES ({','.join('?' * 14)})",
                     struct.iter_unpack(PLAIN_FORMAT, plain))
    # LEFT JOIN: a packet is never dropped, even if its connection row were missing
    conn.execute(
        "INSERT INTO packets(id,ts,len,caplen,iface,l3,proto,src,dst,sport,dport,tcp_flags,"
        "ttl,direction,conn_id,pid,tid,off,blk) SELECT p.id,p.ts,p.len,p.caplen,p.iface,p.l3,"
        "p.proto,CASE p.direction WHEN 1 THEN c.local_ip ELSE c.remote_ip END,"
        "CASE p.direction WHEN 1 THEN c.remote_ip ELSE c.local_ip END,p.sport,p.dport,"
        f"p.tcp_flags,p.ttl,p.direction,p.conn_id,0,0,p.off,{blk} FROM temp.packed p "
        "LEFT JOIN connections c ON c.id = p.conn_id")  # temp rowid order = id order
    conn.execute("DELETE FROM temp.packed")


# Both the catalog and capture databases keep an `ips` table with the same columns; one
# statement adds a batch's (ip, packets, bytes, first, last) to either.
IPS_UPSERT = (
    "INSERT INTO ips(ip,packets,bytes,first_time,last_time) VALUES (?,?,?,?,?) "
    "ON CONFLICT(ip) DO UPDATE SET packets=packets+excluded.packets, "
    "bytes=bytes+excluded.bytes, first_time=min(first_time,excluded.first_time), "
    "last_time=max(last_time,excluded.last_time)")

# agg.kind: one row per (minute, proto) for all traffic, per IP and per port.
AGG_ALL, AGG_IP, AGG_PORT = 0, 1, 2


def capture_path(data_dir: str, capture_id: int) -> str:
    return os.path.join(data_dir, "captures", f"{capture_id}.db")


class CaptureDb(Database):
    """A capture's database (created on first open)."""

    def __init__(self, data_dir: str, capture_id: int):
        os.makedirs(os.path.join(data_dir, "captures"), mode=0o700, exist_ok=True)
        self.capture_id = capture_id
        super().__init__(capture_path(data_dir, capture_id), MIGRATIONS)

    def block_reader(self) -> BlockReader:
        """Reads this capture's blocks (inline or in the side file) on this thread."""
        return BlockReader(self._reader(), self.path)

    def packet_bytes(self, blk: int, off: int, caplen: int) -> bytes:
        reader = self.block_reader()
        try:
            return reader.packet(blk, off, caplen)
        finally:
            reader.close()


# Packed packet rows from the compiled pcap scanner (apppaccap/_pcapscan.c): a packet with
# no VLAN, ICMP type, process, notes or out-of-range time, as 51 bytes.
# The writer binds only integers (binding text and NULLs is the costly part of a row for
# the sqlite3 module) and SQL takes src/dst from the packet's connection.
PLAIN_FORMAT = "<qqIIHBHHHBBqII"
PLAIN_FIELDS = "id,ts,len,caplen,l3,proto,sport,dport,tcp_flags,ttl,direction,conn_id,off,iface"


def write_batch(conn, packets: list, blob: bytes, conns: dict, procs: dict, threads: dict,
                ips: dict, agg: dict, plain=b"") -> None:
    """Persist one batch (runs on the writer thread, inside one transaction).

    packets: tuples (id, ts, …, notes, off) in the INSERT's column order; blk is assigned
    here; plain: more packets, packed (PLAIN_FORMAT); blob: the packets' bytes, or the
    (offset, size) of the side-file region holding them (store/blocks.py).
    conns: id → row tuple (full upsert of the connection's current counters).
    procs: process_id → (row, packets, bytes) deltas; threads: (pid, tid) → packets delta.
    ips: ip → [packets, bytes, first, last] deltas; agg: (kind, key, minute, proto) → [p, b].
    """
    blk = add_block(conn, blob) if blob else 0
    if conns:  # first: packed rows take their addresses from here
        conn.executemany(
            "INSERT OR REPLACE INTO connections(id,proto,local_ip,local_port,remote_ip,"
            "remote_port,process_id,pid,tid,first_time,last_time,packets_out,bytes_out,"
            "packets_in,bytes_in,state,hostname,peer_process_id,peer_pid) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", list(conns.values()))
    conn.executemany(
        "INSERT INTO packets(id,ts,len,caplen,iface,l3,proto,src,dst,sport,dport,tcp_flags,ttl,"
        "vlan,icmp_type,direction,conn_id,process_id,pid,tid,notes,"
        f"off,ts_raw,blk) VALUES ({','.join('?' * 23)},{blk})", packets)
    if plain:
        _insert_packed(conn, plain, blk)
    for pid_, (row, n, b) in procs.items():
        conn.execute(
            "INSERT INTO processes(process_id,pid,ppid,name,path,cmdline,user,start_time,"
            "packets,bytes) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(process_id) DO UPDATE SET "
            "packets=packets+excluded.packets, bytes=bytes+excluded.bytes",
            (pid_, row["pid"], row["ppid"], row["name"], row["path"], row["cmdline"],
             row["user"], row["start_time"], n, b))
    if threads:
        conn.executemany(
            "INSERT INTO threads(pid,tid,packets) VALUES (?,?,?) ON CONFLICT(pid,tid) DO UPDATE "
            "SET packets=packets+excluded.packets", [(p, t, n) for (p, t), n in threads.items()])
    if ips:
        conn.executemany(IPS_UPSERT, [(ip, *v) for ip, v in ips.items()])
    if agg:
        conn.executemany(
            "INSERT INTO agg(kind,key,minute,proto,packets,bytes) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT(kind,key,minute,proto) DO UPDATE SET packets=packets+excluded.packets, "
            "bytes=bytes+excluded.bytes", [(*k, *v) for k, v in agg.items()])
