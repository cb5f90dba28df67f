"""What the usage actions (api/usage.py, api/usage_remote.py) share: the recorder, ranges,
rows from its per-second ring or the catalog's minute rows, program names and the folding
of processes by executable path."""

from __future__ import annotations

from apppaccap.api.series import DAY
from apppaccap.api.series import HOUR
from apppaccap.api.series import MINUTE
from apppaccap.api.series import SECOND
from apppaccap.api.timerange import relative_range
from apppaccap.errors import Malformed
from apppaccap.filetime import now_ns
from apppaccap.filetime import to_ns_clamped
from apppaccap.store import usage as usage_table

__all__ = ["DAY", "HOUR", "MINUTE", "SECOND"]
IN, OUT = 0, 1
GROUPS = ("path", "process")
GROUP_DOC = ('"path" (default): one entry per executable path (the name when there is '
             'none), its ProcessId the one with the most bytes; "process": one per ProcessId')


def recorder(ctx):
    service = getattr(ctx, "usage", None)
    return service.recorder if service is not None else None


def usage_range(start_dtg: int, end_dtg: int, relative_time: str) -> tuple[int, int]:
    """(start_ns, end_ns); the last hour when nothing is given."""
    rel = relative_range(relative_time, start_dtg, end_dtg)
    if rel is not None:
        return rel
    end = to_ns_clamped(end_dtg) if end_dtg else now_ns()
    start = to_ns_clamped(start_dtg) if start_dtg else end - HOUR
    if end < start:
        raise Malformed("end_dtg: must not be before start_dtg")
    return start, end


def check_group(group: str) -> str:
    g = group.strip().lower()
    if g not in GROUPS:
        raise Malformed('group: "path" or "process"')
    return g


def names(ctx, rec, ids) -> dict:
    """process_id → (pid, name, path); 0 is traffic nobody owned."""
    known = dict(rec.programs) if rec is not None else {}
    missing = [i for i in ids if i and i not in known]
    known.update(usage_table.processes(ctx.catalog, missing))
    known[0] = (0, "<unknown>", "")
    return known


def program(process_id: int, known: dict) -> dict:
    pid, name, path = known.get(process_id, (0, "", ""))
    return {"Version": 1, "ProcessId": process_id, "Pid": pid, "Name": name, "Path": path}


def ring_covers(rec, start: int) -> bool:
    """Whether the recorder's ring holds everything counted since `start`: it reaches back
    that far, or it has not wrapped yet and nothing was written before it began (another
    run of the service)."""
    if rec is None or not rec.ring:
        return False
    first = rec.ring[0][0]
    if first * SECOND <= start:
        return True
    return len(rec.ring) < rec.ring.maxlen and rec.before < start // MINUTE


def ring_rows(rec, start: int, end: int):
    """(second_ns, (process_id, remote_ip, remote_port, proto, dir), packets, bytes) of the
    ring's seconds within [start, end]."""
    for second, by_key, _flows in rec.seconds(start // SECOND, end // SECOND):
        for key, (p, b) in by_key.items():
            yield second * SECOND, key, p, b


def remote_rows(ctx, rec, start: int, end: int, process_id: int):
    """(remote_ip, port, proto, process_id, dir, first_ns, last_ns, packets, bytes): from the
    ring to the second when it holds the whole range, else from the minute rows."""
    if ring_covers(rec, start):
        for t, (pid, ip, port, proto, d), p, b in ring_rows(rec, start, end):
            if not process_id or pid == process_id:
                yield ip, port, proto, pid, d, t, t + SECOND - 1, p, b
        return
    first, last = start // MINUTE, end // MINUTE
    for ip, port, proto, pid, d, m0, m1, p, b in usage_table.per_remote(
            ctx.catalog, first, last, process_id):
        yield ip, port, proto, pid, d, m0 * MINUTE, (m1 + 1) * MINUTE - 1, p, b
    if rec is not None:
        for (m, pid, ip, port, proto, d), (p, b) in rec.unflushed().items():
            if first <= m <= last and (not process_id or pid == process_id):
                yield ip, port, proto, pid, d, m * MINUTE, (m + 1) * MINUTE - 1, p, b


def endpoint_labels(ctx, rec, start: int, end: int):
    """(process_id, remote_ip, remote_port, proto) → (AppProtocol, App, Category) or None:
    nDPI's label of a program × remote endpoint (usage/applabel.py), from the minute rows
    of the range, else the recorder's own (its current minute, the ring)."""
    stored = usage_table.labels(ctx.catalog, start // MINUTE, end // MINUTE)
    live = rec.app_labels if rec is not None else {}

    def of(endpoint: tuple):
        return stored.get(endpoint) or live.get(endpoint)
    return of


def label_fields(app) -> dict:
    """{AppProtocol, App, Category}; "" each when unlabelled."""
    ap, name, cat = app or ("", "", "")
    return {"AppProtocol": ap or "", "App": name or "", "Category": cat or ""}


def add_label(acc: dict, app, d: int, b: int) -> None:
    """Bytes of one direction under a label: acc[(AppProtocol, App, Category)] = [in, out]."""
    if app:
        v = acc.setdefault(tuple(x or "" for x in app), [0, 0])
        v[d] += b


def labels_list(acc: dict) -> list:
    """[{AppProtocol, App, Category, BytesIn, BytesOut}], most bytes first."""
    return [dict(label_fields(k), BytesIn=v[IN], BytesOut=v[OUT])
            for k, v in sorted(acc.items(), key=lambda kv: -(kv[1][IN] + kv[1][OUT]))]


def hostnames(ctx, rec, ips) -> dict:
    """ip → hostname from the DNS answers seen (memory first, then the catalog)."""
    out = {}
    live = rec.names if rec is not None else None
    missing = []
    for ip in ips:
        name = live.get(ip) if live is not None else ""
        if name:
            out[ip] = name
        else:
            missing.append(ip)
    if missing:
        out.update(usage_table.hostnames(ctx.catalog, missing))
    return out


def _add_series(into: list, more: list) -> list:
    acc = {s["Time"]: dict(s) for s in into}
    for s in more:
        have = acc.get(s["Time"])
        if have is None:
            acc[s["Time"]] = dict(s)
        else:
            for k, v in s.items():
                if k != "Time":
                    have[k] += v
    return [acc[t] for t in sorted(acc)]


def _add_remotes(into: list, more: list, top: int) -> list:
    acc = {(r["Ip"], r["Port"], r["Protocol"]): dict(r) for r in into}
    for r in more:
        k = (r["Ip"], r["Port"], r["Protocol"])
        if k in acc:
            acc[k]["BytesIn"] += r["BytesIn"]
            acc[k]["BytesOut"] += r["BytesOut"]
        else:
            acc[k] = dict(r)
    return sorted(acc.values(), key=lambda r: -(r["BytesIn"] + r["BytesOut"]))[:top]


def _add_labels(into: list, more: list) -> list:
    acc: dict = {}
    for r in into + more:
        k = (r["AppProtocol"], r["App"], r["Category"])
        v = acc.setdefault(k, [0, 0])
        v[IN] += r["BytesIn"]
        v[OUT] += r["BytesOut"]
    return labels_list(acc)


NUMBERS = ("BytesIn", "BytesOut", "PacketsIn", "PacketsOut", "BytesInPerSec",
           "BytesOutPerSec", "Connections")


def fold(items: list, group: str, weight, top: int = 5) -> list:
    """Programs (one per ProcessId, heaviest first) → one entry per executable path (or,
    group "process", as they are), each with Processes [{ProcessId, Pid}]. Traffic nobody
    owned (ProcessId 0) stays its own entry."""
    items = sorted(items, key=weight, reverse=True)
    for it in items:
        it["Processes"] = [{"ProcessId": it["ProcessId"], "Pid": it["Pid"]}]
    if group == "process":
        return items
    groups: dict = {}
    out = []
    for it in items:
        key = (0,) if not it["ProcessId"] else (1, it["Path"]) if it["Path"] else (2, it["Name"])
        g = groups.get(key)
        if g is None:
            groups[key] = it
            out.append(it)
            continue
        for k in NUMBERS:
            if k in it:
                g[k] += it[k]
        if "Series" in it:
            g["Series"] = _add_series(g["Series"], it["Series"])
        if "Labels" in it:
            g["Labels"] = _add_labels(g["Labels"], it["Labels"])
        if "TopRemotes" in it:
            g["TopRemotes"] = _add_remotes(g["TopRemotes"], it["TopRemotes"], top)
        g["Processes"] += it["Processes"]
    return sorted(out, key=weight, reverse=True)
