"""A writer process for bulk loads (file ingest).

Inside the service, the SQLite writer thread shares the GIL with the parser: binding 24
columns per packet row and copying packet bytes into blocks took as much interpreter time
as parsing. For an ingest, the capture database's writes move to `python -m
apppaccap.store.bulkwriter FD`, fed pickled batches over a socketpair; the parser keeps
one core to itself. Live captures keep the in-process writer (their batches are small).
Packet bytes do not cross the socket: the parent appends them to the capture's side file
(store/blocks.py) and sends the region.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future
from multiprocessing.connection import Connection

from apppaccap.errors import IOFailure
from apppaccap.lifeline import die_with_parent
from apppaccap.lifeline import spawn
from apppaccap.store.blocks import SideFile
from apppaccap.store.capturedb import write_batch
from apppaccap.store.database import connect
from apppaccap.store.faults import io_failure
from apppaccap.store.flowagg import expand_flows


def _child(conn: Connection, path: str) -> None:  # pragma: no cover - runs in the child
    die_with_parent()  # a service killed -9 takes this process with it
    db = connect(path)
    # A crash mid-ingest fails the ingest anyway: no need to fsync every batch.
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA temp_store=MEMORY")  # the packed-row staging table (capturedb.py)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            break
        if msg is None:
            break
        try:
            args, flows = msg
            if flows is not None:  # (flat flow counters, procsec): expanded here
                ips, agg, per_sec = expand_flows(*flows)
                args = (*args[:5], ips, agg, args[7], per_sec, *args[9:])
            db.execute("BEGIN IMMEDIATE")
            write_batch(db, *args)
            db.execute("COMMIT")
            conn.send(None)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the ingest
            try:
                db.execute("ROLLBACK")
            except Exception:  # noqa: BLE001
                pass
            failure = io_failure(exc, "writing the capture")
            conn.send(("io", failure.message) if failure is not None else
                      ("error", f"{type(exc).__name__}: {exc}"))
    db.close()


def _error(kind: str, message: str) -> Exception:
    if kind == "io":
        return IOFailure(message)  # "disk full: ..." - the ingest fails with IO_ERROR
    return RuntimeError(f"writing the capture failed: {message}")


class BulkWriter:
    """`submit_batch(args)` → Future; at most `depth` batches in flight (back-pressure)."""

    def __init__(self, path: str, depth: int = 2):
        mine, theirs = socket.socketpair()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        try:
            self.proc = spawn(
                [sys.executable, "-m", "apppaccap.store.bulkwriter", str(theirs.fileno()), path],
                pass_fds=(theirs.fileno(),), cwd=root)
        finally:
            theirs.close()
        self.conn = Connection(mine.detach())
        self.side = SideFile(path)
        self.pending: list[Future] = []
        self.depth = depth
        self._lock = threading.Lock()

    def submit_batch(self, args, flows=None) -> Future:
        """`args` as write_batch takes them; with `flows` - (flat flow counters, procsec)
        as aggregates.flat gives them - its ips, agg and per_sec (None in `args`) are
        expanded in the writer process (store/flowagg.py)."""
        while len(self.pending) >= self.depth:
            self._collect()
        fut: Future = Future()
        if args[1]:
            args = (args[0], self.side.append(args[1]), *args[2:])
        self.conn.send((args, flows))
        self.pending.append(fut)
        return fut

    def _collect(self) -> None:
        fut = self.pending.pop(0)
        try:
            err = self.conn.recv()
        except EOFError:
            err = ("error", "bulk writer process ended")
        if err is None:
            fut.set_result(None)
            return
        kind, message = err
        # fresh exceptions each time: one stored error re-raised on every call would grow
        # its traceback without end
        fut.set_exception(_error(kind, message))
        raise _error(kind, message)

    def drain(self) -> None:
        """Wait until every submitted batch is written (a failed one raises)."""
        while self.pending:
            self._collect()

    def close(self) -> None:
        """Wait for every batch, then stop the child."""
        try:
            self.drain()
        finally:
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.side.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.conn.close()


if __name__ == "__main__":  # pragma: no cover - the child process
    _child(Connection(int(sys.argv[1])), sys.argv[2])
