"""The fleet's questions, asked of ClickHouse: the sensors seen, connections matching a
filter, a group-by top-N. Every read collapses re-sent rows with FINAL (the newest version
of each connection), with PREWHERE moves off so the filter sees merged rows only.
"""

from __future__ import annotations

import time

from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.fleet import client as fleet_client
from apppaccap.fleet.chfilter import compile_filter

SECOND = 1_000_000_000
READ_SETTINGS = {"optimize_move_to_prewhere": 0}
PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}
# group → (key expression (text), name expression)
GROUPS = {
    "host": ("host", "host"),
    "process": ("concat(host, ':', toString(process_id))", "proc_name"),
    "program": ("proc_path", "proc_name"),
    "ip": ("local_ip", "local_ip"),
    "remote_ip": ("remote_ip", "hostname"),
    "port": ("toString(remote_port)", "toString(remote_port)"),
    "protocol": ("toString(proto)", "toString(proto)"),
    "hostname": ("hostname", "hostname"),
    "app": ("if(app != '', app, app_proto)", "if(app != '', app, app_proto)"),
    "app_proto": ("app_proto", "app_proto"),
    "category": ("category", "category"),
}
# direction → (packets, bytes, connections) expressions
_COUNTERS = {
    "both": ("packets_in + packets_out", "bytes_in + bytes_out", "1"),
    "in": ("packets_in", "bytes_in", "packets_in > 0"),
    "out": ("packets_out", "bytes_out", "packets_out > 0"),
}
CONNECTION_FIELDS = (
    "host, capture_id, conn_id, first_ns, last_ns, proto, local_ip, local_port, remote_ip, "
    "remote_port, process_id, pid, tid, proc_name, proc_path, proc_user, app_proto, app, "
    "category, packets_out, bytes_out, packets_in, bytes_in, state, hostname")


class Fleet:
    """One question's connection to ClickHouse (from the settings at the time)."""

    def __init__(self, settings):
        url = settings.get("fleet_url") or ""
        if not url:
            raise NotFound("fleet_url: not set; this server is not part of a fleet "
                           "(settings_set fleet_url=clickhouse://HOST:9000/apppaccap)")
        self.database = fleet_client.database_of(url)
        self.suffix = "_all" if settings.get("fleet_cluster") else ""
        self.client = fleet_client.connect(url)

    def table(self, name: str) -> str:
        return f"{self.database}.{name}{self.suffix}"

    def rows(self, sql: str, params: dict | None = None) -> list:
        try:
            return self.client.execute(sql, params or {}, settings=READ_SETTINGS)
        finally:
            self.client.disconnect()


def _where(filter_text: str, hosts: list, start: int | None, end: int | None) -> tuple:
    cond, params = compile_filter(filter_text)
    parts = [cond]
    if hosts:
        params["hosts"] = tuple(hosts)
        parts.append("host IN %(hosts)s")
    if start is not None:
        params["start"] = start
        parts.append("last_ns >= %(start)s")
    if end is not None:
        params["end"] = end
        parts.append("first_ns <= %(end)s")
    return " AND ".join(parts), params


def hosts(fleet: Fleet) -> list:
    """Every sensor's latest report, with its lag (now − report) and connection count."""
    reports = fleet.rows(
        f"SELECT host, argMax(report_ns, version), argMax(url, version), "
        f"argMax(spool_bytes, version), argMax(spool_batches, version), "
        f"argMax(gap_rows, version), argMax(shipped_rows, version) "
        f"FROM {fleet.table('sensors')} GROUP BY host ORDER BY host")
    counts = dict(fleet.rows(f"SELECT host, count() FROM {fleet.table('connections')} FINAL "
                             f"GROUP BY host"))
    now = time.time_ns()
    return [{"Host": h, "LastReport": t, "LagSeconds": max(0, now - t) / SECOND, "Url": url,
             "SpoolBytes": sb, "SpoolBatches": sn, "GapRows": gap, "ShippedRows": shipped,
             "Connections": counts.get(h, 0)}
            for h, t, url, sb, sn, gap, shipped in reports]


def search(fleet: Fleet, filter_text: str, hosts_: list, start, end, limit: int) -> tuple:
    """(connections as dicts (times in ns), more): the newest first."""
    where, params = _where(filter_text, hosts_, start, end)
    params["limit"] = limit + 1
    found = fleet.rows(f"SELECT {CONNECTION_FIELDS} FROM {fleet.table('connections')} FINAL "
                       f"WHERE {where} ORDER BY last_ns DESC, host, capture_id, conn_id "
                       f"LIMIT %(limit)s", params)
    names = [n.strip() for n in CONNECTION_FIELDS.split(",")]
    return [dict(zip(names, r)) for r in found[:limit]], len(found) > limit


def check_group(group_by: str, metric: str, direction: str) -> None:
    if group_by not in GROUPS:
        raise Malformed(f"group_by: one of {', '.join(GROUPS)}")
    if metric not in ("bytes", "packets", "connections"):
        raise Malformed("metric: bytes, packets or connections")
    if direction not in _COUNTERS:
        raise Malformed("direction: in, out or both")


def group_by(fleet: Fleet, group: str, metric: str, direction: str, top: int,
             filter_text: str, hosts_: list, start, end) -> dict:
    """{GroupBy, Metric, Direction, Rows, Other, Total}: stats_group_by's shape, rows +
    Other = Total counter by counter."""
    check_group(group, metric, direction)
    where, params = _where(filter_text, hosts_, start, end)
    key, name = GROUPS[group]
    p, b, c = _COUNTERS[direction]
    inner = (f"SELECT {key} AS k, {name} AS n, {p} AS p, {b} AS b, {c} AS c "
             f"FROM {fleet.table('connections')} FINAL WHERE {where}")
    order = {"packets": "sp", "bytes": "sb", "connections": "sc"}[metric]
    params["top"] = top
    rows = fleet.rows(
        f"SELECT k, anyIf(n, n != ''), sum(p) AS sp, sum(b) AS sb, sum(c) AS sc FROM ({inner}) "
        f"WHERE p > 0 OR c > 0 GROUP BY k ORDER BY {order} DESC, sb DESC, k LIMIT %(top)s",
        params)
    params.pop("top")
    total = fleet.rows(f"SELECT sum(p), sum(b), sum(c), uniqExact(k) FROM ({inner}) "
                       f"WHERE p > 0 OR c > 0", params)[0]
    shown = [_row(group, r) for r in rows]
    tp, tb, tc, groups = (int(v or 0) for v in total)
    return {
        "Version": 1, "GroupBy": group, "Metric": metric, "Direction": direction,
        "Rows": shown,
        "Other": {"Packets": tp - sum(r["Packets"] for r in shown),
                  "Bytes": tb - sum(r["Bytes"] for r in shown),
                  "Connections": tc - sum(r["Connections"] for r in shown),
                  "Groups": groups - len(shown)},
        "Total": {"Packets": tp, "Bytes": tb, "Connections": tc, "Groups": groups},
    }


def _row(group: str, r) -> dict:
    k, n, p, b, c = r
    if group in ("port", "protocol"):
        k = int(k)
        n = PROTOCOLS.get(k, str(k)) if group == "protocol" else str(k)
    return {"Key": k, "Name": n or "", "Packets": int(p), "Bytes": int(b),
            "Connections": int(c)}
