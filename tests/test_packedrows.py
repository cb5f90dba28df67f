"""Packed packet rows through SQLite's C API (store/_packedrows.c, the bulk writer's path)
against the same rows bound from Python (capturedb._insert_packed): identical rows, with
addresses from the batch's connection rows, from the committed connection when the batch
does not carry it, NULL when there is none; a failed write leaves nothing behind."""

from __future__ import annotations

import sqlite3
import struct

import pytest

from apppaccap.store import capturedb
from apppaccap.store.capturedb import PLAIN_FORMAT
from apppaccap.store.capturedb import CaptureDb
from apppaccap.store.capturedb import packed_row_writer
from apppaccap.store.capturedb import write_batch


def test_row_writer_is_built():
    # `make test` installs libsqlite3-dev: the compiled path must exist here
    assert capturedb.RowWriter is not None


def _conn_row(cid, local, remote):
    # Conn.row(): id, proto, local ip/port, remote ip/port, process, pid, tid, first, last,
    # counters, state, hostname, peer process/pid, app labels
    return (cid, 6, local, 40000 + cid, remote, 443, None, 0, 0, 10, 20, 1, 60, 1, 60,
            "ESTABLISHED", "", None, 0, None, None, None)


def _rows(n: int) -> bytes:
    out = bytearray()
    for i in range(n):
        conn_id = (1, 2, 3, 4)[i % 4]
        out += struct.pack(PLAIN_FORMAT, 100 + i, 1_700_000_000 * 10**9 + i, 60 + i, 54 + i,
                           0x0800 if conn_id != 3 else 0x86DD, 6 if i % 3 else 17,
                           40000 + conn_id, 443, i & 0x1FF, 64, 1 if i % 2 else 0, conn_id,
                           i * 64, i % 2)
    return bytes(out)


def _packets(path: str) -> list:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT * FROM packets ORDER BY id").fetchall()
    finally:
        conn.close()


def _load(tmp_path, name: str, compiled: bool) -> list:
    db = CaptureDb(str(tmp_path / name), 1)
    plain = _rows(1000)
    committed = {2: _conn_row(2, "10.0.0.2", "93.184.216.34")}
    batch = {1: _conn_row(1, "10.0.0.1", "93.184.216.34"),
             3: _conn_row(3, "fd00::1", "2001:db8::1")}   # 4: no connection row at all
    try:
        db.write(lambda c: write_batch(c, [], b"", committed, {}, {}, None, None))
        if compiled:
            blk = db.write(lambda c: write_batch(c, [], b"x" * 64, batch, {}, {}, None, None))
            rows = packed_row_writer(db.path)
            try:
                assert rows.write(plain, blk, batch) == 1000
            finally:
                rows.close()
        else:
            db.write(lambda c: write_batch(c, [], b"x" * 64, batch, {}, {}, None, None, plain))
        return _packets(db.path)
    finally:
        db.close()


def test_compiled_rows_equal_rows_bound_from_python(tmp_path):
    fast, slow = _load(tmp_path, "fast", True), _load(tmp_path, "slow", False)
    assert len(fast) == 1000 and fast == slow
    cols = {name: i for i, name in enumerate(
        ("id", "ts", "len", "caplen", "iface", "l3", "proto", "src", "dst"))}
    by_conn = {row[16]: row for row in fast}   # conn_id
    assert {by_conn[c][cols["src"]] for c in (1, 2, 3)} <= {
        "10.0.0.1", "10.0.0.2", "fd00::1", "93.184.216.34", "2001:db8::1"}
    assert by_conn[2][cols["src"]] is not None      # looked up: the committed connection
    assert by_conn[4][cols["src"]] is None and by_conn[4][cols["dst"]] is None


def test_a_failed_write_rolls_back(tmp_path):
    db = CaptureDb(str(tmp_path), 1)
    try:
        rows = packed_row_writer(db.path)
        plain = _rows(10)
        rows.write(plain, 1, {})
        # the same ids again: the 1st row fails, nothing of the 2nd batch stays
        with pytest.raises(sqlite3.OperationalError) as err:
            rows.write(_rows(5) + plain, 1, {})
        assert err.value.sqlite_errorcode & 0xFF == 19   # SQLITE_CONSTRAINT
        with pytest.raises(ValueError):
            rows.write(plain[:-1], 1, {})             # not whole rows
        rows.close()
        assert len(_packets(db.path)) == 10
    finally:
        db.close()


def test_statistics_bound_in_c_equal_the_sqlite3_module(tmp_path):
    """Rows by minute and by second upserted through RowWriter.upsert (the bulk writer's
    statistics) add up exactly as executemany's: new rows and rows added to."""
    from apppaccap.store.capturedb import write_stats
    from apppaccap.store.capturedb import write_stats_bulk
    from apppaccap.store.database import connect
    agg = {(k, f"key{i % 50}" if k else "", 28_000_000 + i % 7, 6 if i % 3 else 17): [i, 60 * i]
           for i in range(400) for k in (0, 1, 2)}
    agg_sec = {(k, key, minute * 60 + 5, proto): v for (k, key, minute, proto), v in agg.items()}
    ips = {"10.0.0.1": [3, 180, 5, 9], "fd00::1": [1, 60, 7, 7]}
    names = [("10.0.0.1", 0, "example.com")]
    out = []
    for compiled in (True, False):
        db = CaptureDb(str(tmp_path / str(compiled)), 1)
        try:
            for _ in range(2):   # the second time every row exists: added to
                if compiled:   # as in the bulk writer: its connection and the rows'
                    conn, rows = connect(db.path), packed_row_writer(db.path)
                    write_stats_bulk(conn, rows, ips, agg, (agg_sec, {}, (5, 9)), names)
                    rows.close()
                    conn.close()
                else:
                    db.write(lambda c: write_stats(c, ips, agg, (agg_sec, {}, (5, 9)), names))
            conn = sqlite3.connect(db.path)
            out.append([conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall()
                        for t in ("agg", "agg_sec", "ips", "ip_names", "span")])
            conn.close()
        finally:
            db.close()
    assert out[0] == out[1] and len(out[0][0]) > 500 and len(out[0][1]) > 500


def test_packed_flow_counters_equal_the_flat_tuples(monkeypatch):
    # what the parsing process hands the bulk writer (flowagg.pack_flows, in C and in
    # Python) read back with the batch's connection rows gives aggregates.flat's tuples,
    # in the same order (the IPs' ids follow it), flows that are no connection included
    from apppaccap.capture.aggregates import flat
    from apppaccap.capture.recorder import Conn
    from apppaccap.store import flowagg

    a = Conn(3, 6, ("10.0.0.1", 40003), ("10.0.0.2", 443), 10)
    b = Conn(7, 17, ("fe80::1", 5353), ("fe80::2", 53), 10)
    flowsec = {(a, 1): [1, 60, 10, 10], ((1, "10.0.0.9", "10.0.0.1", 0, 0), 1): [2, 98, 11, 12],
               (b, 2): [3, 300, 2**63 - 2, 2**63 - 1], (a, 2): [4, 240, 20, 30]}
    rows = {3: a.row(), 7: b.row()}
    assert flowagg._c_pack_flows is not None  # noqa: SLF001 - the compiled twin is built
    compiled = flowagg.pack_flows(flowsec)
    with pytest.raises(TypeError):
        flowagg.pack_flows({(a, 1): (1, 2)})
    monkeypatch.setattr(flowagg, "_c_pack_flows", None)
    assert flowagg.pack_flows(flowsec) == compiled
    assert list(flowagg.unpack_flows(*compiled, rows)) == flat(flowsec)
