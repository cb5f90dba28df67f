"""Hold a just-started program still while its capture starts (Linux ptrace).

Why: opening the capture handles takes ~15 ms per adapter, and a curl sends its SYN
2-18 ms after exec (measured). Without a pause the first packets are gone before the
capture exists. A ptrace stop (PTRACE_SEIZE + PTRACE_INTERRUPT, then PTRACE_DETACH) is
invisible to the program's parent - unlike SIGSTOP, which a job-control shell would
report as "Stopped" and take the terminal back.

Why a helper process: the kernel reports a ptrace stop to every thread group member's
wait(), and when the tracer lives in the program's real parent, the parent's own
waitpid() can consume the stop (subprocess would then see the child "exit" with
-SIGTRAP). A tiny separate tracer process is never the parent, so its stops stay
private. It reads "P pid" / "R pid" lines and answers one line each; if the service
dies the helper gets EOF and the kernel detaches every tracee of an exiting tracer.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

log = logging.getLogger(__name__)

HELPER = r'''
import ctypes, errno, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
SEIZE, INTERRUPT, DETACH, WALL = 0x4206, 0x4207, 17, 0x40000000
pending = {}  # pid -> signal to re-inject at detach (a signal-delivery stop)

def ptrace(req, pid, data=0):
    if libc.ptrace(req, pid, None, ctypes.c_void_p(data)) == 0:
        return 0
    return ctypes.get_errno()

def pause(pid):
    err = ptrace(SEIZE, pid)
    if err:
        return "gone" if err == errno.ESRCH else "err " + errno.errorcode.get(err, str(err))
    ptrace(INTERRUPT, pid)
    while True:
        try:
            _, st = os.waitpid(pid, WALL)
        except ChildProcessError:
            return "gone"
        if os.WIFSTOPPED(st):
            sig = os.WSTOPSIG(st)
            # an event stop (PTRACE_EVENT_STOP) carries SIGTRAP and event bits;
            # a plain signal-delivery stop must hand its signal back at detach
            pending[pid] = 0 if st >> 16 else sig
            return "ok"
        return "gone"  # exited or killed while we waited

def resume(pid):
    sig = pending.pop(pid, 0)
    err = ptrace(DETACH, pid, sig)
    if not err:
        return "ok"
    # not stopped (killed meanwhile): reap our ptrace view so the real parent sees the exit
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        try:
            got, st = os.waitpid(pid, WALL | os.WNOHANG)
        except ChildProcessError:
            return "gone"
        if got and os.WIFSTOPPED(st):
            if not ptrace(DETACH, pid, 0):
                return "ok"
        elif got:
            return "gone"
        time.sleep(0.005)
    return "gone"

print("ready", flush=True)
for line in sys.stdin:
    op, _, arg = line.strip().partition(" ")
    try:
        pid = int(arg)
        out = pause(pid) if op == "P" else resume(pid) if op == "R" else "err op"
    except Exception as exc:
        out = "err " + type(exc).__name__
    sys.stdout.write(out + "\n")
    sys.stdout.flush()
'''


class Hold:
    """One paused program; release() is idempotent and safe from any thread."""

    def __init__(self, pauser, pid: int, paused: bool):
        self.pauser, self.pid, self.paused = pauser, pid, paused
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if not self.paused:
                return
            self.paused = False
        self.pauser._call("R", self.pid)


class NoPause:
    """The seam when pausing is off or impossible: programs run on unpaused."""

    available = False
    reason = "pausing is off"

    def start(self) -> bool:
        return False

    def hold(self, pid: int) -> Hold:
        return Hold(self, pid, False)

    def stop(self) -> None:
        pass


class PtracePause(NoPause):
    """Pauses programs through the tracer helper process."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.available = False
        self.reason = "not started"

    def start(self) -> bool:
        if self._proc is not None:
            return self.available
        if not sys.platform.startswith("linux"):
            self.reason = "ptrace pausing is Linux-only"
            return False
        try:
            # -I: isolated, stdlib only - starts in ~20 ms and imports nothing of ours
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-c", HELPER], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
            ready = self._proc.stdout.readline().strip()
        except OSError as exc:
            self.reason = f"cannot start the tracer helper: {exc}"
            return False
        self.available = ready == "ready"
        self.reason = "" if self.available else "the tracer helper did not start"
        return self.available

    def hold(self, pid: int) -> Hold:
        """Stop `pid` (ptrace stop); returns a Hold whose release() lets it run again."""
        if not self.available:
            return Hold(self, pid, False)
        answer = self._call("P", pid)
        if answer != "ok" and answer != "gone":
            log.info("could not pause pid %s: %s", pid, answer)
        return Hold(self, pid, answer == "ok")

    def _call(self, op: str, pid: int) -> str:
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                self.available = False
                return "err helper gone"
            try:
                proc.stdin.write(f"{op} {pid}\n")
                proc.stdin.flush()
                return proc.stdout.readline().strip() or "err helper gone"
            except (OSError, ValueError):
                self.available = False
                return "err helper gone"

    def stop(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
            self.available = False
        if proc is None:
            return
        try:
            proc.stdin.close()  # EOF: the helper ends; the kernel detaches its tracees
        except OSError:
            pass
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
