"""A writer process for bulk loads (file ingest).

Inside the service, the SQLite writer thread shares the GIL with the parser: binding 24
columns per packet row and copying packet bytes into blocks took as much interpreter time
as parsing. For an ingest, the capture database's writes move to `python -m
apppaccap.store.bulkwriter FD`, fed pickled batches over a socketpair; the parser keeps
one core to itself. Live captures keep the in-process writer (their batches are small).
Packet bytes do not cross the socket: the parent appends them to the capture's side file
(store/blocks.py) and sends the region.

Each batch's packets, connections and processes are committed as they come; its
statistics (IPs, rows by second and minute, names) are summed in memory over all
batches (store/flowagg.py: Totals; a flow's rows in C, flowagg.flow_totals, when the
extension is built): seconds the file is done with (and their minutes)
are written as it goes, the rest when the parent drains the writer (the end of the
ingest), everything early past MAX_HELD rows. Upserting them batch by batch cost more
than the packets on a file of short flows: each IP's and each busy port's rows again in
every batch. A crash mid-ingest leaves the packets, connections and processes committed
so far (store/recovery.py registers the capture from those) and the statistics of the
last early write, if any. Connections, the packed rows of the compiled scanner and the
statistics rows by minute and second go through SQLite's C API on a second connection
(capturedb.packed_row_writer), a batch's connections and packed rows committed together
right after its block: a crash between the two leaves that block without them, as a
crash just before its commit would leave none of them.
"""

from __future__ import annotations

import gc
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler

from apppaccap.errors import IOFailure
from apppaccap.lifeline import die_with_parent
from apppaccap.lifeline import spawn
from apppaccap.store.capturedb import build_conn_index
from apppaccap.store.capturedb import packed_row_writer
from apppaccap.store.capturedb import write_batch
from apppaccap.store.capturedb import write_batch_bulk
from apppaccap.store.capturedb import write_flow_totals
from apppaccap.store.capturedb import write_stats
from apppaccap.store.capturedb import write_stats_bulk
from apppaccap.store.database import connect
from apppaccap.store.faults import io_failure
from apppaccap.store.flowagg import Totals
from apppaccap.store.flowagg import flow_totals
from apppaccap.store.flowagg import unpack_flows
from apppaccap.store.sidefile import SideFile
from apppaccap.store.sidefile import write_slices

# the parent asks the child to write the statistics it holds (BulkWriter.drain)
WRITE_TOTALS = "totals"
# ... and to build the indexes a bulk load leaves out (BulkWriter.build_indexes)
BUILD_INDEXES = "indexes"
_LENGTH = struct.Struct("!i")  # multiprocessing.connection's message header
# a batch's byte buffer the side file has taken is kept for a later batch (at most two)
# only up to this size: a file of huge packets would otherwise pin buffers of hundreds of
# MB for the rest of its ingest (a batch is ~8 MB: Recorder.batch_bytes)
REUSE_MAX = 32 << 20
# rows of statistics held before they are written early: ~200 bytes of memory each,
# ~350 while being written (1M packets of short flows hold ~250,000)
MAX_HELD = 300_000


def _child(conn: Connection, path: str,
           max_held: int = MAX_HELD) -> None:  # pragma: no cover - runs in the child
    die_with_parent()  # a service killed -9 takes this process with it
    # Rows and counters only, no reference cycles: the collector's passes over the
    # ~10^5 statistics rows held cost ~0.5 s of 4.4 per 1M packets of short flows.
    gc.disable()
    db = connect(path)
    # A crash mid-ingest fails the ingest anyway: no need to fsync every batch.
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA temp_store=MEMORY")  # the packed-row staging table (capturedb.py)
    totals = Totals()
    rows = packed_row_writer(path)  # None: packed rows bound from Python (capturedb.py)
    # flows' statistics summed in C, written through `rows` (else in `totals`)
    in_c = flow_totals() if rows is not None else None
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            break
        if msg is None:
            break
        try:
            if msg == WRITE_TOTALS:
                _write_totals(db, rows, totals, in_c)
            elif msg == BUILD_INDEXES:
                # the index sorter's runs in temp files: in memory (the staging table's
                # setting above) the index build's CPU doubled
                db.execute("PRAGMA temp_store=DEFAULT")
                # a helper thread sorts on the core the parser has left: the packets'
                # conn index took 0.25-0.31 s instead of 0.26-0.36 per 1M packets
                db.execute("PRAGMA threads=1")
                db.execute("BEGIN IMMEDIATE")
                build_conn_index(db)
                db.execute("COMMIT")
            else:
                _write(db, rows, totals, in_c, max_held, *msg)
            conn.send(None)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the ingest
            try:
                db.execute("ROLLBACK")
            except Exception:  # noqa: BLE001
                pass
            failure = io_failure(exc, "writing the capture")
            conn.send(("io", failure.message) if failure is not None else
                      ("error", f"{type(exc).__name__}: {exc}"))
    if rows is not None:
        rows.close()
    db.close()


def _write(db, rows, totals: Totals, in_c, max_held: int, args, flows) -> None:
    """One batch: packets, connections, processes now; its statistics are added to
    `totals` (its flows' to `in_c`, flowagg.flow_totals, when there is one) once it is
    committed (written with the drain, or past MAX_HELD rows). With `rows`
    (capturedb.packed_row_writer) the connections and packed rows go in a second
    transaction right after the first, on their own connection."""
    if rows is not None:
        write_batch_bulk(db, rows, *args[:5], args[7])
    else:
        db.execute("BEGIN IMMEDIATE")
        write_batch(db, *args[:5], None, None, args[7])
        db.execute("COMMIT")
    if flows is not None and in_c is not None:  # (packed flow counters, extras, procsec)
        packed, extras, procsec = flows
        totals.add_span(procsec, in_c.add(packed, extras, args[2]))
        write_flow_totals(rows, in_c, settled=True)  # past seconds: not in the final write
    elif flows is not None:  # the same in Python
        packed, extras, procsec = flows
        totals.add_flows(unpack_flows(packed, extras, args[2]), procsec)
        settled = totals.take_settled()
        if settled is not None:
            _stats(db, rows, None, settled[0], (settled[1], None, None))
    else:
        totals.add(args[5], args[6], args[8])
    totals.add_names(args[9])
    if len(totals) + (len(in_c) if in_c is not None else 0) > max_held:
        _write_totals(db, rows, totals, in_c)


def _write_totals(db, rows, totals, in_c) -> None:
    _stats(db, rows, *totals.take())
    if in_c is not None:
        write_flow_totals(rows, in_c, settled=False)


def _stats(db, rows, ips, agg, per_sec, names=()) -> None:
    if rows is not None:  # rows by minute and second bound in C
        write_stats_bulk(db, rows, ips, agg, per_sec, names)
        return
    db.execute("BEGIN IMMEDIATE")
    write_stats(db, ips, agg, per_sec, names)
    db.execute("COMMIT")


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
                [sys.executable, "-m", "apppaccap.store.bulkwriter", str(theirs.fileno()), path,
                 str(MAX_HELD)],
                pass_fds=(theirs.fileno(),), cwd=root)
        finally:
            theirs.close()
        self.conn = Connection(mine.detach())
        self.side = SideFile(path)
        self.pending: list[Future] = []
        self.depth = depth
        self._lock = threading.Lock()
        self._held = False  # the child holds statistics not written yet
        # A thread appends each batch's bytes to the side file, then sends the batch:
        # both release the GIL (the write cost the parser ~0.3-0.9 s per 1M packets), and
        # the bytes are in the file before the row pointing at them can be committed.
        self._end = self.side.end()
        self._out: queue.Queue = queue.Queue()
        # batches' byte buffers the side file has taken, for the next batches to fill
        # again (ingest/scanner.py): pages already touched, no new ones to fault in
        self.reusable: list = []
        self._failed: OSError | None = None
        self._sender = threading.Thread(target=self._send_loop, name="bulk-sender",
                                        daemon=True)
        self._sender.start()

    def _send_loop(self) -> None:
        while True:
            item = self._out.get()
            if item is None:
                return
            blob, payload = item
            if self._failed is not None:
                continue  # nothing after a failed write: _collect reports it
            try:
                if blob:
                    self.side.write_all(blob)
                    if (isinstance(blob, bytearray) and len(blob) <= REUSE_MAX
                            and len(self.reusable) < 2):
                        self.reusable.append(blob)
                if write_slices is not None and len(payload) < 1 << 31:
                    # multiprocessing's framing (a big-endian int32 length), written
                    # without taking the GIL back for each socket buffer's worth: with
                    # send_bytes every ~200 KB waited up to a switch interval for the
                    # parser, and the writer process waited for its batch (~22 ms each).
                    # The header goes on its own: joined to the payload, it copied ~84 MB
                    # per 1M short-flow packets with the GIL held.
                    write_slices(self.conn.fileno(), _LENGTH.pack(len(payload)), 4)
                    write_slices(self.conn.fileno(), payload, 1 << 30)
                else:
                    self.conn.send_bytes(payload)
            except OSError as exc:
                self._failed = exc
                self._shutdown(socket.SHUT_RD)  # the batch's answer will not come: wake _collect

    def _shutdown(self, how: int) -> None:
        try:
            socket.socket(fileno=os.dup(self.conn.fileno())).shutdown(how)
        except OSError:
            pass

    def _send(self, blob, msg) -> None:
        self._out.put((blob, ForkingPickler.dumps(msg)))

    def submit_batch(self, args, flows=None) -> Future:
        """`args` as write_batch takes them; with `flows` - (packed flow counters, extras,
        procsec), flowagg.pack_flows's output and the process counters - its ips, agg and
        per_sec (None in `args`) are expanded in the writer process (store/flowagg.py),
        the connections' addresses read from `args`' connection rows."""
        while len(self.pending) >= self.depth:
            self._collect()
        fut: Future = Future()
        blob = args[1]
        if blob:
            args = (args[0], (self._end, len(blob)), *args[2:])
            self._end += self.side.span(len(blob))  # its padding included (sidefile.py)
        self._send(blob, (args, flows))
        self.pending.append(fut)
        self._held = True
        return fut

    def _collect(self) -> None:
        fut = self.pending.pop(0)
        try:
            err = self.conn.recv()
        except EOFError:
            err = ("error", "bulk writer process ended")
        if self._failed is not None:  # writing the bytes or sending failed (disk full)
            exc = self._failed
            fut.set_exception(OSError(exc.errno, exc.strerror, exc.filename))
            raise OSError(exc.errno, exc.strerror, exc.filename)
        if err is None:
            fut.set_result(None)
            return
        kind, message = err
        # fresh exceptions each time: one stored error re-raised on every call would grow
        # its traceback without end
        fut.set_exception(_error(kind, message))
        raise _error(kind, message)

    def write_held(self) -> None:
        """Have the child write the statistics it holds now, after what it was sent,
        without waiting (the answer is collected with the next batch's). Near the end of a
        file (ingest/scanner.py) this moves most of the final write, which the ingest
        waits for after its last packet, to while the parser still reads."""
        if self._held:
            self._send(None, WRITE_TOTALS)
            self.pending.append(Future())

    def drain(self) -> None:
        """Wait until every submitted batch and the statistics the child holds for them
        are written (a failed one raises)."""
        if self._held:
            self._held = False
            self._send(None, WRITE_TOTALS)
            self.pending.append(Future())
        while self.pending:
            self._collect()

    def build_indexes(self) -> None:
        """Have the child build the indexes a bulk load leaves out (capturedb.
        build_conn_index) after what it was sent; drain() waits for them. The parent
        reads what is committed meanwhile (its IPs go to the catalog then)."""
        self._send(None, BUILD_INDEXES)
        self.pending.append(Future())

    def close(self) -> None:
        """Wait for every batch, then stop the child."""
        try:
            self.drain()
        finally:
            self._send(None, None)
            self._out.put(None)
            self._sender.join()
            self.reusable.clear()
            self._shutdown(socket.SHUT_WR)  # the child ends on it even if None was not sent
            self.side.close()
            try:
                # the child's end of the socket closes as it exits: this wakes at once,
                # where Popen.wait with a timeout polls in sleeps of up to 50 ms
                self.conn.poll(30)
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.conn.close()


if __name__ == "__main__":  # pragma: no cover - the child process
    _child(Connection(int(sys.argv[1])), sys.argv[2], int(sys.argv[3]))
    # Everything is committed and closed: skip the interpreter's teardown (~20 ms of
    # freeing the statistics held and the modules), which the ingest waited for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
