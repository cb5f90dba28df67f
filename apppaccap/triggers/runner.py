"""Run a firing's actions once its capture has completed: EXPORT, then EXECUTE.

Each action run is a COMMAND (ctx.jobs.submit), so it shows in command_list with its
state. EXPORT runs first because EXECUTE params may name `{export_file}`; the firing's
driver (on the trigger executor, never on the command pool it waits for) queues the
exports, waits for them, then queues the programs.

EXECUTE: `path` runs with `params` split like a shell would (shlex) and the placeholders
substituted per argument *after* splitting, so a process name with spaces or quotes stays
one argument; no shell is involved. A value that would begin an argument with "-" is
refused (the run fails) unless a "--" argument came before: it would be an option. The
program's output is read while it runs (only the first OUTPUT_KEEP bytes are kept, the
rest is drained so a chatty program never blocks on a full pipe), and it is killed - with
its whole process group - after the `action_timeout` setting (seconds, default 60).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

from apppaccap.errors import AppError
from apppaccap.errors import NotFound
from apppaccap.ingest import export
from apppaccap.safefs.programs import untrusted
from apppaccap.wire import ActionType
from apppaccap.wire import CommandState

log = logging.getLogger(__name__)

OUTPUT_KEEP = 4096
# Set in every program an action starts: the watcher never fires for such processes or
# their descendants, so an action cannot set off its own trigger in a loop.
ACTION_ENV = "APPPACCAP_ACTION"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ActionFailed(AppError):
    """An action run failed; its message becomes the COMMAND's Message."""


@dataclass
class Firing:
    """One trigger firing: the process it caught and the capture it started."""

    trigger_id: int
    trigger_name: str
    pid: int
    start_ns: int
    process_id: int
    process_name: str
    capture_id: int
    flags: int = 0
    fired_ns: int = 0


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def substitute(params: str, values: dict) -> list[str]:
    """shlex-split `params`, then replace {capture_id} {pid} {process_name} {export_file}
    inside each argument, in one pass (a value that reads "{process_path}" stays as it is;
    other braces stay literal). A value at the start of an argument that begins with "-"
    is refused (ValueError) unless a literal "--" came before: a process name is anybody's
    to choose (prctl), and "-f/etc/shadow" would be an option to the program run as root.
    """
    out, options_end = [], False
    for arg in shlex.split(params):
        filled = _PLACEHOLDER.sub(
            lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), arg)
        if filled.startswith("-") and not arg.startswith("-") and not options_end:
            raise ValueError(f"the argument {arg[:60]!r} becomes {filled[:60]!r}, which the "
                             "program would read as an option; not run (put the "
                             "placeholder after a '--' argument, or in --option={...})")
        options_end = options_end or arg == "--"
        out.append(filled)
    return out


def export_name(firing: Firing) -> str:
    name = _UNSAFE.sub("_", firing.process_name).strip("._") or "process"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(firing.fired_ns / 1e9))
    return f"{name}-pid{firing.pid}-capture{firing.capture_id}-{stamp}.pcapng"


class ActionRunner:
    """Turns a completed firing into COMMANDs; `popen` is injectable for tests."""

    def __init__(self, ctx, *, popen=subprocess.Popen, stopping: threading.Event | None = None):
        self.ctx = ctx
        self.popen = popen
        self.stopping = stopping or threading.Event()

    # -- the driver ----------------------------------------------------------------------
    def run(self, firing: Firing, actions: list) -> list[str]:
        """Queue the exports, wait for them, queue the programs; returns the command uids."""
        uids, export_file = [], ""
        for row in (a for a in actions if a["type"] == ActionType.EXPORT):
            cmd = self._refusable(firing, row, self._submit_export, firing, row)
            if cmd is None:
                continue
            uids.append(cmd["CommandUid"])
            done = self._wait(cmd["CommandUid"])
            if done is not None and done["State"] == CommandState.COMPLETED and not export_file:
                export_file = done["Result"]
        for row in (a for a in actions if a["type"] == ActionType.EXECUTE):
            if self.stopping.is_set():
                break  # the service is going down: start no programs now
            cmd = self._refusable(firing, row, self._submit_execute, firing, row, export_file)
            if cmd is not None:
                uids.append(cmd["CommandUid"])
        return uids

    @staticmethod
    def _refusable(firing: Firing, row, submit, *args):
        """Submit one action's command; a refusal (BUSY at max_queued_commands) skips that
        action with a log line instead of the firing's other actions."""
        try:
            return submit(*args)
        except AppError as err:
            log.warning("trigger %s: action %s not run: %s", firing.trigger_id, row["id"],
                        err.message)
            return None

    def _wait(self, uid: str):
        """The finished COMMAND, or None when it was deleted or the service is stopping."""
        while not self.stopping.is_set():
            try:
                cmd = self.ctx.jobs.get(uid)
            except NotFound:
                return None
            if cmd["State"] >= CommandState.COMPLETED:
                return cmd
            self.stopping.wait(0.05)
        return None

    # -- EXPORT ----------------------------------------------------------------------------
    def _submit_export(self, firing: Firing, row) -> dict:
        folder = row["path"]

        def run(progress):
            db = self.ctx.captures.db(firing.capture_id, active=False)
            # checked again now: the roots may differ from when the action was added (a
            # restart with other --export-root); a name taken meanwhile gets a suffix
            target = export.new_target(self.ctx, os.path.join(folder, export_name(firing)),
                                       generated=True)
            export.write_capture(db, target, progress=progress)
            return target.path

        return self.ctx.jobs.submit("ACTION_EXPORT", self._params(firing, row), run)

    # -- EXECUTE ---------------------------------------------------------------------------
    def _submit_execute(self, firing: Firing, row, export_file: str) -> dict:
        values = {"capture_id": firing.capture_id, "pid": firing.pid,
                  "process_name": firing.process_name, "export_file": export_file}

        def run(progress):
            return self.execute(row["path"], row["params"], values, progress)

        params = self._params(firing, row)
        params["export_file"] = export_file
        return self.ctx.jobs.submit("ACTION_EXECUTE", params, run)

    def execute(self, path: str, params: str, values: dict, progress=None) -> str:
        """Run the program; returns the Result JSON {"ExitCode", "Output"}."""
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            raise ActionFailed(f"path: {path!r} is no longer an executable file")
        why = untrusted(path)  # again: it may have changed since action_add
        if why is not None:
            raise ActionFailed(f"path: not run as root: {why[:300]}")
        try:
            argv = [path, *substitute(params, values)]
        except ValueError as exc:
            raise ActionFailed(f"params: {exc}") from None
        timeout = max(1, self.ctx.settings.get_int("action_timeout"))
        env = dict(os.environ)
        env[ACTION_ENV] = "1"
        env.update({f"APPPACCAP_{k.upper()}": str(v) for k, v in values.items()})
        try:
            proc = self.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, cwd=os.path.dirname(path), env=env,
                              start_new_session=True)  # its own group: a timeout kills it all
        except OSError as exc:
            raise ActionFailed(f"path: cannot run {path!r}: {exc.strerror or exc}") from None
        kept = bytearray()
        reader = threading.Thread(target=_drain, args=(proc.stdout, kept), daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    code = proc.wait(0.1)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if progress is not None:
                    elapsed = timeout - (deadline - time.monotonic())
                    progress(100.0 * elapsed / timeout)  # raises Cancelled when cancelled
                if time.monotonic() >= deadline or self.stopping.is_set():
                    _kill_group(proc)
                    reader.join(1)
                    why = "the service is stopping" if self.stopping.is_set() else \
                        f"timed out after {timeout} s (setting action_timeout)"
                    raise ActionFailed(f"{why}; killed. Output: {_text(kept)[:500]}")
        except BaseException:
            _kill_group(proc)
            raise
        reader.join(2)
        return json.dumps({"ExitCode": code, "Output": _text(kept)})

    @staticmethod
    def _params(firing: Firing, row) -> dict:
        return {"trigger_id": firing.trigger_id, "action_id": row["id"],
                "capture_id": firing.capture_id, "pid": firing.pid}


def _drain(stream, kept: bytearray) -> None:
    try:
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not chunk:
                break
            room = OUTPUT_KEEP - len(kept)
            if room > 0:
                kept.extend(chunk[:room])
    except (OSError, ValueError):
        pass
    finally:
        try:
            stream.close()
        except OSError:
            pass


def _kill_group(proc) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (OSError, AttributeError):
        proc.kill()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def _text(data: bytearray) -> str:
    return bytes(data).decode("utf-8", "replace")
