"""The shipper thread: reads what the writers committed (collect.py), sends it to ClickHouse
in batches, spools on disk what cannot go (spool.py), and retries with backoff.

It follows the settings at every poll: fleet_url empty = idle (nothing read, nothing
spooled). Delivery is at-least-once: a batch goes to ClickHouse, or to the spool when
ClickHouse cannot take it (or older batches wait there); it leaves the spool only after
ClickHouse took it, and the watermarks (state.json) are saved only after that, so a crash
re-sends rather than loses; the tables collapse what arrives twice (schema.py). Captures
never wait for any of this: it runs on its own thread, reading SQLite snapshots.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time
import urllib.parse

from apppaccap.fleet import client as fleet_client
from apppaccap.fleet import schema
from apppaccap.fleet.collect import AlertReader
from apppaccap.fleet.collect import ConnectionReader
from apppaccap.fleet.collect import UsageReader
from apppaccap.fleet.collect import next_version
from apppaccap.fleet.spool import Spool

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
BATCH_ROWS = 50_000
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
RETENTION_EVERY = 3600.0
# a report is one more insert: ClickHouse prefers few inserts a second per table, and a
# sensor's status needs no finer grain than this
REPORT_EVERY = 5.0


def host_name(settings) -> str:
    return settings.get("fleet_host") or socket.gethostname()


class Shipper:
    def __init__(self, ctx, poll_seconds: float = POLL_SECONDS):
        self.ctx = ctx
        self.poll_seconds = poll_seconds
        self.dir = os.path.join(ctx.config.data_dir, "fleet")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.spool = Spool(os.path.join(self.dir, "spool"),
                           lambda: ctx.settings.get_int("fleet_spool_bytes"))
        self.state = self._load_state()
        self.readers = {"connections": ConnectionReader(ctx, self.state),
                        "usage_minutes": UsageReader(ctx, self.state),
                        "alert_events": AlertReader(ctx, self.state)}
        self.shipped_rows = 0
        self.last_error = ""
        self.last_sent_ns = 0
        self._client = None
        self._client_key = None
        self._failures = 0
        self._next_try = 0.0
        # "never": monotonic() counts from boot, so 0.0 would skip retention for the first
        # hour after a reboot
        self._last_retention = -RETENTION_EVERY
        self._last_report = -REPORT_EVERY
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="apppaccap-fleet", daemon=True)

    # -- life ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._disconnect()

    def status(self) -> dict:
        return {"SpoolBytes": self.spool.bytes, "SpoolBatches": self.spool.batches,
                "GapRows": self.spool.gap_rows, "ShippedRows": self.shipped_rows,
                "LastError": self.last_error}

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # the shipper must outlive any one bad poll
                log.exception("fleet: poll failed")

    # -- one poll --------------------------------------------------------------------------
    def poll_once(self) -> None:
        url = self.ctx.settings.get("fleet_url") or ""
        if not url:
            self._disconnect()
            return
        host = host_name(self.ctx.settings)
        fresh = self.collect(host)
        if time.monotonic() < self._next_try:  # backing off: straight to the spool
            self._spool(fresh)
        else:
            self.drain(url, host, fresh)
        # after the rows are in ClickHouse or in the spool: a crash before this line reads
        # them again (sent twice at worst, which the tables collapse)
        self._save_state()

    def collect(self, host: str) -> list:
        """[(table, rows)] read since the last poll, in batches of BATCH_ROWS."""
        out = []
        for table, reader in self.readers.items():
            rows = reader.poll(host)
            out += [(table, rows[i:i + BATCH_ROWS]) for i in range(0, len(rows), BATCH_ROWS)]
        return out

    def _spool(self, batches) -> None:
        for table, rows in batches:
            self.spool.append(table, rows)

    def drain(self, url: str, host: str, fresh=()) -> None:
        """The spool oldest first, then this poll's batches; while the spool is empty they go
        straight to ClickHouse (no disk round trip), and what cannot go is spooled."""
        fresh = list(fresh)
        try:
            client, database = self._connect(url)
            while not self._stop.is_set():
                batch = self.spool.oldest()
                if batch is None:
                    break
                name, table, rows = batch
                schema.insert(client, database, table, rows)
                self.spool.done(name)
                self.shipped_rows += len(rows)
            while fresh:
                table, rows = fresh[0]
                schema.insert(client, database, table, rows)
                fresh.pop(0)
                self.shipped_rows += len(rows)
            if time.monotonic() - self._last_report >= REPORT_EVERY or self._failures:
                self._report(client, database, url, host)
            self._retention(client, database)
        except Exception as exc:  # unreachable, refused, restarting: keep spooling
            self._spool(fresh)
            self._failed(exc)
            return
        if self._failures:
            log.info("fleet: ClickHouse reachable again after %d failed tries", self._failures)
        self._failures = 0
        self.last_error = ""

    def _failed(self, exc) -> None:
        self._failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self._failures - 1))
        self._next_try = time.monotonic() + delay
        self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        if self._failures == 1 or self._failures % 20 == 0:
            log.warning("fleet: cannot ship to ClickHouse (%s); %d batches spooled, next "
                        "try in %.1f s", self.last_error, self.spool.batches, delay)
        self._disconnect()

    def _report(self, client, database: str, url: str, host: str) -> None:
        now = time.time_ns()
        row = [host, schema.day_of(now), now, _without_password(url), self.spool.bytes,
               self.spool.batches, self.spool.gap_rows, self.shipped_rows,
               next_version(self.state)]
        schema.insert(client, database, "sensors", [row])
        self.last_sent_ns = now
        self._last_report = time.monotonic()

    def _retention(self, client, database: str) -> None:
        if time.monotonic() - self._last_retention < RETENTION_EVERY:
            return
        self._last_retention = time.monotonic()
        keep = self.ctx.settings.get_int("fleet_ttl_days")
        today = datetime.date.fromisoformat(schema.day_of(time.time_ns()))
        dropped = schema.drop_old_days(client, database, keep, today)
        if dropped:
            log.info("fleet: dropped %d day partitions older than %d days", dropped, keep)

    # -- the client ------------------------------------------------------------------------
    def _connect(self, url: str):
        cluster = self.ctx.settings.get("fleet_cluster") or ""
        key = (url, cluster)
        if self._client is None or self._client_key != key:
            self._disconnect()
            client = fleet_client.connect(url)
            database = fleet_client.database_of(url)
            schema.ensure(client, database, cluster)
            self._client, self._client_key = (client, database), key
        return self._client

    def _disconnect(self) -> None:
        if self._client is not None:
            try:
                self._client[0].disconnect()
            except Exception:  # already gone: nothing to close
                pass
        self._client = None
        self._client_key = None

    # -- watermarks ------------------------------------------------------------------------
    def _load_state(self) -> dict:
        try:
            with open(os.path.join(self.dir, "state.json"), "rb") as fh:
                return json.loads(fh.read())
        except (OSError, ValueError):
            return {}

    def _save_state(self) -> None:
        path = os.path.join(self.dir, "state.json")
        with open(path + ".tmp", "w") as fh:
            json.dump(self.state, fh)
        os.replace(path + ".tmp", path)


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
