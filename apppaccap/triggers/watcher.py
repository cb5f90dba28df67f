"""The trigger watcher: catch a program as it starts, capture it, act when it ends.

Linux: the gate's helper process (gate.py) reads the proc connector's exec events,
compares /proc/<pid>/exe with the watched paths and holds a match still (ptrace) well
under a millisecond after its exec; the watcher then starts the process capture and lets
the program run - the capture's handles are open before its first packet. Forks (children
joining with CAPTURE_FLAG_CHILD_PROCESSES) and exits come from the watcher's own
ProcEvents listener. Without the helper the watcher handles exec events itself (holding
the program through the gate if it can); without a proc connector an APScheduler job
polls psutil instead, and programs found that way may already have talked.

On the program's exit the capture is stopped after a short grace (the peer's last
FIN/ACKs are still in flight) and the actions run (runner.py), unless the trigger's
previous firing's actions are still queued or running (FIRINGS_AT_ONCE). APScheduler owns
every job here: completions, the fallback poll and the periodic clean-up, on a small
executor of their own so they never queue behind long-running commands.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time

import psutil
from apscheduler.executors.pool import ThreadPoolExecutor

from apppaccap.attribution.procevents import ProcEvents
from apppaccap.errors import AppError
from apppaccap.errors import NotFound
from apppaccap.filetime import now_ns
from apppaccap.store import triggers as trigger_table
from apppaccap.triggers.gate import Gate
from apppaccap.triggers.gate import NoGate
from apppaccap.triggers.inflight import Batch
from apppaccap.triggers.inflight import InFlight
from apppaccap.triggers.programs import Matcher
from apppaccap.triggers.programs import compile_matchers
from apppaccap.triggers.programs import exe_of
from apppaccap.triggers.programs import is_alive
from apppaccap.triggers.programs import process_record
from apppaccap.triggers.programs import started_by_action
from apppaccap.triggers.runner import ActionRunner
from apppaccap.triggers.runner import Firing
from apppaccap.wire import CaptureFlag
from apppaccap.wire import CaptureType

log = logging.getLogger(__name__)

EXECUTOR = "triggers"
# A program started in a loop (by anyone) completes a firing per run, and each queued the
# trigger's actions: 100 runs with a 3 s action filled the 64-command queue, so ingests
# and exports were BUSY. A trigger's actions say "this program ran"; while one firing's
# are queued or running, the next firing keeps its capture and skips its actions.
FIRINGS_AT_ONCE = 1


class TriggerWatcher:
    """Owns the trigger matchers, the firings in flight and their scheduler jobs.

    Seams: `events` (a ProcEvents-like object; False = poll mode), `gate` (Gate-like),
    `runner` (ActionRunner-like)."""

    def __init__(self, ctx, *, events=None, gate=None, runner=None):
        self.ctx = ctx
        self._events = events
        self.gate = gate
        self._stopping = threading.Event()
        self.runner = runner or ActionRunner(ctx, stopping=self._stopping)
        self.matchers: tuple = ()
        self.mode = "stopped"  # "events" | "poll" | "stopped"
        self._lock = threading.RLock()
        self._active: dict[int, list[Firing]] = {}     # pid → firings waiting for its exit
        self._fired: dict[int, tuple] = {}              # pid → (start_ns, {trigger ids})
        self._seen: set[int] | None = None              # poll mode: the pids of last poll
        self._job_ids: set[str] = set()
        self._warm = False
        self.latencies: list[dict] = []                 # last firings' timings (ms)
        self.completed: list[tuple[Firing, list]] = []  # last firings and their command uids
        self.inflight = InFlight(ctx, "trigger", "firing's actions are")  # FIRINGS_AT_ONCE

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Load the triggers and start listening (proc connector, else polling)."""
        self._stopping.clear()
        scheduler = self.ctx.jobs.scheduler
        try:
            scheduler.add_executor(ThreadPoolExecutor(8), alias=EXECUTOR)
        except ValueError:
            pass  # this scheduler already has it (a watcher restarted on the same Jobs)
        if self.gate is None:
            hold_on = self.ctx.settings.get_bool("trigger_pause")
            limit = max(50, self.ctx.settings.get_int("trigger_pause_max_ms")) / 1000
            # events=False stands for "no proc connector": the helper then only holds
            self.gate = Gate(self._on_caught, max_pause=limit,
                             catch_execs=self._events is not False) if hold_on else NoGate()
            if not self.gate.start() and hold_on:
                log.warning("trigger programs will not be held: %s", self.gate.reason)
        elif not self.gate.available:
            self.gate.start()
        if self._events is None:
            self._events = ProcEvents(on_exit=self._on_exit, on_fork=self._on_fork,
                                      read_at_exec=False)
        if self._events is not False and not self.gate.events:
            self._events.on_exec = self._on_exec  # nobody else catches execs
        self.reload()
        if self._events is not False and self._events.start():
            self.mode = "events"
        else:
            self.mode = "poll"
            poll = max(50, self.ctx.settings.get_int("trigger_poll_ms")) / 1000
            self._add_job(self._poll, "interval", seconds=poll, id="triggers:poll",
                          coalesce=True, max_instances=1)
        self._add_job(self._cleanup, "interval", seconds=2, id="triggers:cleanup",
                      coalesce=True, max_instances=1)

    def stop(self) -> None:
        """Stop listening and drop pending completions (the service is going down: the
        captures are stopped by stop_services; their actions do not run)."""
        self._stopping.set()
        if self._events:
            self._events.stop()
        for job_id in list(self._job_ids):
            try:
                self.ctx.jobs.scheduler.remove_job(job_id)
            except Exception:  # noqa: BLE001 - already ran or removed
                pass
        self._job_ids.clear()
        with self._lock:
            self._active.clear()
        if self.gate is not None:
            self.gate.stop()
        self.mode = "stopped"

    def reload(self) -> None:
        """Re-read the triggers (after every trigger_* change)."""
        matchers = compile_matchers(trigger_table.all_triggers(self.ctx.catalog))
        if matchers and not self._warm:
            self._warm_up()
        self.matchers = matchers
        if self.gate is not None:
            self.gate.watch(matchers)

    def _warm_up(self) -> None:
        """Start the attribution backend (kept until shutdown) before the first firing,
        so the first caught program is not held for its ~0.2 s start-up as well."""
        self._warm = True
        try:
            attribution = self.ctx.captures.attribution
            attribution.acquire()
            attribution.release()
        except Exception:  # noqa: BLE001 - an optimisation only; the first firing starts it
            log.warning("could not pre-start attribution", exc_info=True)

    def _add_job(self, fn, trigger, **kw) -> None:
        job = self.ctx.jobs.scheduler.add_job(fn, trigger, executor=EXECUTOR, **kw)
        self._job_ids.add(job.id)

    # -- events (gate dispatcher, listener thread, or the poll job) -----------------------
    def _on_caught(self, pid: int, trigger_ids: list, hold, stopped_us: int) -> None:
        """The gate caught and holds a program matching `trigger_ids`: capture, release."""
        t0 = time.perf_counter()
        by_id = {m.trigger_id: m for m in self.matchers}
        self._start_held(pid, [by_id[i] for i in trigger_ids if i in by_id], hold,
                         t0, stopped_us / 1000)

    def _on_exec(self, pid: int) -> None:
        """An exec the gate did not catch (no helper, or the polling fallback)."""
        t0 = time.perf_counter()
        matchers = self.matchers
        if not matchers:
            return
        exe = exe_of(pid)
        hits = [m for m in matchers if m.matches(exe)] if exe else []
        if not hits or started_by_action(pid):
            return
        hold = self.gate.hold(pid)
        self._start_held(pid, hits, hold, t0, (time.perf_counter() - t0) * 1000)

    def _start_held(self, pid: int, hits: list, hold, t0: float, stopped_ms: float) -> None:
        """Fire the matching triggers for a held program, then let it run (always)."""
        fired = False
        try:
            record = process_record(pid)
            if record is None:
                return  # exited already
            with self._lock:
                hits = [m for m in hits if not self._already(m, pid, record["ppid"])]
            for m in hits:
                fired = self._fire(m, record) or fired
        finally:
            held = hold.paused
            hold.release()
            if fired:
                self.latencies.append({
                    "pid": pid, "held": held, "stopped_ms": round(stopped_ms, 3),
                    "released_ms": round(stopped_ms + (time.perf_counter() - t0) * 1000, 3)})
                del self.latencies[:-100]

    def _already(self, m: Matcher, pid: int, ppid: int) -> bool:
        """Fired for this process already, or it is a child a running firing follows (its
        fork event may not have been handled yet: the gate's channel is faster)."""
        if m.trigger_id in self._fired.get(pid, ((), ()))[1]:
            return True
        for firings in self._active.values():
            for f in firings:
                if f.trigger_id == m.trigger_id and f.flags & CaptureFlag.CHILD_PROCESSES:
                    live = self.ctx.captures.live.get(f.capture_id)
                    if live is not None and (pid in live.target.pids
                                                or ppid in live.target.pids):
                        live.target.pids.add(pid)
                        return True
        return False

    def _fire(self, m: Matcher, record: dict) -> bool:
        """Start the trigger's capture of the process; True when it started."""
        pid = record["pid"]
        with self._lock:
            start, ids = self._fired.get(pid, (record["start_time"], set()))
            if start != record["start_time"]:
                ids = set()  # a reused pid whose old process's exit we missed
            if m.trigger_id in ids:
                return False
            ids.add(m.trigger_id)
            self._fired[pid] = (record["start_time"], ids)
        try:
            process_id = self.ctx.processes.identify([record])[0]
            row = dict(self.ctx.processes.by_id(process_id))
            cap = self.ctx.captures.start(
                CaptureType.PROCESS, pids=[pid], process=row, flags=m.flags, bpf=m.bpf,
                name=f"{m.name}: {record['name']}")
        except Exception as exc:  # noqa: BLE001 - reported on the trigger (LastError)
            msg = exc.message if isinstance(exc, AppError) else f"{type(exc).__name__}: {exc}"
            log.warning("trigger %s: capture of pid %s failed: %s", m.trigger_id, pid, msg,
                        exc_info=not isinstance(exc, AppError))
            trigger_table.record_firing(self.ctx.catalog, m.trigger_id, None, msg)
            return False
        firing = Firing(m.trigger_id, m.name, pid, record["start_time"], process_id,
                        record["name"], cap["id"], m.flags, now_ns())
        with self._lock:
            self._active.setdefault(pid, []).append(firing)
        trigger_table.record_firing(self.ctx.catalog, m.trigger_id, cap["id"])
        log.info("trigger %s fired for %s (pid %s): capture %s", m.trigger_id,
                 record["name"], pid, cap["id"])
        return True

    def _on_fork(self, parent: int, child: int) -> None:
        """CAPTURE_FLAG_CHILD_PROCESSES: a child joins its parent's capture at birth."""
        if not self._active:
            return
        with self._lock:
            firings = [f for fs in self._active.values() for f in fs
                       if f.flags & CaptureFlag.CHILD_PROCESSES]
        for f in firings:
            live = self.ctx.captures.live.get(f.capture_id)
            if live is not None and parent in live.target.pids:
                live.target.pids.add(child)

    def _on_exit(self, pid: int) -> None:
        if pid not in self._fired and pid not in self._active:
            return  # every process exit in the system comes here: keep it cheap
        with self._lock:
            firings = self._active.pop(pid, [])
            self._fired.pop(pid, None)
        if not firings or self._stopping.is_set():
            return
        grace = max(0, self.ctx.settings.get_int("trigger_stop_grace_ms")) / 1000
        when = datetime.datetime.now() + datetime.timedelta(seconds=grace)
        for f in firings:
            self._add_job(self._complete, "date", run_date=when, args=(f,),
                          id=f"triggers:complete:{f.capture_id}")

    # -- completion (scheduler) ------------------------------------------------------------
    def _complete(self, firing: Firing) -> None:
        """Stop the capture, then run the trigger's actions and the system-wide ones."""
        self._job_ids.discard(f"triggers:complete:{firing.capture_id}")
        try:
            self.ctx.captures.stop(firing.capture_id)
        except NotFound:
            pass  # stopped by hand already: its packets are still worth acting on
        if self._stopping.is_set():
            return
        actions = trigger_table.actions_to_run(self.ctx.catalog, firing.trigger_id)
        uids = self._act(firing, actions) if actions else []
        self.completed.append((firing, uids))
        del self.completed[:-100]

    def _act(self, firing: Firing, actions: list) -> list:
        """Run the firing's actions unless the trigger's previous firings' are still queued
        or running (FIRINGS_AT_ONCE, triggers/inflight.py): then LastError says so."""
        taken = self.inflight.take(firing.trigger_id, FIRINGS_AT_ONCE)
        if not isinstance(taken, Batch):
            self.inflight.skip(firing.trigger_id, taken)
            trigger_table.record_firing(self.ctx.catalog, firing.trigger_id, None,
                                        f"actions not run: {taken}")
            return []
        uids: list = []
        try:
            uids = self.runner.run(firing, actions)
        finally:
            self.inflight.close(taken, uids)
        return uids

    # -- poll mode and clean-up (scheduler) ------------------------------------------------
    def _poll(self) -> None:
        """Fallback without a proc connector: new pids since the last poll 'exec'."""
        current = set(psutil.pids())
        if self._seen is None:  # first look: what runs already does not count as starting
            self._seen = current
            return
        new, gone = sorted(current - self._seen), self._seen - current
        self._seen = current
        for pid in gone:
            self._on_exit(pid)
        with self._lock:
            watched = {pid: fs[0].start_ns for pid, fs in self._active.items() if fs}
        for pid, start_ns in watched.items():  # exited but not reaped yet: a zombie
            if pid in current and not is_alive(pid, start_ns):
                self._on_exit(pid)
        for pid in new:
            if self._active:  # no fork events here: children join their parent's capture now
                try:
                    self._on_fork(psutil.Process(pid).ppid(), pid)
                except psutil.Error:
                    continue
            self._on_exec(pid)

    def _cleanup(self) -> None:
        """Catch exits the event stream lost (ENOBUFS) and forget dead pids."""
        with self._lock:
            watched = {pid: fs[0].start_ns for pid, fs in self._active.items() if fs}
            fired = {pid: v[0] for pid, v in self._fired.items()}
        for pid, start_ns in watched.items():
            if not is_alive(pid, start_ns):
                self._on_exit(pid)
        dead = [pid for pid, start in fired.items() if not is_alive(pid, start)]
        if dead:
            with self._lock:
                for pid in dead:
                    if pid not in self._active:
                        self._fired.pop(pid, None)
