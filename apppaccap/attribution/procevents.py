"""Process exec/fork/exit events from the kernel's proc connector (cn_proc).

Why: a curl lives a few milliseconds. By the time anyone asks "which process owns this
flow", its /proc entry may be gone. Reading comm/exe/cmdline at exec time keeps the name
(measured: 300/300 curls named, most of them already exited when asked), and the pids
exec'd last are where a brand-new socket most probably is, so they are scanned first.

EXIT arrives after the kernel closed the process's files (do_exit() runs exit_files()
first), so it cannot be used to grab sockets; it only marks the pid dead.

Needs the initial user, pid and network namespaces; older kernels also want CAP_NET_ADMIN
(6.18 here accepts an unprivileged listener). start() waits for the kernel's ack and
returns False when it is refused; callers then fall back to polling.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from apppaccap.attribution.procfs import ProcInfo
from apppaccap.attribution.procfs import read_process

log = logging.getLogger(__name__)

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
NLMSG_DONE = 3
SO_RCVBUFFORCE = 33

PROC_EVENT_NONE = 0x00000000  # the kernel's ack of a LISTEN/IGNORE request
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_COMM = 0x00000200
PROC_EVENT_EXIT = 0x80000000

NLMSGHDR = struct.Struct("=IHHII")
CN_MSG = struct.Struct("=IIIIHH")  # cb_id {idx, val}, seq, ack, len, flags
EVENT_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
EVENT_OFF = NLMSGHDR.size + CN_MSG.size
DATA_OFF = EVENT_OFF + EVENT_HEAD.size
PIDS2 = struct.Struct("=II")
PIDS4 = struct.Struct("=IIII")


def pack_control(op: int, seq: int = 0, port: int = 0, ack: int = 0) -> bytes:
    """nlmsghdr + cn_msg + u32 op: subscribe (LISTEN) or unsubscribe (IGNORE).
    The kernel's reply carries cn_msg.ack = `ack` + 1, which is how we recognise it."""
    payload = struct.pack("=I", op)
    cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, seq, ack, len(payload), 0) + payload
    return NLMSGHDR.pack(NLMSGHDR.size + len(cn), NLMSG_DONE, 0, seq, port) + cn


def parse_events(data: bytes) -> list[tuple]:
    """Decode one datagram into events:
    ("fork", parent_tgid, child_pid, child_tgid), ("exec", pid, tgid),
    ("exit", pid, tgid), ("comm", pid, tgid, comm), ("ack", cn_msg.ack, errno); others
    are skipped."""
    out: list[tuple] = []
    off = 0
    while off + EVENT_OFF + EVENT_HEAD.size <= len(data):
        length = NLMSGHDR.unpack_from(data, off)[0]
        if length < DATA_OFF or off + length > len(data):
            break
        idx, val, _seq, ack = CN_MSG.unpack_from(data, off + NLMSGHDR.size)[:4]
        if (idx, val) == (CN_IDX_PROC, CN_VAL_PROC):
            what = EVENT_HEAD.unpack_from(data, off + EVENT_OFF)[0]
            d = off + DATA_OFF
            if what == PROC_EVENT_NONE and off + length >= d + 4:
                out.append(("ack", ack, struct.unpack_from("=I", data, d)[0]))
            elif what == PROC_EVENT_FORK:
                _ppid, ptgid, cpid, ctgid = PIDS4.unpack_from(data, d)
                out.append(("fork", ptgid, cpid, ctgid))
            elif what == PROC_EVENT_EXEC:
                out.append(("exec", *PIDS2.unpack_from(data, d)))
            elif what == PROC_EVENT_EXIT:
                out.append(("exit", *PIDS2.unpack_from(data, d)))
            elif what == PROC_EVENT_COMM and off + length >= d + 24:
                pid, tgid = PIDS2.unpack_from(data, d)
                comm = bytes(data[d + 8:d + 24]).split(b"\0", 1)[0].decode("utf-8", "replace")
                out.append(("comm", pid, tgid, comm))
        off += (length + 3) & ~3
    return out


class ProcEvents:
    """Listens to cn_proc on a daemon thread and keeps recently exec'd processes' facts."""

    def __init__(self, on_exec: Callable[[int], None] | None = None,
                 on_exit: Callable[[int], None] | None = None,
                 on_fork: Callable[[int, int], None] | None = None,
                 read_at_exec: bool = True, max_recent: int = 4096,
                 proc_root: str = "/proc", thread_setup: Callable[[], object] | None = None):
        """Callbacks run on the listener thread and must be quick: on_exec(pid),
        on_exit(pid), on_fork(parent_pid, child_pid) - processes only, not threads.
        `thread_setup` runs first on the listener thread (e.g. owners.boost_current_thread:
        a listener that falls behind reads exe/cmdline after a short process is gone)."""
        self.on_exec, self.on_exit, self.on_fork = on_exec, on_exit, on_fork
        self.read_at_exec = read_at_exec
        self.max_recent = max_recent
        self.proc_root = proc_root
        self.thread_setup = thread_setup
        # pid -> ProcInfo read at exec, newest last; survives the process's exit
        self.recent: OrderedDict[int, ProcInfo] = OrderedDict()
        self._live: OrderedDict[int, None] = OrderedDict()  # born and not yet exited
        self._ended: OrderedDict[int, int] = OrderedDict()  # pid -> exit time, epoch ns
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.overruns = 0  # kernel dropped events (ENOBUFS): some pids were not seen
        self.events = 0

    # -- lifecycle

    def start(self) -> bool:
        """Subscribe and start the listener thread; False (logged) when unavailable."""
        if self._thread is not None:
            return True
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as e:
            log.warning("proc connector unavailable (%s); falling back to polling", e)
            return False
        try:
            try:  # a burst of execs must not overflow the default 200 KB buffer
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((0, CN_IDX_PROC))  # port 0: the kernel picks a unique one
            sock.settimeout(0.2)  # how long stop() may wait for the thread
            port = sock.getsockname()[0]
            sock.send(pack_control(PROC_CN_MCAST_LISTEN, port=port, ack=port))
            err = self._await_ack(sock, (port + 1) & 0xFFFFFFFF)
        except OSError as e:
            err = e.strerror or str(e)
        if err:
            sock.close()
            log.warning("proc connector subscription failed (%s; older kernels want "
                        "CAP_NET_ADMIN, all want the initial user, pid and network "
                        "namespaces); falling back to polling", err)
            return False
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="apppaccap-procevents",
                                        daemon=True)
        self._thread.start()
        return True

    def _await_ack(self, sock: socket.socket, ack: int, timeout: float = 1.0) -> str:
        """Empty once the kernel acked our LISTEN, else why not. A refused subscription
        is not an error on send(): the kernel multicasts an ack carrying EPERM, or
        nothing at all when nobody else listens - so silence means failure too."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            for ev in parse_events(data):
                if ev[0] == "ack" and ev[1] == ack:
                    return os.strerror(ev[2]) if ev[2] else ""
                self._dispatch(ev)  # an event that raced the ack: keep it
        return "no acknowledgement from the kernel"

    def stop(self) -> None:
        """Unsubscribe and join the listener (bounded by the 0.2 s receive timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._sock is not None:
            try:
                self._sock.send(pack_control(PROC_CN_MCAST_IGNORE,
                                             port=self._sock.getsockname()[0]))
            except OSError:
                pass
            self._sock.close()
            self._sock = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- queries

    def recent_pids(self, limit: int = 16) -> list[int]:
        """Pids born (exec or fork) most recently and not yet exited, newest first."""
        with self._lock:
            out = []
            for pid in reversed(self._live):
                out.append(pid)
                if len(out) >= limit:
                    break
            return out

    def info(self, pid: int) -> ProcInfo | None:
        """ProcInfo read when `pid` exec'd (also after it exited), or None."""
        with self._lock:
            return self.recent.get(pid)

    def ended_ns(self, pid: int) -> int | None:
        """When the exit of `pid` was seen (Unix epoch ns), if it was."""
        with self._lock:
            return self._ended.get(pid)

    # -- the listener

    def _run(self) -> None:
        if self.thread_setup is not None:
            try:
                self.thread_setup()
            except Exception:
                log.exception("proc event thread setup failed")
        sock = self._sock
        while not self._stop.is_set():
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError as e:
                if self._stop.is_set():
                    break
                if e.errno == 105:  # ENOBUFS: the kernel dropped events
                    self.overruns += 1
                    continue
                log.warning("proc connector receive failed: %s", e)
                break
            for ev in parse_events(data):
                self._dispatch(ev)

    def _dispatch(self, ev: tuple) -> None:
        self.events += 1
        try:
            self._handle(ev)
        except Exception:  # a failing callback must not kill the listener
            log.exception("proc event handler failed for %r", ev)

    def _handle(self, ev: tuple) -> None:
        kind = ev[0]
        if kind == "exec":
            pid = ev[2]  # tgid: an exec in any thread makes it the whole process
            info = read_process(pid, self.proc_root) if self.read_at_exec else None
            with self._lock:
                if info is not None:
                    self.recent[pid] = info
                    self.recent.move_to_end(pid)
                    _trim(self.recent, self.max_recent)
                else:
                    self.recent.pop(pid, None)  # exited already: old facts are stale
                self._born(pid)
            if self.on_exec:
                self.on_exec(pid)
        elif kind == "fork":
            _, parent, child, child_tgid = ev
            if child != child_tgid:
                return  # a new thread, not a process
            with self._lock:
                self.recent.pop(child, None)  # the pid was reused: forget its past
                self._ended.pop(child, None)
                self._born(child)
            if self.on_fork:
                self.on_fork(parent, child)
        elif kind == "exit":
            _, pid, tgid = ev
            if pid != tgid:
                return  # a thread ended
            with self._lock:
                self._live.pop(pid, None)
                self._ended[pid] = time.time_ns()
                _trim(self._ended, self.max_recent)
            if self.on_exit:
                self.on_exit(pid)
        elif kind == "comm":
            _, pid, tgid, comm = ev
            with self._lock:
                info = self.recent.get(tgid)
                if info is not None and pid == tgid:  # the main thread renamed the process
                    self.recent[tgid] = info._replace(name=comm)

    def _born(self, pid: int) -> None:
        self._live[pid] = None
        self._live.move_to_end(pid)
        _trim(self._live, self.max_recent)


def _trim(d: OrderedDict, size: int) -> None:
    while len(d) > size:
        d.popitem(last=False)


def available() -> bool:
    """Can this process open a proc connector socket (not whether it may subscribe)?"""
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR).close()
        return True
    except (OSError, AttributeError):
        return False
