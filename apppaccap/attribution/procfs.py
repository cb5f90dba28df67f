"""Socket inode -> pid (and best-effort tid), and process facts, from /proc.

sock_diag names a socket by inode; only the fd tables under /proc/<pid>/fd say which
process holds it. Walking every fd of every process costs milliseconds, so InodeOwners
keeps what it has seen and looks where a new socket most probably is: pids just exec'd,
pids never scanned, pids that recently owned sockets, and only then everything else.

Every answer is checked against the fd table at the moment it is given: a pid is only
returned when /proc/<pid>/fd/<n> reads socket:[inode] right now (a wrong label is worse
than none).
"""

from __future__ import annotations

import os
import platform

try:
    import pwd
except ImportError:  # not Unix: no /proc either (read_process finds nothing to read)
    pwd = None
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

from apppaccap.attribution.heldcalls import read_stat
from apppaccap.attribution.heldcalls import readlink


class ProcInfo(NamedTuple):
    """What we know of a process (read while it was alive)."""

    pid: int
    ppid: int
    name: str  # comm, at most 15 characters
    path: str  # exe target, "" when unreadable (kernel threads, exited, no permission)
    cmdline: str  # argv joined by spaces
    user: str  # name of the real uid (the number as text when it has no name)
    start_time_ns: int  # Unix epoch ns
    threads: list  # [(tid, name)]


# --- fd tables ---------------------------------------------------------------------------

def socket_fds(pid: int, proc_root: str = "/proc") -> dict[int, int] | None:
    """{socket inode: fd} for one process; None when it is gone or unreadable."""
    base = f"{proc_root}/{pid}/fd/"
    out: dict[int, int] = {}
    try:
        names = os.listdir(base)
    except OSError:
        return None
    readlink = os.readlink
    for name in names:
        try:
            target = readlink(base + name)
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            out[int(target[8:-1])] = int(name)
    return out


def holds(pid: int, fd: int, inode: int, proc_root: str = "/proc") -> bool:
    """Does /proc/<pid>/fd/<fd> point at socket:[inode] right now?"""
    return readlink(f"{proc_root}/{pid}/fd/{fd}") == f"socket:[{inode}]"


def list_pids(proc_root: str = "/proc") -> list[int]:
    """Every pid (thread-group leaders only: /proc lists no bare tids), newest first."""
    try:
        names = os.listdir(proc_root)
    except OSError:
        return []
    return sorted((int(n) for n in names if n.isdigit()), reverse=True)


class InodeOwners:
    """Socket inode -> owning pid, with caches and a bounded amount of /proc walking."""

    def __init__(self, proc_root: str = "/proc", clock=time.monotonic,
                 full_scan_interval: float = 0.5, hot_pids: int = 8, newest_pids: int = 16):
        """`full_scan_interval` rate-limits re-reading the fd tables of all known pids.
        Never rate-limited: pids not scanned yet, the `hot_pids` most recent owners
        (long-lived servers keep opening sockets) and the `newest_pids` highest pids (a
        young process may have been scanned before it opened its socket)."""
        self.proc_root = proc_root
        self._clock = clock
        self.full_scan_interval = full_scan_interval
        self._inode_fd: dict[int, tuple[int, int]] = {}  # inode -> (pid, fd)
        self._pid_inodes: dict[int, set[int]] = {}  # what each scanned pid held
        self._hot: OrderedDict[int, None] = OrderedDict()
        self._hot_max = hot_pids
        self._newest = newest_pids
        self._last_full = -1e18
        self.stats = {"cache": 0, "hint": 0, "new": 0, "hot": 0, "full": 0, "miss": 0,
                      "full_scans": 0, "pids_scanned": 0}

    def find(self, inode: int, hint_pids: Iterable[int] = ()) -> int | None:
        """The pid whose fd table holds socket:[inode] now, or None.

        Order: validated cache; `hint_pids` (e.g. just exec'd); never-scanned pids and the
        newest known ones, by descending pid; recent owners; then - at most every
        full_scan_interval - all other pids, newest first. Stops at the first hit.
        """
        if not inode:
            return None
        cached = self._inode_fd.get(inode)
        if cached is not None:
            if holds(cached[0], cached[1], inode, self.proc_root):
                self.stats["cache"] += 1
                return self._hit(cached[0])
            del self._inode_fd[inode]  # closed, or the pid was reused
        done: set[int] = set()
        for pid in hint_pids:
            if pid not in done and self._scan(pid, done, inode):
                self.stats["hint"] += 1
                return self._hit(pid)
        pids = list_pids(self.proc_root)
        window = self._newest
        for pid in pids:  # descending: newest first (until pids wrap around)
            if pid in done:
                continue
            known = pid in self._pid_inodes
            if known:
                if window <= 0:
                    continue
                window -= 1
            if self._scan(pid, done, inode):
                self.stats["new"] += 1
                return self._hit(pid)
        for pid in list(reversed(self._hot)):
            if pid not in done and self._scan(pid, done, inode):
                self.stats["hot"] += 1
                return self._hit(pid)
        now = self._clock()
        if now - self._last_full >= self.full_scan_interval:
            self._last_full = now
            self.stats["full_scans"] += 1
            self._prune(pids)
            for pid in pids:
                if pid not in done and self._scan(pid, done, inode):
                    self.stats["full"] += 1
                    return self._hit(pid)
        self.stats["miss"] += 1
        return None

    def inode_map(self) -> dict[int, int]:
        """{inode: pid} for every socket of every process (a full scan, not rate-limited:
        the periodic safety-net sweep). Sockets shared by several processes map to the
        newest pid."""
        pids = list_pids(self.proc_root)
        self._prune(pids)
        out: dict[int, int] = {}
        for pid in reversed(pids):  # oldest first, so newer holders overwrite
            self._scan(pid, set(), 0)
            for ino in self._pid_inodes.get(pid, ()):
                out[ino] = pid
        self._last_full = self._clock()
        return out

    def forget(self, pid: int) -> None:
        """Drop everything learnt about `pid` (call on exit: the pid may be reused)."""
        for ino in self._pid_inodes.pop(pid, ()):
            if self._inode_fd.get(ino, (None,))[0] == pid:
                del self._inode_fd[ino]
        self._hot.pop(pid, None)

    # -- internals

    def _scan(self, pid: int, done: set[int], inode: int) -> bool:
        """Re-read one pid's fd table into the caches; True if it holds `inode`."""
        done.add(pid)
        self.stats["pids_scanned"] += 1
        fds = socket_fds(pid, self.proc_root)
        if fds is None:
            self.forget(pid)
            return False
        old = self._pid_inodes.get(pid, set())
        for ino in old - fds.keys():
            if self._inode_fd.get(ino, (None,))[0] == pid:
                del self._inode_fd[ino]
        for ino, fd in fds.items():
            self._inode_fd[ino] = (pid, fd)
        self._pid_inodes[pid] = set(fds)
        return inode in fds

    def _hit(self, pid: int) -> int:
        self._hot[pid] = None
        self._hot.move_to_end(pid)
        while len(self._hot) > self._hot_max:
            self._hot.popitem(last=False)
        return pid

    def _prune(self, live: list[int]) -> None:
        alive = set(live)
        for pid in [p for p in self._pid_inodes if p not in alive]:
            self.forget(pid)


# --- threads -----------------------------------------------------------------------------

# Syscalls whose first argument is the socket's fd. /proc/<pid>/task/<tid>/syscall shows
# the number and raw arguments of a thread blocked in the kernel. poll/select/epoll_wait
# wait on many fds through a pointer, so a thread parked there cannot be tied to a socket.
_FD_SYSCALLS = {
    # read write readv writev sendfile connect accept sendto recvfrom sendmsg recvmsg
    # accept4 recvmmsg sendmmsg
    "x86_64": {0, 1, 19, 20, 40, 42, 43, 44, 45, 46, 47, 288, 299, 307},
    # the same calls in asm-generic numbering (aarch64, riscv64, loongarch64)
    "generic": {63, 64, 65, 66, 71, 203, 202, 206, 207, 211, 212, 242, 243, 269},
}
_SYSCALLS = _FD_SYSCALLS["x86_64" if platform.machine() in ("x86_64", "amd64")
                         else "generic"]


def list_threads(pid: int, proc_root: str = "/proc") -> list[tuple[int, str]]:
    """[(tid, comm)] of a process's threads, main thread first; [] when it is gone."""
    try:
        tids = sorted(int(t) for t in os.listdir(f"{proc_root}/{pid}/task") if t.isdigit())
    except OSError:
        return []
    return [(tid, _read(f"{proc_root}/{pid}/task/{tid}/comm").strip()) for tid in tids]


def thread_of(pid: int, inode: int, proc_root: str = "/proc", max_threads: int = 64,
              syscalls: frozenset | set | None = None) -> int | None:
    """Best-effort thread that is using socket:[inode] of process `pid`, or None.

    Linux sockets belong to the process (its threads share one fd table), so there is no
    owning thread to read. Answers only when it is certain enough:
    * a single-threaded process: its only thread;
    * otherwise exactly one thread blocked in a socket call (recv*, send*, read, write,
      connect, accept...) whose fd argument is that socket; several such threads, or none
      (busy, or parked in poll/epoll), give None.
    Processes with more than `max_threads` threads are not searched (bounded latency).
    """
    try:
        tids = [t for t in os.listdir(f"{proc_root}/{pid}/task") if t.isdigit()]
    except OSError:
        return None
    if len(tids) == 1:
        return int(tids[0])
    if not tids or len(tids) > max_threads:
        return None
    wanted = _SYSCALLS if syscalls is None else syscalls
    target = f"socket:[{inode}]"
    fd_ok: dict[int, bool] = {}
    found: list[int] = []
    for tid in tids:
        fields = _read(f"{proc_root}/{pid}/task/{tid}/syscall").split()
        # "running", "-1 sp pc" (not in a syscall) or "nr arg0 .. arg5 sp pc"
        if len(fields) < 3 or not fields[0].isdigit() or int(fields[0]) not in wanted:
            continue
        fd = int(fields[1], 16)
        if fd not in fd_ok:
            try:
                fd_ok[fd] = os.readlink(f"{proc_root}/{pid}/fd/{fd}") == target
            except OSError:
                fd_ok[fd] = False
        if fd_ok[fd]:
            found.append(int(tid))
    return found[0] if len(found) == 1 else None


# --- process facts -----------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_btime_cache: dict[str, int] = {}


def _read(path: str) -> str:
    """Whole file as text, "" if unreadable. os.open/os.read: 3-5x faster than open()
    on procfs, and this runs per flow."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return ""
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        return ""
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def boot_time(proc_root: str = "/proc") -> int:
    """Boot time in Unix seconds (btime of /proc/stat; cached per proc_root)."""
    if proc_root not in _btime_cache:
        for line in _read(f"{proc_root}/stat").splitlines():
            if line.startswith("btime "):
                _btime_cache[proc_root] = int(line.split()[1])
                break
        else:
            return 0
    return _btime_cache[proc_root]


def _user(uid: int) -> str:
    if pwd is None:
        return str(uid)
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return str(uid)


def _stat(pid: int, proc_root: str) -> tuple[str, int, int] | None:
    """(name, ppid, start_time_ns) from the leader thread's /proc/<pid>/task/<pid>/stat, None
    if gone or unreadable."""
    # the leader thread's own stat file: the same name, parent and start time, read in
    # constant time, so with the interpreter lock held (heldcalls.py); the process's
    # file sums every thread (~1.4 ms for 25,000)
    stat = read_stat(f"{proc_root}/{pid}/task/{pid}/stat")
    if not stat:
        return None
    # comm may hold spaces and parentheses: it ends at the last ')'
    head, _, rest = stat.rpartition(")")
    fields = rest.split()
    if len(fields) < 20:
        return None
    start_ns = (boot_time(proc_root) * 1_000_000_000
                + int(fields[19]) * 1_000_000_000 // _CLK_TCK)
    return head.partition("(")[2], int(fields[1]), start_ns


class RecentFacts:
    """read_process with a short memory. A server's every connection asked for the same
    pid's facts again: five files, a passwd lookup and every thread's name, ~0.3 ms a
    flow (api_load: 200 connections/s). Kept `ttl` seconds (an exec keeps the pid and its
    start: the new program's facts are read within that), and only while <pid>/stat
    shows the same start time (a reused pid is another process)."""

    def __init__(self, proc_root: str = "/proc", ttl: float = 1.0, size: int = 4096,
                 clock=time.monotonic):
        self.proc_root, self.ttl, self.size, self._clock = proc_root, ttl, size, clock
        self._facts: dict[int, tuple[float, ProcInfo]] = {}

    def get(self, pid: int) -> ProcInfo | None:
        kept = self._facts.get(pid)
        now = self._clock()
        if kept is not None and now - kept[0] < self.ttl:
            head = _stat(pid, self.proc_root)
            if head is not None and head[2] == kept[1].start_time_ns:
                return kept[1]
        info = read_process(pid, self.proc_root)
        if info is None:
            self._facts.pop(pid, None)
            return None
        if len(self._facts) >= self.size:
            self._facts.clear()  # a bound, not an LRU: refilled within a second
        self._facts[pid] = (now, info)
        return info


def read_process(pid: int, proc_root: str = "/proc") -> ProcInfo | None:
    """Facts about a live process, or None if it is gone (or /proc/<pid>/stat unreadable).

    start_time_ns = btime + starttime/CLK_TCK, i.e. whole-second boot time plus tick
    resolution (10 ms): stable for the life of the process, so (pid, start_time_ns)
    identifies it across pid reuse.
    """
    base = f"{proc_root}/{pid}"
    head = _stat(pid, proc_root)
    if head is None:
        return None
    name, ppid, start_ns = head
    comm = _read(f"{base}/comm").rstrip("\n") or name
    try:
        path = os.readlink(f"{base}/exe")
        if path.endswith(" (deleted)") and not os.path.exists(path):
            path = path[: -len(" (deleted)")]
    except OSError:
        path = ""
    cmdline = " ".join(a for a in _read(f"{base}/cmdline").split("\0") if a)
    uid = 0
    for line in _read(f"{base}/status").splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
            break
    return ProcInfo(pid, ppid, comm, path, cmdline, _user(uid), start_ns,
                    list_threads(pid, proc_root))
