"""The fleet's spool and the shipper's other sources, against a real clickhouse-server:
a full spool drops its oldest batches and counts them; usage minutes and alert events
ship from the catalog after they are written."""

from __future__ import annotations

import logging
import os
import time

import pytest

from apppaccap.fleet.collect import next_version
from apppaccap.fleet.shipper import RETENTION_EVERY
from apppaccap.fleet.shipper import Shipper
from apppaccap.fleet.spool import Spool
from apppaccap.store import alerts as alert_rows
from apppaccap.store import usage as usage_rows
from tests.helpers.app import make_ctx
from tests.helpers.clickhouse import ClickHouse
from tests.helpers.ports import free_port

NOW = time.time_ns()


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory):
    node = ClickHouse(tmp_path_factory.mktemp("ch-spool")).start()
    yield node
    node.stop()


def test_a_full_spool_drops_the_oldest_and_counts_the_gap(tmp_path, caplog):
    limit = [1000]
    spool = Spool(str(tmp_path / "spool"), lambda: limit[0])
    rows = [["x" * 90]] * 3  # about 300 bytes a batch
    with caplog.at_level(logging.WARNING, logger="apppaccap.fleet.spool"):
        for i in range(6):
            spool.append("alert_events", [[i, *r] for r in rows])
    assert spool.bytes <= 1000 and spool.batches == 3
    assert spool.gap_rows == 9 and spool.gap_batches == 3
    assert "dropped the 1 oldest batches" in caplog.text
    name, table, first = spool.oldest()
    assert table == "alert_events" and first[0][0] == 3  # batches 0-2 went, oldest first
    again = Spool(str(tmp_path / "spool"), lambda: limit[0])  # a restart keeps it all
    assert (again.batches, again.gap_rows) == (3, 9)
    assert again.oldest()[2] == first
    again.done(name)
    assert again.oldest()[2][0][0] == 4
    # one batch larger than the bound stays (it is the newest): nothing is lost silently
    limit[0] = 10
    again.append("alert_events", rows)
    assert again.batches == 1 and again.gap_rows == 9 + 6


def _event(i: int) -> dict:
    return {"alert_id": 1, "time": NOW + i, "pid": 100 + i,
            "process_name": f"prog{i}", "process_path": f"/usr/bin/prog{i}",
            "remote_ip": "192.0.2.1", "remote_port": 443, "value": i, "group_key": f"k{i}",
            "message": f"event {i}"}


def test_usage_minutes_and_alert_events_ship_and_the_spool_gap_is_reported(tmp_path,
                                                                           clickhouse):
    ctx = make_ctx(tmp_path)
    ctx.settings.set("fleet_host", "spool-host")
    ctx.settings.set("fleet_spool_bytes", "700")
    down = f"clickhouse://127.0.0.1:{free_port()}/apppaccap"  # nothing listens there
    ctx.settings.set("fleet_url", down)
    shipper = Shipper(ctx)  # polled by hand here: no thread
    minute = NOW // 60_000_000_000
    ctx.catalog.write(lambda conn: usage_rows.add(conn, {
        (minute, 0, "192.0.2.7", 53, 17, 1): [2, 150],
        (minute, 0, "192.0.2.7", 53, 17, 0): [2, 300]}))
    for i in range(8):  # ClickHouse unreachable: every poll spools one batch
        alert_rows.add_events(ctx.catalog, [_event(i)])
        shipper.poll_once()
        shipper._next_try = 0  # skip the backoff wait, not the failure
    assert shipper.last_error and shipper.spool.gap_rows > 0
    gap = shipper.spool.gap_rows
    # the usage batch was the oldest: dropped first
    assert gap >= 2
    ctx.settings.set("fleet_url", clickhouse.url)
    shipper.poll_once()
    assert shipper.spool.batches == 0 and shipper.last_error == ""
    events = clickhouse.query("SELECT event_id, process_name, value FROM "
                              "apppaccap.alert_events FINAL WHERE host = 'spool-host' "
                              "ORDER BY event_id")
    # what reached ClickHouse + what the spool dropped = what was written, nothing twice
    assert len(events) + (gap - 2) == 8
    assert [e[0] for e in events] == list(range(8 - len(events) + 1, 9))
    assert events[-1][1:] == ("prog7", 7.0)
    report = clickhouse.query("SELECT argMax(gap_rows, version), argMax(spool_batches, version)"
                              " FROM apppaccap.sensors WHERE host = 'spool-host'")
    assert report == [(gap, 0)]
    # a minute that grows is sent again; FINAL keeps its latest counters
    ctx.catalog.write(lambda conn: usage_rows.add(conn, {
        (minute, 0, "192.0.2.7", 53, 17, 1): [1, 50]}))
    shipper.poll_once()
    usage = clickhouse.query("SELECT dir, packets, bytes FROM apppaccap.usage_minutes FINAL "
                             "WHERE host = 'spool-host' ORDER BY dir")
    assert usage == [(1, 3, 200)]  # dir 0 was in the dropped batch and has not changed since
    # retention by day partition (no table TTL on 18.16): a day older than fleet_ttl_days goes
    old = dict(_event(99), time=NOW - 40 * 86_400 * 10**9)
    alert_rows.add_events(ctx.catalog, [old])
    shipper._last_retention = time.monotonic() - RETENTION_EVERY  # due now
    sent = shipper.shipped_rows
    shipper.poll_once()
    assert shipper.shipped_rows == sent + 1 and shipper.spool.batches == 0
    ids = {r[0] for r in clickhouse.query("SELECT event_id FROM apppaccap.alert_events")}
    assert max(ids) == 8 and 9 not in ids and len(ids) == len(events)
    shipper.stop()
    ctx.catalog.close()
    assert os.path.exists(os.path.join(ctx.config.data_dir, "fleet", "state.json"))


def test_row_versions_only_grow_even_when_the_clock_steps_back():
    future = time.time_ns() + 3600 * 10**9  # the clock was an hour ahead, then corrected
    state = {"version": future}
    versions = [next_version(state) for _ in range(3)]
    assert versions == [future + 1, future + 2, future + 3]
    assert state["version"] == future + 3  # kept in state.json across restarts


def test_retention_runs_at_the_first_poll_within_an_hour_of_boot(tmp_path, monkeypatch):
    """monotonic() counts from boot: a shipper started on a machine up for less than
    RETENTION_EVERY ran no retention until the hour was up (the spool test above failed
    so on a freshly booted CI machine). The ClickHouse client here is a stand-in: only
    whether the day partitions are looked at is checked (the real drop: the test above)."""
    from apppaccap.fleet import shipper as shipper_module

    class Client:
        def __init__(self):
            self.sql = []

        def execute(self, sql, params=None):
            self.sql.append(sql)
            return []

    ctx = make_ctx(tmp_path)
    shipper = Shipper(ctx)
    monkeypatch.setattr(shipper_module.time, "monotonic", lambda: 5.0)  # 5 s after boot
    client = Client()
    shipper._retention(client, "apppaccap")
    assert any("system.parts" in sql for sql in client.sql)
    client.sql.clear()
    shipper._retention(client, "apppaccap")  # not again within the hour
    assert client.sql == []
    ctx.catalog.close()
