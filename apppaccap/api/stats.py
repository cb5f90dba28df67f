"""stats_* — answered from aggregates kept while writing, never a scan of all packets."""

from __future__ import annotations

import ipaddress

from apppaccap.api.captures import captures
from apppaccap.api.registry import endpoint
from apppaccap.api.series import MINUTE
from apppaccap.api.series import SECOND
from apppaccap.api.series import Window
from apppaccap.api.series import bucket_for
from apppaccap.api.series import bucketed
from apppaccap.api.series import window
from apppaccap.api.timerange import relative_range
from apppaccap.errors import AppError
from apppaccap.errors import Malformed
from apppaccap.filetime import from_ns
from apppaccap.filetime import now_ns
from apppaccap.filetime import to_ns_clamped
from apppaccap.store.capturedb import AGG_ALL
from apppaccap.store.capturedb import AGG_IP
from apppaccap.store.capturedb import AGG_PORT
from apppaccap.store.stats import clear as clear_stats
from apppaccap.store.stats import reset_time
from apppaccap.wire import CaptureType
from apppaccap.wire import DataType
from apppaccap.wire import Direction

TOP = 10


def _series(rows, win: Window, unit: int) -> list:
    """rows of (time in units, packets, bytes) → [{Time, Packets, Bytes}] in win's bucket."""
    return [{"Time": from_ns(t), "Packets": p, "Bytes": b}
            for t, (p, b) in sorted(bucketed(rows, win.size, unit).items())]


def _query(db, kind: int, key: str, start=None, end=None) -> dict:
    """STATSCAPTUREQUERY from a capture database's aggregates (series.py: the window, the
    bucket, per-second rows for short spans)."""
    win = window(db, start, end)
    out = {"Version": 1, "Packets": 0, "Bytes": 0, **win.fields(), "Protocols": [],
           "Series": [], "TopIps": [], "TopPorts": []}
    if win.lo is None:
        return out
    table, col, unit = win.table
    rng = f" AND {col} BETWEEN ? AND ?"
    params = [kind, key, *win.bounds(unit)]
    base = f"FROM {table} WHERE kind = ? AND key = ?{rng}"
    per_t = db.read(f"SELECT {col}, sum(packets), sum(bytes) {base} GROUP BY {col} "
                    f"ORDER BY {col}", params)
    protos = db.read(f"SELECT proto, sum(packets), sum(bytes) {base} GROUP BY proto "
                     "ORDER BY 3 DESC", params)
    out.update(Packets=sum(r[1] for r in per_t), Bytes=sum(r[2] for r in per_t),
               Protocols=[{"Protocol": r[0], "Packets": r[1], "Bytes": r[2]} for r in protos],
               Series=_series([tuple(r) for r in per_t], win, unit))
    for name, k in (("TopIps", AGG_IP), ("TopPorts", AGG_PORT)):
        if kind == AGG_ALL:
            top = db.read(f"SELECT key, sum(packets), sum(bytes) FROM {table} WHERE kind = ?"
                          f"{rng} GROUP BY key ORDER BY 3 DESC LIMIT {TOP}",
                          [k, *params[2:]])
        else:
            top = _top_peers(db, kind, key, k)
        label = "Ip" if k == AGG_IP else "Port"
        out[name] = [{label: (r[0] if k == AGG_IP else int(r[0])), "Packets": r[1],
                      "Bytes": r[2]} for r in top]
    return out


def _top_peers(db, kind, key, want):
    """Top IPs/ports among the connections that involve an IP or a port."""
    if kind == AGG_IP:
        cond, params = "(local_ip = ? OR remote_ip = ?)", [key, key]
    else:
        cond, params = "(local_port = ? OR remote_port = ?)", [int(key), int(key)]
    col = ("CASE WHEN local_ip = ? THEN remote_ip ELSE local_ip END" if kind == AGG_IP and
           want == AGG_IP else "remote_ip" if want == AGG_IP else
           "CASE WHEN local_port = ? THEN remote_port ELSE local_port END" if kind == AGG_PORT
           else "remote_port")
    extra = [params[0]] if "?" in col else []
    return db.read(f"SELECT {col} AS k, sum(packets_out + packets_in), sum(bytes_out + bytes_in) "
                   f"FROM connections WHERE {cond} GROUP BY k ORDER BY 3 DESC LIMIT {TOP}",
                   extra + params)


def _with_connections(db, out: dict) -> dict:
    out["Connections"] = db.one("SELECT count(*) FROM connections")[0]
    return out


@endpoint(DataType.JSON)
def stats_by_id(ctx, *, capture_id: int) -> dict:
    """Statistics of one capture: totals, protocols, top IPs and ports, time series.

    - capture_id: the capture
    """
    db = captures(ctx).db(capture_id)
    return _with_connections(db, _query(db, AGG_ALL, ""))


@endpoint(DataType.JSON)
def stats_by_ip(ctx, *, capture_id: int, ip: str) -> dict:
    """Statistics of the traffic to and from one IP in a capture.

    - capture_id: the capture
    - ip: IPv4 or IPv6 address
    """
    try:
        ip = str(ipaddress.ip_address(ip.strip()))
    except ValueError:
        raise Malformed(f"ip: not an IP address: {ip[:60]!r}") from None
    db = captures(ctx).db(capture_id)
    out = _query(db, AGG_IP, ip)
    out["Connections"] = db.one("SELECT count(*) FROM connections WHERE local_ip = ? OR "
                                "remote_ip = ?", (ip, ip))[0]
    return out


@endpoint(DataType.JSON)
def stats_by_port(ctx, *, capture_id: int, port: int) -> dict:
    """Statistics of the traffic on one TCP/UDP port in a capture.

    - capture_id: the capture
    - port: 1-65535
    """
    if not 0 < port < 65536:
        raise Malformed("port: must be 1-65535")
    db = captures(ctx).db(capture_id)
    out = _query(db, AGG_PORT, str(port))
    out["Connections"] = db.one("SELECT count(*) FROM connections WHERE local_port = ? OR "
                                "remote_port = ?", (port, port))[0]
    return out


@endpoint(DataType.JSON)
def stats_by_protocol(ctx, *, capture_id: int, protocol: int) -> dict:
    """Statistics of one IP protocol (6 TCP, 17 UDP, 1 ICMP …) in a capture.

    - capture_id: the capture
    - protocol: IP protocol number 0-255
    """
    if not 0 <= protocol <= 255:
        raise Malformed("protocol: must be 0-255")
    db = captures(ctx).db(capture_id)
    out = _query(db, AGG_ALL, "")
    win = window(db)
    table, col, unit = win.table
    rows = [] if win.lo is None else db.read(
        f"SELECT {col}, sum(packets), sum(bytes) FROM {table} WHERE kind = 0 AND proto = ? "
        f"AND {col} BETWEEN ? AND ? GROUP BY {col} ORDER BY {col}",
        (protocol, *win.bounds(unit)))
    out["Packets"] = sum(r[1] for r in rows)
    out["Bytes"] = sum(r[2] for r in rows)
    out["Protocols"] = [p for p in out["Protocols"] if p["Protocol"] == protocol]
    out["Series"] = _series([tuple(r) for r in rows], win, unit)
    out["Connections"] = db.one("SELECT count(*) FROM connections WHERE proto = ?",
                                (protocol,))[0]
    out["TopIps"] = [{"Ip": r[0], "Packets": r[1], "Bytes": r[2]} for r in db.read(
        "SELECT remote_ip, sum(packets_out+packets_in), sum(bytes_out+bytes_in) FROM connections "
        f"WHERE proto = ? GROUP BY remote_ip ORDER BY 3 DESC LIMIT {TOP}", (protocol,))]
    out["TopPorts"] = [{"Port": r[0], "Packets": r[1], "Bytes": r[2]} for r in db.read(
        "SELECT remote_port, sum(packets_out+packets_in), sum(bytes_out+bytes_in) FROM "
        f"connections WHERE proto = ? GROUP BY remote_port ORDER BY 3 DESC LIMIT {TOP}",
        (protocol,))]
    return out


@endpoint(DataType.JSON)
def stats_by_date(ctx, *, capture_id: int, start_dtg: int = 0, end_dtg: int = 0,
                  relative_time: str = "") -> dict:
    """Statistics of a capture within a time range; the series' bucket follows the range.
    Connections counts the connections active within it (0 when it holds no packets).

    - capture_id: the capture
    - start_dtg: start, UTC FILETIME (required unless relative_time is given)
    - end_dtg: end, UTC FILETIME; 0 = now
    - relative_time: the last interval up to now, e.g. 30s, 15m, 24h, 7d (see Time ranges)
    """
    rel = relative_range(relative_time, start_dtg, end_dtg)
    if rel is not None:
        start, end = rel
    else:
        start = to_ns_clamped(start_dtg)
        end = to_ns_clamped(end_dtg) if end_dtg else now_ns()
        if start_dtg <= 0 or end < start or 0 < end_dtg < start_dtg:  # FILETIMEs: unclamped
            raise Malformed("start_dtg/end_dtg: need 0 < start_dtg <= end_dtg (FILETIME), "
                            "or relative_time")
    db = captures(ctx).db(capture_id)
    out = _query(db, AGG_ALL, "", start, end)
    # the connections active within the range (none when it holds no packets)
    out["Connections"] = 0 if not out["FirstTime"] else db.one(
        "SELECT count(*) FROM connections WHERE last_time >= ? AND first_time <= ?",
        (start, end))[0]
    return out


@endpoint(DataType.JSON)
def stats_totals(ctx) -> dict:
    """System-wide statistics since the last stats_reset (all live captures together):
    Connections counts the live captures' connections first seen since then."""
    cat = ctx.catalog
    per_min = cat.read("SELECT minute, sum(packets), sum(bytes) FROM stats_minute GROUP BY minute "
                       "ORDER BY minute")
    protos = cat.read("SELECT proto, sum(packets), sum(bytes) FROM stats_minute GROUP BY proto "
                      "ORDER BY 3 DESC")
    # the catalog keeps minutes only: the same bucket rule with a one-minute floor
    win = Window(None, None, MINUTE, False)
    if per_min:
        lo, hi = per_min[0][0] * MINUTE, (per_min[-1][0] + 1) * MINUTE - 1
        win = Window(lo, hi, max(MINUTE, bucket_for(hi - lo)), False)
    top = {kind: cat.read(f"SELECT key, packets, bytes FROM stats_key WHERE kind = ? "
                          f"ORDER BY bytes DESC LIMIT {TOP}", (kind,)) for kind in ("ip", "port")}
    return {
        "Version": 1, "Packets": sum(r[1] for r in per_min), "Bytes": sum(r[2] for r in per_min),
        "Connections": _connections_since(ctx, reset_time(cat)),
        **win.fields(),
        "Protocols": [{"Protocol": r[0], "Packets": r[1], "Bytes": r[2]} for r in protos],
        "TopIps": [{"Ip": r[0], "Packets": r[1], "Bytes": r[2]} for r in top["ip"]],
        "TopPorts": [{"Port": int(r[0]), "Packets": r[1], "Bytes": r[2]} for r in top["port"]],
        "Series": _series([tuple(r) for r in per_min], win, MINUTE),
    }


def _connections_since(ctx, since: int) -> int:
    """Connections of live (not file) captures first seen at or after `since` (ns; 0 =
    all): the ones whose packets the system-wide counters hold. A finished capture's count
    is in the catalog; an active one's (and one that spans the reset) is counted in its
    database."""
    total = 0
    for capture_id, end_time, count in ctx.catalog.read(
            "SELECT id, end_time, connection_count FROM captures WHERE type != ?",
            (CaptureType.FILE,)):
        if end_time is not None and end_time < since:
            continue
        if end_time is not None and not since:
            total += count
            continue
        try:
            db = captures(ctx).db(capture_id)
        except AppError:
            continue  # deleted meanwhile, or no capture engine in this process
        total += db.one("SELECT count(*) FROM connections WHERE first_time >= ?", (since,))[0]
    return total


@endpoint(DataType.INT)
def stats_reset(ctx) -> int:
    """Reset the system-wide statistic counters (capture statistics are kept); stats_totals
    then counts packets, bytes and connections from this moment."""
    ctx.catalog.write(clear_stats)
    return 0


@endpoint(DataType.JSON)
def stats_by_process(ctx, *, capture_id: int, start_dtg: int = 0, end_dtg: int = 0,
                     relative_time: str = "") -> dict:
    """Per-program traffic of one capture: packets and bytes in and out, most bytes first.

    Each program (ProcessId, Pid, Name, Path) has a Series whose bucket follows the range
    (1 s up to 5 minutes, then minutes, hours, days; BucketSeconds), from the per-second
    counters kept while writing (captures written before them have none: Processes is
    empty). Packets of unknown direction count in Packets/Bytes only.

    - capture_id: the capture
    - start_dtg: start, UTC FILETIME; 0 = the first packet
    - end_dtg: end, UTC FILETIME; 0 = the last packet
    - relative_time: the last interval up to now, e.g. 30s, 15m, 24h, 7d (see Time ranges)
    """
    rel = relative_range(relative_time, start_dtg, end_dtg)
    if start_dtg < 0 or end_dtg < 0 or (start_dtg and end_dtg and end_dtg < start_dtg):
        raise Malformed("start_dtg/end_dtg: need 0 <= start_dtg <= end_dtg (FILETIME; "
                        "0 = open)")
    db = captures(ctx).db(capture_id)
    if rel is not None:
        win = window(db, *rel)
    else:
        win = window(db, to_ns_clamped(start_dtg) if start_dtg else None,
                     to_ns_clamped(end_dtg) if end_dtg else None)
    out = {"Version": 1, "CaptureId": capture_id, **win.fields(), "Processes": []}
    if win.lo is None:
        return out
    rows = db.read("SELECT s.process_id, s.sec, s.direction, s.packets, s.bytes FROM proc_sec s "
                   "WHERE s.sec BETWEEN ? AND ?", win.bounds(SECOND))
    procs: dict = {}
    for process_id, sec, direction, packets, nbytes in rows:
        p = procs.setdefault(process_id, {"tot": [0, 0, 0, 0], "series": {}})
        side = 0 if direction == Direction.IN else 2 if direction == Direction.OUT else None
        t = sec * SECOND // win.size * win.size
        acc = p["series"].setdefault(t, [0, 0, 0, 0, 0, 0])
        acc[4] += packets
        acc[5] += nbytes
        p["tot"][0] += packets
        p["tot"][1] += nbytes
        if side is not None:
            acc[side] += packets
            acc[side + 1] += nbytes
            p["tot"][2 + side // 2] += nbytes
    names = {r[0]: r for r in db.read("SELECT process_id, pid, name, path FROM processes")}
    for process_id, p in procs.items():
        series = [{"Time": from_ns(t), "PacketsIn": v[0], "BytesIn": v[1], "PacketsOut": v[2],
                   "BytesOut": v[3], "Packets": v[4], "Bytes": v[5]}
                  for t, v in sorted(p["series"].items())]
        r = names.get(process_id)
        out["Processes"].append({
            "ProcessId": process_id, "Pid": r[1] if r else 0, "Name": (r[2] if r else "") or "",
            "Path": (r[3] if r else "") or "", "Packets": p["tot"][0], "Bytes": p["tot"][1],
            "PacketsIn": sum(s["PacketsIn"] for s in series), "BytesIn": p["tot"][2],
            "PacketsOut": sum(s["PacketsOut"] for s in series), "BytesOut": p["tot"][3],
            "Series": series})
    out["Processes"].sort(key=lambda x: (-x["Bytes"], x["ProcessId"]))
    return out
