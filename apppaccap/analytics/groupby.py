"""Group-by top-N over flows: a capture's connection rows, or usage accounting's counters.

Neither source scans packets: a capture's `connections` rows carry each flow's packets and
bytes in and out (kept by the recorder while writing), usage accounting keeps per-minute
(and, for the last 10 minutes, per-second) counters per program × remote endpoint. Both
become `Flow` records; a filter (analytics/flowfilter.py) tests flows, a group key maps a
flow to its row, and the rows, the rest (`Other`) and `Total` are sums of the same flows,
so rows + Other always equal Total.

One answer's work is bounded (`Budget`): rows stream from SQL, each read and each filter
comparison on a flow is spent from MAX_WORK, and past it or MAX_SECONDS the answer stops
with BUSY. Only what an answer needs is kept: the groups' sums, and a row's flows only for
a series (or an alert's event).

Adding a group key is one entry in GROUPS: a function of a Flow giving (key, name).
"""

from __future__ import annotations

import heapq
import os
import time
from contextlib import closing
from dataclasses import dataclass
from dataclasses import field

from apppaccap.errors import Busy
from apppaccap.errors import Malformed
from apppaccap.store import usage as usage_table

SECOND = 1_000_000_000
MINUTE = 60 * SECOND
IN, OUT = 0, 1
PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}
METRICS = ("bytes", "packets", "connections")
DIRECTIONS = ("in", "out", "both")
# A request runs to its end once begun (nothing cancels it) and an alert check repeats every
# few seconds, so one answer may do only so much. A unit is one filter comparison on one
# flow (~0.6-1 us here, 2 cores); a row read (a connection, a usage counter) and grouped
# costs ROW_WORK units (~2.5-4 us). 5,000,000 units are ~5 s: 1,250,000 rows unfiltered,
# or 300,000 connections under a 12-comparison filter. Past MAX_SECONDS the answer stops
# whatever the units cost (a slow disk, a loaded machine).
ROW_WORK = 4
MAX_WORK = 5_000_000
MAX_SECONDS = 10.0


class Budget:
    """The work one answer may still do (`work` units, `seconds`; MAX_WORK and MAX_SECONDS
    by default, read as it begins); `spend` raises BUSY saying what covers too much and
    what to narrow."""

    def __init__(self, what: str = "connections",
                 narrow: str = "the time range, the capture or the filter",
                 work: int | None = None, seconds: float | None = None):
        self.work = MAX_WORK if work is None else work
        self.seconds = MAX_SECONDS if seconds is None else seconds
        self.left = self.work
        self.deadline = time.monotonic() + self.seconds
        self.what, self.narrow = what, narrow

    def spend(self, units: int) -> None:
        self.left -= units
        if self.left < 0 or time.monotonic() > self.deadline:
            raise Busy(f"this question covers too many {self.what} for one answer (it may "
                       f"read {self.work // ROW_WORK:,} rows, fewer under a filter, within "
                       f"{self.seconds:g} s); narrow {self.narrow}")


@dataclass(slots=True)
class Flow:
    """One connection (a capture) or one process × remote endpoint (usage accounting)."""

    conn_id: int
    proto: int
    local_ip: str
    local_port: int | None
    remote_ip: str
    remote_port: int | None
    process_id: int
    pid: int
    name: str
    path: str
    hostname: str
    country: str
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    first: int = 0
    last: int = 0
    # usage accounting: (time ns, dir, packets, bytes) rows behind the counters (series)
    times: list = field(default_factory=list)
    # nDPI's labels of a capture's connection (capture/applabels.py) or of a usage
    # program × remote endpoint (usage/applabel.py); "" when unlabelled
    app_proto: str = ""
    app: str = ""
    category: str = ""


def _program(f: Flow) -> tuple:
    key = f.path or f.name or "<unknown>"
    return key, (os.path.basename(f.path) if f.path else f.name) or "<unknown>"


def _conn(f: Flow) -> tuple:
    proto = PROTOCOLS.get(f.proto, str(f.proto))
    return f.conn_id, (f"{proto} {_end(f.local_ip, f.local_port)} - "
                       f"{_end(f.remote_ip, f.remote_port)}")


def _end(ip: str, port) -> str:
    ip = ip or "?"
    if port is None:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# group_by name → (flow → (Key, Name), the sources that know it: "capture", "usage")
GROUPS = {
    "process": (lambda f: (f.process_id, f"{f.name or '<unknown>'} ({f.pid})"
                           if f.process_id else "<unknown>"), ("capture", "usage")),
    "program": (_program, ("capture", "usage")),
    "ip": (lambda f: (f.local_ip or "", ""), ("capture",)),
    "remote_ip": (lambda f: (f.remote_ip or "", f.hostname), ("capture", "usage")),
    "port": (lambda f: (f.remote_port or 0, PROTOCOLS.get(f.proto, str(f.proto))),
             ("capture", "usage")),
    "protocol": (lambda f: (f.proto, PROTOCOLS.get(f.proto, str(f.proto))),
                 ("capture", "usage")),
    "country": (lambda f: (f.country, f.country or "unknown"), ("capture", "usage")),
    "hostname": (lambda f: (f.hostname, f.hostname or "unknown"), ("capture", "usage")),
    "conn": (_conn, ("capture",)),
    # nDPI labels (docs/LABELS.md): the application (App, else the protocol: Google for
    # TLS.Google, DNS for plain DNS), the application protocol, the category; "" =
    # unlabelled. Usage accounting labels each program × remote endpoint (usage/applabel.py).
    "app": (lambda f: (f.app or f.app_proto, f.app or f.app_proto or "unlabelled"),
            ("capture", "usage")),
    "app_proto": (lambda f: (f.app_proto, f.app_proto or "unlabelled"), ("capture", "usage")),
    "category": (lambda f: (f.category, f.category or "unlabelled"), ("capture", "usage")),
}


def check_group(group_by: str, source: str) -> None:
    if group_by not in GROUPS:
        raise Malformed(f"group_by: one of {', '.join(GROUPS)}; got {group_by[:40]!r}")
    if source not in GROUPS[group_by][1]:
        raise Malformed(f"group_by: {group_by} is not known to usage accounting (capture_id 0: "
                        "it keeps programs and remote endpoints only); give a capture_id")


def check_metric(metric: str, direction: str) -> None:
    problems = []
    if metric not in METRICS:
        problems.append(f"metric: one of {', '.join(METRICS)}; got {metric[:40]!r}")
    if direction not in DIRECTIONS:
        problems.append(f"direction: one of {', '.join(DIRECTIONS)}; got {direction[:40]!r}")
    if problems:
        raise Malformed("; ".join(problems))


def counters(f: Flow, direction: str) -> tuple:
    """(packets, bytes, connections) of a flow in one direction (both: all of it); a flow
    counts as a connection of a direction when it carried packets that way."""
    if direction == "in":
        return f.packets_in, f.bytes_in, 1 if f.packets_in else 0
    if direction == "out":
        return f.packets_out, f.bytes_out, 1 if f.packets_out else 0
    return f.packets_in + f.packets_out, f.bytes_in + f.bytes_out, 1


def group(flows, group_by: str, metric: str, direction: str, top: int, pred=None,
          budget: Budget | None = None, keep: str = "") -> dict:
    """{GroupBy, Metric, Rows, Other, Total} plus "members": key → what the top rows keep
    of their flows, only what is asked: keep="flows" every flow (a usage series),
    "conn_ids" their connection ids (a capture's series), "best" the flow with the most
    bytes (an alert's event), "" nothing. The filter's comparisons are spent from
    `budget`."""
    keyfn = GROUPS[group_by][0]
    cost = getattr(pred, "terms", 1) if pred is not None else 0
    budget = budget if budget is not None else Budget()
    acc: dict = {}
    total = [0, 0, 0]
    for f in flows:
        if pred is not None:
            budget.spend(cost)
            if not pred(f):
                continue
        p, b, c = counters(f, direction)
        if not (p or c):
            continue  # nothing that way: not part of this answer
        key, name = keyfn(f)
        row = acc.get(key)
        if row is None:
            row = acc[key] = [0, 0, 0, name, [] if keep else ()]
        row[0] += p
        row[1] += b
        row[2] += c
        if not row[3] and name:
            row[3] = name
        if keep == "flows":
            row[4].append(f)
        elif keep == "conn_ids":
            row[4].append(f.conn_id)
        elif keep == "best" and (not row[4] or _bytes(f) > _bytes(row[4][0])):
            row[4] = [f]
        total[0] += p
        total[1] += b
        total[2] += c
    col = {"packets": 0, "bytes": 1, "connections": 2}[metric]
    # the top rows as sorted() would order them (nsmallest is that, without sorting every
    # group); Other is what the rest add up to: Total less the rows
    shown = heapq.nsmallest(top, acc.items(),
                            key=lambda kv: (-kv[1][col], -kv[1][1], str(kv[0])))
    other = [total[i] - sum(r[i] for _k, r in shown) for i in range(3)]
    rest = len(acc) - len(shown)
    return {
        "Version": 1, "GroupBy": group_by, "Metric": metric, "Direction": direction,
        "Rows": [{"Key": k, "Name": r[3], "Packets": r[0], "Bytes": r[1], "Connections": r[2]}
                 for k, r in shown],
        "Other": {"Packets": other[0], "Bytes": other[1], "Connections": other[2],
                  "Groups": rest},
        "Total": {"Packets": total[0], "Bytes": total[1], "Connections": total[2],
                  "Groups": len(acc)},
        "members": {k: r[4] for k, r in shown},
    }


def _bytes(f: Flow) -> int:
    return f.bytes_in + f.bytes_out


# -- sources --------------------------------------------------------------------------------

def capture_flows(db, start: int | None, end: int | None, budget: Budget):
    """The connections of a capture active within [start, end] (None: open), whole: a
    connection row keeps its counters, not when each packet passed. Streamed from SQL,
    each row spent from `budget` (close the generator when stopping early)."""
    where, params = [], []
    if start is not None:
        where.append("c.last_time >= ?")
        params.append(start)
    if end is not None:
        where.append("c.first_time <= ?")
        params.append(end)
    sql = ("SELECT c.id, c.proto, c.local_ip, c.local_port, c.remote_ip, c.remote_port, "
           "coalesce(c.process_id, 0), c.pid, coalesce(p.name, ''), coalesce(p.path, ''), "
           "coalesce(nullif(c.hostname, ''), i.hostname, ''), coalesce(i.country, ''), "
           "c.packets_in, c.packets_out, c.bytes_in, c.bytes_out, "
           "coalesce(c.first_time, 0), coalesce(c.last_time, 0), coalesce(c.app_proto, ''), "
           "coalesce(c.app, ''), coalesce(c.category, '') FROM connections c "
           "LEFT JOIN processes p ON p.process_id = c.process_id "
           "LEFT JOIN ips i ON i.ip = c.remote_ip"
           + (" WHERE " + " AND ".join(where) if where else ""))
    with closing(db.tuples(sql, params)) as cur:
        for r in cur:
            budget.spend(ROW_WORK)
            yield Flow(*r[:18], app_proto=r[18], app=r[19], category=r[20])


def _ring_rows(rec, start: int, end: int):
    for second, by_key, _flows in rec.seconds(start // SECOND, end // SECOND):
        for (pid, ip, port, proto, d), (p, b) in by_key.items():
            yield second * SECOND, pid, ip, port, proto, d, p, b


def _minute_rows(catalog, rec, start: int, end: int):
    first, last = start // MINUTE, end // MINUTE
    with closing(catalog.tuples(
            "SELECT minute, process_id, remote_ip, remote_port, proto, dir, packets, bytes "
            "FROM usage_minute WHERE minute BETWEEN ? AND ?", (first, last))) as cur:
        for m, *rest in cur:
            yield m * MINUTE, *rest
    if rec is not None:
        for (m, pid, ip, port, proto, d), (p, b) in rec.unflushed().items():
            if first <= m <= last:
                yield m * MINUTE, pid, ip, port, proto, d, p, b


def _ring_covers(rec, start: int) -> bool:
    """The ring holds everything counted since `start`: it reaches back that far, or it
    has not wrapped and nothing was written before it began."""
    if not rec.ring:
        return False
    if rec.ring[0][0] * SECOND <= start:
        return True
    return len(rec.ring) < rec.ring.maxlen and rec.before < start // MINUTE


def usage_flows(catalog, rec, start: int, end: int, budget: Budget,
                times: bool = False) -> tuple[list, int]:
    """Flow records (process × remote endpoint × protocol) from usage accounting over the
    range (with times=True each keeps the time rows behind it, for series); the unit of
    those rows (ns): per second from the recorder's ring when it holds the whole range,
    else per minute from the catalog (plus the minute not written yet). Each row read is
    spent from `budget`."""
    if rec is not None and _ring_covers(rec, start):
        rows, unit = _ring_rows(rec, start, end), SECOND
    else:
        rows, unit = _minute_rows(catalog, rec, start, end), MINUTE
    flows: dict = {}
    with closing(rows):
        for t, pid, ip, port, proto, d, p, b in rows:
            budget.spend(ROW_WORK)
            f = flows.get((pid, ip, port, proto))
            if f is None:
                f = flows[(pid, ip, port, proto)] = Flow(0, proto, "", None, ip, port, pid, 0,
                                                         "", "", "", "", first=t, last=t)
            if d == IN:
                f.packets_in += p
                f.bytes_in += b
            else:
                f.packets_out += p
                f.bytes_out += b
            f.first, f.last = min(f.first, t), max(f.last, t + unit - 1)
            if times:
                f.times.append((t, d, p, b))
    names = program_names(catalog, rec, {k[0] for k in flows})
    ips = {k[1] for k in flows}
    facts = ip_facts(catalog, ips)
    dns = usage_hostnames(catalog, rec, ips)
    stored = usage_table.labels(catalog, start // MINUTE, end // MINUTE)
    live = rec.app_labels if rec is not None else {}
    for k, f in flows.items():
        app = stored.get(k) or live.get(k)
        if app:
            f.app_proto, f.app, f.category = (x or "" for x in app)
        f.pid, f.name, f.path = names.get(f.process_id, (0, "<unknown>", ""))
        f.hostname, f.country = facts.get(f.remote_ip, ("", ""))
        f.hostname = dns.get(f.remote_ip) or f.hostname
    return list(flows.values()), unit


def program_names(catalog, rec, ids) -> dict:
    """process_id → (pid, name, path): the recorder's own, then the catalog's processes."""
    known = dict(rec.programs) if rec is not None else {}
    missing = [i for i in ids if i and i not in known]
    for i in range(0, len(missing), 500):
        part = missing[i:i + 500]
        for r in catalog.read(f"SELECT id, pid, name, path FROM processes WHERE id IN "
                              f"({','.join('?' * len(part))})", part):
            known[r[0]] = (r[1], r[2] or "", r[3] or "")
    known[0] = (0, "<unknown>", "")
    return known


def usage_hostnames(catalog, rec, ips) -> dict:
    """ip → hostname from the DNS answers usage accounting saw (memory, then catalog)."""
    live = getattr(rec, "names", None) or {}
    out = {}
    for ip in ips:  # DnsNames has get(), not [] (a KeyError-free lookup under its lock)
        name = live.get(ip)
        if name:
            out[ip] = name
    missing = [ip for ip in ips if ip and ip not in out]
    if missing:
        out.update(usage_table.hostnames(catalog, missing))
    return out


def ip_facts(catalog, ips) -> dict:
    """ip → (hostname, country) from the catalog's ips table (what resolution found)."""
    ips = [i for i in ips if i]
    out = {}
    for i in range(0, len(ips), 500):
        part = ips[i:i + 500]
        for r in catalog.read(f"SELECT ip, hostname, country FROM ips WHERE ip IN "
                              f"({','.join('?' * len(part))})", part):
            out[r[0]] = (r[1] or "", r[2] or "")
    return out
