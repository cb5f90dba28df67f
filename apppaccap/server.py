"""Start and stop the engines behind a serving Context."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def start_services(ctx) -> None:
    """Recover state from the last run, then start the capture manager and the scheduler."""
    from apppaccap.capture.manager import CaptureManager
    from apppaccap.jobs import Jobs
    from apppaccap.safefs import remove_leftovers

    remove_leftovers(ctx)  # temporary files of exports cut off by a crash or kill -9
    ctx.captures = CaptureManager(ctx)
    ctx.captures.recover()
    from apppaccap.search.engine import recover as recover_searches
    recover_searches(ctx)  # searches cut off by the last stop become CANCELLED
    ctx.jobs = Jobs(ctx.catalog)
    ctx.jobs.start()
    from apppaccap.triggers.watcher import TriggerWatcher  # needs the scheduler running
    ctx.triggers = TriggerWatcher(ctx)
    ctx.triggers.start()


def stop_services(ctx) -> None:
    if ctx.triggers is not None:  # first: no program may fire while captures stop
        ctx.triggers.stop()
    if ctx.captures is not None:
        ctx.captures.close()
    if ctx.jobs is not None:
        ctx.jobs.shutdown()
    from apppaccap.search.engine import shutdown as stop_searches
    stop_searches(ctx)  # running searches end CANCELLED before the catalog closes
    ctx.catalog.close()
