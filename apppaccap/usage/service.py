"""The usage service: runs the recorder while the setting `usage_enabled` is 1.

A supervisor thread reads the setting every second and starts or stops the recorder, so a
change takes effect within a second, and opening pcap handles never delays the server's
start or stop (start_services returns at once; stop waits at most for the last flush).
The same thread applies retention at start and every hour (usage_minute_days,
usage_retention_days), whether or not the recorder runs.
"""

from __future__ import annotations

import logging
import threading
import time

from apppaccap.attribution.labels import flow_key
from apppaccap.attribution.lookup import FlowLookup
from apppaccap.store import usage as usage_table
from apppaccap.usage.recorder import UsageRecorder

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
RETENTION_EVERY = 3600.0  # seconds between roll-ups (and one at start)


class UsageService:
    def __init__(self, ctx, attribution_of):
        self.ctx = ctx
        self._attribution_of = attribution_of  # → the shared Attribution (created lazily)
        self.recorder: UsageRecorder | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-service", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        last_retention = -RETENTION_EVERY
        while not self._stop.is_set():
            if time.monotonic() - last_retention >= RETENTION_EVERY:
                last_retention = time.monotonic()
                self.apply_retention()
            try:
                want = self.ctx.settings.get_bool("usage_enabled")
            except Exception:  # noqa: BLE001 - the catalog closing under us
                want = False
            if want and self.recorder is None:
                self._start_recorder()
            elif not want and self.recorder is not None:
                self._stop_recorder()
            self._stop.wait(POLL_SECONDS)
        if self.recorder is not None:
            self._stop_recorder()

    def apply_retention(self, now_minute: int | None = None) -> None:
        """Minutes older than usage_minute_days become hours; rows older than
        usage_retention_days go (runs at start and hourly, on the catalog's writer)."""
        settings = self.ctx.settings
        now_minute = time.time_ns() // 60_000_000_000 if now_minute is None else now_minute
        hourly = (now_minute - settings.get_int("usage_minute_days") * 1440) // 60 * 60
        drop = now_minute - settings.get_int("usage_retention_days") * 1440
        try:
            self.ctx.catalog.write(lambda conn: usage_table.roll_up(conn, hourly, drop), 60)
        except Exception as exc:  # noqa: BLE001 - tried again in an hour
            log.warning("usage: retention not applied (%s)", exc)

    def _start_recorder(self) -> None:
        attribution = self._attribution_of()
        # read only: the recorder never starts the captures' resolver or fast path, nor
        # writes their flow table (attribution/lookup.py)
        lookup = FlowLookup(attribution, attribution.book,
                            setting=self.ctx.settings.get("attribution_backend") or "auto")
        rec = UsageRecorder(self.ctx.catalog, lookup, attribution.is_local,
                            from_capture=self.capture_label,
                            labels_on=self.ctx.settings.get_bool("app_labels_enabled"))
        try:
            rec.start()
        except Exception:  # noqa: BLE001 - the service goes on without usage accounting
            log.exception("usage accounting could not start")
            rec.stop()
            self._stop.wait(30)
            return
        self.recorder = rec

    def capture_label(self, key5: tuple):
        """A live capture's nDPI label of a flow (capture/applabels.py), or None: read
        only, a peek at its recorder's connection (usage never labels a capture's flows)."""
        mgr = getattr(self.ctx, "captures", None)
        if mgr is None or not mgr.live:
            return None
        fk = flow_key(*key5)
        for live in list(mgr.live.values()):
            conn = live.recorder.conns.get(fk)
            if conn is not None and conn.app is not None:
                return conn.app
        return None

    def _stop_recorder(self) -> None:
        rec, self.recorder = self.recorder, None
        try:
            rec.stop()
        except Exception:  # noqa: BLE001
            log.exception("usage accounting did not stop cleanly")

    def close(self) -> None:
        """Stop counting and write the current minute (service shutdown)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(20)
