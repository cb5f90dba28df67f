"""One SQLite file per capture: slim packet rows, packet bytes in blocks, connections,
IPs, processes and per-minute aggregates.

What can be derived from the bytes (Ethernet addresses, the Summary line) is not
stored: it is decoded again when a packet is read, which keeps ingest fast.

Packet bytes are concatenated per write batch into one `blocks` row; a packet keeps
(blk, off) into it. That keeps the per-packet row small and the write path to a
couple of executemany calls per batch (docs/DECISIONS.md: the
storage write path).

This module owns the capture database's rows (its schema is store/migrations.py: CAPTURE;
`blocks` rows are store/blocks.py's, `ips` statements store/ips.py's). Its writes are
raw sqlite3: they are the packet hot path.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from itertools import chain

from apppaccap.store.blocks import BlockReader
from apppaccap.store.blocks import add_block
from apppaccap.store.database import Database
from apppaccap.store.ips import IPS_UPSERT
from apppaccap.store.migrations import CAPTURE


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


# agg.kind: one row per (minute, proto) for all traffic, per IP and per port.
AGG_ALL, AGG_IP, AGG_PORT = 0, 1, 2


def capture_path(data_dir: str, capture_id: int) -> str:
    return os.path.join(data_dir, "captures", f"{capture_id}.db")


# The page size of a database a file ingest creates (live captures keep SQLite's 4 KiB: a
# small commit rewrites whole pages). Bulk loads append ~1M packet rows and insert
# statistics rows all over their tables: with 16 KiB pages the writer process spent
# ~0.3 s (~12 %) less CPU per 1M packets of short flows (fewer pages to balance, read
# and write through the WAL); 32 and 64 KiB gained nothing more.
BULK_PAGE_SIZE = 16384


class CaptureDb(Database):
    """A capture's database (created on first open; `page_size` applies then)."""

    def __init__(self, data_dir: str, capture_id: int, page_size: int | None = None):
        os.makedirs(os.path.join(data_dir, "captures"), mode=0o700, exist_ok=True)
        self.capture_id = capture_id
        super().__init__(capture_path(data_dir, capture_id), CAPTURE, page_size)

    def block_reader(self) -> BlockReader:
        """Reads this capture's blocks (inline or in the side file) on this thread."""
        return BlockReader(self._reader(), self.path)

    def packet_bytes(self, blk: int, off: int, caplen: int) -> bytes:
        reader = self.block_reader()
        try:
            return reader.packet(blk, off, caplen)
        finally:
            reader.close()


# Packed packet rows from the compiled pcap scanner (ingest/_pcapscan.c): a packet with
# no VLAN, ICMP type, process, notes or out-of-range time, as 51 bytes.
# The writer binds only integers (binding text and NULLs is the costly part of a row for
# the sqlite3 module) and SQL takes src/dst from the packet's connection.
PLAIN_FORMAT = "<qqIIHBHHHBBqII"
PLAIN_FIELDS = "id,ts,len,caplen,l3,proto,sport,dport,tcp_flags,ttl,direction,conn_id,off,iface"

# The same rows through SQLite's C API (store/_packedrows.c), for the bulk writer process:
# binding them from Python and joining their connection was ~2.5 s of its ~4 s of CPU per
# 1M packets of short flows. Addresses come from the batch's connection rows (every packed
# packet's connection is in its batch), else from the committed row, as the join above.
_PACKED_COLUMNS = ("id", "ts", "len", "caplen", "iface", "l3", "proto", "src", "dst", "sport",
                   "dport", "tcp_flags", "ttl", "direction", "conn_id", "off", "blk")
# Positional, in _PACKED_COLUMNS' order (the extension's P_* order), so the extension can
# repeat its VALUES group: a batch's rows go MANY_ROWS (64) a statement, the rest one by
# one, and SQLite's cost per statement run is paid once for all of them
# (docs/DECISIONS.md, "Rows many a statement").
_PACKED_INSERT = (f"INSERT INTO packets({','.join(_PACKED_COLUMNS)},pid,tid) "
                  f"VALUES ({','.join('?' * len(_PACKED_COLUMNS))},0,0)")
_CONN_ADDRESSES = "SELECT local_ip, remote_ip FROM connections WHERE id = ?"
CONN_LOCAL_IP, CONN_REMOTE_IP = 2, 4  # in Conn.row() (capture/recorder.py)

try:
    from apppaccap.store._packedrows import RowWriter
except ImportError:  # built without sqlite3.h: _insert_packed binds them from Python
    RowWriter = None
try:  # the packet tuples bound in C on the writer's own connection (store/_packedrows.c)
    from apppaccap.store._packedrows import insert_tuples
except ImportError:  # not built, or its SQLite is not the sqlite3 module's: from Python
    insert_tuples = None


def packed_row_writer(path: str, max_variables: int = 0):
    """A second connection to the capture database at `path` that writes packed rows
    (RowWriter.write(plain, blk, conns): its own transaction; run it after the batch's
    own commit, never inside it); None when the extension is not built. `max_variables`
    lowers SQLite's limit of parameters a statement, as an older SQLite has it (tests)."""
    if RowWriter is None:
        return None
    return RowWriter(path, _PACKED_INSERT, _CONN_ADDRESSES, CONN_LOCAL_IP, CONN_REMOTE_IP,
                     max_variables)


NAME_DOMAIN, NAME_AGENT = 0, 1  # ip_names.kind


# A connection's row as Conn.row() makes it, written whole each time it changed. An
# update in place, not INSERT OR REPLACE, which deletes and inserts the row and its
# entries in both address indexes: 128,000 upserts (25,000 of rows already there) took
# 2.4 s with the indexes as a live capture keeps them, 1.5 s so. The addresses stay in
# the SET (a late process label can swap local and remote): leaving them out measured
# the same.
_CONN_COLUMNS = ("proto", "local_ip", "local_port", "remote_ip", "remote_port", "process_id",
                 "pid", "tid", "first_time", "last_time", "packets_out", "bytes_out",
                 "packets_in", "bytes_in", "state", "hostname", "peer_process_id", "peer_pid",
                 "app_proto", "app", "category")
_CONN_UPSERT = (
    f"INSERT INTO connections(id,{','.join(_CONN_COLUMNS)}) "
    f"VALUES ({','.join('?' * (1 + len(_CONN_COLUMNS)))}) ON CONFLICT(id) DO UPDATE SET "
    + ",".join(f"{c}=excluded.{c}" for c in _CONN_COLUMNS))


def write_batch_bulk(conn, rows, packets: list, blob, conns: dict, procs: dict,
                     threads: dict, plain=b"") -> None:
    """write_batch for the bulk writer, with `rows` (packed_row_writer): the block, packet
    tuples, processes and threads in a transaction of `conn`, then the connections and
    the packed packets in one of `rows` (bound in C: ~1 s less per 1M short-flow
    packets)."""
    conn.execute("BEGIN IMMEDIATE")
    blk = write_batch(conn, packets, blob, {}, procs, threads, None, None)
    conn.execute("COMMIT")
    if plain or conns:
        rows.write(plain, blk, conns, _CONN_UPSERT)


_ROW = ",".join("?" * 23)
_PACKET_COLUMNS = ("blk,id,ts,len,caplen,iface,l3,proto,src,dst,sport,dport,tcp_flags,ttl,"
                   "vlan,icmp_type,direction,conn_id,process_id,pid,tid,notes,off,ts_raw")
# Rows many a statement, as the bulk writer's (docs/DECISIONS.md: Rows many a statement):
# up to 64 rows of 23 parameters, as many as SQLite's limit of parameters allows (999
# before 3.32). Each statement run also lets the interpreter lock go and takes it back
# once (the sqlite3 module releases it around each step), so a live capture's writer
# waits for the lock 64 times less often: the service's CPU per packet fell by 1-2 us
# of ~9 at 100-130k packets/s (benchmarks/live_rate.py, README). The block's id is the
# statement's first parameter (?1), not part of its text: a text per batch filled the
# sqlite3 module's statement cache (128 per connection) with ~70 KB programs, ~20 MB a
# capture.
ROWS_AT_ONCE = 64


def _rows_at_once(conn) -> int:
    # Connection.getlimit is Python 3.11's; before it, SQLite's old default limit
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) \
        if hasattr(conn, "getlimit") else 999
    return max(1, min(ROWS_AT_ONCE, (limit - 1) // 23))


def _insert_rows(conn, packets: list, blk: int) -> None:
    """The packet tuples (write_batch's `packets`) into `packets`, many a statement, the
    rest one by one."""
    n, per = len(packets), _rows_at_once(conn)
    # ?1, the block, in every row: one parameter, and no subquery (INSERT ... SELECT ?,*
    # FROM (VALUES ...) cost ~15 % more a row)
    many = (f"INSERT INTO packets({_PACKET_COLUMNS}) VALUES "
            + ",".join([f"(?1,{_ROW})"] * per))
    one = f"INSERT INTO packets({_PACKET_COLUMNS}) VALUES (?,{_ROW})"
    if insert_tuples is not None and isinstance(conn, sqlite3.Connection):
        # the same statements bound in C, the interpreter lock let go around each step:
        # the live writer held it ~1.5 us a row binding them here, taken from the
        # capture's pipeline thread (docs/INTERNALS.md, Sustained rates)
        insert_tuples(conn, many, one, packets, blk, per)
        return
    whole = n - n % per
    if whole:
        conn.executemany(many, ([blk, *chain.from_iterable(packets[at:at + per])]
                                for at in range(0, whole, per)))
    if n > whole:
        conn.executemany(one, ((blk, *row) for row in packets[whole:]))


def write_batch(conn, packets: list, blob: bytes, conns: dict, procs: dict, threads: dict,
                ips: dict, agg: dict, plain=b"", per_sec=None, names=()) -> int:
    """Persist one batch (runs on the writer thread, inside one transaction); returns the
    id of its block (0: none).

    packets: tuples (id, ts, …, notes, off) in the INSERT's column order; blk is assigned
    here; plain: more packets, packed (PLAIN_FORMAT); blob: the packets' bytes, or the
    (offset, size) of the side-file region holding them (store/blocks.py).
    conns: id → row tuple (full upsert of the connection's current counters).
    procs: process_id → (row, packets, bytes) deltas; threads: (pid, tid) → packets delta.
    ips: ip → [packets, bytes, first, last] deltas; agg: (kind, key, minute, proto) → [p, b].
    per_sec: (agg_sec, proc_sec, span) or None: (kind, key, second, proto) → [p, b];
    (process_id, second, direction) → [p, b]; (first ts, last ts) of the batch.
    names: (ip, kind, name) learned for IPs (NAME_DOMAIN: DNS answers, TLS SNI, HTTP Host;
    NAME_AGENT: an HTTP user agent the IP sent).
    """
    blk = add_block(conn, blob) if blob else 0
    if conns:  # first: packed rows take their addresses from here
        conn.executemany(_CONN_UPSERT, list(conns.values()))
    _insert_rows(conn, packets, blk)
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
    write_stats(conn, ips, agg, per_sec, names)
    return blk


_AGG_UPSERT = (
    "INSERT INTO agg(kind,key,minute,proto,packets,bytes) VALUES (?,?,?,?,?,?) "
    "ON CONFLICT(kind,key,minute,proto) DO UPDATE SET packets=packets+excluded.packets, "
    "bytes=bytes+excluded.bytes")
_AGG_SEC_UPSERT = (
    "INSERT INTO agg_sec(kind,key,sec,proto,packets,bytes) VALUES (?,?,?,?,?,?) "
    "ON CONFLICT(kind,key,sec,proto) DO UPDATE SET packets=packets+excluded.packets, "
    "bytes=bytes+excluded.bytes")


def write_stats(conn, ips: dict, agg: dict, per_sec=None, names=()) -> None:
    """Add statistics (write_batch's ips, agg, per_sec and names) in the caller's
    transaction; the bulk writer sums many batches' and writes them here once."""
    if ips:
        conn.executemany(IPS_UPSERT, ((ip, *v) for ip, v in ips.items()))
    if agg:
        conn.executemany(_AGG_UPSERT, ((*k, *v) for k, v in agg.items()))
    if per_sec is not None:
        _write_per_second(conn, *per_sec)
    if names:
        conn.executemany("INSERT OR IGNORE INTO ip_names(ip,kind,name) VALUES (?,?,?)",
                         list(names))


def _write_per_second(conn, agg_sec: dict, proc_sec: dict, span) -> None:
    if agg_sec:
        conn.executemany(_AGG_SEC_UPSERT, ((*k, *v) for k, v in agg_sec.items()))
    if proc_sec:
        conn.executemany(
            "INSERT INTO proc_sec(process_id,sec,direction,packets,bytes) VALUES (?,?,?,?,?) "
            "ON CONFLICT(process_id,sec,direction) DO UPDATE SET "
            "packets=packets+excluded.packets, bytes=bytes+excluded.bytes",
            ((*k, *v) for k, v in proc_sec.items()))
    if span is not None:
        conn.execute("INSERT INTO span(id,first,last) VALUES (0,?,?) ON CONFLICT(id) DO UPDATE "
                     "SET first=min(first,excluded.first), last=max(last,excluded.last)", span)


def write_stats_bulk(conn, rows, ips: dict, agg: dict, per_sec=None, names=()) -> None:
    """write_stats in transactions of its own (the bulk writer's), the rows by minute and
    by second - ~200,000 for 1M packets of short flows - bound in C through `rows`
    (packed_row_writer: its own connection, one transaction each, after the rest)."""
    agg_sec, proc_sec, span = per_sec if per_sec is not None else (None, None, None)
    conn.execute("BEGIN IMMEDIATE")
    write_stats(conn, ips, None, (None, proc_sec, span), names)
    conn.execute("COMMIT")
    if agg:
        rows.upsert(_AGG_UPSERT, agg)
    if agg_sec:
        rows.upsert(_AGG_SEC_UPSERT, agg_sec)


def write_flow_totals(rows, totals, *, settled: bool) -> int:
    """A bulk load's statistics summed in C (flowagg.flow_totals: _packedrows.FlowTotals)
    written through `rows` (packed_row_writer) in a transaction of its own, sorted by
    key: with `settled` the seconds a file in time order is done with and the minutes
    they close (Totals.take_settled), else everything held, the IPs first seen first
    (Totals.take; the totals are emptied). Returns how many rows were written."""
    if settled:
        return totals.write_settled(rows, _AGG_UPSERT, _AGG_SEC_UPSERT)
    return totals.write_all(rows, IPS_UPSERT, _AGG_UPSERT, _AGG_SEC_UPSERT)


# -- the rest of a capture database's rows (each runs inside the caller's transaction) ----

# what a capture database remembers of its catalog row (meta 'capture'; store/recovery.py
# registers the capture again from it when the catalog is lost)
REMEMBERED = ("type", "name", "filter", "flags", "adapters", "process_id", "pid", "thread_id",
              "process_name", "process_path", "start_time", "notes", "source_file")


def _set_meta(conn, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))


def remember(conn, row) -> None:
    """Keep the capture's catalog facts in its own database (meta 'capture'), so a new
    catalog can register it again with its Type and Name."""
    facts = {k: row[k] for k in REMEMBERED if k in row.keys()}
    _set_meta(conn, "capture", json.dumps(facts))


def remember_end(conn, end_time: int, message: str) -> None:
    """The capture was stopped cleanly at `end_time` (meta 'ended')."""
    _set_meta(conn, "ended", json.dumps({"end_time": end_time, "message": message}))


def mark_epb_framing(conn) -> None:
    """Blocks hold the pcapng EPBs export writes (ingest.py; export.py copies them)."""
    _set_meta(conn, "block_framing", "epb")


def add_interfaces(conn, rows) -> None:
    """(id, name, linktype) or (id, name, linktype, ticks_per_second) rows."""
    rows = list(rows)
    if rows and len(rows[0]) == 4:
        conn.executemany("INSERT INTO interfaces(id, name, linktype, ticks_per_second) "
                         "VALUES (?,?,?,?)", rows)
    elif rows:
        conn.executemany("INSERT INTO interfaces(id, name, linktype) VALUES (?,?,?)", rows)


# built once at the end of a bulk load (migrations.py creates them with the schema)
_BULK_INDEXES = (("packets_conn", "packets(conn_id)"),
                 ("connections_local", "connections(local_ip, local_port)"),
                 ("connections_remote", "connections(remote_ip, remote_port)"))


def drop_conn_index(conn) -> None:
    """Bulk load: the per-packet connection index and the connections' address indexes
    are built once at the end (an index maintained row by row halves the insert rate;
    a file of short flows upserts a connection row for every ~6 packets)."""
    for name, _on in _BULK_INDEXES:
        conn.execute(f"DROP INDEX IF EXISTS {name}")


def build_conn_index(conn) -> None:
    for name, on in _BULK_INDEXES:
        conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {on}")


def set_packet_notes(conn, packet_id: int, notes: str | None) -> bool:
    """False when the capture has no such packet."""
    return bool(conn.execute("UPDATE packets SET notes=? WHERE id=?",
                             (notes, packet_id)).rowcount)


def set_hostname(conn, ip: str, name: str) -> None:
    """Name the connections to `ip` that have no host name yet."""
    conn.execute("UPDATE connections SET hostname = ? WHERE remote_ip = ? AND hostname = ''",
                 (name, ip))


# EXTRACTSTREAM rows (apppaccap/extract/service.py builds them in this column order)
STREAM_COLUMNS = ("conn_id", "protocol", "direction", "file_name", "mime_type", "sniffed_mime",
                  "size", "complete", "truncated", "missing_bytes", "sha256", "ts", "uri",
                  "host", "method", "status", "declared_size", "content_encoding", "depth",
                  "spool")
_INSERT_STREAM = (f"INSERT INTO extract_streams({','.join(STREAM_COLUMNS)}) "
                  f"VALUES ({','.join('?' * len(STREAM_COLUMNS))})")


def add_extract_streams(conn, rows) -> None:
    conn.executemany(_INSERT_STREAM, rows)
