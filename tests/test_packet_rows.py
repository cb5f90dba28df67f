"""A live capture's packet rows, many a statement (capturedb._insert_rows), against the
same rows one a statement: equal tables, whatever SQLite's limit of parameters, bound in C
on the writer's own connection (_packedrows.insert_tuples) or from Python, and a failing
row still fails its whole batch."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from apppaccap.store import capturedb
from apppaccap.store.capturedb import CaptureDb
from apppaccap.store.capturedb import write_batch


def _packets(n: int, first: int = 1) -> list:
    """write_batch's packet tuples, as Recorder.add makes them, of every kind of value."""
    rows = []
    for i in range(n):
        v6 = i % 5 == 0
        rows.append((first + i, 1_700_000_000 * 10**9 + i * 1000, 60 + i, 54 + i % 7, i % 2,
                     0x86DD if v6 else 0x0800, (6, 17, 1)[i % 3],
                     "fd00::1" if v6 else "10.0.0.1", "2001:db8::1" if v6 else "93.184.216.34",
                     40000 + i, 443, i & 0x1FF, 64, 7 if i % 11 == 0 else None,
                     8 if i % 3 == 2 else None, i % 3, 1 + i % 4, 3 if i % 2 else None,
                     1234 if i % 2 else 0, 1240 if i % 4 == 1 else 0,
                     "a note" if i % 13 == 0 else None, i * 64,
                     str(2**64 + i) if i % 17 == 0 else None))
    return rows


def _stored(tmp_path, name: str, rows: list, limit: int | None = None) -> list:
    CaptureDb(str(tmp_path / name), 1).close()  # the schema
    conn = sqlite3.connect(capturedb.capture_path(str(tmp_path / name), 1),
                           isolation_level=None)
    try:
        if limit is not None:
            conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
        conn.execute("BEGIN")
        try:
            write_batch(conn, rows, b"x" * 64, {}, {}, {}, None, None)
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return conn.execute("SELECT * FROM packets ORDER BY id").fetchall()
    finally:
        conn.close()


def test_the_rows_are_bound_in_c_here():
    """This machine builds the extension with the sqlite3 module's own SQLite: the live
    writer binds its rows in C (the Python path stays the reference below)."""
    assert capturedb.insert_tuples is not None


@pytest.mark.parametrize("bound", ["c", "python"])
def test_rows_many_a_statement_equal_rows_one_a_statement(tmp_path, monkeypatch, bound):
    if bound == "python":
        monkeypatch.setattr(capturedb, "insert_tuples", None)
    rows = _packets(64 * 3 + 22)   # three whole statements and 22 rows one by one
    many = _stored(tmp_path, "many", rows)
    fewer = _stored(tmp_path, "old-limit", rows, limit=999)   # 43 a statement
    monkeypatch.setattr(capturedb, "ROWS_AT_ONCE", 1)
    one = _stored(tmp_path, "one", rows)
    monkeypatch.setattr(capturedb, "insert_tuples", None)
    reference = _stored(tmp_path, "reference", rows)   # from Python, one a statement
    assert len(one) == len(rows)
    assert many == one and fewer == one and one == reference
    # the row as given, the block's id before `off` (the table's column order)
    blk = one[0][21]
    assert all(got == (*row[:21], blk, *row[21:]) for got, row in zip(one, rows))


def test_c_binds_every_kind_of_value_as_the_sqlite3_module(tmp_path, monkeypatch):
    """Floats, bytes and non-ASCII text too (the rows hold none today: a later column
    must not silently change on the C path)."""
    rows = [(*row[:20], ("caf\u00e9 \u2192 \U0001f600", 1.5, b"\x00\xff")[i % 3], *row[21:])
            for i, row in enumerate(_packets(130))]
    c = _stored(tmp_path, "c", rows)
    monkeypatch.setattr(capturedb, "insert_tuples", None)
    assert c == _stored(tmp_path, "python", rows)


@pytest.mark.parametrize("bound", ["c", "python"])
def test_c_refuses_what_the_sqlite3_module_refuses(tmp_path, monkeypatch, bound):
    if bound == "python":
        monkeypatch.setattr(capturedb, "insert_tuples", None)
    rows = _packets(70)
    rows[66] = (*rows[66][:20], object(), *rows[66][21:])
    with pytest.raises(sqlite3.ProgrammingError):
        _stored(tmp_path, "object", rows)
    rows[66] = (*rows[66][:20], 2**70, *rows[66][21:])
    with pytest.raises(OverflowError):
        _stored(tmp_path, "overflow", rows)
    rows[66] = rows[66][:-1]
    with pytest.raises(sqlite3.ProgrammingError):
        _stored(tmp_path, "short", rows)


def test_c_keeps_the_sqlite3_modules_checks():
    """A closed connection, and one used from a thread that did not open it (the module's
    check_same_thread), are refused as the sqlite3 module refuses them: the handle inside
    is not taken past its owner's checks (the attacker review: it was)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (blk, v)")
    one = "INSERT INTO t VALUES (?, ?)"
    capturedb.insert_tuples(conn, one, one, [(1,)], 7, 1)
    failed: list = []

    def elsewhere():
        try:
            capturedb.insert_tuples(conn, one, one, [(2,)], 7, 1)
        except sqlite3.ProgrammingError as exc:
            failed.append(exc)
    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert len(failed) == 1
    assert conn.execute("SELECT * FROM t").fetchall() == [(7, 1)]
    conn.close()
    with pytest.raises(sqlite3.ProgrammingError):
        capturedb.insert_tuples(conn, one, one, [(3,)], 7, 1)


@pytest.mark.parametrize("bound", ["c", "python"])
def test_a_failing_row_fails_the_whole_batch(tmp_path, monkeypatch, bound):
    if bound == "python":
        monkeypatch.setattr(capturedb, "insert_tuples", None)
    rows = _packets(200)
    rows[150] = rows[10]   # the same packet id twice: the statement holding row 150 fails
    with pytest.raises(sqlite3.IntegrityError) as failed:
        _stored(tmp_path, "dup", rows)
    # the code store/faults.py reads, as the sqlite3 module sets it
    assert failed.value.sqlite_errorcode == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
    conn = sqlite3.connect(capturedb.capture_path(str(tmp_path / "dup"), 1))
    try:
        assert conn.execute("SELECT count(*) FROM packets").fetchone()[0] == 0
    finally:
        conn.close()


def test_the_statements_do_not_change_with_the_block(tmp_path):
    """One statement text for every batch: a text per block filled the sqlite3 module's
    statement cache (128 a connection) with ~70 KB programs, ~20 MB per live capture.
    (Through a wrapper, as from Python; insert_tuples prepares its own and finalizes them.)"""
    CaptureDb(str(tmp_path), 1).close()
    conn = sqlite3.connect(capturedb.capture_path(str(tmp_path), 1), isolation_level=None)
    texts: set = set()

    class Recording:
        """The connection, with the texts of its packet inserts written down."""

        def executemany(self, sql, rows):
            if "INTO packets" in sql:
                texts.add(sql)
            return conn.executemany(sql, rows)

        def __getattr__(self, name):
            return getattr(conn, name)
    try:
        for batch in range(3):
            conn.execute("BEGIN")
            write_batch(Recording(), _packets(64 + 5, first=1000 * batch + 1), b"x" * 64, {},
                        {}, {}, None, None)
            conn.execute("COMMIT")
        blocks = conn.execute("SELECT count(DISTINCT blk) FROM packets").fetchone()[0]
    finally:
        conn.close()
    assert blocks == 3
    assert len(texts) == 2   # 64 a statement, and one by one: the same for every block
