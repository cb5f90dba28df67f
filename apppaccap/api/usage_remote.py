"""usage_by_remote — usage accounting per remote host: who this host's programs talked to,
how much, when, and which programs (usage/recorder.py; hostnames from the DNS answers the
recorder saw, usage/dnsnames.py; countries when geoip_db is set, capture/geo.py)."""

from __future__ import annotations

from typing import Annotated

from apppaccap.api.registry import ID
from apppaccap.api.registry import Bounds
from apppaccap.api.registry import endpoint
from apppaccap.api.usagedata import IN
from apppaccap.api.usagedata import OUT
from apppaccap.api.usagedata import add_label
from apppaccap.api.usagedata import endpoint_labels
from apppaccap.api.usagedata import hostnames
from apppaccap.api.usagedata import label_fields
from apppaccap.api.usagedata import labels_list
from apppaccap.api.usagedata import names
from apppaccap.api.usagedata import program
from apppaccap.api.usagedata import recorder
from apppaccap.api.usagedata import remote_rows
from apppaccap.api.usagedata import usage_range
from apppaccap.capture.geo import geo_lookup
from apppaccap.filetime import from_ns
from apppaccap.wire import DataType

MAX_PORTS = 50  # a server's clients come from many ephemeral ports: the busiest ones


def _countries(ctx, ips) -> dict:
    """ip → country, only when geolocation is configured (setting geoip_db)."""
    if not ctx.settings.get("geoip_db") or getattr(ctx, "captures", None) is None:
        return {}
    reader = ctx.captures.ip_resolver.geo
    if reader is None:
        return {}
    out = {}
    for ip in ips:
        facts = geo_lookup(reader, ip)
        if facts and facts.get("country"):
            out[ip] = facts["country"]
    return out


@endpoint(DataType.JSON)
def usage_by_remote(ctx, *, start_dtg: int = 0, end_dtg: int = 0, relative_time: str = "",
                    process_id: Annotated[int, ID] = 0,
                    limit: Annotated[int, Bounds(1, 1000, "1 to 1000 remote hosts")] = 100
                    ) -> dict:
    """Remote hosts this host's programs exchanged traffic with over a range, most bytes
    first: RemoteIp, Hostname (from the DNS answers seen; "" if none), Country ("" unless
    the setting geoip_db names a GeoIP database), Ports (Port, Protocol; the busiest 50),
    BytesIn/BytesOut/PacketsIn/PacketsOut (In: to this host's program), FirstSeen and
    LastSeen (to the second within the last 10 minutes, else to the minute), the
    Programs that talked to it (ProcessId, Pid, Name, Path; most bytes first) and nDPI's
    application labels of that traffic (docs/LABELS.md): Labels (AppProtocol, App,
    Category, BytesIn, BytesOut; most bytes first; unlabelled traffic is in none) and the
    first of them as the host's AppProtocol, App and Category ("" when none).

    - start_dtg: start, UTC FILETIME; 0 = an hour before end_dtg
    - end_dtg: end, UTC FILETIME; 0 = now
    - relative_time: the last interval up to now, e.g. 30s, 15m, 24h, 7d (see Time ranges)
    - process_id: only this program's traffic (a ProcessId); 0 = every program
    - limit: at most this many remote hosts (1..1000)
    """
    start, end = usage_range(start_dtg, end_dtg, relative_time)
    rec = recorder(ctx)
    label_of = endpoint_labels(ctx, rec, start, end)
    hosts: dict = {}
    for ip, port, proto, pid, d, t0, t1, p, b in remote_rows(ctx, rec, start, end, process_id):
        h = hosts.get(ip)
        if h is None:
            h = hosts[ip] = {"bytes": [0, 0], "packets": [0, 0], "first": t0, "last": t1,
                             "ports": {}, "programs": {}, "labels": {}}
        h["bytes"][d] += b
        h["packets"][d] += p
        h["first"] = min(h["first"], t0)
        h["last"] = max(h["last"], t1)
        h["ports"][(port, proto)] = h["ports"].get((port, proto), 0) + b
        h["programs"][pid] = h["programs"].get(pid, 0) + b
        add_label(h["labels"], label_of((pid, ip, port, proto)), d, b)
    top = sorted(hosts.items(), key=lambda kv: -(kv[1]["bytes"][IN] + kv[1]["bytes"][OUT]))
    top = top[:limit]
    ips = [ip for ip, _h in top]
    known = names(ctx, rec, {pid for _ip, h in top for pid in h["programs"]})
    hostname = hostnames(ctx, rec, ips)
    country = _countries(ctx, ips)
    remotes = []
    for ip, h in top:
        ports = sorted(h["ports"].items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_PORTS]
        progs = sorted(h["programs"].items(), key=lambda kv: -kv[1])
        labels = labels_list(h["labels"])
        remotes.append({
            "Version": 1, "RemoteIp": ip, "Hostname": hostname.get(ip, ""),
            "Country": country.get(ip, ""),
            "Ports": [{"Port": port, "Protocol": proto} for (port, proto), _b in ports],
            "BytesIn": h["bytes"][IN], "BytesOut": h["bytes"][OUT],
            "PacketsIn": h["packets"][IN], "PacketsOut": h["packets"][OUT],
            "FirstSeen": from_ns(max(h["first"], start)), "LastSeen": from_ns(min(h["last"], end)),
            "Programs": [{k: v for k, v in program(pid, known).items() if k != "Version"}
                         for pid, _b in progs],
            **label_fields(labels and (labels[0]["AppProtocol"], labels[0]["App"],
                                       labels[0]["Category"])),
            "Labels": labels,
        })
    return {"Version": 1, "Start": from_ns(start), "End": from_ns(end), "Remotes": remotes}
