"""usage_now, usage_by_process — usage accounting (usage/recorder.py): bytes per program,
from the recorder's per-second ring (last 10 minutes) and the catalog's per-minute rows.
usage_by_remote is in api/usage_remote.py; what they share in api/usagedata.py."""

from __future__ import annotations

from typing import Annotated

from apppaccap.api.registry import Bounds
from apppaccap.api.registry import endpoint
from apppaccap.api.series import bucket_for
from apppaccap.api.usagedata import IN
from apppaccap.api.usagedata import MINUTE
from apppaccap.api.usagedata import OUT
from apppaccap.api.usagedata import SECOND
from apppaccap.api.usagedata import add_label
from apppaccap.api.usagedata import check_group
from apppaccap.api.usagedata import endpoint_labels
from apppaccap.api.usagedata import fold
from apppaccap.api.usagedata import labels_list
from apppaccap.api.usagedata import names
from apppaccap.api.usagedata import program
from apppaccap.api.usagedata import recorder
from apppaccap.api.usagedata import remote_rows
from apppaccap.api.usagedata import ring_covers
from apppaccap.api.usagedata import ring_rows
from apppaccap.api.usagedata import usage_range
from apppaccap.filetime import from_ns
from apppaccap.filetime import now_ns
from apppaccap.store import usage as usage_table
from apppaccap.wire import DataType

SERIES_SECONDS = 60
TOP_REMOTES = 5


def _total_rate(item: dict) -> float:
    return item["BytesInPerSec"] + item["BytesOutPerSec"]


def _total(item: dict) -> int:
    return item["BytesIn"] + item["BytesOut"]


@endpoint(DataType.JSON)
def usage_now(ctx, *, seconds: Annotated[int, Bounds(1, 60, "a rate window is 1 to 60 "
                                                             "seconds")] = 5,
              group: str = "path") -> dict:
    """Network use per program right now, from the usage recorder (setting usage_enabled;
    Enabled is false when it is off, and Programs then empty): bytes/s in and out over the
    last `seconds`, Connections (flows that carried packets in that window), the top remote
    endpoints over the last 60 s (TopRemotes: Ip, Hostname, Port, Protocol, BytesIn,
    BytesOut), and those 60 s as a per-second series. Processes lists the ProcessIds an
    entry folds. Dropped: packets libpcap dropped on the recorder's adapters since it
    started.

    - seconds: the window of the rates, in seconds (1..60)
    - group: "path" (one entry per executable path, the default) or "process" (per ProcessId)
    """
    group = check_group(group)
    rec = recorder(ctx)
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
        for (pid, rip, rport, proto, d), (_p, b) in by_key.items():
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
    known = names(ctx, rec, list(progs))
    rows = []
    for pid, acc in progs.items():
        item = program(pid, known)
        top = sorted(acc["remotes"].items(), key=lambda kv: -(kv[1][0] + kv[1][1]))
        item.update({
            "BytesInPerSec": acc["rate"][IN] / seconds,
            "BytesOutPerSec": acc["rate"][OUT] / seconds,
            "Connections": len(acc["flows"]),
            "TopRemotes": [{"Ip": ip, "Hostname": rec.names.get(ip), "Port": port,
                            "Protocol": proto, "BytesIn": b[IN], "BytesOut": b[OUT]}
                           for (ip, port, proto), b in top[:TOP_REMOTES]],
            "Series": [{"Time": from_ns(s * SECOND),
                        "BytesIn": acc["series"].get(s, (0, 0))[IN],
                        "BytesOut": acc["series"].get(s, (0, 0))[OUT]}
                       for s in range(last - SERIES_SECONDS + 1, last + 1)],
        })
        rows.append(item)
    out["Programs"] = fold(rows, group, _total_rate, TOP_REMOTES)
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


@endpoint(DataType.JSON)
def usage_by_process(ctx, *, start_dtg: int = 0, end_dtg: int = 0,
                     relative_time: str = "", group: str = "path") -> dict:
    """Bytes in and out per program over a range, with a series per program whose bucket
    follows the range: 1 second up to 5 minutes (within the last 10 minutes), 1 minute up
    to 5 hours, 1 hour up to 5 days, then days (BucketSeconds). Processes lists the
    ProcessIds an entry folds. Labels: nDPI's application labels of the program's traffic
    (docs/LABELS.md; AppProtocol, App, Category, BytesIn, BytesOut; most bytes first;
    unlabelled traffic is in none).

    - start_dtg: start, UTC FILETIME; 0 = an hour before end_dtg
    - end_dtg: end, UTC FILETIME; 0 = now
    - relative_time: the last interval up to now, e.g. 30s, 15m, 24h, 7d (see Time ranges)
    - group: "path" (one entry per executable path, the default) or "process" (per ProcessId)
    """
    group = check_group(group)
    start, end = usage_range(start_dtg, end_dtg, relative_time)
    rec = recorder(ctx)
    bucket = bucket_for(end - start)
    if bucket == SECOND and not ring_covers(rec, start):
        bucket = MINUTE  # the ring does not hold the whole range: minutes it is
    if bucket == SECOND:
        rows = [(t, key[0], key[4], p, b) for t, key, p, b in ring_rows(rec, start, end)]
    else:
        rows = _from_minutes(ctx, rec, start, end, bucket)
    progs: dict = {}
    for t, pid, d, p, b in rows:
        acc = progs.setdefault(pid, {"bytes": [0, 0], "packets": [0, 0], "series": {}})
        acc["bytes"][d] += b
        acc["packets"][d] += p
        s = acc["series"].setdefault(t // bucket * bucket, [0, 0])
        s[d] += b
    known = names(ctx, rec, list(progs))
    apps = _labels(ctx, rec, start, end, progs)
    items = []
    for pid, acc in progs.items():
        item = program(pid, known)
        item.update({"Labels": labels_list(apps.get(pid, {})),
                     "BytesIn": acc["bytes"][IN], "BytesOut": acc["bytes"][OUT],
                     "PacketsIn": acc["packets"][IN], "PacketsOut": acc["packets"][OUT],
                     "Series": [{"Time": from_ns(t), "BytesIn": v[IN], "BytesOut": v[OUT]}
                                for t, v in sorted(acc["series"].items())]})
        items.append(item)
    return {"Version": 1, "Start": from_ns(start), "End": from_ns(end),
            "BucketSeconds": bucket // SECOND, "Programs": fold(items, group, _total)}


def _labels(ctx, rec, start: int, end: int, progs) -> dict:
    """process_id → {(AppProtocol, App, Category): [bytes in, bytes out]} over the range."""
    if not progs:
        return {}
    label_of = endpoint_labels(ctx, rec, start, end)
    out: dict = {}
    for ip, port, proto, pid, d, _t0, _t1, _p, b in remote_rows(ctx, rec, start, end, 0):
        if pid in progs:
            add_label(out.setdefault(pid, {}), label_of((pid, ip, port, proto)), d, b)
    return out
