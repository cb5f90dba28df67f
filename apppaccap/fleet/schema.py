"""The fleet's tables in ClickHouse, created by each sensor when they are missing.

Every table is a ReplacingMergeTree keyed so that a row shipped twice (at-least-once
delivery) or shipped again with newer counters collapses to its highest `version` under
FINAL (or argMax): ordered by (host, time, identity), partitioned by `day` (the row's first
time, which never changes, so both copies of a row always share a partition — a
ReplacingMergeTree only collapses rows within one).

Features avoided so that Debian 12's 18.16 and current servers both take it: table TTL
(19.6+; old days are dropped by partition, `drop_old_days`), DateTime64 (times are UInt64
nanoseconds), server-side query parameters, LowCardinality, IPv4/IPv6 column types
(addresses are text plus sortable forms: `*_ip4` UInt32, `*_ip6` 32 hex digits), and
ON CLUSTER DDL (needs ZooKeeper: each sensor creates the tables on the node it writes to).
"""

from __future__ import annotations

import datetime

CONNECTION_COLUMNS = (
    ("host", "String"), ("capture_id", "UInt64"), ("conn_id", "UInt64"), ("day", "Date"),
    ("first_ns", "UInt64"), ("last_ns", "UInt64"), ("proto", "UInt8"),
    ("local_ip", "String"), ("local_port", "UInt16"), ("remote_ip", "String"),
    ("remote_port", "UInt16"), ("local_ip4", "UInt32"), ("remote_ip4", "UInt32"),
    ("local_ip6", "String"), ("remote_ip6", "String"),
    ("process_id", "UInt64"), ("pid", "UInt32"), ("tid", "UInt32"), ("proc_name", "String"),
    ("proc_path", "String"), ("proc_user", "String"), ("app_proto", "String"),
    ("app", "String"), ("category", "String"), ("packets_out", "UInt64"),
    ("bytes_out", "UInt64"), ("packets_in", "UInt64"), ("bytes_in", "UInt64"),
    ("state", "String"), ("hostname", "String"), ("version", "UInt64"))
USAGE_COLUMNS = (
    ("host", "String"), ("day", "Date"), ("minute", "UInt64"), ("process_id", "UInt64"),
    ("proc_name", "String"), ("proc_path", "String"), ("remote_ip", "String"),
    ("remote_port", "UInt16"), ("proto", "UInt8"), ("dir", "UInt8"), ("packets", "UInt64"),
    ("bytes", "UInt64"), ("version", "UInt64"))
ALERT_COLUMNS = (
    ("host", "String"), ("day", "Date"), ("time_ns", "UInt64"), ("event_id", "UInt64"),
    ("alert_id", "UInt64"), ("pid", "UInt32"), ("process_name", "String"),
    ("process_path", "String"), ("remote_ip", "String"), ("remote_port", "UInt16"),
    ("value", "Float64"), ("group_key", "String"), ("message", "String"),
    ("version", "UInt64"))
SENSOR_COLUMNS = (
    ("host", "String"), ("day", "Date"), ("report_ns", "UInt64"), ("url", "String"),
    ("spool_bytes", "UInt64"), ("spool_batches", "UInt64"), ("gap_rows", "UInt64"),
    ("shipped_rows", "UInt64"), ("version", "UInt64"))

# table → (columns, ORDER BY)
TABLES = {
    "connections": (CONNECTION_COLUMNS, "host, first_ns, capture_id, conn_id"),
    "usage_minutes": (USAGE_COLUMNS,
                      "host, minute, process_id, remote_ip, remote_port, proto, dir"),
    "alert_events": (ALERT_COLUMNS, "host, time_ns, event_id"),
    # one row per sensor and day: its latest report wins
    "sensors": (SENSOR_COLUMNS, "host"),
}


def day_of(ns: int) -> str:
    """The UTC day of a time in nanoseconds, as the spool keeps it (ISO text)."""
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc).date().isoformat()


def for_insert(table: str, rows: list) -> list:
    """Spooled rows (JSON: the day as text) as the client inserts them."""
    at = column_names(table).index("day")
    out = []
    for row in rows:
        row = list(row)
        row[at] = datetime.date.fromisoformat(row[at])
        out.append(row)
    return out


def column_names(table: str) -> list[str]:
    return [name for name, _ in TABLES[table][0]]


def ddl(database: str, cluster: str = "") -> list[str]:
    """The statements that create the database and its tables (IF NOT EXISTS), and with a
    cluster the `<table>_all` Distributed tables over it, sharded by host."""
    out = [f"CREATE DATABASE IF NOT EXISTS {database}"]
    for table, (columns, order) in TABLES.items():
        cols = ", ".join(f"{n} {t}" for n, t in columns)
        out.append(f"CREATE TABLE IF NOT EXISTS {database}.{table} ({cols}) "
                   f"ENGINE = ReplacingMergeTree(version) PARTITION BY day ORDER BY ({order})")
        if cluster:
            out.append(f"CREATE TABLE IF NOT EXISTS {database}.{table}_all AS "
                       f"{database}.{table} ENGINE = Distributed({cluster}, {database}, "
                       f"{table}, cityHash64(host))")
    return out


def insert(client, database: str, table: str, rows: list) -> None:
    """Spooled rows into `table` of this node (never the Distributed table: a sensor's rows
    stay on the shard it writes to, so FINAL collapses them)."""
    client.execute(f"INSERT INTO {database}.{table} ({', '.join(column_names(table))}) VALUES",
                   for_insert(table, rows))


def ensure(client, database: str, cluster: str = "") -> None:
    for statement in ddl(database, cluster):
        client.execute(statement)


def drop_old_days(client, database: str, keep_days: int, today: datetime.date) -> int:
    """Retention without table TTL: drop the day partitions older than keep_days on this
    node (partitions are days). The number of partitions dropped."""
    first = today - datetime.timedelta(days=keep_days)
    dropped = 0
    for table in TABLES:
        rows = client.execute(
            "SELECT DISTINCT partition FROM system.parts WHERE database = %(db)s AND "
            "table = %(t)s AND active", {"db": database, "t": table})
        for (partition,) in rows:
            try:
                day = datetime.date.fromisoformat(partition.strip("'"))
            except ValueError:
                continue  # not a day partition: not ours to drop
            if day < first:
                client.execute(f"ALTER TABLE {database}.{table} DROP PARTITION %(p)s",
                               {"p": day.isoformat()})
                dropped += 1
    return dropped
