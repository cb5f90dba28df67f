"""One SQLite file: a single writer thread owns the write connection; readers use WAL.

Everything that changes a database goes through `write(fn)` (a callable run on
the writer thread inside one transaction) so there is never a second writer;
`read(sql, params)` uses a read-only connection per thread, lent to a later thread once
its thread has ended.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import sys
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING

from apppaccap.store.faults import io_failure

if TYPE_CHECKING:
    import sqlite_utils

log = logging.getLogger(__name__)

FILE_MODE = 0o600  # catalog and capture databases hold password hashes and packets

_STOP = object()
MAX_IDLE_READERS = 8  # read connections kept per database for the next threads

# Binding None makes the sqlite3 module look for an adapter the slow way (two failed
# attribute lookups per value); an identity adapter found in its table is ~3x cheaper,
# which matters for packet rows with several NULL columns (1M rows: 3.4 s -> 2.4 s).
sqlite3.register_adapter(type(None), {}.get)


def create_private(path: str) -> None:
    """Create `path` empty with mode 0600 if it does not exist (an empty file is an empty
    SQLite database). SQLite gives its -wal and -shm files the database file's mode, so
    they are private too whatever the process umask."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass


def connect(path: str, *, readonly: bool = False,
            page_size: int | None = None) -> sqlite3.Connection:
    """A connection to `path`; `page_size` applies to a database this creates (fixed
    once it has a table, or once it is in WAL mode)."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                               timeout=30)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, timeout=30,
                               isolation_level=None)
        if page_size is not None:
            conn.execute(f"PRAGMA page_size={int(page_size)}")
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a crash loses at most the last transactions, never corrupts.
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.row_factory = sqlite3.Row
    return conn


class _Lease:
    """A read connection lent to one thread; given back when the thread ends (its
    thread-local values go, and with them this). The web server starts a thread per
    request: opening a connection (and parsing the schema) for each one cost ~0.3 ms a
    database, twice a request or more (benchmarks/api_load.py)."""

    __slots__ = ("conn", "idle", "refs")

    def __init__(self, conn: sqlite3.Connection, idle: list, refs: int):
        # refs: references to conn when only one variable held it (sqlite3 keeps some of
        # its own: the statement cache)
        self.conn, self.idle, self.refs = conn, idle, refs

    def __del__(self):
        # A cursor still alive (it references its connection) may hold a statement open,
        # and with it its snapshot: such a connection is not lent again.
        if sys.getrefcount(self.conn) <= self.refs and len(self.idle) < MAX_IDLE_READERS:
            self.idle.append(self.conn)  # list.append is atomic: no lock needed


class Database:
    """A SQLite file with its writer thread."""

    def __init__(self, path: str, migrations=(), page_size: int | None = None):
        self.path = path
        self._queue: queue.Queue = queue.Queue()
        create_private(path)
        self._conn = connect(path, page_size=page_size)
        self._local = threading.local()
        self._idle: list[sqlite3.Connection] = []  # read connections of threads that ended
        self._closed = False
        self._faulty = False  # a disk fault was logged and no write has succeeded since
        if migrations:
            migrate(self._conn, migrations)
        self._thread = threading.Thread(target=self._run, name=f"writer:{path}", daemon=True)
        self._thread.start()

    # -- writing -------------------------------------------------------------
    def _run(self):
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            fn, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                result = fn(self._conn)
                self._conn.execute("COMMIT")
                self._faulty = False
                fut.set_result(result)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's future
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                fut.set_exception(self._fault(exc))
        self._conn.close()

    def _fault(self, exc: BaseException) -> BaseException:
        """What the caller's future raises: a fresh IOFailure for a disk fault (logged
        once per outage, not once per write), the exception itself otherwise."""
        failure = io_failure(exc, f"writing {os.path.basename(self.path)}")
        if failure is None:
            return exc
        if not self._faulty:
            self._faulty = True
            log.error("%s: %s", self.path, failure.message)
        return failure

    def submit(self, fn) -> Future:
        """Queue `fn(conn)` to run in one transaction on the writer thread."""
        fut: Future = Future()
        if self._closed:
            fut.set_exception(RuntimeError(f"database {self.path} is closed"))
            return fut
        self._queue.put((fn, fut))
        return fut

    def write(self, fn, timeout: float | None = 60):
        """Run `fn(conn)` on the writer thread and wait for its result."""
        return self.submit(fn).result(timeout)

    def execute(self, sql: str, params=()):
        """One write statement; returns lastrowid."""
        return self.write(lambda c: c.execute(sql, params).lastrowid)

    # -- reading -------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        lease = getattr(self._local, "lease", None)
        if lease is None:
            try:
                conn = self._idle.pop()
            except IndexError:
                conn = connect(self.path, readonly=True)
            refs = sys.getrefcount(conn)  # before the call below puts conn on the stack
            lease = self._local.lease = _Lease(conn, self._idle, refs)
        return lease.conn

    def queued(self) -> int:
        """Writes waiting for the writer thread (metrics: writer queue depth)."""
        return self._queue.qsize()

    def read(self, sql: str, params=()) -> list[sqlite3.Row]:
        return self._reader().execute(sql, params).fetchall()

    def tuples(self, sql: str, params=()):
        """Rows as plain tuples (no sqlite3.Row): the fast path for bulk readers."""
        cur = self._reader().cursor()
        cur.row_factory = None
        return cur.execute(sql, params)

    def one(self, sql: str, params=()):
        return self._reader().execute(sql, params).fetchone()

    def close(self):
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join(10)
            # idle readers go (closed when dropped: the file may be deleted next); one a
            # thread took meanwhile stays open for it, as thread-local ones always did
            self._idle.clear()


def tables(conn: sqlite3.Connection) -> sqlite_utils.Database:
    """sqlite-utils' view of a connection: tables by name, dict rows in and out,
    introspection. It runs nothing on the connection when made (no PRAGMA, no plugins),
    and its writes nest in the caller's transaction as savepoints (sqlite-utils 4).
    Imported here: the bulk writer process (store/bulkwriter.py) never uses it, and
    importing it took 40 of the ~100 ms that process needed to start taking batches."""
    import sqlite_utils

    return sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """The statements of a migration step, one by one (executescript would COMMIT)."""
    for stmt in script.split(";\n"):
        if stmt.strip():
            conn.execute(stmt)


def migrate(conn: sqlite3.Connection, migrations) -> int:
    """Apply migrations[n:] where n is PRAGMA user_version; each in its own transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, step in enumerate(migrations[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if isinstance(step, str):
                run_script(conn, step)
            else:
                step(conn)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("migrated database to version %d", number)
    return len(migrations)
