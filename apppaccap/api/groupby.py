"""stats_group_by — top-N rows of a capture's connections or of usage accounting, grouped by
program, address, port, protocol, country, host name or connection (analytics/groupby.py);
never a scan of all packets."""

from __future__ import annotations

from contextlib import closing
from typing import Annotated

from apppaccap.analytics.flowfilter import flow_predicate
from apppaccap.analytics.groupby import SECOND
from apppaccap.analytics.groupby import Budget
from apppaccap.analytics.groupby import capture_flows
from apppaccap.analytics.groupby import check_group
from apppaccap.analytics.groupby import check_metric
from apppaccap.analytics.groupby import group
from apppaccap.analytics.groupby import usage_flows
from apppaccap.api.captures import captures
from apppaccap.api.registry import Bounds
from apppaccap.api.registry import endpoint
from apppaccap.api.series import bucket_for
from apppaccap.api.series import window
from apppaccap.api.timerange import open_range
from apppaccap.api.usagedata import usage_range
from apppaccap.errors import Malformed
from apppaccap.filetime import from_ns
from apppaccap.wire import DataType
from apppaccap.wire import Direction

MAX_SERIES_CONNS = 50_000  # a row made of more connections than this gets no series


def _usage_recorder(ctx):
    service = getattr(ctx, "usage", None)
    return service.recorder if service is not None else None


@endpoint(DataType.JSON)
def stats_group_by(ctx, *, group_by: str, capture_id: int = 0, metric: str = "bytes",
                   direction: str = "both",
                   top: Annotated[int, Bounds(1, 1000, "top is 1 to 1000 rows")] = 10,
                   filter: str = "", series: bool = False, start_dtg: int = 0,
                   end_dtg: int = 0, relative_time: str = "") -> dict:
    """Top-N table of traffic grouped by one key, with the rest in Other and everything in
    Total (rows + Other = Total, counter by counter). Total is the traffic of TCP and UDP
    flows: ICMP and non-IP frames have no connection rows (stats_by_id counts every packet).

    Keys: process (ProcessId), program (the executable's path), ip (the local end's address),
    remote_ip, port (the remote end's), protocol, country and hostname (of the remote end, as
    IP resolution found them), conn (one connection), and nDPI's labels (docs/LABELS.md)
    of a capture's connections or usage accounting's program × remote endpoints: app (the
    application, else the protocol: Google for TLS.Google, DNS for plain DNS), app_proto
    and category ("" = unlabelled).
    Answered from counters kept while writing, never by scanning packets: a capture's
    connection rows (each connection counted whole when it was active in the range: a row
    keeps its counters, not when each packet passed), or with capture_id 0 usage
    accounting's per-program counters (per second for the last 10 minutes, else per
    minute), where Connections counts distinct process × remote endpoint × protocol (usage
    accounting keeps no connection ids) and ip and conn are not known. The filter takes
    ip.addr, ipv6.addr, tcp.port, udp.port, tcp, udp, icmp, ip.proto, proc.name, proc.path,
    proc.pid, proc.id and the labels app.proto, app.name, app.category, tested per
    connection; other fields are MALFORMED. Rows are {Key, Name, Packets, Bytes,
    Connections} (+ Series), ordered by `metric`; a flow counts in a direction's
    Connections when it carried packets that way. Series (series=1) has one point per
    bucket, {Time, Packets, Bytes}, the bucket following the range as in every stats
    answer (BucketSeconds); a capture's series come from the packet rows of the row's
    connections (times and lengths, through the connection index), usage series from its
    counters.
    Limits: a filter makes at most 64 comparisons (`ip.addr == a or ip.addr == b` is two;
    a set, `ip.addr in {a b c}`, is one however long), else MALFORMED_REQUEST. One answer
    reads at most 1,250,000 connection or usage rows (fewer under a filter: each
    comparison on a row costs a quarter of reading it) within 10 seconds; a question that
    covers more stops with BUSY ("this question covers too many connections ...; narrow
    the time range ..."): ask a shorter range, a narrower filter or a smaller capture.
    - group_by: process program ip remote_ip port protocol country hostname conn app
      app_proto category (see above)
    - capture_id: one capture; 0 = usage accounting (every program, all the time)
    - metric: bytes, packets or connections: what orders the rows
    - direction: in, out or both
    - top: rows to return, 1..1000 (default 10)
    - filter: display filter, the fields a connection row answers (ip.addr, tcp.port, proc.name…)
    - series: 1 = a series per row
    - start_dtg: start, UTC FILETIME; 0 = first packet (usage: an hour before end_dtg)
    - end_dtg: end, UTC FILETIME; 0 = the last packet (usage: now)
    - relative_time: the last interval up to now, e.g. 30s, 15m, 24h, 7d (see Time ranges)
    """
    if capture_id < 0:
        raise Malformed("capture_id: 0 (usage accounting) or a capture's id")
    # the range first: a bad relative_time is named whatever else is wrong
    start, end = (open_range if capture_id else usage_range)(start_dtg, end_dtg,
                                                                 relative_time)
    source = "capture" if capture_id else "usage"
    check_group(group_by, source)
    check_metric(metric, direction)
    pred = flow_predicate(filter)
    if capture_id:
        db = captures(ctx).db(capture_id)
        budget = Budget("connections", "the time range (start_dtg, end_dtg, relative_time) "
                        "or the filter, or ask a smaller capture")
        with closing(capture_flows(db, start, end, budget)) as flows:
            out = group(flows, group_by, metric, direction, top, pred, budget,
                        "conn_ids" if series else "")
        win = window(db, start, end)
        out.update(CaptureId=capture_id, **win.fields())
        members = out.pop("members")
        if series:
            for row in out["Rows"]:
                row["Series"] = _capture_series(db, members[row["Key"]], win, direction)
        return out
    rec = _usage_recorder(ctx)
    budget = Budget("usage rows", "the time range (start_dtg, end_dtg, relative_time) or "
                    "the filter")
    flows, unit = usage_flows(ctx.catalog, rec, start, end, budget, times=series)
    out = group(flows, group_by, metric, direction, top, pred, budget,
                "flows" if series else "")
    size = max(unit, bucket_for(end - start))
    out.update(CaptureId=0, FirstTime=from_ns(start), LastTime=from_ns(end),
               BucketSeconds=size // SECOND)
    members = out.pop("members")
    if series:
        for row in out["Rows"]:
            row["Series"] = _usage_series(members[row["Key"]], size, direction)
    return out


def _capture_series(db, ids, win, direction: str) -> list:
    if win.lo is None or len(ids) > MAX_SERIES_CONNS:
        return []
    cond = "" if direction == "both" else \
        f" AND direction = {int(Direction.IN if direction == 'in' else Direction.OUT)}"
    acc: dict = {}
    for i in range(0, len(ids), 500):
        part = ids[i:i + 500]
        for t, p, b in db.read(
                f"SELECT (ts / ?) * ?, count(*), sum(len) FROM packets WHERE conn_id IN "
                f"({','.join('?' * len(part))}) AND ts BETWEEN ? AND ?{cond} GROUP BY 1",
                [win.size, win.size, *part, win.lo, win.hi]):
            v = acc.setdefault(t, [0, 0])
            v[0] += p
            v[1] += b
    return [{"Time": from_ns(t), "Packets": v[0], "Bytes": v[1]} for t, v in sorted(acc.items())]


def _usage_series(flows, size: int, direction: str) -> list:
    acc: dict = {}
    for f in flows:
        for t, d, p, b in f.times:
            if direction != "both" and d != (0 if direction == "in" else 1):
                continue
            v = acc.setdefault(t // size * size, [0, 0])
            v[0] += p
            v[1] += b
    return [{"Time": from_ns(t), "Packets": v[0], "Bytes": v[1]} for t, v in sorted(acc.items())]


