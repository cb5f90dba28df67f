"""Flow → owning process, resolved off the capture path.

Pipelines ask `status(key)` for each packet's flow. A flow never seen before is
queued for the resolver thread (sock_diag exact lookup → inode → pid, see
owners.py); until it answers, the flow is PENDING and the pipeline may hold its
packets for a few milliseconds. Answers stick to the flow after its process
exits (late FIN/ACKs, retransmissions), and a periodic sweep labels flows that
existed before the capture or were missed.
"""

from __future__ import annotations

import heapq
import logging
import queue
import sys
import threading
import time
from collections import OrderedDict
from collections import deque

from apppaccap.attribution.fastpath import FastPath
from apppaccap.attribution.labels import PENDING
from apppaccap.attribution.labels import Label
from apppaccap.attribution.labels import flow_key
from apppaccap.attribution.labels import refine
from apppaccap.attribution.labels import thread_unknown
from apppaccap.attribution.owners import boost_current_thread
from apppaccap.attribution.sweep import sweep
from apppaccap.store.faults import reason
from apppaccap.store.processes import remember_thread

log = logging.getLogger(__name__)

MAX_FLOWS = 200_000     # LRU bound of the flow table
RETRY_MISS = 1.0        # seconds before a flow nobody owned is asked again (sweep)
RETRIES = 4             # quick re-asks (2, 4, 6, 8 ms later) before a flow is called unowned
REST_BACKLOG = 20_000    # flows whose socket-table end waits behind first questions
RECHECK = 0.03          # seconds before a listener-named or thread-less flow is asked again
# While that second look is due the pipelines hold the flow's packets (within their hold
# budget), so every capture stores the same, final answer for them.


class Attribution:
    """Shared by every live capture; started with the first one."""

    def __init__(self, backend, book, *, idle_grace: float = 15.0, sweep_interval: float = 1.0,
                 clock=time.monotonic, is_local=None, boost: bool = True,
                 fastpath: bool = False):
        self.backend = backend
        self.book = book
        self.idle_grace = idle_grace
        self.sweep_interval = sweep_interval
        self.clock = clock
        # the kernel's backend answers first questions itself (EbpfOwners.resolve_first);
        # the question's time it is given spares a drain, so only in its own clock
        self._kernel_first = getattr(backend, "resolve_first", None) \
            if clock is time.monotonic else None
        self.boost = boost  # real-time resolver (docs/DECISIONS.md: attribution)
        self.use_fastpath = fastpath  # a separate process for flow starts (fastpath.py)
        # both ends local (loopback): the originator's socket may not be findable yet
        self.is_local = is_local or (lambda ip: ip.startswith("127.") or ip == "::1")
        self.flows: OrderedDict = OrderedDict()  # key → [labels | PENDING, resolved_at, seen_at]
        # Held to add or remove flows and to copy the table. Single reads need no lock, but
        # a copy iterates, and a garbage collection inside it may run a finalizer that lets
        # another thread add a flow meanwhile: "OrderedDict mutated during iteration".
        self._flows_lock = threading.Lock()
        self._labels: dict[tuple, Label] = {}    # (pid, start_ns, tid) → Label without local
        self._queue: queue.Queue = queue.Queue()
        # the socket table's ends of flows already answered by the kernel: after every
        # first question (a flow waiting for its answer holds captures; these hold none
        # but process captures), at most REST_BACKLOG of them
        self._rest: deque = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.users = 0
        self._backend_started = False
        self._infos: dict = {}     # pid → ProcInfo sent by the fast-path process
        self.fastpath = None
        self.latencies: list[float] = []         # seconds from request to answer (last 10k)
        self.stats = {"requests": 0, "resolved": 0, "missed": 0, "swept": 0}

    # -- lifecycle -----------------------------------------------------------
    def acquire(self) -> None:
        with self._lock:
            self.users += 1
            if self.users > 1:
                return
        self._stop.clear()
        # a stop sentinel left by the last release() must not end the new resolver; the
        # lookups queued with it still count
        left = []
        while True:
            try:
                left.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for item in left:
            if item is not None:
                self._queue.put(item)
        if not self._backend_started:
            # The backend (netlink sockets, proc-connector listener) lives until close():
            # its caches make the next capture's first lookups fast.
            self.backend.start()
            self._backend_started = True
            # an eBPF backend that loaded answers exactly: no socket-table race to win
            if self.use_fastpath and not getattr(self.backend, "active", False):
                fp = FastPath(self.deliver)
                self.fastpath = fp if fp.start() else None
        # A thread waiting for the GIL waits up to the switch interval (5 ms by default);
        # the socket table races short-lived processes, so hand the GIL over faster. Not
        # with eBPF: the kernel kept the answer, and the faster hand-over cost every other
        # thread (API answers ~10 % more CPU, docs/INTERNALS.md).
        self._switch = sys.getswitchinterval()
        if not getattr(self.backend, "active", False):
            sys.setswitchinterval(min(self._switch, 0.0005))
        for name, fn in (("resolver", self._resolver), ("sweeper", self._sweeper)):
            t = threading.Thread(target=fn, name=f"attribution-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def release(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users > 0:
                return
        self._stop.set()
        self._queue.put(None)
        for t in self._threads:
            t.join(5)
        self._threads.clear()
        self._rest.clear()
        for _, entry in self.flow_items():
            entry[3] = 0  # second looks died with the resolver: nothing may wait for them
        sys.setswitchinterval(self._switch)

    def close(self) -> None:
        """Stop the backend for good (service shutdown)."""
        if self._backend_started:
            if self.fastpath is not None:
                self.fastpath.stop()
                self.fastpath = None
            self.backend.stop()
            self._backend_started = False

    def flow_items(self) -> list:
        """A copy of the flow table's (key, entry) pairs, safe to walk while others add."""
        with self._flows_lock:
            return list(self.flows.items())

    # -- the pipeline's side -------------------------------------------------
    def status(self, key5: tuple, syn: bool = False):
        """Labels of a flow (list, maybe empty), or PENDING after queueing a lookup.

        key5 = (proto, src, sport, dst, dport) of the packet. `syn` marks a new TCP
        connection attempt, which re-resolves a 5-tuple reused by another process.
        """
        return self.entry(key5, syn)[0]

    def entry(self, key5: tuple, syn: bool = False) -> list:
        """The flow's table entry as status() leaves it. A packet that keeps it keeps its
        flow's answer even when a reused tuple (a new SYN) gets a new entry meanwhile."""
        now = self.clock()
        fk = flow_key(*key5)
        entry = self.flows.get(fk)
        if entry is not None:
            labels, resolved_at, seen = entry[:3]
            entry[2] = now
            if labels is PENDING:
                return entry
            # A SYN reusing a tuple (a client port reused at once: the server holds the
            # TIME_WAIT) is asked again; the socket table only after a second, eBPF always
            # (its answer is the new SYN's sender, seen in the kernel).
            stale = now - seen > self.idle_grace or (
                syn and now - resolved_at > getattr(self.backend, "syn_reresolve", 1.0))
            if labels and not stale:
                return entry
            if not labels and not stale and now - resolved_at < RETRY_MISS:
                return entry
        entry = [PENDING, now, now, 0, key5]
        with self._flows_lock:
            self.flows[fk] = entry
            if len(self.flows) > MAX_FLOWS:
                self.flows.popitem(last=False)
        self.stats["requests"] += 1
        self._queue.put((key5, fk, now))
        return entry

    # -- resolver ------------------------------------------------------------
    def _resolver(self):
        if self.boost:
            try:
                boost_current_thread()
            except Exception:  # noqa: BLE001 - priority is an optimisation only
                log.debug("could not raise resolver priority", exc_info=True)
        delayed: list = []  # heap of (due, seq, item): retries that must not block others
        seq = 0
        while not self._stop.is_set():
            now = self.clock()
            if delayed and delayed[0][0] <= now:
                item = heapq.heappop(delayed)[2]
            elif self._rest:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = self._rest.popleft()
            else:
                timeout = max(0.0, delayed[0][0] - now) if delayed else None
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    continue
            if item is None:
                break
            key5, fk, asked = item[:3]
            attempt = item[3] if len(item) > 3 else 0
            recheck = len(item) > 4
            rest = len(item) > 5   # the ends the kernel did not know, asked after its answer
            if recheck and item[4] > now:
                seq += 1
                heapq.heappush(delayed, (item[4], seq, item))
                continue
            try:
                _, src, sport, dst, dport = key5
                first = not attempt and not recheck
                owners, partial = self._ask(key5, asked, first)
                src_missing = not any(o.local_is_src for o in owners) and self.is_local(src)
                if attempt < RETRIES and (not owners or src_missing):
                    # Nobody found yet, or the local originator missing (a process that
                    # exec'd a moment ago; a server whose socket appears after the handshake):
                    # ask again in a few ms while the pipeline holds the flow's packets.
                    seq += 1
                    due = self.clock() + 0.002 * (attempt + 1)
                    heapq.heappush(delayed, (due, seq, (key5, fk, asked, attempt + 1)))
                    continue
                labels = self.labels_for(
                    (o, (src, sport) if o.local_is_src else (dst, dport)) for o in owners)
                via_listener = any(getattr(o, "listener", False) for o in owners)
            except Exception as exc:  # noqa: BLE001 - one bad lookup must not stop attribution
                self._fault(f"resolving {key5}", exc)
                labels, via_listener, partial = [], False, False
            now = self.clock()
            entry = self.flows.get(fk)
            again = False
            if entry is not None and (entry[0] is PENDING or (recheck and labels)):
                if recheck and entry[0]:
                    labels = refine(entry[0], labels)
                again = partial or ((via_listener or thread_unknown(labels))
                                    and (not recheck or rest))
                if again:
                    # the hold flag first: a pipeline that sees the labels sees it too
                    self._schedule_recheck(entry, fk, now, rest=partial)
                entry[0], entry[1] = labels, now
            if recheck and entry is not None and not again:
                entry[3] = 0
            self.stats["resolved" if labels else "missed"] += 1
            if len(self.latencies) < 10000 and not recheck:  # second looks wait on purpose
                self.latencies.append(now - asked)

    def _fault(self, what: str, exc: Exception) -> None:
        """Log a failure the threads survive: the first and every 1000th, with a traceback
        only when it is not the disk's fault (a full disk fails every lookup that has to
        record a new process)."""
        self.stats["errors"] = n = self.stats.get("errors", 0) + 1
        if n == 1 or n % 1000 == 0:
            log.error("%s failed (%d failure(s) so far): %s", what, n, exc,
                      exc_info=None if reason(exc) else exc)

    def _ask(self, key5, asked, first: bool) -> tuple[list, bool]:
        """(owners, partial). A first question to the kernel's backend may be answered
        with the originator the kernel saw in context alone (partial: the other end is
        asked of the socket table at once, as a second look) - a system capture stores
        the originator's label only and need not wait for the table
        (labels.originator_final). A retry or second look drains the ring in any case."""
        if first and self._kernel_first is not None:
            return self._kernel_first(*key5, asked=asked)
        return self.backend.resolve(*key5), False

    def _schedule_recheck(self, entry, fk, now, rest: bool = False) -> None:
        """Look again shortly: a listener-named flow once the connection is accepted (a
        fork-per-connection server hands it on), a thread-less one when the thread is
        likely blocked on the socket; at once for the ends the kernel did not know
        (`rest`). Asked in the flow's own orientation (entry[4]), so the originator's owner
        stays first."""
        if not rest:
            entry[3] = now + RECHECK
            self._queue.put((entry[4], fk, now, RETRIES, entry[3]))
            return
        entry[3] = now
        self._rest.append((entry[4], fk, now, RETRIES, now, "rest"))
        if len(self._rest) > REST_BACKLOG:   # far behind: the oldest keep the kernel's ends
            old = self.flows.get(self._rest.popleft()[1])
            if old is not None:
                old[3] = 0

    def deliver(self, key5: tuple, owners, infos: dict) -> None:
        """Owners found by the fast-path process (fastpath.py): they win over PENDING and
        over a miss, never over an answer already given."""
        self._infos.update(infos)
        _, src, sport, dst, dport = key5
        labels = self.labels_for(
            (o, (src, sport) if o.local_is_src else (dst, dport)) for o in owners)
        if not labels:
            return
        fk = flow_key(*key5)
        now = self.clock()
        entry = self.flows.get(fk)
        again = thread_unknown(labels) or any(getattr(o, "listener", False) for o in owners)
        if entry is None:
            entry = [PENDING, now, now, 0, key5]
            if again:
                self._schedule_recheck(entry, fk, now)   # the hold flag before the labels
            entry[0] = labels
            with self._flows_lock:
                self.flows[fk] = entry
        elif entry[0] is PENDING or entry[0] == [] or (
                len(labels) > len(entry[0]) and labels[0].pid == entry[0][0].pid) or (
                labels[0].local == (src, sport) and entry[0][0].local != (src, sport)):
            # better: more ends known, or the originator where we only had the peer
            if again and not entry[3]:
                self._schedule_recheck(entry, fk, now)
            entry[0], entry[1] = labels, now
        self.stats["fastpath"] = self.stats.get("fastpath", 0) + 1

    def labels_for(self, pairs, memo: dict | None = None) -> list[Label]:
        """(Owner, local endpoint) pairs → Labels, dropping pids whose facts are gone;
        `memo` keeps each (pid, tid)'s answer for the caller's pass over many flows."""
        out = []
        for o, local in pairs:
            if memo is None:
                base = self.label_for_pid(o.pid, o.tid)
            elif (o.pid, o.tid) in memo:
                base = memo[o.pid, o.tid]
            else:
                base = memo[o.pid, o.tid] = self.label_for_pid(o.pid, o.tid)
            if base is not None:
                out.append(Label(base.process_id, base.pid, base.tid, base.proc, local))
        return out

    def label_for_pid(self, pid: int, tid: int | None = None) -> Label | None:
        """A Label (with our ProcessId) for a pid, from the backend's process facts."""
        info = self._infos.get(pid) or self.backend.process(pid)
        if info is None:
            return None
        tid = tid or 0
        key = (pid, info.start_time_ns, tid)
        lab = self._labels.get(key)
        if lab is None:
            rec = {"pid": pid, "ppid": info.ppid, "name": info.name, "path": info.path,
                   "cmdline": info.cmdline, "user": info.user, "start_time": info.start_time_ns}
            process_id = self.book.identify([rec])[0]
            lab = Label(process_id, pid, tid, rec, None)
            if tid:
                self._remember_thread(process_id, pid, tid)
            if len(self._labels) > 50000:
                self._labels.clear()
            self._labels[key] = lab
        return lab

    def _remember_thread(self, process_id: int, pid: int, tid: int) -> None:
        """A thread seen owning traffic joins the catalog (process_list_threads flags=1
        then lists it after it has ended)."""
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as fh:
                name = fh.read().strip()
        except OSError:
            name = ""
        now = time.time_ns()
        catalog = getattr(self.book, "catalog", None)
        if catalog is not None:
            remember_thread(catalog, process_id, tid, name, now)

    # -- safety net ----------------------------------------------------------
    def _sweeper(self):
        while not self._stop.wait(self.sweep_interval):
            try:
                self._sweep()
            except Exception as exc:  # noqa: BLE001
                self._fault("attribution sweep", exc)

    def _sweep(self):
        sweep(self)
