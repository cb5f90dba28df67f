"""The gate's helper process (started by gate.Gate): catch watched execs, hold them.

Runs alone in its own process (see gate.py for why): reads the proc connector's exec
events, compares /proc/<pid>/exe with the watched paths, stops a match with ptrace at
once and tells the service; answers the service's W / P / R requests. It imports only
the standard library, procevents.py's netlink constants and lifeline.py.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import socket
import sys
import time

from apppaccap.attribution import procevents
from apppaccap.lifeline import die_with_parent
from apppaccap.lifeline import parent_gone

ACTION_ENV = b"APPPACCAP_ACTION="  # see runner.ACTION_ENV: never catch those


class Tracer:
    """ptrace stop/resume of other processes; every held pid is released by its deadline."""

    SEIZE, INTERRUPT, DETACH, WALL = 0x4206, 0x4207, 17, 0x40000000

    def __init__(self, max_pause: float):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                                     ctypes.c_void_p]
        self.libc.ptrace.restype = ctypes.c_long
        self.max_pause = max_pause
        self.held: dict[int, tuple[float, int]] = {}  # pid → (deadline, signal to re-inject)

    def _ptrace(self, req: int, pid: int, data: int = 0) -> int:
        if self.libc.ptrace(req, pid, None, ctypes.c_void_p(data)) == 0:
            return 0
        return ctypes.get_errno()

    def pause(self, pid: int) -> str:
        err = self._ptrace(self.SEIZE, pid)
        if err:
            return "gone" if err == errno.ESRCH else "err " + errno.errorcode.get(err, str(err))
        self._ptrace(self.INTERRUPT, pid)
        try:
            _, status = os.waitpid(pid, self.WALL)
        except ChildProcessError:
            return "gone"
        if not os.WIFSTOPPED(status):
            return "gone"  # killed while we waited
        # an event stop carries event bits; a signal-delivery stop must get its signal back
        sig = 0 if status >> 16 else os.WSTOPSIG(status)
        self.held[pid] = (time.monotonic() + self.max_pause, sig)
        return "ok"

    def resume(self, pid: int) -> str:
        if pid not in self.held:
            return "gone"
        _, sig = self.held.pop(pid)
        if not self._ptrace(self.DETACH, pid, sig):
            return "ok"
        # not in a stop any more (killed meanwhile): collect our ptrace view of it, or the
        # real parent would never learn of the exit
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            try:
                got, status = os.waitpid(pid, self.WALL | os.WNOHANG)
            except ChildProcessError:
                return "gone"
            if got and os.WIFSTOPPED(status):
                if not self._ptrace(self.DETACH, pid, 0):
                    return "ok"
            elif got:
                return "gone"
            time.sleep(0.002)
        return "gone"

    def expire(self) -> float | None:
        """Resume whatever is overdue; seconds until the next deadline (None: none held)."""
        now = time.monotonic()
        for pid, (deadline, _) in list(self.held.items()):
            if deadline <= now:
                self.resume(pid)
        if not self.held:
            return None
        return max(0.0, min(d for d, _ in self.held.values()) - now)


def _subscribe():
    """A proc connector socket listening to process events, or (None, reason)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, procevents.NETLINK_CONNECTOR)
    except (OSError, AttributeError) as exc:
        return None, f"no proc connector: {exc}"
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, procevents.SO_RCVBUFFORCE, 4 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((0, procevents.CN_IDX_PROC))
        sock.send(procevents.pack_control(procevents.PROC_CN_MCAST_LISTEN,
                                          port=sock.getsockname()[0]))
    except OSError as exc:
        sock.close()
        return None, f"proc connector subscription refused: {exc}"
    sock.setblocking(False)
    return sock, ""


def exec_events(data: bytes):
    """(tgid, kernel timestamp ns) of each exec event in one proc connector datagram."""
    off = 0
    while off + procevents.DATA_OFF <= len(data):
        length = procevents.NLMSGHDR.unpack_from(data, off)[0]
        if length < procevents.DATA_OFF or off + length > len(data):
            break
        idx, val = procevents.CN_MSG.unpack_from(data, off + procevents.NLMSGHDR.size)[:2]
        what, _cpu, ts = procevents.EVENT_HEAD.unpack_from(data, off + procevents.EVENT_OFF)
        if (idx, val) == (procevents.CN_IDX_PROC, procevents.CN_VAL_PROC) and \
                what == procevents.PROC_EVENT_EXEC:
            yield procevents.PIDS2.unpack_from(data, off + procevents.DATA_OFF)[1], ts
        off += (length + 3) & ~3


def match(watch, exe: str) -> list[int]:
    """Trigger ids whose path is `exe` or a directory above it."""
    return [tid for tid, path, is_dir in watch
            if (exe.startswith(path.rstrip("/") + "/") if is_dir else exe == path)]


def _exe(pid: int) -> str:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""
    return exe[:-10] if exe.endswith(" (deleted)") else exe


def _marked(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return (b"\0" + fh.read()).find(b"\0" + ACTION_ENV) >= 0
    except OSError:
        return False


def main() -> None:  # pragma: no cover - runs in the helper process (tests drive it for real)
    """The helper's loop: proc connector exec events and the service's requests."""
    # a service killed -9 must not leave this process (and its ptrace holds) behind
    polled = not die_with_parent()
    max_pause = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    catch_execs = len(sys.argv) < 3 or sys.argv[2] != "noevents"
    try:  # a caught program waits on us: run ahead of normal tasks (bounded by RT throttling)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))
    except (AttributeError, OSError):
        try:
            os.nice(-10)
        except OSError:
            pass
    tracer = Tracer(max_pause)
    sock, reason = _subscribe() if catch_execs else (None, "exec catching is off")
    out = sys.stdout
    out.write("ready events\n" if sock else f"ready noevents {reason}\n")
    out.flush()
    stdin = sys.stdin.buffer.raw if hasattr(sys.stdin.buffer, "raw") else sys.stdin.buffer
    pending = b""
    watch: list = []
    while True:
        fds = [stdin] + ([sock] if sock else [])
        wait = tracer.expire()
        if polled:  # no prctl: look at the parent at least once a second
            wait = 1.0 if wait is None else min(wait, 1.0)
            if parent_gone():
                break
        ready, _, _ = select.select(fds, [], [], wait)
        if sock in ready:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                data = b""
            except OSError:
                data = b""  # ENOBUFS: events were lost; the service's poll catches up
            for pid, ts in exec_events(data) if watch else ():
                ids = match(watch, _exe(pid))
                if not ids or _marked(pid):
                    continue
                if tracer.pause(pid) == "ok":
                    waited = max(0, time.monotonic_ns() - ts) // 1000
                    out.write(f"E {pid} {','.join(map(str, ids))} {waited}\n")
                    out.flush()
        if stdin in ready:
            chunk = os.read(stdin.fileno(), 1 << 16)
            if not chunk:
                break  # the service went away: exiting detaches every held program
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                op, _, arg = line.decode().strip().partition(" ")
                try:
                    if op == "W":
                        watch = [(int(t), str(p), bool(d)) for t, p, d in json.loads(arg)]
                        answer = "ok"
                    elif op == "P":
                        answer = tracer.pause(int(arg))
                    elif op == "R":
                        answer = tracer.resume(int(arg))
                    else:
                        answer = "err unknown request"
                except (ValueError, TypeError) as exc:
                    answer = f"err {type(exc).__name__}"
                out.write(f"= {answer}\n")
                out.flush()
    for pid in list(tracer.held):
        tracer.resume(pid)
