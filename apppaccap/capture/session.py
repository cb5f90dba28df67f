"""A live capture: its sniffers, its pipeline thread and its database.

sniffers → bounded queue → pipeline thread (decode, attribution, hold buffer,
target filter) → Recorder → the capture database's writer thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque

from apppaccap.capture.attribution import PENDING
from apppaccap.capture.recorder import Recorder
from apppaccap.capture.recorder import flow_key
from apppaccap.capture.sniffer import Sniffer

log = logging.getLogger(__name__)

QUEUE_PACKETS = 200_000
TCP, UDP = 6, 17


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


class CaptureSession:
    def __init__(self, capture_id: int, handles: list, db, attribution, target: Target,
                 catalog, *, local_ips=frozenset(), hold_ms: int = 50, on_stats=None):
        self.id = capture_id
        self.q: queue.Queue = queue.Queue(QUEUE_PACKETS)
        self.sniffers = [Sniffer(h, i, self.q, name, on_flow=attribution.status)
                         for i, (name, h) in enumerate(handles)]
        self.linktypes = [s.linktype for s in self.sniffers]
        self.db = db
        self.attribution = attribution
        self.target = target
        self.catalog = catalog
        self.hold = hold_ms / 1000.0
        self.recorder = Recorder(db, local_ips=local_ips)
        self.recorder.on_flush = on_stats
        self.received = self.kept = self.attributed = self.unknown = 0
        self.errors = 0  # pipeline faults survived (logged); the capture goes on
        self._running = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture:{capture_id}",
                                        daemon=True)

    def start(self):
        def interfaces(conn):
            conn.executemany("INSERT INTO interfaces(id, name, linktype) VALUES (?,?,?)",
                             [(s.iface, s.name, s.linktype) for s in self.sniffers])
        self.db.write(interfaces)
        self.attribution.acquire()
        self._running.set()
        self._thread.start()
        for s in self.sniffers:
            s.start()

    @property
    def dropped(self) -> int:
        """libpcap's drops (live) plus our queue's overflow: DroppedCount."""
        return sum(s.libpcap_drops() + s.overflow for s in self.sniffers)

    def stop(self):
        """Stop sniffing, drain what was queued, flush everything; blocks until written."""
        for s in self.sniffers:
            s.stop()
        self._running.clear()
        self._thread.join(60)
        self.recorder.flush(wait=True)
        self.attribution.release()
        self.update_catalog(final=True)

    def _run(self):
        buf: deque = deque()
        last_update = last_flush = time.monotonic()
        get = self.q.get
        while self._running.is_set() or not self.q.empty() or buf:
            try:
                item = get(timeout=0.02)
                batch = [item]
                while len(batch) < 4096:
                    try:
                        batch.append(self.q.get_nowait())
                    except queue.Empty:
                        break
            except queue.Empty:
                batch = []
            now = time.monotonic()
            for ts, iface, data, d, key in batch:
                # decoded and attribution asked for by the sniffer already
                buf.append((now, ts, iface, data, d, key))
            self.received += len(batch)
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

    def _release(self, buf: deque, now: float, draining: bool) -> None:
        """Emit packets in arrival order; an unresolved flow holds the line ≤ hold seconds."""
        flows = self.attribution.flows
        rec = self.recorder
        while buf:
            arrived, ts, iface, data, d, key = buf[0]
            labels = None
            if key is not None:
                entry = flows.get(flow_key(*key))
                labels = entry[0] if entry is not None else []
                if labels is PENDING or (entry is not None and entry[3]):
                    # unresolved, or a second look is due (attribution.RECHECK)
                    if now - arrived < self.hold and not draining:
                        return
                    if labels is PENDING:
                        labels = []
            buf.popleft()
            lab = self.target.pick(labels)
            if lab is False:
                continue
            conn = rec.conn_for(d, ts) if key is not None else None
            rec.add(ts, iface, data, len(data), d, conn, lab or None)
            self.kept += 1
            if lab:
                self.attributed += 1
            else:
                self.unknown += 1

    def update_catalog(self, final: bool = False):
        r = self.recorder
        values = (r.packets, r.bytes, self.dropped, r.next_conn - 1, self.id)
        self.catalog.submit(lambda c: c.execute(
            "UPDATE captures SET packet_count=?, byte_count=?, dropped_count=?, "
            "connection_count=? WHERE id=?", values))
