"""An alert's EXECUTE action, run as a COMMAND for its events (triggers/runner.py), within
a bound: at most ACTIONS_AT_ONCE of one alert's actions queued or running, and all
alerts' together at most a share of max_queued_commands (triggers/inflight.py).

An event whose action is not run is stored all the same, its Message ending with
"; action not run: <why>" (why: the alert's previous action still runs, the alerts'
share is full, or the command queue is); the log says so at most once a minute per alert.
"""

from __future__ import annotations

import logging

from apppaccap.errors import AppError
from apppaccap.store import triggers as trigger_table
from apppaccap.triggers.inflight import Batch
from apppaccap.triggers.inflight import InFlight
from apppaccap.wire import ActionType

log = logging.getLogger(__name__)

# A local user makes NEW_DESTINATION events as fast as it connects to new ports (100 at
# once filled the 64-command queue with a 3 s action: ingests and exports were BUSY, and
# the 2 workers were tied up for action_timeout each). An action tells someone "now": one
# at a time says it as well, and the next event after it finished runs it again.
ACTIONS_AT_ONCE = 1


class AlertActions:
    def __init__(self, ctx, runner):
        self.ctx, self.runner = ctx, runner
        self.inflight = InFlight(ctx, "alert", "action is")

    def plan(self, row, events: list) -> list:
        """Before the events are stored: (action, event, batch) for those whose action runs;
        the others' message says why not. Hand the result to start() or drop()."""
        if not row["action_id"] or not events:
            return []
        action = trigger_table.get_action(self.ctx.catalog, row["action_id"])
        if action is None or action["type"] != ActionType.EXECUTE:
            log.warning("alert %s: action %s is gone or not EXECUTE; not run", row["id"],
                        row["action_id"])
            return []
        runs, why, skipped = [], "", 0
        for event in events:
            if not why:  # once refused, the rest of these events are too
                taken = self._take(row, runs)
                if isinstance(taken, Batch):
                    runs.append((action, event, taken))
                    continue
                why = taken
            event["message"] += f"; action not run: {why}"
            skipped += 1
        if skipped:
            self.inflight.skip(row["id"], why, skipped)
        return runs

    def _take(self, row, runs: list) -> Batch | str:
        try:
            self.ctx.jobs.check_room()  # BUSY at max_queued_commands: said on the event too
            return self.inflight.take(row["id"], ACTIONS_AT_ONCE)
        except AppError as err:  # the queue is full, the catalog cannot be read
            return err.message
        except BaseException:
            self.drop(runs)  # the events are not stored: nothing may stay reserved
            raise

    def start(self, row, runs: list) -> None:
        """The events are stored: submit their actions."""
        for action, event, batch in runs:
            uids = []
            try:
                uids.append(self._submit(row, action, event)["CommandUid"])
            except AppError as err:
                log.warning("alert %s: action %s not run: %s", row["id"], action["id"],
                            err.message)
            finally:
                self.inflight.close(batch, uids)

    def drop(self, runs: list) -> None:
        """The events were not stored: their actions do not run."""
        for _action, _event, batch in runs:
            self.inflight.close(batch, [])

    def _submit(self, row, action, event: dict) -> dict:
        values = {"alert_name": row["name"], "pid": event["pid"],
                  "process_name": event["process_name"],
                  "process_path": event["process_path"], "remote_ip": event["remote_ip"],
                  "remote_port": event["remote_port"], "value": event["value"],
                  "capture_id": 0, "export_file": ""}
        params = {"alert_id": row["id"], "action_id": action["id"], "pid": event["pid"]}

        def run(progress):
            return self.runner.execute(action["path"], action["params"], values, progress)
        return self.ctx.jobs.submit("ACTION_EXECUTE", params, run)
