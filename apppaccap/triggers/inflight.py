"""What one alert or one trigger has in the command pool, within a bound.

Alert and trigger actions run as COMMANDs on the pool ingests and exports use (jobs.py: 2
workers, at most max_queued_commands, default 64, queued or running). Their events come
at the pace of what they watch - a local user connecting to new ports, a watched program
started in a loop - so an owner (an alert, a trigger) may have only a few batches in the
pool at once (a batch: what one event submits, an alert event's action or a trigger
firing's actions), and the owners of a kind together at most 1/SHARE of
max_queued_commands. An event beyond either bound is skipped: the caller says so where
the API shows the event, and `skip` counts it and logs it at most once a minute per
owner. A batch counts from `take` until `close` and then while any of its commands is
QUEUED or RUNNING (a deleted command no longer counts).
"""

from __future__ import annotations

import logging
import threading
import time

from apppaccap.errors import NotFound
from apppaccap.wire import CommandState

log = logging.getLogger(__name__)

# The alerts' actions together, and the triggers' firings together, hold at most a quarter
# of max_queued_commands each (16 of the default 64): half the queue is always left to
# ingests, exports and searches' exports, whatever the watched programs do.
SHARE = 4
LOG_EVERY = 60.0  # seconds between an owner's "not run" lines: the count says the rest


class Batch:
    """The commands one event submitted (set by InFlight.close)."""

    def __init__(self, owner: int):
        self.owner, self.uids, self.open = owner, [], True


class InFlight:
    """The batches of one kind of owner ("alert", "trigger") still in the command pool.

    `busy` completes the reason an owner's own bound gives ("action is" → "this alert's
    previous action is still queued or running")."""

    def __init__(self, ctx, kind: str, busy: str):
        self.ctx, self.kind, self.busy = ctx, kind, busy
        self._lock = threading.Lock()
        self._batches: list[Batch] = []
        self._logged: dict = {}  # owner → (when its last line was logged, skipped since)
        self.skipped = 0         # events whose actions were not run, since start

    def take(self, owner: int, most: int) -> Batch | str:
        """A batch for `owner`'s next event, or why there is no room for one."""
        with self._lock:
            self._batches = [b for b in self._batches if self._live(b)]
            if sum(b.owner == owner for b in self._batches) >= most:
                return (f"this {self.kind}'s previous {self.busy} still queued or running "
                        f"(at most {most} at once)")
            share = max(1, self.ctx.settings.get_int("max_queued_commands") // SHARE)
            if len(self._batches) >= share:
                return (f"the {self.kind}s' actions fill their share of the command queue "
                        f"({share} at once, a quarter of the setting max_queued_commands)")
            batch = Batch(owner)
            self._batches.append(batch)
            return batch

    def close(self, batch: Batch, uids: list) -> None:
        """The batch's commands are submitted (none: it no longer counts)."""
        with self._lock:
            batch.uids, batch.open = list(uids), False

    def skip(self, owner: int, why: str, count: int = 1) -> None:
        """Count `count` events whose actions were not run; log it at most once a minute."""
        now = time.monotonic()
        with self._lock:
            self.skipped += count
            last, pending = self._logged.get(owner, (now - LOG_EVERY, 0))
            pending += count
            due = now - last >= LOG_EVERY
            self._logged[owner] = (now, 0) if due else (last, pending)
        if due:
            log.warning("%s %s: actions of %d event(s) not run: %s", self.kind, owner,
                        pending, why)

    def _live(self, batch: Batch) -> bool:
        if batch.open:
            return True
        batch.uids = [u for u in batch.uids if self._unfinished(u)]
        return bool(batch.uids)

    def _unfinished(self, uid: str) -> bool:
        try:
            return self.ctx.jobs.get(uid)["State"] < CommandState.COMPLETED
        except NotFound:
            return False  # deleted (command_delete): its place is free
