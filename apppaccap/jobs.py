"""Asynchronous commands (ingest, export, action runs) on APScheduler.

A command is a catalog row (COMMAND object) plus a job on the scheduler's thread
pool. The job gets a `Progress` to report percent and to learn of cancellation.
Commands left QUEUED or RUNNING by a previous run become FAILED at start-up.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from apppaccap.errors import AppError
from apppaccap.errors import Busy
from apppaccap.errors import NotFound
from apppaccap.filetime import from_ns
from apppaccap.filetime import now_ns
from apppaccap.settings import Settings
from apppaccap.store import commands
from apppaccap.store.faults import io_failure
from apppaccap.wire import CommandState

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised inside a job when its command was cancelled or deleted."""


class Progress:
    """Handed to a job: report percent done; raises Cancelled once cancelled."""

    def __init__(self, jobs, uid):
        self.jobs, self.uid = jobs, uid
        self.cancelled = threading.Event()
        self._last = 0.0
        self.percent = 0

    def __call__(self, percent: float, message: str | None = None) -> None:
        if self.cancelled.is_set():
            raise Cancelled()
        pct = max(0, min(99, int(percent)))
        now = time.monotonic()
        if pct != self.percent and (now - self._last > 0.25 or message):
            self.percent, self._last = pct, now
            self.jobs._update(self.uid, progress=pct, **({"message": message} if message else {}))


class Jobs:
    def __init__(self, catalog, workers: int = 2):
        self.catalog = catalog
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(workers)},
            job_defaults={"misfire_grace_time": None, "coalesce": False, "max_instances": 1})
        self._running: dict[str, Progress] = {}  # queued or running, by uid
        self._lock = threading.Lock()
        self.settings = Settings(catalog)

    def start(self) -> None:
        commands.interrupt_unfinished(self.catalog, state=CommandState.FAILED,
                                      unfinished=(CommandState.QUEUED, CommandState.RUNNING),
                                      finished=now_ns())
        self.scheduler.start()

    def shutdown(self) -> None:
        for p in list(self._running.values()):
            p.cancelled.set()
        self.scheduler.shutdown(wait=True)

    # -- commands --------------------------------------------------------------
    def check_room(self) -> None:
        """BUSY when max_queued_commands commands are queued or running.

        submit() checks too; callers that prepare something before submitting (a capture
        row, a file name) ask first so that a refusal leaves nothing behind."""
        limit = self.settings.get_int("max_queued_commands")
        if len(self._running) >= limit:
            raise Busy(f"command: {limit} commands are queued or running, the most the "
                       "setting max_queued_commands allows; wait, delete one "
                       "(command_delete), or raise the setting")

    def submit(self, ctype: str, params: dict, fn) -> dict:
        """Queue `fn(progress) -> result string`; returns the COMMAND object (BUSY at the cap)."""
        uid = uuid.uuid4().hex
        progress = Progress(self, uid)
        with self._lock:  # the check and the count move together
            self.check_room()
            self._running[uid] = progress
        try:
            commands.add(self.catalog, uid, ctype, CommandState.QUEUED, params, now_ns())
        except BaseException:
            self._running.pop(uid, None)
            raise
        self.scheduler.add_job(self._run, args=(uid, fn, progress), id=uid,
                               name=f"{ctype} {uid}")
        return self.get(uid)

    def _run(self, uid, fn, progress: Progress) -> None:
        if progress.cancelled.is_set():
            self._running.pop(uid, None)
            return
        self._update(uid, state=CommandState.RUNNING, started=now_ns())
        try:
            result = fn(progress)
            self._finish(uid, state=CommandState.COMPLETED, progress=100, result=str(result or ""))
        except Cancelled:
            self._finish(uid, state=CommandState.CANCELLED, message="cancelled")
        except AppError as err:
            self._finish(uid, state=CommandState.FAILED, message=err.message)
        except Exception as exc:  # noqa: BLE001 - a failing job fails its command, not the service
            failure = io_failure(exc, "the command")
            if failure is not None:  # the disk, not the code: one line, "disk full: ..."
                log.warning("command %s: %s", uid, failure.message)
                message = failure.message
            else:
                log.exception("command %s failed", uid)
                message = f"{type(exc).__name__}: {exc}"
            self._finish(uid, state=CommandState.FAILED, message=message)
        finally:
            self._running.pop(uid, None)

    def _finish(self, uid: str, **fields) -> None:
        """The command's final state; if even that cannot be written (disk full), say so
        once here - the next start marks it FAILED ("interrupted")."""
        try:
            self._update(uid, finished=now_ns(), **fields)
        except Exception as exc:  # noqa: BLE001 - nothing above us would handle it better
            log.error("command %s: its final state was not saved: %s", uid, exc)

    def _update(self, uid: str, **fields) -> None:
        commands.update(self.catalog, uid, **fields)

    def get(self, uid: str) -> dict:
        row = commands.get(self.catalog, uid)
        if row is None:
            raise NotFound(f"command_uid: no command {uid[:40]!r}")
        return command_object(row)

    def list(self) -> list:
        return [command_object(r) for r in commands.all_rows(self.catalog)]

    def wait(self, uid: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cmd = self.get(uid)
            if cmd["State"] >= CommandState.COMPLETED:
                return cmd
            time.sleep(0.02)
        raise TimeoutError(f"command {uid} still running after {timeout}s")

    def delete(self, uid: str) -> None:
        """Cancel (if queued or running) and forget a command."""
        self.get(uid)
        progress = self._running.get(uid)
        if progress is not None:
            progress.cancelled.set()
            try:
                self.scheduler.remove_job(uid)
                self._running.pop(uid, None)  # it will never run: free its place now
            except Exception:  # noqa: BLE001 - already started: the flag stops it
                pass
        commands.delete(self.catalog, uid)


def command_object(row) -> dict:
    return {"Version": 1, "CommandUid": row["uid"], "Type": row["type"], "State": row["state"],
            "Progress": row["progress"], "Message": row["message"], "Result": row["result"],
            "Created": from_ns(row["created"]), "Started": from_ns(row["started"]),
            "Finished": from_ns(row["finished"])}
