"""The gate: catch a just-started program and hold it still while its capture starts.

Why hold it: opening the capture handles takes 15-55 ms per adapter, and a curl sends its
SYN 2-18 ms after exec (measured). A ptrace stop (PTRACE_SEIZE + PTRACE_INTERRUPT, later
PTRACE_DETACH) is invisible to the program's parent - unlike SIGSTOP, which a job-control
shell would report as "Stopped" while it took the terminal back.

Why a separate process: (1) the kernel reports a ptrace stop to every thread of the
tracer's process, so if the tracer lived in the program's real parent (a service that ran
the program itself, or a test), the parent's own waitpid() could consume the stop and see
its child "exit" with -SIGTRAP; (2) in the service the exec event waits for the GIL behind
capture threads - measured up to 47 ms late under load, enough for 1 curl in 20 to have
finished before it was looked at. The helper does nothing else: it reads the proc
connector's exec events itself, compares /proc/<pid>/exe with the watched paths, stops a
match at once (typically well under a millisecond after exec) and tells the service,
which starts the capture and answers "R pid". A program is never held longer than
`max_pause` seconds, even if the service hangs; if the service dies the helper reads EOF
and exits, and the kernel detaches (resumes) every tracee of an exiting tracer.

Protocol (text lines). Service → helper: "W <json [[trigger_id, path, is_dir], ...]>",
"P <pid>" (hold this pid: the polling fallback), "R <pid>" (resume). Helper → service:
"= <answer>" replies in order, and "E <pid> <ids,...> <exec→stopped µs>" for each caught
program (already stopped; the service must answer "R <pid>").
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading

from apppaccap.lifeline import spawn

log = logging.getLogger(__name__)


class Hold:
    """One held program; release() is idempotent and safe from any thread."""

    def __init__(self, gate, pid: int, paused: bool):
        self.gate, self.pid, self.paused = gate, pid, paused
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if not self.paused:
                return
            self.paused = False
        self.gate._call("R", self.pid)


class NoGate:
    """Nothing is held and no exec is caught here (pausing off, or the helper is missing);
    the watcher then reacts to exec events itself."""

    available = False
    events = False
    reason = "pausing is off (setting trigger_pause)"

    def start(self) -> bool:
        return False

    def watch(self, matchers) -> None:
        pass

    def hold(self, pid: int) -> Hold:
        return Hold(self, pid, False)

    def stop(self) -> None:
        pass


class Gate(NoGate):
    """The service's end of the helper. `on_exec(pid, trigger_ids, hold, exec_to_stop_us)`
    runs on the gate's dispatcher thread for every program the helper caught."""

    def __init__(self, on_exec=None, *, max_pause: float = 3.0, catch_execs: bool = True):
        self.on_exec = on_exec
        self.max_pause = max_pause
        self.catch_execs = catch_execs  # False: only hold pids asked for (polling fallback)
        self.reason = "not started"
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()        # one request at a time
        self._replies: queue.Queue = queue.Queue()
        self._caught: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []

    def start(self) -> bool:
        """Start the helper; False (with `reason`) when this host cannot hold programs."""
        if self._proc is not None:
            return self.available
        if not sys.platform.startswith("linux"):
            self.reason = "holding programs needs Linux ptrace"
            return False
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = (f"import sys; sys.path.insert(0, {root!r}); "
                "from apppaccap.triggers.gate_helper import main; main()")
        try:
            # -I: ignore the environment and user site; it imports only procevents
            self._proc = spawn(
                [sys.executable, "-I", "-c", code, str(self.max_pause),
                 "events" if self.catch_execs else "noevents"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            ready, _, _ = select.select([self._proc.stdout], [], [], 10)
            first = self._proc.stdout.readline().decode().split(" ", 2) if ready else []
        except OSError as exc:
            self.reason = f"cannot start the gate helper: {exc}"
            self._proc = None
            return False
        if first[:1] != ["ready"]:
            self.reason = "the gate helper did not start"
            self.stop()
            return False
        self.available = True
        self.events = first[1].strip() == "events"
        self.reason = "" if self.events else first[2].strip() if len(first) > 2 else ""
        for name, fn in (("reader", self._read), ("dispatch", self._dispatch)):
            t = threading.Thread(target=fn, name=f"apppaccap-gate-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return True

    def watch(self, matchers) -> None:
        """Tell the helper which executables / directories to catch."""
        if self.available:
            self._call("W", json.dumps([[m.trigger_id, m.real, m.is_dir] for m in matchers]))

    def hold(self, pid: int) -> Hold:
        """Stop `pid` now (the polling fallback's way in)."""
        if not self.available:
            return Hold(self, pid, False)
        answer = self._call("P", pid)
        if answer not in ("ok", "gone"):
            log.info("could not hold pid %s: %s", pid, answer)
        return Hold(self, pid, answer == "ok")

    def _call(self, op: str, arg) -> str:
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                self.available = False
                return "err gate helper gone"
            try:
                proc.stdin.write(f"{op} {arg}\n".encode())
                proc.stdin.flush()
                return self._replies.get(timeout=5)
            except (OSError, ValueError, queue.Empty):
                self.available = False
                return "err gate helper gone"

    def _read(self) -> None:
        stream = self._proc.stdout
        for raw in iter(stream.readline, b""):
            line = raw.decode().rstrip("\n")
            if line.startswith("= "):
                self._replies.put(line[2:])
            elif line.startswith("E "):
                try:
                    _, pid, ids, waited = line.split(" ")
                    self._caught.put((int(pid), [int(i) for i in ids.split(",")], int(waited)))
                except ValueError:
                    log.warning("gate helper sent %r", line[:200])
        self.available = False
        self._caught.put(None)

    def _dispatch(self) -> None:
        while True:
            item = self._caught.get()
            if item is None:
                return
            pid, ids, waited = item
            hold = Hold(self, pid, True)
            try:
                if self.on_exec is not None:
                    self.on_exec(pid, ids, hold, waited)
            except Exception:  # noqa: BLE001 - one bad firing must not stop the gate
                log.exception("firing for pid %s failed", pid)
            finally:
                hold.release()

    def stop(self) -> None:
        """End the helper (held programs are resumed by its exit)."""
        proc, self._proc = self._proc, None
        self.available = False
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for t in self._threads:
            t.join(2)
        self._threads.clear()
        proc.stdout.close()
