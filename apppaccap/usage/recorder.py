"""The usage recorder: counters per program × remote endpoint × direction.

Sniffing threads (counting.py, one per up adapter; the per-packet work in C where
usage/_usagecount.c is built) count bytes per raw 5-tuple. Once a second the tick thread
takes those counters, labels each flow through a read-only FlowLookup
(attribution/lookup.py: a live capture's answer when it has one, else its own
sock_diag/procfs lookups; it never touches the captures' flow table; a flow still being
resolved waits up to 3 ticks, then counts as nobody's, process_id 0), and
files them:
- in memory, one dict per second for the last 10 minutes (the ring, `RING_SECONDS`);
- per minute, written to the catalog's `usage_minute` (store/usage.py) when the minute
  ends and at stop, so a kill -9 loses at most the last minute.

Application labels (usage/applabel.py): each counting thread feeds nDPI the first packets
of every flow; the tick files each flow's label (or a live capture's, read only) under its
program × remote endpoint (`app_labels`, bounded), written with the minute rows.

Direction and remote end: the label's own socket (Label.local) is the program's end, the
other is remote; on loopback both ends are local and the label is the client's (the flow's
originator, attribution/resolver.py), so the remote end is the server. Without a local
endpoint the local-address test decides (attribution/localaddr.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections import deque

from apppaccap.attribution.labels import PENDING
from apppaccap.attribution.labels import flow_key
from apppaccap.attribution.localaddr import unmap
from apppaccap.capture.adapters import default_capture_adapters
from apppaccap.store import usage as usage_table
from apppaccap.usage.applabel import FlowLabeller
from apppaccap.usage.applabel import FlowLabels
from apppaccap.usage.counting import Counter
from apppaccap.usage.counting import open_usage_handle
from apppaccap.usage.dnsnames import DnsNames
from apppaccap.usage.flowstart import FlowStarts

log = logging.getLogger(__name__)

RING_SECONDS = 600
# A flow still being resolved waits this many ticks before its bytes count as nobody's:
# the lookup's ProcessId is a catalog write, and under a loaded disk 3 s was too short
# (a 2.5 s curl download went to <unknown> whole); waiting only delays the counts.
PENDING_TICKS = 10
IN, OUT = 0, 1
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
MAX_ENDPOINT_LABELS = 50_000  # program × remote endpoint labels kept in memory
MAX_UNDECIDED = 20_000  # flows whose bytes wait for their label (each looked at per tick)


class UsageRecorder:
    def __init__(self, catalog, lookup, is_local, adapters=None, from_capture=None,
                 labels_on: bool = True):
        self.catalog = catalog
        self.lookup = lookup  # attribution/lookup.py FlowLookup: read-only answers
        self.is_local = is_local
        self.adapters = adapters
        self.counters: list[Counter] = []
        self.names = DnsNames()  # ip → hostname from the DNS answers seen
        self.starts = FlowStarts(lookup.on_syn)
        # (second, {(process_id, remote_ip, remote_port, proto, dir): [packets, bytes]},
        #  {process_id: set of flow keys})
        self.ring: deque = deque(maxlen=RING_SECONDS)
        self.programs: dict[int, tuple] = {}  # process_id → (pid, name, path)
        self.labels_on = labels_on  # setting app_labels_enabled when the recorder began
        self.flow_labels = FlowLabels(from_capture)  # flow key → nDPI label
        # (process_id, remote_ip, remote_port, proto) → (AppProtocol, App, Category): the
        # label of its latest labelled flow
        self.app_labels: OrderedDict = OrderedDict()
        # flow key → (key5, endpoints its bytes were filed under) while nDPI has not decided:
        # a flow's first second (handshake) is counted before its label exists, perhaps under
        # another endpoint (its owner not known yet); those get the label when it comes
        self._undecided: OrderedDict = OrderedDict()
        self.minute: int | None = None
        self.minute_rows: dict = {}
        self.lost_rows = 0
        self.before = -1  # the latest minute written before this recorder began
        self._rows_lock = threading.Lock()  # minute_rows: the tick writes, readers copy
        self._pending: dict = {}  # raw key → [packets, bytes, key5, ticks waited]
        self._stop = threading.Event()
        self._started = False
        self._thread = threading.Thread(target=self._run, name="usage-tick", daemon=True)

    # -- lifecycle (start and stop run on the service's own thread) ------------------
    def start(self) -> None:
        self.before = usage_table.last_minute(self.catalog)
        names = self.adapters if self.adapters is not None else default_capture_adapters()
        for name in dict.fromkeys(names):
            try:
                h = open_usage_handle(name)
            except Exception as exc:  # noqa: BLE001 - count what can be counted
                log.info("usage: adapter %s not counted (%s)", name, exc)
                continue
            labeller = FlowLabeller.open(self.flow_labels) if self.labels_on else None
            self.counters.append(Counter(h, name, self.lookup.status, labeller))
        self.lookup.start()
        self._started = True
        try:
            self.names.seed(usage_table.hostnames(self.catalog))
        except Exception as exc:  # noqa: BLE001 - names are a bonus
            log.info("usage: hostnames not read back (%s)", exc)
        self.names.watch([c.name for c in self.counters])
        self.starts.watch([c.name for c in self.counters])
        for c in self.counters:
            c.start()
        self._thread.start()
        log.info("usage accounting on %s", ", ".join(c.name for c in self.counters) or
                 "no adapter")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        for c in self.counters:
            c.stop()
        self.names.stop()
        self.starts.stop()
        if self._started:
            self.lookup.stop()
            self._started = False
        self._flush_minute()

    @property
    def dropped(self) -> int:
        return sum(c.drops() for c in self.counters)

    # -- the tick ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time_ns()
            self._stop.wait((SECOND - now % SECOND) / 1e9)
            try:
                self.tick(time.time_ns() // SECOND - 1)
            except Exception:  # noqa: BLE001 - counting goes on after a bad tick
                log.exception("usage: tick failed")
        self.tick(time.time_ns() // SECOND)  # what the last second counted

    def tick(self, second: int) -> None:
        lookup = self.lookup
        pending, self._pending = self._pending, {}
        for c in self.counters:
            for raw, acc in c.take().items():
                old = pending.get(raw)
                if old is None:
                    pending[raw] = [acc[0], acc[1], acc[2], 0]
                else:
                    old[0] += acc[0]
                    old[1] += acc[1]
        by_key: dict = {}
        flows_by_program: dict = {}
        for raw, (packets, nbytes, key5, waited) in pending.items():
            proto, src, sport, dst, dport = key5
            label = None
            if sport or dport:
                labels = lookup.labels(key5)
                if labels is PENDING:
                    if waited < PENDING_TICKS:
                        self._pending[raw] = [packets, nbytes, key5, waited + 1]
                        continue
                    labels = []
                label = labels[0] if labels else None
            pid = label.process_id if label is not None else 0
            if label is not None and pid not in self.programs:
                p = label.proc or {}
                self.programs[pid] = (label.pid, p.get("name") or "", p.get("path") or "")
            local = label.local if label is not None else None
            if local is not None:
                local = (unmap(local[0]), local[1])  # a dual-stack socket: ::ffff:a.b.c.d
            if local is not None and (src, sport) == local:
                out = True
            elif local is not None and (dst, dport) == local:
                out = False
            else:
                out = self.is_local(src) and not self.is_local(dst)
            rip, rport = (dst, dport) if out else (src, sport)
            k = (pid, rip, rport, proto, OUT if out else IN)
            acc = by_key.get(k)
            if acc is None:
                by_key[k] = [packets, nbytes]
            else:
                acc[0] += packets
                acc[1] += nbytes
            flows_by_program.setdefault(pid, set()).add(flow_key(*key5))
            if sport or dport:
                app = self.flow_labels.of(key5)
                if app is not None:
                    self._label(k[:4], app)
                elif self.labels_on:
                    self._wait_label(key5, k[:4])
        self._label_decided()
        self.ring.append((second, by_key, flows_by_program))
        minute = second // 60
        if self.minute is not None and minute != self.minute:
            self._flush_minute()
        self.minute = minute
        with self._rows_lock:
            self._add_rows(minute, by_key)

    def _wait_label(self, key5: tuple, endpoint: tuple) -> None:
        fk = flow_key(*key5)
        entry = self._undecided.get(fk)
        if entry is None:
            entry = self._undecided[fk] = (key5, set())
            while len(self._undecided) > MAX_UNDECIDED:
                self._undecided.popitem(last=False)
        entry[1].add(endpoint)

    def _label_decided(self) -> None:
        """Endpoints of flows whose label came since (nDPI decided, or gave up)."""
        for fk, (key5, endpoints) in list(self._undecided.items()):
            app = self.flow_labels.of(key5)
            if app is not None:
                del self._undecided[fk]
                for endpoint in endpoints:
                    self._label(endpoint, app)
            elif self.flow_labels.settled(fk):
                del self._undecided[fk]   # decided: no label

    def _label(self, endpoint: tuple, app: tuple) -> None:
        labels = self.app_labels
        if labels.get(endpoint) != app:
            labels[endpoint] = app
        labels.move_to_end(endpoint)
        while len(labels) > MAX_ENDPOINT_LABELS:
            labels.popitem(last=False)

    def _add_rows(self, minute: int, by_key: dict) -> None:
        rows = self.minute_rows
        for (pid, rip, rport, proto, d), (p, b) in by_key.items():
            k = (minute, pid, rip, rport, proto, d)
            acc = rows.get(k)
            if acc is None:
                rows[k] = [p, b]
            else:
                acc[0] += p
                acc[1] += b

    def _flush_minute(self) -> None:
        with self._rows_lock:
            rows, self.minute_rows = self.minute_rows, {}
        names = self.names.take_new()
        if not rows and not names:
            return
        minute = self.minute if self.minute is not None else time.time_ns() // MINUTE

        labels = self.app_labels
        apps = {k[1:5]: labels[k[1:5]] for k in rows if k[1:5] in labels}

        def write(conn):
            usage_table.add(conn, rows, apps)
            usage_table.add_names(conn, names, minute)
        try:
            self.catalog.write(write, 30)
        except Exception as exc:  # noqa: BLE001 - a full disk loses this minute, no more
            self.lost_rows += len(rows)
            log.warning("usage: %d minute rows not written (%s)", len(rows), exc)

    # -- readers (web threads): copies of the ring ----------------------------------------
    def seconds(self, first: int, last: int) -> list:
        """The ring's (second, by_key, flows) entries with first <= second <= last."""
        return [e for e in list(self.ring) if first <= e[0] <= last]

    def unflushed(self) -> dict:
        """The current minute's rows, not in the catalog yet."""
        with self._rows_lock:
            return dict(self.minute_rows)
