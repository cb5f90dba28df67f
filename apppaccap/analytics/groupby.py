"""Group-by top-N over flows: a capture's connection rows, or usage accounting's counters.

Neither source scans packets: a capture's `connections` rows carry each flow's packets and
bytes in and out (kept by the recorder while writing), usage accounting keeps per-minute
(and, for the last 10 minutes, per-second) counters per program × remote endpoint. Both
become `Flow` records; a filter (analytics/flowfilter.py) tests flows, a group key maps a
flow to its row, and the rows, the rest (`Other`) and `Total` are sums of the same flows,
so rows + Other always equal Total.

Adding a group key is one entry in GROUPS: a function of a Flow giving (key, name).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from dataclasses import field

from apppaccap.errors import Malformed
from apppaccap.store import usage as usage_table

SECOND = 1_000_000_000
MINUTE = 60 * SECOND
IN, OUT = 0, 1
PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}
METRICS = ("bytes", "packets", "connections")
DIRECTIONS = ("in", "out", "both")


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


def group(flows, group_by: str, metric: str, direction: str, top: int, pred=None) -> dict:
    """{GroupBy, Metric, Rows, Other, Total} plus "members": key → the row's flows (top
    rows only; for series)."""
    keyfn = GROUPS[group_by][0]
    acc: dict = {}
    total = [0, 0, 0]
    for f in flows:
        if pred is not None and not pred(f):
            continue
        p, b, c = counters(f, direction)
        if not (p or c):
            continue  # nothing that way: not part of this answer
        key, name = keyfn(f)
        row = acc.get(key)
        if row is None:
            row = acc[key] = [0, 0, 0, name, []]
        row[0] += p
        row[1] += b
        row[2] += c
        if not row[3] and name:
            row[3] = name
        row[4].append(f)
        total[0] += p
        total[1] += b
        total[2] += c
    col = {"packets": 0, "bytes": 1, "connections": 2}[metric]
    ordered = sorted(acc.items(), key=lambda kv: (-kv[1][col], -kv[1][1], str(kv[0])))
    shown, rest = ordered[:top], ordered[top:]
    other = [sum(r[1][i] for r in rest) for i in range(3)]
    return {
        "Version": 1, "GroupBy": group_by, "Metric": metric, "Direction": direction,
        "Rows": [{"Key": k, "Name": r[3], "Packets": r[0], "Bytes": r[1], "Connections": r[2]}
                 for k, r in shown],
        "Other": {"Packets": other[0], "Bytes": other[1], "Connections": other[2],
                  "Groups": len(rest)},
        "Total": {"Packets": total[0], "Bytes": total[1], "Connections": total[2],
                  "Groups": len(acc)},
        "members": {k: r[4] for k, r in shown},
    }


# -- sources --------------------------------------------------------------------------------

def capture_flows(db, start: int | None, end: int | None) -> list:
    """The connections of a capture active within [start, end] (None: open), whole: a
    connection row keeps its counters, not when each packet passed."""
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
    return [Flow(*r[:18], app_proto=r[18], app=r[19], category=r[20])
            for r in db.read(sql, params)]


def usage_rows(catalog, rec, start: int, end: int) -> tuple[list, int]:
    """((time ns, process_id, remote_ip, remote_port, proto, dir, packets, bytes), unit ns)
    over [start, end]: per second from the recorder's ring when it holds the whole range,
    else per minute from the catalog (plus the minute not written yet)."""
    if rec is not None and _ring_covers(rec, start):
        out = []
        for second, by_key, _flows in rec.seconds(start // SECOND, end // SECOND):
            for (pid, ip, port, proto, d), (p, b) in by_key.items():
                out.append((second * SECOND, pid, ip, port, proto, d, p, b))
        return out, SECOND
    first, last = start // MINUTE, end // MINUTE
    out = [(m * MINUTE, *rest) for m, *rest in catalog.read(
        "SELECT minute, process_id, remote_ip, remote_port, proto, dir, packets, bytes "
        "FROM usage_minute WHERE minute BETWEEN ? AND ?", (first, last))]
    if rec is not None:
        for (m, pid, ip, port, proto, d), (p, b) in rec.unflushed().items():
            if first <= m <= last:
                out.append((m * MINUTE, pid, ip, port, proto, d, p, b))
    return out, MINUTE


def _ring_covers(rec, start: int) -> bool:
    """The ring holds everything counted since `start`: it reaches back that far, or it
    has not wrapped and nothing was written before it began."""
    if not rec.ring:
        return False
    if rec.ring[0][0] * SECOND <= start:
        return True
    return len(rec.ring) < rec.ring.maxlen and rec.before < start // MINUTE


def usage_flows(catalog, rec, start: int, end: int) -> tuple[list, int]:
    """Flow records (process × remote endpoint × protocol) from usage accounting over the
    range, each with the time rows behind it; the unit of those rows (ns)."""
    rows, unit = usage_rows(catalog, rec, start, end)
    flows: dict = {}
    for t, pid, ip, port, proto, d, p, b in rows:
        f = flows.get((pid, ip, port, proto))
        if f is None:
            f = flows[(pid, ip, port, proto)] = Flow(0, proto, "", None, ip, port, pid, 0, "",
                                                     "", "", "", first=t, last=t)
        if d == IN:
            f.packets_in += p
            f.bytes_in += b
        else:
            f.packets_out += p
            f.bytes_out += b
        f.first, f.last = min(f.first, t), max(f.last, t + unit - 1)
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
