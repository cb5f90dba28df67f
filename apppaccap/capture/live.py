"""A live capture: its sniffer process, its pipeline thread and its database.

sniffer process (capture/sniffchild.py) → pipe → feeding thread → bounded queue → pipeline
thread (decode, attribution, hold buffer,
target filter) → Recorder → the capture database's writer thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque

from apppaccap.attribution.labels import PENDING
from apppaccap.attribution.labels import flow_key
from apppaccap.attribution.labels import originator_final
from apppaccap.capture.applabels import AppLabeller
from apppaccap.capture.recorder import Recorder
from apppaccap.capture.sniffer import BATCH
from apppaccap.capture.sniffer import SnifferProcess
from apppaccap.store import capturedb
from apppaccap.store import captures as capture_table
from apppaccap.wire import Direction

try:  # the common packet recorded (or passed: not the capture's) in C (capture/_record.c)
    from apppaccap.capture._record import record as compiled_record
except ImportError:  # not built: _release records every packet in Python
    compiled_record = None

log = logging.getLogger(__name__)

QUEUE_PACKETS = 200_000  # at most, in lists of up to sniffer.BATCH packets
TCP, UDP = 6, 17
OUT, IN = int(Direction.OUT), int(Direction.IN)


class Target:
    """Which packets a capture keeps: all (system), a process set, or one thread."""

    def __init__(self, pids=(), *, children: bool = False, thread_id: int = 0):
        self.pids = set(pids)
        self.children = children
        self.thread_id = thread_id

    @property
    def system(self) -> bool:
        return not self.pids

    def pick(self, labels):
        """The label to store for a packet, False when the packet is not ours to keep."""
        if self.system:
            return labels[0] if labels else None
        for lab in labels or ():
            if lab.pid in self.pids or (self.children and lab.proc.get("ppid") in self.pids):
                if self.children:
                    self.pids.add(lab.pid)  # grandchildren follow once their parent is known
                if self.thread_id and lab.tid != self.thread_id:
                    continue
                return lab
        return False


class LiveCapture:
    def __init__(self, capture_id: int, sniffers: SnifferProcess, db, attribution,
                 target: Target,
                 catalog, *, hold_ms: int, local_ips=frozenset(), on_stats=None,
                 labels: bool = False):
        self.id = capture_id
        self.q: queue.Queue = queue.Queue(QUEUE_PACKETS // BATCH)
        self.sniffers = sniffers
        self.sniffers.on_lost = self._sniffer_lost
        self._sniffer_failure = None
        self.db = db
        self.attribution = attribution
        self.target = target
        self.catalog = catalog
        self.hold = hold_ms / 1000.0
        self.recorder = Recorder(db, local_ips=local_ips)
        self.recorder.on_flush = on_stats
        self.recorder.on_failure = self._write_failed
        if labels:  # nDPI application labels (None when the library is missing)
            self.recorder.labeller = AppLabeller.open()
        # told (capture id, message) once when a write fails: the manager stops the capture
        self.on_failure = None
        self.received = self.kept = self.attributed = self.unknown = 0
        self.errors = 0  # pipeline faults survived (logged); the capture goes on
        self._running = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture:{capture_id}",
                                        daemon=True)

    def start(self):
        row = capture_table.get(self.catalog, self.id)

        def interfaces(conn):
            capturedb.add_interfaces(conn, [(a.iface, a.name, a.linktype)
                                            for a in self.sniffers.adapters])
            if row is not None:  # a new catalog can register this capture again from it
                capturedb.remember(conn, row)
        self.db.write(interfaces)
        self.attribution.acquire()
        # With eBPF the answer exists once the packet does; only our resolver can be late
        # (the GIL, a saturated CPU). Waiting for it a little longer stores the answer
        # instead of <unknown> (docs/ATTRIBUTION.md, How an answer is built).
        self.hold = max(self.hold, getattr(self.attribution.backend, "hold_floor", 0.0))
        self._running.set()
        self._thread.start()
        # the flow's entry travels with each packet: a tuple reused by a new connection
        # while older packets wait here must not relabel them (Attribution.entry)
        self.sniffers.start(self.q, on_flow=self.attribution.entry,
                            icmp=bool(getattr(self.attribution.backend, "knows_icmp", False)))

    @property
    def dropped(self) -> int:
        """libpcap's drops (live), the sniffer process's buffer overflow and the packets
        that could not be written (a failed write, disk full): DroppedCount."""
        return self.sniffers.dropped() + self.recorder.lost

    @property
    def failure(self) -> str | None:
        """Why writing stopped ("disk full: ..."), or sniffing did; None while all is well."""
        return self.recorder.failure or self._sniffer_failure

    def _sniffer_lost(self, message: str) -> None:
        # on the feeding thread: the capture cannot go on without its sniffer process
        self._sniffer_failure = message
        if self.on_failure is not None:
            self.on_failure(self.id, message)

    def _write_failed(self, message: str) -> None:
        # on the pipeline thread, inside a flush: the stop itself runs elsewhere
        log.warning("capture %s: %s; stopping it", self.id, message)
        if self.on_failure is not None:
            self.on_failure(self.id, message)

    def stop(self):
        """Stop sniffing, drain what was queued, flush everything; blocks until written."""
        self.sniffers.stop()
        self._running.clear()
        self._thread.join(60)
        self.recorder.finish_labels()
        self.recorder.flush(wait=True)
        self.attribution.release()
        self._remember_end()
        self.update_catalog(final=True)
        r = self.recorder
        log.info("capture %s stopped: %d packets received, %d stored, %d not written, "
                 "%d dropped before us", self.id, self.received, r.packets, r.lost,
                 self.dropped - r.lost)

    def _remember_end(self) -> None:
        """Mark the capture database as stopped by the service (recovery.py reads it)."""
        message = self.failure or ""
        try:
            self.db.write(lambda c: capturedb.remember_end(c, time.time_ns(), message), 10)
        except Exception as exc:  # noqa: BLE001 - then it is registered INTERRUPTED; no more
            log.info("capture %s: end not recorded in its database (%s)", self.id, exc)

    def _run(self):
        # chunks [arrival time, batch from the sniffer's thread, index of its next packet]
        buf: deque = deque()
        last_update = last_flush = time.monotonic()
        get = self.q.get
        while self._running.is_set() or not self.q.empty() or buf:
            try:
                batch = get(timeout=0.02)
                got = [batch]
                n = len(batch)
                while n < 4096:
                    try:
                        batch = self.q.get_nowait()
                    except queue.Empty:
                        break
                    got.append(batch)
                    n += len(batch)
            except queue.Empty:
                got, n = [], 0
            now = time.monotonic()
            for batch in got:
                # decoded and attribution asked for by the sniffer already
                buf.append([now, batch, 0])
            self.received += n
            draining = not self._running.is_set()
            try:
                self._release(buf, now, draining)
                if now - last_flush >= 0.1:
                    # live readers (capture_stream) see packets within ~0.1 s
                    self.recorder.flush()
                    last_flush = now
                if now - last_update >= 1.0:
                    self.update_catalog()
                    last_update = now
            except Exception:  # noqa: BLE001 - a bad batch must not end the capture
                self.errors += 1
                if self.errors <= 5 or self.errors % 1000 == 0:
                    log.exception("capture %s: pipeline error %d", self.id, self.errors)

    @property
    def queued(self) -> int:
        """Packets between the sniffer's feeding thread and this pipeline."""
        return max(0, self.sniffers.fed - self.received)

    def _release(self, buf: deque, now: float, draining: bool) -> None:
        """Emit packets in arrival order; an unresolved flow holds the line ≤ hold seconds."""
        flows = self.attribution.flows
        rec = self.recorder
        pick, add, conn_for = self.target.pick, rec.add, rec.conn_for
        # the common packets are recorded (or passed, not the capture's) in C, up to the
        # first packet this loop must decide about (capture/_record.c): ~3 us a packet less
        # of the lock
        fast = compiled_record
        t = self.target
        target = None if t.system else (t.pids, t.children, t.thread_id)
        hold = self.hold
        while buf:
            chunk = buf[0]
            arrived, items, i = chunk
            waited = now - arrived < hold and not draining
            end = len(items)
            kept = attributed = 0
            try:
                while i < end:
                    if fast is not None:
                        i, k, a, full, error = fast(items, i, end, rec, PENDING, OUT, IN,
                                                    target)
                        labeller = rec.labeller
                        if labeller is not None and labeller.settled:
                            labeller.complete_settled(rec.batch)  # nDPI done in C: name them
                        kept += k
                        attributed += a
                        if error is not None:
                            raise error
                        if full:
                            rec.flush()
                            continue
                        if i >= end:
                            break
                    ts, iface, data, d, key, ref = items[i]
                    labels = None
                    if key is not None:
                        entry = ref if ref is not None else flows.get(flow_key(*key))
                        labels = entry[0] if entry is not None else []
                        if labels is PENDING or (entry is not None and entry[3] and not (
                                t.system and originator_final(labels, entry[4]))):
                            # unresolved, or a second look is due (attribution.RECHECK)
                            # that may change what this capture stores
                            if waited:
                                return
                            if labels is PENDING:
                                labels = []
                    i += 1
                    lab = pick(labels)
                    if lab is False:
                        continue
                    conn = conn_for(d, ts) if key is not None else None
                    add(ts, iface, data, len(data), d, conn, lab or None)
                    kept += 1
                    if lab:
                        attributed += 1
            finally:
                # counted once per chunk, also when a packet's hold or a fault stops it
                chunk[2] = i
                self.kept += kept
                self.attributed += attributed
                self.unknown += kept - attributed
            buf.popleft()

    def update_catalog(self, final: bool = False):
        r = self.recorder
        counts = (r.packets, r.bytes, r.next_conn - 1)
        if final and r.failure is not None:
            counts = self.stored_counts()
            r.lost += max(0, r.packets - counts[0])  # counted but not stored: dropped
            r.packets, r.bytes = counts[0], counts[1]
        return capture_table.update_counters(self.catalog, self.id, counts[0], counts[1],
                                             self.dropped, counts[2])

    def stored_counts(self) -> tuple:
        """(packets, bytes, connections) as the capture database holds them: after a failed
        write, what was really stored is the truth."""
        row = self.db.one("SELECT count(*), coalesce(sum(len), 0), "
                          "(SELECT count(*) FROM connections) FROM packets")
        return tuple(row)
