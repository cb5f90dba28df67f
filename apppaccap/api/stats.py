"""stats_* — answered from aggregates kept while writing, never a scan of all packets."""

from __future__ import annotations

import ipaddress

from apppaccap.api.captures import captures
from apppaccap.api.registry import endpoint
from apppaccap.errors import Malformed
from apppaccap.filetime import from_ns
from apppaccap.filetime import now_ns
from apppaccap.filetime import to_ns_clamped
from apppaccap.store.capturedb import AGG_ALL
from apppaccap.store.capturedb import AGG_IP
from apppaccap.store.capturedb import AGG_PORT
from apppaccap.store.stats import clear as clear_stats
from apppaccap.wire import CaptureType
from apppaccap.wire import DataType

MINUTE = 60_000_000_000
HOUR, DAY = 60 * MINUTE, 1440 * MINUTE
TOP = 10


def bucket_for(span_ns: int) -> int:
    """Minutes up to ~2 hours, hours up to ~2 days, days beyond (docs/ARCHITECTURE.md,
    Decisions: the wire envelope and paging)."""
    if span_ns <= 2 * HOUR:
        return MINUTE
    if span_ns <= 2 * DAY:
        return HOUR
    return DAY


def _series(rows, start: int | None, end: int | None) -> list:
    """rows of (minute, packets, bytes) → [{Time, Packets, Bytes}] in the chosen bucket."""
    if not rows:
        return []
    lo = start if start is not None else rows[0][0] * MINUTE
    hi = end if end is not None else (rows[-1][0] + 1) * MINUTE
    size = bucket_for(max(hi - lo, MINUTE))
    buckets: dict[int, list] = {}
    for minute, p, b in rows:
        t = minute * MINUTE // size * size
        acc = buckets.setdefault(t, [0, 0])
        acc[0] += p
        acc[1] += b
    return [{"Time": from_ns(t), "Packets": p, "Bytes": b} for t, (p, b) in sorted(buckets.items())]


def _query(db, kind: int, key: str, start=None, end=None) -> dict:
    """STATSCAPTUREQUERY from a capture database's `agg` table."""
    rng, params = "", [kind, key]
    if start is not None:
        rng += " AND minute >= ?"
        params.append(start // MINUTE)
    if end is not None:
        rng += " AND minute <= ?"
        params.append(end // MINUTE)
    base = f"FROM agg WHERE kind = ? AND key = ?{rng}"
    per_min = db.read(f"SELECT minute, sum(packets), sum(bytes) {base} GROUP BY minute "
                      "ORDER BY minute", params)
    protos = db.read(f"SELECT proto, sum(packets), sum(bytes) {base} GROUP BY proto "
                     "ORDER BY 3 DESC", params)
    packets = sum(r[1] for r in per_min)
    nbytes = sum(r[2] for r in per_min)
    out = {"Version": 1, "Packets": packets, "Bytes": nbytes,
           "FirstTime": from_ns(per_min[0][0] * MINUTE) if per_min else 0,
           "LastTime": from_ns((per_min[-1][0] + 1) * MINUTE) if per_min else 0,
           "Protocols": [{"Protocol": r[0], "Packets": r[1], "Bytes": r[2]} for r in protos],
           "Series": _series([tuple(r) for r in per_min], start, end)}
    minute_rng = rng.replace("minute", "a.minute")
    for name, k in (("TopIps", AGG_IP), ("TopPorts", AGG_PORT)):
        if kind == AGG_ALL:
            top = db.read(f"SELECT key, sum(packets), sum(bytes) FROM agg a WHERE kind = ?"
                          f"{minute_rng} GROUP BY key ORDER BY 3 DESC LIMIT {TOP}",
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
    rows = db.read("SELECT minute, sum(packets), sum(bytes) FROM agg WHERE kind = 0 AND "
                   "proto = ? GROUP BY minute ORDER BY minute", (protocol,))
    out["Packets"] = sum(r[1] for r in rows)
    out["Bytes"] = sum(r[2] for r in rows)
    out["Protocols"] = [p for p in out["Protocols"] if p["Protocol"] == protocol]
    out["Series"] = _series([tuple(r) for r in rows], None, None)
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
def stats_by_date(ctx, *, capture_id: int, start_dtg: int, end_dtg: int = 0) -> dict:
    """Statistics of a capture within a time range; the series' bucket follows the range.

    - capture_id: the capture
    - start_dtg: start, UTC FILETIME
    - end_dtg: end, UTC FILETIME; 0 = now
    """
    start = to_ns_clamped(start_dtg)
    end = to_ns_clamped(end_dtg) if end_dtg else now_ns()
    if start_dtg <= 0 or end < start or 0 < end_dtg < start_dtg:  # FILETIMEs: unclamped
        raise Malformed("start_dtg/end_dtg: need 0 < start_dtg <= end_dtg (FILETIME)")
    db = captures(ctx).db(capture_id)
    return _with_connections(db, _query(db, AGG_ALL, "", start, end))


@endpoint(DataType.JSON)
def stats_totals(ctx) -> dict:
    """System-wide statistics since the last stats_reset (all live captures together)."""
    cat = ctx.catalog
    per_min = cat.read("SELECT minute, sum(packets), sum(bytes) FROM stats_minute GROUP BY minute "
                       "ORDER BY minute")
    protos = cat.read("SELECT proto, sum(packets), sum(bytes) FROM stats_minute GROUP BY proto "
                      "ORDER BY 3 DESC")
    top = {kind: cat.read(f"SELECT key, packets, bytes FROM stats_key WHERE kind = ? "
                          f"ORDER BY bytes DESC LIMIT {TOP}", (kind,)) for kind in ("ip", "port")}
    return {
        "Version": 1, "Packets": sum(r[1] for r in per_min), "Bytes": sum(r[2] for r in per_min),
        "Connections": cat.one("SELECT coalesce(sum(connection_count), 0) FROM captures "
                               "WHERE type != ?", (CaptureType.FILE,))[0],
        "FirstTime": from_ns(per_min[0][0] * MINUTE) if per_min else 0,
        "LastTime": from_ns((per_min[-1][0] + 1) * MINUTE) if per_min else 0,
        "Protocols": [{"Protocol": r[0], "Packets": r[1], "Bytes": r[2]} for r in protos],
        "TopIps": [{"Ip": r[0], "Packets": r[1], "Bytes": r[2]} for r in top["ip"]],
        "TopPorts": [{"Port": int(r[0]), "Packets": r[1], "Bytes": r[2]} for r in top["port"]],
        "Series": _series([tuple(r) for r in per_min], None, None),
    }


@endpoint(DataType.INT)
def stats_reset(ctx) -> int:
    """Reset the system-wide statistic counters (capture statistics are kept)."""
    ctx.catalog.write(clear_stats)
    return 0
