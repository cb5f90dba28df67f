"""The firing logic with fakes for the capture engine, the pauser and the event source,
and the EXECUTE runner with real programs (output limit, time limit, process group)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from apppaccap.api import triggers as api
from apppaccap.errors import InvalidPermissions
from apppaccap.jobs import Jobs
from apppaccap.triggers.gate import Hold
from apppaccap.triggers.programs import started_by_action
from apppaccap.triggers.runner import ACTION_ENV
from apppaccap.triggers.runner import OUTPUT_KEEP
from apppaccap.triggers.runner import ActionFailed
from apppaccap.triggers.runner import ActionRunner
from apppaccap.triggers.runner import Firing
from apppaccap.triggers.watcher import TriggerWatcher
from tests.helpers.live import wait_for


class FakeTarget:
    def __init__(self, pids):
        self.pids = set(pids)


class FakeSession:
    def __init__(self, pids):
        self.target = FakeTarget(pids)


class FakeCaptures:
    """Records start/stop; `log` keeps the order of events across fakes."""

    def __init__(self, log):
        self.log, self.live, self.next_id, self.started = log, {}, 1, []
        self.attribution = self  # warmed up by the watcher: acquire() + release()

    def acquire(self):
        self.log.append(("warm", "up"))

    def release(self):
        self.log.remove(("warm", "up"))

    def start(self, ctype, *, pids, process, flags, bpf, name):
        cid, self.next_id = self.next_id, self.next_id + 1
        self.live[cid] = FakeSession(pids)
        self.started.append({"type": ctype, "pids": list(pids), "flags": flags, "bpf": bpf,
                             "name": name, "process": process})
        self.log.append(("start", cid))
        return {"id": cid}

    def stop(self, cid):
        self.live.pop(cid)
        self.log.append(("stop", cid))

    def stop_all(self):
        self.live.clear()


class FakeEvents:
    """Started and stopped, never delivers: the tests call the handlers themselves."""

    def start(self):
        return True

    def stop(self):
        pass


class FakeGate:
    """Holds nothing for real; records hold/release. `events = False`: the watcher reacts
    to exec events itself, as without the helper."""

    available, events = True, False

    def __init__(self, log):
        self.log, self.watched = log, []

    def start(self):
        return True

    def watch(self, matchers):
        self.watched = [m.trigger_id for m in matchers]

    def hold(self, pid):
        self.log.append(("pause", pid))
        return Hold(self, pid, True)

    def _call(self, op, pid):
        assert op == "R"
        self.log.append(("resume", pid))

    def stop(self):
        pass


class FakeRunner:
    def __init__(self, log):
        self.log, self.runs = log, []

    def run(self, firing, actions):
        self.runs.append((firing, [a["id"] for a in actions]))
        self.log.append(("actions", firing.capture_id))
        return []


@pytest.fixture
def jobs(ctx):
    ctx.jobs = Jobs(ctx.catalog)
    ctx.jobs.start()
    yield ctx.jobs
    ctx.jobs.shutdown()
    ctx.jobs = None


@pytest.fixture
def watched(tmp_path):
    d = tmp_path / "watched"
    d.mkdir()
    shutil.copy("/bin/sleep", d / "sleep")
    return d


def _spawn(argv, **kw):
    """Popen, then wait until exec has finished: Popen returns when the vfork'd child
    starts exec, before the kernel copied argv/environ (the proc connector's exec event,
    which the watcher really gets, comes after that)."""
    proc = subprocess.Popen(argv, **kw)
    wait_for(lambda: open(f"/proc/{proc.pid}/cmdline", "rb").read(), timeout=5,
             interval=0.001, what="exec to finish")
    return proc


def _watcher(ctx, log):
    ctx.captures = FakeCaptures(log)
    ctx.settings.set("trigger_stop_grace_ms", "50")
    w = TriggerWatcher(ctx, events=FakeEvents(), gate=FakeGate(log), runner=FakeRunner(log))
    w.start()
    ctx.triggers = w
    return w


def test_exec_pauses_starts_resumes_then_exit_stops_and_acts(ctx, jobs, watched, tmp_path):
    log: list = []
    w = _watcher(ctx, log)
    t = api.trigger_add(ctx, name="sleepers", trigger_type=1, path=str(watched),
                        filter="tcp", flags=5)
    (tmp_path / "elsewhere").mkdir()  # a directory no program of this test runs from
    other = api.trigger_add(ctx, name="other", trigger_type=1, path=str(tmp_path / "elsewhere"))
    own = api.action_add(ctx, name="own", action_type=2, path=str(tmp_path),
                         trigger_id=t["TriggerId"])
    api.action_add(ctx, name="not mine", action_type=2, path=str(tmp_path),
                   trigger_id=other["TriggerId"])
    wide = api.action_add(ctx, name="wide", action_type=2, path=str(tmp_path))
    proc = _spawn([str(watched / "sleep"), "5"])
    try:
        assert w.gate.watched == [t["TriggerId"], other["TriggerId"]]
        w._on_exec(proc.pid)
        assert log == [("pause", proc.pid), ("start", 1), ("resume", proc.pid)]
        w._on_exec(proc.pid)  # a second exec of the same process does not fire again
        assert log[3:] == [("pause", proc.pid), ("resume", proc.pid)]
        started = ctx.captures.started[0]
        assert (started["pids"], started["flags"], started["bpf"]) == ([proc.pid], 5, "tcp")
        assert started["process"]["name"] == "sleep" and started["name"] == "sleepers: sleep"
        assert started["process"]["path"] == str(watched / "sleep")
        wait_for(lambda: api.trigger_list(ctx)[0]["FireCount"] == 1, what="FireCount")
        assert api.trigger_list(ctx)[0]["LastCaptureId"] == 1
        # CAPTURE_FLAG_CHILD_PROCESSES: a fork of the program joins its capture at birth
        w._on_fork(proc.pid, 999999)
        assert ctx.captures.live[1].target.pids == {proc.pid, 999999}
        w._on_fork(12345, 999998)
        assert 999998 not in ctx.captures.live[1].target.pids
    finally:
        proc.kill()
        proc.wait()
    w._on_exit(proc.pid)
    wait_for(lambda: ("actions", 1) in log, what="the completion job")
    assert log[-2:] == [("stop", 1), ("actions", 1)]
    firing, action_ids = w.runner.runs[0]
    assert (firing.trigger_id, firing.pid, firing.process_name) == (t["TriggerId"], proc.pid,
                                                                     "sleep")
    assert action_ids == [own["ActionId"], wide["ActionId"]]  # its own + system wide
    w.stop()


def test_no_match_no_pause_and_removed_trigger_stops_firing(ctx, jobs, watched):
    log: list = []
    w = _watcher(ctx, log)
    t = api.trigger_add(ctx, name="one", trigger_type=1, path=str(watched / "sleep"))
    unrelated = _spawn(["sleep", "5"])
    try:
        w._on_exec(unrelated.pid)
        assert log == []  # /usr/bin/sleep is not watched/sleep: not even paused
    finally:
        unrelated.kill()
        unrelated.wait()
    api.trigger_remove(ctx, trigger_id=t["TriggerId"])
    assert w.matchers == ()  # reloaded by the action
    proc = _spawn([str(watched / "sleep"), "5"])
    try:
        w._on_exec(proc.pid)
        assert log == []
    finally:
        proc.kill()
        proc.wait()
    w.stop()


def test_programs_started_by_actions_never_fire(ctx, jobs, watched):
    log: list = []
    w = _watcher(ctx, log)
    api.trigger_add(ctx, name="one", trigger_type=1, path=str(watched))
    env = dict(os.environ, **{ACTION_ENV: "1"})
    proc = _spawn([str(watched / "sleep"), "5"], env=env)
    try:
        assert started_by_action(proc.pid)
        w._on_exec(proc.pid)
        assert log == []
    finally:
        proc.kill()
        proc.wait()
    plain = _spawn([str(watched / "sleep"), "5"])
    try:
        assert not started_by_action(plain.pid)
    finally:
        plain.kill()
        plain.wait()
    w.stop()


def test_a_failed_capture_start_is_reported_on_the_trigger(ctx, jobs, watched):
    from apppaccap.errors import NotFound
    log: list = []
    w = _watcher(ctx, log)

    def refuse(*a, **kw):
        raise NotFound("adapter: no capturable adapter is up")
    ctx.captures.start = refuse
    api.trigger_add(ctx, name="one", trigger_type=1, path=str(watched))
    proc = _spawn([str(watched / "sleep"), "5"])
    try:
        w._on_exec(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert log == [("pause", proc.pid), ("resume", proc.pid)]  # never left paused
    wait_for(lambda: api.trigger_list(ctx)[0]["LastError"], what="LastError")
    t = api.trigger_list(ctx)[0]
    assert t["LastError"] == "adapter: no capturable adapter is up" and t["FireCount"] == 0
    w.stop()


# -- EXECUTE with real programs -----------------------------------------------------------

def _script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_execute_keeps_the_start_of_the_output_and_the_exit_code(ctx, tmp_path):
    prog = _script(tmp_path, "loud.sh", 'head -c 300000 /dev/zero | tr "\\0" x\n'
                                        'echo "$APPPACCAP_PROCESS_NAME" >&2\nexit 3\n')
    runner = ActionRunner(ctx)
    result = json.loads(runner.execute(prog, "", {"capture_id": 1, "pid": 2,
                                                  "process_name": "curl", "export_file": ""}))
    assert result == {"ExitCode": 3, "Output": "x" * OUTPUT_KEEP}


def test_execute_is_killed_with_its_children_after_the_time_limit(ctx, tmp_path):
    ctx.settings.set("action_timeout", "1")
    pidfile = tmp_path / "child.pid"
    prog = _script(tmp_path, "slow.sh", f'sleep 60 &\necho $! > {pidfile}\necho started\n'
                                        'wait\n')
    t0 = time.monotonic()
    with pytest.raises(ActionFailed) as err:
        ActionRunner(ctx).execute(prog, "", {})
    assert 0.9 < time.monotonic() - t0 < 5
    assert "timed out after 1 s (setting action_timeout); killed" in err.value.message
    assert "started" in err.value.message
    child = int(pidfile.read_text())
    wait_for(lambda: not os.path.exists(f"/proc/{child}") or
             open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0] == "Z",
             timeout=5, what="the background child killed with the group")


def test_execute_driver_records_a_command_per_run(ctx, jobs, tmp_path):
    out = tmp_path / "argv"
    prog = _script(tmp_path, "rec.sh", f'printf "%s\\n" "$@" > {out}\n')
    rows = [{"id": 1, "type": 1, "path": prog, "params": "{capture_id} '{process_name}' {pid} "
                                                         "x{export_file}x"}]
    firing = Firing(3, "t", 4321, 0, 9, "my app", 17, 0, time.time_ns())
    uids = ActionRunner(ctx).run(firing, rows)
    cmd = jobs.wait(uids[0], 10)
    assert (cmd["Type"], cmd["State"]) == ("ACTION_EXECUTE", 3)
    assert json.loads(cmd["Result"]) == {"ExitCode": 0, "Output": ""}
    assert out.read_text().splitlines() == ["17", "my app", "4321", "xx"]


def test_a_program_another_account_can_change_is_not_run_as_root(ctx, tmp_path):
    """An EXECUTE program that another account owns, or can write to, or whose directory it
    can write to, would let that account have root run its own code: refused at action_add
    and again when it would run (it may have changed since)."""
    prog = _script(tmp_path, "ok.sh", "echo ran\n")
    assert json.loads(ActionRunner(ctx).execute(prog, "", {}))["Output"] == "ran\n"
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)   # anyone may replace what is in it (no sticky bit)
    cases = {"in a world-writable directory": _script(shared, "a.sh", "echo ran\n"),
             "world-writable itself": _script(tmp_path, "b.sh", "echo ran\n"),
             "owned by another account": _script(tmp_path, "c.sh", "echo ran\n")}
    os.chmod(cases["world-writable itself"], 0o777)
    # an ACL hides behind the group bits (they show its mask): group root, "g+w" by ACL
    cases["writable by an ACL"] = _script(tmp_path, "d.sh", "echo ran\n")
    subprocess.run(["setfacl", "-m", "u:nobody:rwx", cases["writable by an ACL"]], check=True)
    os.chown(cases["owned by another account"], 65534, 65534)
    for what, path in cases.items():
        with pytest.raises(ActionFailed, match="not run as root") as err:
            ActionRunner(ctx).execute(path, "", {})
        assert "ran" not in err.value.message, what
        with pytest.raises(InvalidPermissions, match="not run as root"):
            api.action_add(ctx, name="x", action_type=1, path=path)
    # a symlink to a trusted program from a directory only root writes is fine
    link = tmp_path / "link.sh"
    link.symlink_to(prog)
    assert json.loads(ActionRunner(ctx).execute(str(link), "", {}))["Output"] == "ran\n"


def test_a_triggers_actions_never_fill_the_command_queue(ctx, jobs, watched):
    """A watched program started 100 times (a shell loop, a cron job) completes 100
    firings; each queued the trigger's EXECUTE action as a COMMAND. With an action that
    takes 10 s, 64 of them filled max_queued_commands and an ingest or export was BUSY.
    Now a trigger has at most FIRINGS_AT_ONCE firings whose actions are queued or running;
    the others' captures are kept, their actions are skipped and LastError says so. The
    real runner and command queue and a real program (the captures are fakes)."""
    from apppaccap.triggers.watcher import FIRINGS_AT_ONCE
    log: list = []
    ctx.captures = FakeCaptures(log)
    ctx.settings.set("trigger_stop_grace_ms", "0")
    w = TriggerWatcher(ctx, events=FakeEvents(), gate=FakeGate(log))  # the real ActionRunner
    w.start()
    ctx.triggers = w
    t = api.trigger_add(ctx, name="often", trigger_type=1, path=str(watched))
    api.action_add(ctx, name="slow", action_type=1, path="/bin/sleep", params="10",
                   trigger_id=t["TriggerId"])
    procs: list = []
    try:
        for _ in range(100):
            procs.append(_spawn([str(watched / "sleep"), "30"]))
        for p in procs:
            w._on_exec(p.pid)
        for p in procs:
            p.kill()
            p.wait()
            w._on_exit(p.pid)
        wait_for(lambda: len(w.completed) == 100, timeout=30, what="100 completions")
        # an ingest's or export's command is accepted: the trigger's took at most its share
        cmd = jobs.submit("INGEST", {}, lambda progress: "done")
        assert jobs.wait(cmd["CommandUid"], 20)["State"] == 3
        actions = [c for c in jobs.list() if c["Type"] == "ACTION_EXECUTE"]
        assert 1 <= len(actions) <= FIRINGS_AT_ONCE
        wait_for(lambda: "LastError" in api.trigger_list(ctx)[0] and "actions not run" in
                 api.trigger_list(ctx)[0]["LastError"], what="LastError")
        assert api.trigger_list(ctx)[0]["LastError"] == (
            "actions not run: this trigger's previous firing's actions are still queued or "
            f"running (at most {FIRINGS_AT_ONCE} at once)")
        assert w.inflight.skipped == 100 - len(actions)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        w.stop()
