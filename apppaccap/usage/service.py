"""The usage service: runs the recorder while the setting `usage_enabled` is 1.

A supervisor thread reads the setting every second and starts or stops the recorder, so a
change takes effect within a second, and opening pcap handles never delays the server's
start or stop (start_services returns at once; stop waits at most for the last flush).
"""

from __future__ import annotations

import logging
import threading

from apppaccap.usage.recorder import UsageRecorder

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0


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
        while not self._stop.is_set():
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

    def _start_recorder(self) -> None:
        attribution = self._attribution_of()
        rec = UsageRecorder(self.ctx.catalog, attribution, attribution.is_local)
        try:
            rec.start()
        except Exception:  # noqa: BLE001 - the service goes on without usage accounting
            log.exception("usage accounting could not start")
            rec.stop()
            self._stop.wait(30)
            return
        self.recorder = rec

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
