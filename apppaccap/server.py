"""Start and stop the engines behind a serving Context."""

from __future__ import annotations

import gc
import logging
import os
import signal
import stat
import threading

from apppaccap.analytics.alerts import AlertEngine
from apppaccap.capture.manager import CaptureManager
from apppaccap.fleet.shipper import Shipper
from apppaccap.jobs import Jobs
from apppaccap.safefs.journal import remove_leftovers
from apppaccap.search.engine import recover as recover_searches
from apppaccap.search.engine import shutdown as stop_searches
from apppaccap.triggers.watcher import TriggerWatcher
from apppaccap.usage.service import UsageService

log = logging.getLogger(__name__)


DIR_MODE, FILE_MODE = 0o700, 0o600
# The cyclic collector's thresholds while serving (Python's default: 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Freeze what start-up built and collect young objects every 50,000 allocations.

    A live capture makes several tracked objects per packet (the queued tuple, its
    Decoded, the batch row): at 20,000 packets/s the default thresholds ran ~100 young
    collections a second, promoted the packets waiting in the queue and the batch, and
    ran full collections over them. Under benchmarks/api_load.py the service spent ~4 s
    of a 15 s run collecting (pauses up to 150-280 ms, the interpreter lock held), which
    every API answer waited for; with start-up's objects frozen and these thresholds,
    ~0.5 s. Packets and answers hold no cycles: reference counting frees them whatever
    the thresholds; only real cycles (an exception's traceback and its frames) wait
    longer for a pass. ingest/ingest.py raises the first threshold the same way while
    ingesting (and unfreezes when its last ingest ends: start-up's objects are then
    walked by full passes again, ~55,000 objects, a few ms)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def make_private(data_dir: str, skip=()) -> None:
    """The server's files are root's alone: umask 077 for everything this process creates
    from now on, and the data directory (0700) and what it already holds (directories
    0700, files 0600: catalog.db with password hashes, capture databases, side files,
    WAL/SHM, extracted files) tightened. `skip`: directories left alone (an export root
    inside the data directory keeps the modes its own setting gives). Symlinks are not
    followed."""
    os.umask(0o077)
    data_dir = os.path.abspath(data_dir)
    os.makedirs(data_dir, mode=DIR_MODE, exist_ok=True)
    skip = {os.path.abspath(p) for p in skip if p}
    _tighten(data_dir)
    for root, dirs, files in os.walk(data_dir):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in skip]
        for name in dirs + files:
            _tighten(os.path.join(root, name))


def _tighten(path: str) -> None:
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return
        mode = stat.S_IMODE(st.st_mode)
        want = mode & (DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE)
        if want != mode:
            os.chmod(path, want)
    except OSError as exc:  # e.g. a file removed meanwhile: tighten the rest
        log.warning("cannot restrict the mode of %s: %s", path, exc.strerror)


def start_services(ctx) -> None:
    """Recover state from the last run, then start the capture manager and the scheduler."""

    remove_leftovers(ctx)  # temporary files of exports cut off by a crash or kill -9
    ctx.captures = CaptureManager(ctx)
    ctx.captures.recover()
    recover_searches(ctx)  # searches cut off by the last stop become CANCELLED
    ctx.jobs = Jobs(ctx.catalog)
    ctx.jobs.start()
    ctx.triggers = TriggerWatcher(ctx)
    ctx.triggers.start()
    # usage accounting: its own thread opens the adapters (never delays start-up)
    manager = ctx.captures
    ctx.usage = UsageService(ctx, lambda: manager.attribution)
    ctx.usage.start()
    ctx.alerts = AlertEngine(ctx)  # watches usage accounting on the scheduler
    ctx.alerts.start()
    # the fleet: reads what the writers committed; idle while fleet_url is empty
    ctx.fleet = Shipper(ctx)
    ctx.fleet.start()


def stop_services(ctx) -> None:
    if ctx.triggers is not None:  # first: no program may fire while captures stop
        ctx.triggers.stop()
    if ctx.alerts is not None:  # no alert action may start while the rest stops
        ctx.alerts.stop()
    if ctx.usage is not None:  # before the captures: it shares their Attribution
        ctx.usage.close()
    if ctx.fleet is not None:  # before the captures close their databases; what their
        ctx.fleet.stop()       # last rows changed ships at the next start (state.json)
    if ctx.captures is not None:
        ctx.captures.close()
    if ctx.jobs is not None:
        ctx.jobs.shutdown()
    stop_searches(ctx)  # running searches end CANCELLED before the catalog closes
    ctx.catalog.close()


def stop_on_signals(server) -> None:
    """SIGTERM (systemctl stop) and SIGINT end serve_forever(); the caller's stop_services()
    then completes the active captures and ends every helper process. A second signal while
    stopping is only logged: cutting the stop short would leave captures INTERRUPTED."""
    stopping = threading.Event()

    def handler(signum, _frame):
        name = signal.Signals(signum).name
        if stopping.is_set():
            log.warning("%s: already stopping (captures are being completed)", name)
            return
        stopping.set()
        log.info("%s: stopping", name)
        # shutdown() waits for serve_forever() to return, which runs on this (the main)
        # thread: ask from another one
        threading.Thread(target=server.shutdown, name="apppaccap-shutdown", daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
