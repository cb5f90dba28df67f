"""Who owns this flow? The attribution backend the capture pipeline calls.

LinuxOwners: sock_diag exact lookup (~10 us) -> socket inode -> pid from /proc fd tables
(cached, newest pids first, exec'd pids from cn_proc first) -> best-effort thread.
PsutilOwners: the same questions through psutil.net_connections(), slower (15-50 ms per
table) but portable; on Windows the table carries the pid directly.

Both answer for *both* ends of a flow when they are local (on loopback the client and the
server are both ours), the originator's side first, and both prefer no answer to a guess.
See docs/ATTRIBUTION.md for what is and is not attributable.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections import deque
from typing import NamedTuple

from apppaccap.attribution.diagwire import TCP_LISTEN
from apppaccap.attribution.diagwire import TCP_TIME_WAIT
from apppaccap.attribution.localaddr import LocalAddresses
from apppaccap.attribution.localaddr import unmap
from apppaccap.attribution.procevents import ProcEvents
from apppaccap.attribution.procfs import InodeOwners
from apppaccap.attribution.procfs import ProcInfo
from apppaccap.attribution.procfs import RecentFacts
from apppaccap.attribution.procfs import thread_of
from apppaccap.attribution.sockdiag import SockDiag

log = logging.getLogger(__name__)

PORT_OWNERS = 4096   # ports whose last owner is remembered as a first guess
SERVER_THREAD_TTL = 1.0   # seconds a server socket's "no thread" answer is kept


class Owner(NamedTuple):
    """The process (and maybe thread) owning one end of a flow."""

    pid: int
    tid: int | None  # None: not attributable (see thread_of)
    inode: int  # socket inode (0 when the backend cannot tell, e.g. psutil)
    local_is_src: bool  # True: the owner's local end is the flow's src (it sent first)
    # True: named through the TCP listener because the connection had no file yet (not
    # accept()ed). Right for servers that accept in-process; a fork-per-connection server
    # (sshd, inetd) hands it to a child, so re-resolve such flows after the handshake.
    listener: bool = False


def boost_current_thread(priority: int = 10, nice: int = -10) -> bool:
    """Raise the calling thread (only) to SCHED_FIFO `priority`, else to `nice`.

    Why: on a busy 2-core box a short-lived client finishes while a normal-priority
    resolver waits for the CPU; RT priority took attribution from 85-93 % to 99-100 %
    (docs/DECISIONS.md: attribution: what was measured). Risk: an RT
    thread that spins starves every normal task on its core. The kernel's RT throttling
    (sched_rt_runtime_us, 95 %) bounds the damage; the resolver must block on a queue
    and never busy-wait. Returns False when neither change was allowed (needs root /
    CAP_SYS_NICE) or on non-Linux.
    """
    tid = threading.get_native_id()
    try:
        # Linux applies sched_setscheduler(tid) to that thread alone.
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
        return True
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)  # per-thread on Linux too
        return True
    except (AttributeError, OSError):
        return False


class LinuxOwners:
    """sock_diag + /proc (+ cn_proc) backend. resolve() belongs to one thread (the
    resolver); snapshot() may run on another (it uses its own socket and caches)."""

    def __init__(self, sockdiag=None, inodes=None, events=None, proc_root: str = "/proc",
                 threads: bool = True, boost_events: bool = False):
        """Seams: a SockDiag-like `sockdiag`, an InodeOwners-like `inodes`, a
        ProcEvents-like `events` (None: created here; False: none). `threads=False`
        skips the per-flow thread search; `boost_events` runs the cn_proc listener
        thread at SCHED_FIFO (see boost_current_thread) so exec-time facts are read
        before short processes exit."""
        self.sockdiag = sockdiag if sockdiag is not None else SockDiag()
        self.inodes = inodes if inodes is not None else InodeOwners(proc_root)
        self.proc_root = getattr(self.inodes, "proc_root", proc_root)
        self._exited: deque[int] = deque()  # filled by the listener thread, drained here
        if events is None:

            events = ProcEvents(proc_root=self.proc_root,
                                thread_setup=boost_current_thread if boost_events else None)
        self.events = events or None
        if self.events is not None and getattr(self.events, "on_exit", 0) is None:
            self.events.on_exit = self._exited.append
        self.threads = threads
        self._events_ok = False
        self.boost = True  # whether boost_current_thread() (the method) acts
        self._lock = threading.Lock()
        # (proto, local port) -> its last owner, read first for the port's next socket (a
        # server's accepted connection is an inode no cache knows: docs/ATTRIBUTION.md)
        self._port_owner: OrderedDict[tuple, int] = OrderedDict()
        self._server_threads: dict[tuple, float] = {}  # (pid, inode) -> when no tid was
        self._sweep_diag = None
        self._sweep_inodes = None
        self.facts = RecentFacts(self.proc_root)

    def boost_current_thread(self) -> bool:
        """The module function, for callers holding only the backend (False if disabled)."""
        return self.boost and boost_current_thread()

    def start(self) -> None:
        """Start the process-event listener (degrades to no hints when unavailable)."""
        if self.events is not None:
            self._events_ok = bool(self.events.start())

    def stop(self) -> None:
        """Stop the listener and close the netlink sockets."""
        if self.events is not None:
            self.events.stop()
        for diag in (self._sweep_diag, self.sockdiag):
            if diag is not None and hasattr(diag, "close"):
                diag.close()
        self._sweep_diag = None

    def resolve(self, proto: int, src: str, sport: int, dst: str, dport: int,
                ifindex: int = 0, ends: tuple = (True, False)) -> list[Owner]:
        """Owners of the local ends of a flow: the src end first, then the dst end.

        Each end is named only when its socket is certain (exact 4-tuple, or a listener /
        unconnected UDP socket on a local address with no equally good rival of another
        process) and a pid's fd table holds that socket now. `ends` limits the question
        to the src end (True) or the dst end (False): the eBPF backend asks only for the
        end the kernel has not reported.
        """
        with self._lock:
            while self._exited:
                self.inodes.forget(self._exited.popleft())
            hints = self.events.recent_pids() if self._events_ok else ()
            out = []
            for lip, lport, rip, rport, is_src in ((src, sport, dst, dport, True),
                                                   (dst, dport, src, sport, False)):
                if is_src not in ends:
                    continue
                cands = self.sockdiag.candidates(proto, lip, lport, rip, rport, ifindex)
                if not cands:
                    continue
                port = (proto, lport)
                last = self._port_owner.get(port)
                owner = self._owner(cands, is_src, hints if last is None else (last, *hints))
                if owner is not None:
                    out.append(owner)
                    self._remember_port(port, owner.pid)
            return out

    def _remember_port(self, port: tuple, pid: int) -> None:
        ports = self._port_owner
        ports[port] = pid
        ports.move_to_end(port)
        if len(ports) > PORT_OWNERS:
            ports.popitem(last=False)

    def _thread_of(self, pid: int, inode: int, server: bool) -> int | None:
        """thread_of; for a server's socket (a listener, unconnected UDP) a "no thread can
        be named" is kept SERVER_THREAD_TTL: every client's flow asked it again, reading
        each thread's syscall file (~half the resolver's time at 2,000 UDP flows/s to one
        server). A thread it named is not kept (the next flow may be another worker's),
        and replaying None names no thread wrongly: at worst one it could have named."""
        if not server:
            return thread_of(pid, inode, self.proc_root)
        now = time.monotonic()
        kept = self._server_threads.get((pid, inode))
        if kept is not None and now - kept < SERVER_THREAD_TTL:
            return None
        tid = thread_of(pid, inode, self.proc_root)
        if tid is None:
            if len(self._server_threads) >= PORT_OWNERS:
                self._server_threads.clear()
            self._server_threads[pid, inode] = now
        else:
            self._server_threads.pop((pid, inode), None)
        return tid

    def _owner(self, cands, is_src: bool, hints) -> Owner | None:
        pids = {self.inodes.find(c.inode, hint_pids=hints) for c in cands}
        if len(pids) != 1 or None in pids:
            return None  # a shared port whose sockets are not all one process's
        pid = pids.pop()
        inode = cands[0].inode
        tid = None
        if self.threads and len(cands) == 1:
            tid = self._thread_of(pid, inode, cands[0].remote_port == 0)
        return Owner(pid, tid, inode, is_src,
                     cands[0].state == TCP_LISTEN and cands[0].proto == socket.IPPROTO_TCP)

    def snapshot(self) -> dict[tuple, list[Owner]]:
        """Every TCP/UDP socket with its owner: {(proto, local_ip, local_port, remote_ip,
        remote_port): [Owner]} (local end first, IPv4-mapped addresses unmapped;
        listeners and unconnected UDP have remote 0.0.0.0/:: port 0). The periodic safety
        net for flows older than the capture and for misses; see match_snapshot()."""
        if self._sweep_diag is None:
            self._sweep_diag = (SockDiag(is_local=self.sockdiag.is_local)
                                if isinstance(self.sockdiag, SockDiag) else self.sockdiag)
        if self._sweep_inodes is None:
            self._sweep_inodes = InodeOwners(self.proc_root)
        owner_of = self._sweep_inodes.inode_map()
        single: dict[int, int | None] = {}
        out: dict[tuple, list[Owner]] = {}
        for proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
            for e in self._sweep_diag.dump(proto):
                pid = owner_of.get(e.inode) if e.inode else None
                if pid is None or (proto == socket.IPPROTO_TCP and e.state == TCP_TIME_WAIT):
                    continue
                if pid not in single:
                    single[pid] = _only_thread(pid, self.proc_root)
                owner = Owner(pid, single[pid], e.inode, True)
                for key in _keys(proto, e.local_ip, e.local_port, e.remote_ip, e.remote_port,
                                 dual=not e.v6only):
                    out.setdefault(key, []).append(owner)
        return out

    def process(self, pid: int) -> ProcInfo | None:
        """Facts about `pid`: as read at exec time (works after it exited), else now."""
        if self.events is not None:
            info = self.events.info(pid) if hasattr(self.events, "info") else \
                self.events.recent.get(pid)
            if info is not None:
                return info
        return self.facts.get(pid)


def _keys(proto, lip, lport, rip, rport, dual: bool) -> list[tuple]:
    """Snapshot keys of one socket: a dual-stack `::` socket (listener or unconnected)
    also owns IPv4 traffic, so it is filed under 0.0.0.0 as well."""
    lip, rip = unmap(lip), unmap(rip)
    if not rport and (proto == socket.IPPROTO_UDP or rip in ("0.0.0.0", "::")):
        rip = "::" if ":" in lip else "0.0.0.0"
    keys = [(proto, lip, lport, rip, rport)]
    if dual and lip == "::" and not rport:
        keys.append((proto, "0.0.0.0", lport, "0.0.0.0", 0))
    return keys


def _only_thread(pid: int, proc_root: str) -> int | None:
    try:
        tids = os.listdir(f"{proc_root}/{pid}/task")
    except OSError:
        return None
    return int(tids[0]) if len(tids) == 1 else None


def match_snapshot(snap: dict[tuple, list[Owner]], proto: int, local_ip: str,
                   local_port: int, remote_ip: str, remote_port: int,
                   is_local=None) -> Owner | None:
    """One end of a flow looked up in a snapshot: exact key, then - only for a local
    address - the listener / unconnected socket bound to it, then the wildcard one.
    Several different pids at the best level: None."""
    local_ip, remote_ip = unmap(local_ip), unmap(remote_ip)
    found = snap.get((proto, local_ip, local_port, remote_ip, remote_port))
    if not found:
        if not (is_local or _default_local())(local_ip):
            return None
        zero = "::" if ":" in local_ip else "0.0.0.0"
        for lip in (local_ip, zero):
            found = snap.get((proto, lip, local_port, zero, 0))
            if found:
                break
    if not found or len({o.pid for o in found}) != 1:
        return None
    return found[0]


_LOCAL: list = []


def _default_local():
    if not _LOCAL:
        _LOCAL.append(LocalAddresses())
    return _LOCAL[0]


class PsutilOwners:
    """The same interface on psutil.net_connections(kind="inet"): the portable fallback
    (and the whole path off Linux). No inode, no thread. Tables cost 15-50 ms each, so
    one is reused for `ttl` seconds and a miss forces at most one refresh."""

    def __init__(self, psutil_module=None, ttl: float = 0.05, min_refresh: float = 0.02,
                 is_local=None):
        if psutil_module is None:
            import psutil as psutil_module
        self.psutil = psutil_module
        self.ttl, self.min_refresh = ttl, min_refresh
        self.is_local = is_local or LocalAddresses()
        self._table: dict[tuple, list[Owner]] | None = None
        self._at = -1e18
        self._lock = threading.Lock()
        self.boost = True

    def boost_current_thread(self) -> bool:
        """The module function, for callers holding only the backend (False if disabled)."""
        return self.boost and boost_current_thread()

    def start(self) -> None:
        """Nothing to start: psutil is polled on demand."""

    def stop(self) -> None:
        """Nothing to stop."""

    def snapshot(self) -> dict[tuple, list[Owner]]:
        """Every inet socket with a known pid, keyed like LinuxOwners.snapshot()."""
        out: dict[tuple, list[Owner]] = {}
        for c in self.psutil.net_connections(kind="inet"):
            if not c.pid or not c.laddr:
                continue  # pid None: no permission; 0: Windows TIME_WAIT / System Idle
            proto = socket.IPPROTO_TCP if c.type == socket.SOCK_STREAM else socket.IPPROTO_UDP
            if proto == socket.IPPROTO_TCP and c.status == "TIME_WAIT":
                continue
            if proto == socket.IPPROTO_TCP and not c.raddr and c.status != "LISTEN":
                continue
            rip, rport = (c.raddr[0], c.raddr[1]) if c.raddr else ("0.0.0.0", 0)
            # v6only is not reported: a `::` socket is assumed dual-stack (Linux default);
            # if a v6only one has a 0.0.0.0 twin of another process, the key turns
            # ambiguous and match_snapshot() answers None.
            for key in _keys(proto, c.laddr[0], c.laddr[1], rip, rport, dual=True):
                out.setdefault(key, []).append(Owner(c.pid, None, 0, True))
        return out

    def resolve(self, proto: int, src: str, sport: int, dst: str, dport: int,
                ifindex: int = 0) -> list[Owner]:
        """Owners of the local ends, src end first (see LinuxOwners.resolve)."""
        with self._lock:
            now = time.monotonic()
            if self._table is None or now - self._at > self.ttl:
                self._table, self._at = self.snapshot(), now
            out = self._match(proto, src, sport, dst, dport)
            if not out and now - self._at > self.min_refresh:
                # the flow may be newer than the table; rate-limited because a table
                # costs 15-50 ms and remote-only flows never match
                self._table, self._at = self.snapshot(), time.monotonic()
                out = self._match(proto, src, sport, dst, dport)
            return out

    def _match(self, proto, src, sport, dst, dport) -> list[Owner]:
        out = []
        for lip, lport, rip, rport, is_src in ((src, sport, dst, dport, True),
                                               (dst, dport, src, sport, False)):
            o = match_snapshot(self._table, proto, lip, lport, rip, rport, self.is_local)
            if o is not None:
                out.append(o._replace(local_is_src=is_src))
        return out

    def process(self, pid: int) -> ProcInfo | None:
        """Facts about a live process through psutil, or None."""
        ps = self.psutil
        try:
            p = ps.Process(pid)
            with p.oneshot():
                try:
                    path = p.exe()
                except (ps.AccessDenied, ps.ZombieProcess, OSError):
                    path = ""
                try:
                    user = p.username()
                except (ps.AccessDenied, KeyError, OSError):
                    user = ""
                try:
                    threads = [(t.id, "") for t in p.threads()]
                except (ps.AccessDenied, OSError):
                    threads = []
                return ProcInfo(pid, p.ppid(), p.name(), path, " ".join(p.cmdline()), user,
                                int(p.create_time() * 1e9), threads)
        except (ps.NoSuchProcess, ps.AccessDenied, ps.ZombieProcess):
            return None


def default_owners():
    """LinuxOwners on Linux when sock_diag works, else PsutilOwners (the reason is logged)."""
    if sys.platform.startswith("linux"):
        try:
            # The cn_proc listener at real-time priority too: it feeds the exec'd pids
            # the resolver scans first (99-100 % with both: docs/DECISIONS.md:
            # attribution: what was measured).
            owners = LinuxOwners(boost_events=True)
        except OSError as e:
            log.warning("sock_diag unavailable (%s): attributing through psutil", e)
        else:
            if os.geteuid() != 0:
                log.warning("not root: other users' sockets cannot be mapped to processes")
            return owners
    else:
        log.info("%s: attributing through psutil", sys.platform)
    return PsutilOwners()

