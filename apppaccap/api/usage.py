"""usage_now, usage_by_process — usage accounting (usage/recorder.py): bytes per program,
from the recorder's per-second ring (last 10 minutes) and the catalog's per-minute rows."""

from __future__ import annotations

import re
from typing import Annotated

from apppaccap.api.registry import Bounds
from apppaccap.api.registry import endpoint
from apppaccap.errors import Malformed
from apppaccap.filetime import from_ns
from apppaccap.filetime import now_ns
from apppaccap.filetime import to_ns_clamped
from apppaccap.store import usage as usage_table
from apppaccap.wire import DataType

SECOND = 1_000_000_000
MINUTE, HOUR, DAY = 60 * SECOND, 3600 * SECOND, 86400 * SECOND
SERIES_SECONDS = 60
TOP_REMOTES = 5
IN, OUT = 0, 1
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"(\d{1,9})\s*([smhdw])", re.I)


def _recorder(ctx):
    service = getattr(ctx, "usage", None)
    return service.recorder if service is not None else None


def _names(ctx, rec, ids) -> dict:
    """process_id → (pid, name, path); 0 is traffic nobody owned."""
    known = dict(rec.programs) if rec is not None else {}
    missing = [i for i in ids if i and i not in known]
    known.update(usage_table.processes(ctx.catalog, missing))
    known[0] = (0, "<unknown>", "")
    return known


def _program(pid_id: int, names: dict) -> dict:
    pid, name, path = names.get(pid_id, (0, "", ""))
    return {"Version": 1, "ProcessId": pid_id, "Pid": pid, "Name": name, "Path": path}


@endpoint(DataType.JSON)
def usage_now(ctx, *, seconds: Annotated[int, Bounds(1, 60, "a rate window is 1 to 60 "
                                                             "seconds")] = 5) -> dict:
    """Network use per program right now, from the usage recorder (setting usage_enabled;
    Enabled is false when it is off, and Programs then empty): bytes/s in and out over the
    last `seconds`, Connections (flows that carried packets in that window), the top remote
    endpoints over the last 60 s, and those 60 s as a per-second series. Dropped: packets
    libpcap dropped on the recorder's adapters since it started.

    - seconds: the window of the rates, in seconds (1..60)
    """
    rec = _recorder(ctx)
    out = {"Version": 1, "Enabled": rec is not None, "Time": from_ns(now_ns()),
           "Seconds": seconds, "Dropped": rec.dropped if rec is not None else 0,
           "Programs": []}
    if rec is None or not rec.ring:
        return out
    last = rec.ring[-1][0]
    entries = rec.seconds(last - SERIES_SECONDS + 1, last)
    progs: dict = {}
    for second, by_key, flows in entries:
        recent = second > last - seconds
        for (pid, rip, rport, proto, d), (p, b) in by_key.items():
            acc = progs.get(pid)
            if acc is None:
                acc = progs[pid] = {"series": {}, "rate": [0, 0], "remotes": {},
                                    "flows": set()}
            s = acc["series"].setdefault(second, [0, 0])
            s[d] += b
            if recent:
                acc["rate"][d] += b
            r = acc["remotes"].setdefault((rip, rport, proto), [0, 0])
            r[d] += b
        if recent:
            for pid, keys in flows.items():
                if pid in progs:
                    progs[pid]["flows"] |= keys
    names = _names(ctx, rec, list(progs))
    rows = []
    for pid, acc in progs.items():
        item = _program(pid, names)
        top = sorted(acc["remotes"].items(), key=lambda kv: -(kv[1][0] + kv[1][1]))
        item.update({
            "BytesInPerSec": acc["rate"][IN] / seconds,
            "BytesOutPerSec": acc["rate"][OUT] / seconds,
            "Connections": len(acc["flows"]),
            "TopRemotes": [{"Ip": ip, "Port": port, "Protocol": proto, "BytesIn": b[IN],
                            "BytesOut": b[OUT]} for (ip, port, proto), b in top[:TOP_REMOTES]],
            "Series": [{"Time": from_ns(s * SECOND),
                        "BytesIn": acc["series"].get(s, (0, 0))[IN],
                        "BytesOut": acc["series"].get(s, (0, 0))[OUT]}
                       for s in range(last - SERIES_SECONDS + 1, last + 1)],
        })
        rows.append(item)
    rows.sort(key=lambda r: -(r["BytesInPerSec"] + r["BytesOutPerSec"]))
    out["Programs"] = rows
    return out


def _range(start_dtg: int, end_dtg: int, relative_time: str) -> tuple[int, int]:
    """(start_ns, end_ns); the last hour when nothing is given."""
    now = now_ns()
    text = relative_time.strip()
    if text:
        m = _RELATIVE.fullmatch(text)
        if m is None:
            raise Malformed(f"relative_time: expected a number and a unit (s, m, h, d, w) "
                            f"such as 30s, 15m, 24h or 7d, got {relative_time[:40]!r}")
        if start_dtg or end_dtg:
            raise Malformed("relative_time: cannot be combined with start_dtg/end_dtg")
        return max(now - int(m[1]) * _UNITS[m[2].lower()] * SECOND, 0), now
    end = to_ns_clamped(end_dtg) if end_dtg else now
    start = to_ns_clamped(start_dtg) if start_dtg else end - HOUR
    if end < start:
        raise Malformed("end_dtg: must not be before start_dtg")
    return start, end


# public for api/groupby.py until the api layer's shared relative_time parser lands
time_range = _range


def bucket_for(span_ns: int) -> int:
    """1 s up to 5 minutes, 1 min up to 6 hours, 1 h up to 7 days, then days."""
    if span_ns <= 5 * MINUTE:
        return SECOND
    if span_ns <= 6 * HOUR:
        return MINUTE
    if span_ns <= 7 * DAY:
        return HOUR
    return DAY


def _from_ring(rec, start: int, end: int) -> list:
    """(bucket_ns, process_id, dir, packets, bytes) per second from the ring."""
    out = []
    for second, by_key, _flows in rec.seconds(start // SECOND, end // SECOND):
        for (pid, _ip, _port, _proto, d), (p, b) in by_key.items():
            out.append((second * SECOND, pid, d, p, b))
    return out


def _from_minutes(ctx, rec, start: int, end: int, bucket: int) -> list:
    """(bucket_ns, process_id, dir, packets, bytes) from the minute rows (and the minute
    the recorder has not written yet)."""
    first, last = start // MINUTE, end // MINUTE
    per = bucket // MINUTE
    out = [(m * MINUTE, pid, d, p, b) for m, pid, d, p, b in
           usage_table.per_minute(ctx.catalog, first, last, per)]
    if rec is not None:
        for (m, pid, _ip, _port, _proto, d), (p, b) in rec.unflushed().items():
            if first <= m <= last:
                out.append((m // per * per * MINUTE, pid, d, p, b))
    return out


def _ring_covers(rec, start: int) -> bool:
    """Whether the recorder's ring holds everything counted since `start`: it reaches back
    that far, or it has not wrapped yet and nothing was written before it began (another
    run of the service)."""
    if rec is None or not rec.ring:
        return False
    first = rec.ring[0][0]
    if first * SECOND <= start:
        return True
    return len(rec.ring) < rec.ring.maxlen and rec.before < start // MINUTE


@endpoint(DataType.JSON)
def usage_by_process(ctx, *, start_dtg: int = 0, end_dtg: int = 0,
                     relative_time: str = "") -> dict:
    """Bytes in and out per program over a range, with a series per program whose bucket
    follows the range: 1 second up to 5 minutes (within the last 10 minutes), 1 minute up
    to 6 hours, 1 hour up to 7 days, then days.

    - start_dtg: start, UTC FILETIME; 0 = an hour before end_dtg
    - end_dtg: end, UTC FILETIME; 0 = now
    - relative_time: only the last interval, e.g. 30s, 15m, 24h, 7d (units s m h d w); not with start_dtg/end_dtg
    """
    start, end = _range(start_dtg, end_dtg, relative_time)
    rec = _recorder(ctx)
    bucket = bucket_for(end - start)
    if bucket == SECOND and not _ring_covers(rec, start):
        bucket = MINUTE  # the ring does not hold the whole range: minutes it is
    if bucket == SECOND:
        rows = _from_ring(rec, start, end)
    else:
        rows = _from_minutes(ctx, rec, start, end, bucket)
    progs: dict = {}
    for t, pid, d, p, b in rows:
        acc = progs.setdefault(pid, {"bytes": [0, 0], "packets": [0, 0], "series": {}})
        acc["bytes"][d] += b
        acc["packets"][d] += p
        s = acc["series"].setdefault(t // bucket * bucket, [0, 0])
        s[d] += b
    names = _names(ctx, rec, list(progs))
    items = []
    for pid, acc in progs.items():
        item = _program(pid, names)
        item.update({"BytesIn": acc["bytes"][IN], "BytesOut": acc["bytes"][OUT],
                     "PacketsIn": acc["packets"][IN], "PacketsOut": acc["packets"][OUT],
                     "Series": [{"Time": from_ns(t), "BytesIn": v[IN], "BytesOut": v[OUT]}
                                for t, v in sorted(acc["series"].items())]})
        items.append(item)
    items.sort(key=lambda r: -(r["BytesIn"] + r["BytesOut"]))
    return {"Version": 1, "Start": from_ns(start), "End": from_ns(end),
            "BucketSeconds": bucket // SECOND, "Programs": items}
