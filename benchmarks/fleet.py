"""The fleet: rows/s a sensor ships, and fleet_group_by over 10M connection rows in
ClickHouse against one sensor's SQLite answering the same question over its own 10M rows.

A local clickhouse-server (Debian's; started here on free ports, as the tests do).
  ship   a finished capture database with N synthetic connections is shipped by the real
         Shipper (read from SQLite, spooled on disk, inserted with clickhouse-driver);
         against `clickhouse-client --query "INSERT … FORMAT TabSeparated"` of the same rows
         from a file (ClickHouse's own bulk path) in the same run.
  group  10M synthetic connection rows (INSERT … SELECT from numbers()) of 2 hosts; times
         (median and range of 5 runs) query.group_by by program, top 10 by bytes, without
         and with a filter; and the same answer from one sensor's SQLite (a capture
         database's connections + processes tables holding 10M rows) as one SQL GROUP BY.

Run as root:  .venv/bin/python benchmarks/fleet.py [--ship-rows 200000] [--rows 10000000]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

PROGRAMS = 1000
# an hour ago: inside fleet_ttl_days, which the shipper's retention enforces
T0 = (int(time.time()) - 3600) * 1_000_000_000


def runs(fn, n=5) -> tuple:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), max(times)


class Captures:
    """What the shipper asks of ctx.captures, for one finished capture."""

    def __init__(self, db):
        self.database = db
        self.live = {}

    def db(self, capture_id, active=None):
        return self.database


def fill_connections(db, n: int) -> None:
    """n connections and PROGRAMS processes, written by SQL on the capture's writer."""
    def run(conn):
        conn.executemany("INSERT INTO processes (process_id, pid, name, path, user) "
                         "VALUES (?, ?, ?, ?, 'root')",
                         [(i, 1000 + i, f"prog{i}", f"/usr/bin/prog{i}")
                          for i in range(1, PROGRAMS + 1)])
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO connections (id, proto, local_ip, local_port, remote_ip, remote_port, "
            "process_id, pid, tid, first_time, last_time, packets_out, bytes_out, packets_in, "
            "bytes_in, state) SELECT i, CASE WHEN i % 10 = 0 THEN 17 ELSE 6 END, '10.0.0.1', "
            "1024 + i % 60000, '198.51.' || (i / 256 % 256) || '.' || (i % 256), "
            "CASE WHEN i % 3 = 0 THEN 80 ELSE 443 END, 1 + (i * 7919) % ?, 1000, 1000, "
            "? + i * 1000, ? + i * 1000 + 5000000, 1 + i % 50, 100 + (i * 31) % 100000, "
            "1 + i % 40, 100 + (i * 17) % 200000, 'CLOSED' FROM n", (n, PROGRAMS, T0, T0))
    db.write(run, timeout=3600)


def ship(node, tmp: str, n: int) -> None:
    from apppaccap.context import Config
    from apppaccap.context import build_context
    from apppaccap.fleet import schema
    from apppaccap.fleet.shipper import Shipper
    from apppaccap.store import captures as capture_rows
    from apppaccap.store.capturedb import CaptureDb
    from apppaccap.wire import CaptureState
    from apppaccap.wire import CaptureType
    ctx = build_context(Config(data_dir=os.path.join(tmp, "sensor")))
    cid = capture_rows.create(ctx.catalog, {"type": int(CaptureType.SYSTEM),
                                            "state": int(CaptureState.COMPLETED),
                                            "start_time": T0, "end_time": T0})
    db = CaptureDb(ctx.config.data_dir, cid)
    fill_connections(db, n)
    ctx.captures = Captures(db)
    ctx.settings.set("fleet_url", node.url)
    rates = []
    for i in range(3):
        ctx.settings.set("fleet_host", f"bench-{i}")
        shutil.rmtree(os.path.join(ctx.config.data_dir, "fleet"), ignore_errors=True)
        shipper = Shipper(ctx)
        t = time.perf_counter()
        shipper.poll_once()
        took = time.perf_counter() - t
        assert shipper.shipped_rows == n and shipper.spool.batches == 0, shipper.status()
        rates.append(n / took)
    print(f"ship: {n} connections, Shipper (SQLite → clickhouse-driver, spool when down): "
          f"{statistics.median(rates):,.0f} rows/s (range {min(rates):,.0f}–{max(rates):,.0f})")
    # the same rows as TSV through clickhouse-client (ClickHouse's own bulk path)
    rows = node.query(f"SELECT {', '.join(schema.column_names('connections'))} FROM "
                      f"apppaccap.connections WHERE host = 'bench-0'")
    path = os.path.join(tmp, "rows.tsv")
    with open(path, "w") as fh:
        for r in rows:
            fh.write("\t".join(str(v) for v in r) + "\n")
    rates = []
    for _ in range(3):
        with open(path, "rb") as fh:
            t = time.perf_counter()
            subprocess.run(["clickhouse-client", "--port", str(node.tcp_port), "--query",
                            "INSERT INTO apppaccap.connections FORMAT TabSeparated"],
                           stdin=fh, check=True)
            rates.append(n / (time.perf_counter() - t))
    print(f"ship: clickhouse-client INSERT FORMAT TabSeparated of the same rows: "
          f"{statistics.median(rates):,.0f} rows/s (range {min(rates):,.0f}–{max(rates):,.0f})")
    ctx.catalog.close()


def group(node, tmp: str, n: int) -> None:
    from apppaccap.fleet import query
    from apppaccap.fleet.schema import day_of
    from apppaccap.store.capturedb import CaptureDb
    cols = ", ".join(f"{name}" for name, _ in __import__(
        "apppaccap.fleet.schema", fromlist=["x"]).CONNECTION_COLUMNS)
    from apppaccap.fleet.schema import ddl
    for statement in ddl("apppaccap"):
        node.query(statement)
    t = time.perf_counter()
    node.query("CREATE TABLE apppaccap.big AS apppaccap.connections")
    node.query(
        f"INSERT INTO apppaccap.big ({cols}) SELECT if(number % 2 = 0, 'host-a', 'host-b'), 1, "
        f"number + 1, toDate('{day_of(T0)}'), {T0} + number * 1000, "
        f"{T0} + number * 1000 + 5000000, "
        "if(number % 10 = 9, 17, 6), '10.0.0.1', 1024 + number % 60000, "
        "concat('198.51.', toString(intDiv(number + 1, 256) % 256), '.', "
        "toString((number + 1) % 256)), if((number + 1) % 3 = 0, 80, 443), 167772161, "
        "toUInt32(3325231104 + (number + 1) % 65536), '', '', "
        f"1 + ((number + 1) * 7919) % {PROGRAMS}, 1000, 1000, "
        f"concat('prog', toString(1 + ((number + 1) * 7919) % {PROGRAMS})), "
        f"concat('/usr/bin/prog', toString(1 + ((number + 1) * 7919) % {PROGRAMS})), 'root', "
        "'', '', '', 1 + (number + 1) % 50, 100 + ((number + 1) * 31) % 100000, "
        "1 + (number + 1) % 40, 100 + ((number + 1) * 17) % 200000, 'CLOSED', '', 1 "
        f"FROM system.numbers LIMIT {n}")
    node.query("OPTIMIZE TABLE apppaccap.big FINAL")
    print(f"group: {n:,} rows into ClickHouse in {time.perf_counter() - t:.1f} s")

    class Fleet(query.Fleet):
        def __init__(self):
            from apppaccap.fleet import client
            self.database, self.suffix = "apppaccap", ""
            self.client = client.connect(node.url)

        def table(self, name):
            return "apppaccap.big"

    def ask(flt=""):
        return query.group_by(Fleet(), "program", "bytes", "both", 10, flt, [], None, None)

    first = ask()
    for flt in ("", "tcp.port == 443"):
        med, lo, hi = runs(lambda flt=flt: ask(flt))
        print(f"group: fleet_group_by program top 10 by bytes{' ' + flt if flt else ''}: "
              f"median {med:.2f} s (range {lo:.2f}–{hi:.2f})")
    # one sensor's SQLite over its own n rows: the same question as one SQL GROUP BY
    t = time.perf_counter()
    db = CaptureDb(os.path.join(tmp, "sqlite"), 1)
    fill_connections(db, n)
    print(f"group: {n:,} rows into SQLite in {time.perf_counter() - t:.1f} s")
    sql = ("SELECT p.path, sum(c.packets_in + c.packets_out), sum(c.bytes_in + c.bytes_out) AS b, "
           "count(*) FROM connections c LEFT JOIN processes p ON p.process_id = c.process_id "
           "{} GROUP BY p.path ORDER BY b DESC LIMIT 10")
    for flt, where in (("", ""), ("tcp.port == 443", "WHERE c.proto = 6 AND "
                                  "(c.local_port = 443 OR c.remote_port = 443)")):
        med, lo, hi = runs(lambda where=where: db.read(sql.format(where)), n=3)
        print(f"group: SQLite GROUP BY program top 10 by bytes{' ' + flt if flt else ''}: "
              f"median {med:.2f} s (range {lo:.2f}–{hi:.2f})")
    top = db.read(sql.format(""))
    assert [r[0] for r in top] == [r["Key"] for r in first["Rows"]], "answers differ"
    assert [r[2] for r in top] == [r["Bytes"] for r in first["Rows"]], "answers differ"
    db.close()


def main() -> None:
    from tests.helpers.clickhouse import ClickHouse
    ap = argparse.ArgumentParser()
    ap.add_argument("--ship-rows", type=int, default=200_000)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--only", choices=["ship", "group"], default=None)
    args = ap.parse_args()
    random.seed(1)
    tmp = tempfile.mkdtemp(prefix="apc-fleet-")
    node = ClickHouse(os.path.join(tmp, "ch")).start()
    try:
        if args.only in (None, "ship"):
            ship(node, tmp, args.ship_rows)
        if args.only in (None, "group"):
            group(node, tmp, args.rows)
    finally:
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
