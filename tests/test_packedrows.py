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


def test_a_failure_inside_a_run_of_many_rows_rolls_back(tmp_path):
    # rows go MANY_ROWS a statement: a duplicate id in the middle of such a run fails
    # the write as one row would, and nothing of that batch stays
    from apppaccap.store._packedrows import MANY_ROWS
    assert MANY_ROWS == 64
    db = CaptureDb(str(tmp_path), 1)
    try:
        rows = packed_row_writer(db.path)
        first = _rows(100)
        rows.write(first, 1, {})
        fresh = bytearray(_rows(300)[100 * 51:])   # ids 200-399: new
        at = 70 * 51                                  # the 71st row: inside the 2nd run
        fresh[at:at + 8] = struct.pack("<q", 150)     # id 150: written above
        with pytest.raises(sqlite3.OperationalError) as err:
            rows.write(bytes(fresh), 2, {})
        assert err.value.sqlite_errorcode & 0xFF == 19   # SQLITE_CONSTRAINT
        assert rows.write(_rows(300)[100 * 51:], 2, {}) == 200   # usable after
        rows.close()
        assert [r[0] for r in _packets(db.path)] == list(range(100, 200)) + list(range(200, 400))
    finally:
        db.close()


def test_connections_many_a_statement_equal_executemany(tmp_path):
    """A batch's connection rows through RowWriter.write (as the bulk writer sends them,
    MANY_ROWS a statement and the rest one by one) against write_batch's executemany:
    new rows, then the same connections again with new counters (upserted)."""
    out = []
    for compiled in (True, False):
        db = CaptureDb(str(tmp_path / str(compiled)), 1)
        try:
            for n, last in ((150, 20), (137, 30)):   # 2 runs + 22 rows; 2 runs + 9 rows
                conns = {cid: _conn_row(cid, f"10.0.{cid // 250}.{cid % 250}", "93.184.216.34")[
                    :9] + (10, last) + _conn_row(cid, "", "")[11:] for cid in range(1, n + 1)}
                if compiled:
                    rows = packed_row_writer(db.path)
                    rows.write(b"", 1, conns, capturedb._CONN_UPSERT)  # noqa: SLF001
                    rows.close()
                else:
                    db.write(lambda c, conns=conns: write_batch(c, [], b"", conns, {}, {},
                                                                None, None))
            conn = sqlite3.connect(db.path)
            out.append(conn.execute("SELECT * FROM connections ORDER BY id").fetchall())
            conn.close()
        finally:
            db.close()
    assert out[0] == out[1] and len(out[0]) == 150
    assert out[0][0][10] == 30 and out[0][140][10] == 20   # upserted, and left as it was


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


def _flow_batches():
    """Batches of packed flow counters (flowagg.pack_flows's output) with their connection
    rows: ~3 minutes of seconds, one batch out of time order, IPv4 and IPv6, a flow from
    an address to itself, no address (None, ""), port 0 and one port on both sides, and
    flows that are no connection (extras)."""
    import random
    from array import array
    rng = random.Random(7)
    base = 1_700_000_000 - 1_700_000_000 % 60 + 50
    ips = [f"10.0.{i // 200}.{i % 200}" for i in range(300)] + [f"fd00::{i:x}" for i in range(50)]
    ips += [None, ""]
    conns = {}
    for cid in range(1, 2001):
        a = rng.choice(ips)
        b = a if cid % 97 == 0 else rng.choice(ips)
        pa = rng.choice([0, 53, 443, rng.randrange(1, 65536)])
        pb = pa if cid % 89 == 0 else rng.choice([0, 53, 80, rng.randrange(1, 65536)])
        conns[cid] = (cid, rng.choice([6, 17, 1]), a, pa, b, pb, None, 0, 0)
    batches = []
    for n, start in enumerate([0, 20, 40, 70, 5, 100, 130, 150, 190, 195]):
        rows, extras, batch_conns = array("q"), [], {}
        for _ in range(300):
            sec = base + start + rng.randrange(6)
            first = sec * 10**9 + rng.randrange(10**9)
            p, b = rng.randrange(1, 9), rng.randrange(60, 9000)
            if rng.random() < 0.1:
                extras.append((rng.choice([1, 58, 0]), rng.choice(ips), rng.choice(ips),
                               rng.choice([0, 7]), 0))
                cid = -len(extras)
            else:
                cid = rng.randrange(1, 2001)
                batch_conns[cid] = conns[cid]
            rows.extend((cid, sec, p, b, first, first + rng.randrange(10**6)))
        batches.append((rows.tobytes(), extras, batch_conns, n == 6))
    return batches


def test_flow_totals_in_c_equal_the_python_totals(tmp_path):
    """The bulk writer's statistics of flows summed in C (flowagg.flow_totals, written by
    capturedb.write_flow_totals) against flowagg.Totals written by write_stats_bulk, as
    bulkwriter.py runs either: seconds settled after each batch, everything written once
    mid-way (MAX_HELD) and at the end: the same rows by minute and by second, the same
    IPs with the same ids (first seen first)."""
    from apppaccap.store import flowagg
    from apppaccap.store.capturedb import write_flow_totals
    from apppaccap.store.capturedb import write_stats_bulk
    from apppaccap.store.database import connect
    out = []
    for compiled in (True, False):
        db = CaptureDb(str(tmp_path / str(compiled)), 1)
        conn, rows = connect(db.path), packed_row_writer(db.path)
        totals, in_c = flowagg.Totals(), flowagg.flow_totals()
        try:
            for packed, extras, conns, flush in _flow_batches():
                if compiled:
                    totals.add_span({}, in_c.add(packed, extras, conns))
                    write_flow_totals(rows, in_c, settled=True)
                else:
                    totals.add_flows(flowagg.unpack_flows(packed, extras, conns), {})
                    settled = totals.take_settled()
                    if settled is not None:
                        write_stats_bulk(conn, rows, None, settled[0], (settled[1], None, None))
                if flush:
                    write_stats_bulk(conn, rows, *totals.take())
                    if compiled:
                        assert len(in_c) > 100
                        write_flow_totals(rows, in_c, settled=False)
                        assert len(in_c) == 0
            write_stats_bulk(conn, rows, *totals.take())
            if compiled:
                write_flow_totals(rows, in_c, settled=False)
        finally:
            rows.close()
            conn.close()
            db.close()
        read = sqlite3.connect(db.path)
        out.append([read.execute(f"SELECT * FROM {t} ORDER BY {order}").fetchall()
                    for t, order in (("agg", "1, 2, 3, 4"), ("agg_sec", "1, 2, 3, 4"),
                                     ("ips", "id"), ("span", "id"))])
        read.close()
    assert out[0] == out[1]
    agg, agg_sec, ips, span = out[0]
    assert len({r[0] for r in agg}) >= 3 and len(agg_sec) > 2000 and len(ips) > 300
    assert {r[1] for r in agg} == {0, 1, 2} and len(span) == 1


def test_flow_totals_refuse_what_they_cannot_sum(tmp_path):
    from array import array

    from apppaccap.store import flowagg
    in_c = flowagg.flow_totals()
    packed = array("q", (5, 100, 1, 60, 1, 2)).tobytes()
    with pytest.raises(KeyError):
        in_c.add(packed, [], {})                        # a connection the batch lacks
    with pytest.raises(ValueError):
        in_c.add(packed[:-1], [], {5: _conn_row(5, "10.0.0.1", "10.0.0.2")})
    with pytest.raises(IndexError):
        in_c.add(array("q", (-1, 100, 1, 60, 1, 2)).tobytes(), [], {})
    with pytest.raises(TypeError):
        in_c.add(packed, [], {5: (5, 6, b"10.0.0.1", 1, "10.0.0.2", 2)})
    with pytest.raises(TypeError):
        in_c.write_settled(object(), "", "")


@pytest.mark.parametrize("compiled", [True, False])
def test_a_connection_rewritten_with_its_ends_swapped_is_found_at_its_new_address(
        tmp_path, compiled):
    """A connection row is upserted in place (ON CONFLICT DO UPDATE): when a late process
    label swaps its local and remote ends, the row and both address indexes follow, and
    its counters are the latest ones (not added to the earlier row's)."""
    db = CaptureDb(str(tmp_path / str(compiled)), 1)
    first = _conn_row(7, "10.0.0.1", "10.0.0.2")
    swapped = (7, 6, "10.0.0.2", 443, "10.0.0.1", 40007, *first[6:11], 5, 500, 4, 400,
               *first[15:])
    try:
        for row in (first, swapped):
            if compiled:
                rows = packed_row_writer(db.path)
                try:
                    rows.write(b"", 0, {7: row}, capturedb._CONN_UPSERT)
                finally:
                    rows.close()
            else:
                db.write(lambda c, row=row: write_batch(c, [], b"", {7: row}, {}, {}, None,
                                                        None))
        by_local = db.read("SELECT id, packets_out FROM connections INDEXED BY "
                           "connections_local WHERE local_ip = ? AND local_port = ?",
                           ("10.0.0.2", 443))
        by_remote = db.read("SELECT id FROM connections INDEXED BY connections_remote "
                            "WHERE remote_ip = ? AND remote_port = ?", ("10.0.0.2", 443))
        old = db.read("SELECT id FROM connections INDEXED BY connections_local "
                      "WHERE local_ip = ? AND local_port = ?", ("10.0.0.1", 40007))
        new_remote = db.read("SELECT id FROM connections INDEXED BY connections_remote "
                             "WHERE remote_ip = ? AND remote_port = ?", ("10.0.0.1", 40007))
        assert [tuple(r) for r in by_local] == [(7, 5)]
        assert [tuple(r) for r in new_remote] == [(7,)]
        assert [tuple(r) for r in by_remote] == [] and [tuple(r) for r in old] == []
        assert db.read("SELECT count(*) FROM connections")[0][0] == 1
    finally:
        db.close()


def test_rows_go_one_by_one_where_sqlite_cannot_take_many_a_statement(tmp_path):
    # an SQLite with a lower parameter limit (999 before 3.32) cannot prepare the statements
    # of MANY_ROWS rows (packets 64 x 17 parameters, connections 64 x 22): the writer then
    # writes every row one by one, the same rows
    conns = {cid: _conn_row(cid, f"10.0.0.{cid}", "10.9.9.9") for cid in range(1, 151)}
    out = []
    for limit in (0, 999):
        db = CaptureDb(str(tmp_path / str(limit)), 1)
        try:
            rows = packed_row_writer(db.path, max_variables=limit)
            assert rows.write(_rows(300), 1, conns, capturedb._CONN_UPSERT) == 300  # noqa: SLF001
            rows.close()
            conn = sqlite3.connect(db.path)
            out.append((_packets(db.path),
                        conn.execute("SELECT * FROM connections ORDER BY id").fetchall()))
            conn.close()
        finally:
            db.close()
    assert out[0] == out[1] and len(out[0][0]) == 300 and len(out[0][1]) == 150
    assert out[0][0][0][7:9] == ("10.9.9.9", "10.0.0.1")   # in: src/dst from its conn row


def test_a_statement_with_parameters_outside_its_values_goes_row_by_row(tmp_path):
    # many_stmt repeats the VALUES group: a "?" after it would be numbered as if it were
    # the next row's, so such a statement is never run many rows at a time
    db = CaptureDb(str(tmp_path), 1)
    try:
        conn = sqlite3.connect(db.path)
        conn.execute("CREATE TABLE t(a INTEGER PRIMARY KEY, b INTEGER)")
        conn.commit()
        conn.close()
        sql = "INSERT INTO t(a, b) VALUES (?, ?) ON CONFLICT(a) DO UPDATE SET b = b + ?"
        rows = packed_row_writer(db.path)
        for _ in range(2):
            rows.write(b"", 1, {a: [a, 10 * a, 1] for a in range(1, 101)}, sql)
        rows.close()
        conn = sqlite3.connect(db.path)
        got = conn.execute("SELECT a, b FROM t ORDER BY a").fetchall()
        conn.close()
        assert got == [(a, 10 * a + 1) for a in range(1, 101)]
    finally:
        db.close()
