"""Read-only flow → owner answers for observers that are not captures (usage accounting).

Live captures depend on `Attribution.flows`: the order of a flow's labels (originator
first), its second looks and its hold flags. An observer that inserted flows there, or
refined them, changed what captures stored (a curl flow labelled by the usage recorder's
first packet instead of the capture's SYN). `FlowLookup` never writes to that table: it
reads a capture's answer when there is one (a peek, no bookkeeping) and otherwise asks its
own backend (its own sock_diag socket and /proc inode cache, no process-event listener, no
real-time thread, no switch-interval change) on its own plain thread, keeping the answers
in a small LRU of its own. ProcessIds come from the shared ProcessBook, so a program has
the same ProcessId in captures and in usage.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections import OrderedDict

from apppaccap.attribution.labels import PENDING
from apppaccap.attribution.labels import Label
from apppaccap.attribution.labels import flow_key
from apppaccap.attribution.procfs import read_process

log = logging.getLogger(__name__)

MAX_FLOWS = 50_000     # LRU bound of the lookup's own table
RETRY_MISS = 2.0       # seconds before a flow nobody owned is asked again
RESOLVED_SYN = 1.0     # a SYN on a flow answered longer ago re-resolves (5-tuple reuse)
RETRY_MS = (2, 5, 10)  # quick re-asks at a SYN whose originator has no socket yet


def own_backend(setting: str = "auto"):
    """A backend of the lookup's own: sock_diag + /proc without the event listener and the
    per-flow thread search (threads do not matter to usage), with the kernel's record
    first (EbpfOwners: its own load of the programs) unless `attribution_backend` is
    socket-table — a connection opened and closed between two looks (a 5 ms curl) is then
    still named; psutil off Linux."""
    from apppaccap.attribution.owners import LinuxOwners
    from apppaccap.attribution.owners import PsutilOwners
    if not sys.platform.startswith("linux"):
        return PsutilOwners()
    try:
        inner = LinuxOwners(events=False, threads=False)
    except OSError as exc:
        log.info("usage lookup: sock_diag unavailable (%s), using psutil", exc)
        return PsutilOwners()
    if setting == "socket-table":
        return inner
    from apppaccap.attribution.kernelowners import EbpfOwners
    return EbpfOwners(inner)


class FlowLookup:
    """status(key5, syn) → labels (maybe []) or PENDING, never blocking; start/stop."""

    def __init__(self, shared, book, backend=None, clock=time.monotonic,
                 setting: str = "auto"):
        self.shared = shared      # the captures' Attribution, or None: read only
        self.book = book          # ProcessBook: (pid, start) → ProcessId
        self.backend = backend
        self.setting = setting    # attribution_backend, for a backend of its own
        self.clock = clock
        self.flows: OrderedDict = OrderedDict()  # fk → [labels | PENDING, resolved_at, key5]
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._procs: dict = {}  # (pid, start_ns) → (process_id, proc dict)
        self._thread = None
        self.stats = {"requests": 0, "resolved": 0, "missed": 0, "shared": 0}

    def start(self) -> None:
        if self.backend is None:
            self.backend = own_backend(self.setting)
            self.backend.start()  # EbpfOwners loads here (or says once why not)
        self._thread = threading.Thread(target=self._run, name="usage-lookup", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close the backend's sockets (everything it held goes)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(5)
            self._thread = None
        if self.backend is not None:
            try:
                self.backend.stop()
            except OSError:
                pass
        with self._lock:
            self.flows.clear()
        self._procs.clear()

    # -- the asking side (counting threads) ----------------------------------------------
    def status(self, key5: tuple, syn: bool = False):
        fk = flow_key(*key5)
        now = self.clock()
        entry = self.flows.get(fk)
        if entry is not None:
            labels, resolved_at = entry[0], entry[1]
            if labels is PENDING:
                return PENDING
            if labels and not (syn and now - resolved_at > RESOLVED_SYN):
                return labels
            if not labels and now - resolved_at < RETRY_MISS:
                return labels
        shared = self._peek(fk)
        with self._lock:
            if shared:
                self.flows[fk] = [shared, now, key5]
                self.stats["shared"] += 1
            else:
                self.flows[fk] = [PENDING, now, key5]
                self._queue.put((key5, fk, None))
                self.stats["requests"] += 1
            self.flows.move_to_end(fk)
            while len(self.flows) > MAX_FLOWS:
                self.flows.popitem(last=False)
        return shared or PENDING

    def on_syn(self, key5: tuple) -> None:
        """A flow starts (a client's SYN, seen at once): resolve it here and now, on the
        caller's thread, while its sockets certainly exist. A hand-over to the lookup
        thread cost up to 0.1 s on a busy machine, after a short download had closed
        them."""
        fk = flow_key(*key5)
        now = self.clock()
        entry = self.flows.get(fk)
        if entry is not None and (entry[0] is PENDING or entry[0]) and \
                now - entry[1] <= RESOLVED_SYN:
            return  # being looked up, or the same SYN seen twice (loopback)
        if self._peek(fk):
            self.status(key5)  # a capture's answer: taken as it is
            return
        # sockets → pids → process facts now (they may be gone in a moment); the
        # ProcessIds (a catalog write for a new process) on the lookup thread
        owners: list = []
        src = key5[1], key5[2]
        for wait_ms in (0,) + RETRY_MS:
            if owners and owners[0][1] == src:
                break
            if wait_ms:
                time.sleep(wait_ms / 1000)
            try:
                owners = self._owners(key5) or owners
            except Exception:  # noqa: BLE001 - the counting path asks again later
                log.debug("usage lookup of %s failed", key5, exc_info=True)
        if not owners:
            # no miss is cached: it would hide, for RETRY_MISS, what the counting path's own
            # look (queued when the flow's first block is counted) may still find
            self.stats["missed"] += 1
            return
        with self._lock:
            self.flows[fk] = [PENDING, self.clock(), key5]
            self.flows.move_to_end(fk)
            while len(self.flows) > MAX_FLOWS:
                self.flows.popitem(last=False)
        self._queue.put((key5, fk, owners))

    def labels(self, key5: tuple):
        """What is known of a flow now, without asking: labels, [] or PENDING (also for a
        flow never asked about)."""
        entry = self.flows.get(flow_key(*key5))
        return PENDING if entry is None else entry[0]

    def _peek(self, fk):
        """A live capture's answer for the flow, if it has a final one (read only)."""
        shared = self.shared
        entry = shared.flows.get(fk) if shared is not None else None
        if entry is None or not entry[0] or entry[3]:
            return None  # unknown, pending, nobody's, or a second look still due
        return list(entry[0])

    # -- the lookup thread ------------------------------------------------------------------
    def _run(self) -> None:
        """Flows first seen in a counted block (no SYN seen: older than the recorder, UDP,
        or a missed SYN): one look each; their sockets either exist or are gone."""
        while True:
            item = self._queue.get()
            if item is None:
                return
            key5, fk, owners = item
            shared = self._peek(fk) if owners is None else None
            if shared:   # a capture's resolver finished meanwhile (its second look done)
                entry = self.flows.get(fk)
                if entry is not None and entry[0] is PENDING:
                    entry[0], entry[1] = shared, self.clock()
                self.stats["shared"] += 1
                continue
            try:
                labels = self._labels(owners if owners is not None else self._owners(key5))
            except Exception:  # noqa: BLE001 - one bad lookup must not stop the thread
                log.debug("usage lookup of %s failed", key5, exc_info=True)
                labels = []
            entry = self.flows.get(fk)
            if entry is not None and entry[0] is PENDING:
                entry[0], entry[1] = labels, self.clock()
            self.stats["resolved" if labels else "missed"] += 1

    def _owners(self, key5) -> list:
        """[(pid, the owner's local end, process facts)], the flow's src end first."""
        _, src, sport, dst, dport = key5
        out = []
        for o in self.backend.resolve(*key5):
            info = self._facts(o.pid)
            if info is not None:
                out.append((o.pid, (src, sport) if o.local_is_src else (dst, dport), info))
        return out

    def _labels(self, owners) -> list:
        out = []
        for pid, local, info in owners:
            process_id, rec = self._process(pid, info)
            out.append(Label(process_id, pid, 0, rec, local))
        return out

    def _facts(self, pid: int):
        """A pid's facts: the shared backend's, read at exec (read only), else /proc now."""
        backend = getattr(self.shared, "backend", None)
        if backend is not None:
            try:
                info = backend.process(pid)
            except Exception:  # noqa: BLE001 - fall back to /proc
                info = None
            if info is not None:
                return info
        return (self.backend.process(pid) if hasattr(self.backend, "process")
                else read_process(pid))

    def _process(self, pid: int, info):
        """(ProcessId, facts) of a pid (the catalog's row is made for a new process)."""
        key = (pid, info.start_time_ns)
        known = self._procs.get(key)
        if known is None:
            rec = {"pid": pid, "ppid": info.ppid, "name": info.name, "path": info.path,
                   "cmdline": info.cmdline, "user": info.user, "start_time": info.start_time_ns}
            known = (self.book.identify([rec])[0], rec)
            if len(self._procs) > 20000:
                self._procs.clear()
            self._procs[key] = known
        return known
