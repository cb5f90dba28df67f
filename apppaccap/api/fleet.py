"""fleet_hosts, fleet_search, fleet_group_by: the fleet's questions, answered by ClickHouse
(docs/FLEET.md). Any server whose fleet_url names the fleet's ClickHouse can ask them."""

from __future__ import annotations

import os
from typing import Annotated

from apppaccap.api.registry import Bounds
from apppaccap.api.registry import endpoint
from apppaccap.api.timerange import open_range
from apppaccap.errors import IOFailure
from apppaccap.errors import Malformed
from apppaccap.filetime import from_ns
from apppaccap.fleet import query
from apppaccap.fleet.fetch import fetch_packets
from apppaccap.ingest.export import new_target
from apppaccap.wire import DataType


def _ask(ctx, fn, *args):
    fleet = query.Fleet(ctx.settings)
    try:
        return fn(fleet, *args)
    except (Malformed, IOFailure):
        raise
    except Exception as exc:  # clickhouse-driver's errors: network, server, timeouts
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise IOFailure(f"fleet: ClickHouse did not answer ({type(exc).__name__}"
                        f"{': ' + first if first else ''})") from None


def _hosts(text: str) -> list:
    return [h.strip() for h in text.split(",") if h.strip()]


@endpoint(DataType.JSON)
def fleet_hosts(ctx) -> dict:
    """The fleet's sensors as ClickHouse knows them, and this server's own shipping.

    Hosts: [{Host, LastReport (FILETIME of its latest report), LagSeconds (now − that),
    Url (its fleet_url, without password), SpoolBytes, SpoolBatches (waiting on its disk
    at that report), GapRows (rows its full spool dropped, ever), ShippedRows (since it
    started), Connections (in the fleet)}]. Local: this server's shipper {SpoolBytes,
    SpoolBatches, GapRows, ShippedRows, LastError}. NOT_FOUND when fleet_url is not set;
    IO_ERROR when ClickHouse does not answer.
    """
    hosts = _ask(ctx, query.hosts)
    for h in hosts:
        h["LastReport"] = from_ns(h["LastReport"])
    shipper = getattr(ctx, "fleet", None)
    return {"Hosts": hosts, "Local": shipper.status() if shipper is not None else {}}


@endpoint(DataType.JSON)
def fleet_search(ctx, *, filter: str = "", host: str = "", start_dtg: int = 0,
                 end_dtg: int = 0, relative_time: str = "",
                 limit: Annotated[int, Bounds(1, 10000, "limit is 1 to 10000")] = 1000) -> dict:
    """Connections of every sensor matching a filter, newest first: {Connections, More}.

    Each item is a CONNECTION (capture_list_conns) plus Host, ProcessPath and User; its
    ConnectionId and CaptureId are the owning sensor's. The filter takes the fields a
    connection row answers: ip.addr, ipv6.addr, tcp.port, udp.port, tcp, udp, icmp,
    ip.proto, proc.name, proc.path, proc.pid, proc.id, thread.id, app.proto, app.name,
    app.category (others are MALFORMED, as in stats_group_by).
    - filter: display filter over connection fields; empty = every connection
    - host: only these sensors (comma-separated fleet_host names); empty = all
    - start_dtg: connections active from this UTC FILETIME on; 0 = no bound
    - end_dtg: connections active up to this UTC FILETIME; 0 = no bound
    - relative_time: the last interval up to now, e.g. 30s, 15m, 24h, 7d
    - limit: at most this many connections, 1..10000 (default 1000)
    """
    start, end = open_range(start_dtg, end_dtg, relative_time)
    found, more = _ask(ctx, query.search, filter, _hosts(host), start, end, limit)
    return {"Connections": [_connection(r) for r in found], "More": more}


def _connection(r: dict) -> dict:
    return {
        "Version": 1, "Host": r["host"], "ConnectionId": r["conn_id"],
        "CaptureId": r["capture_id"], "Protocol": r["proto"], "LocalIp": r["local_ip"],
        "LocalPort": r["local_port"], "RemoteIp": r["remote_ip"],
        "RemotePort": r["remote_port"], "ProcessId": r["process_id"], "Pid": r["pid"],
        "ThreadId": r["tid"],
        "ProcessName": r["proc_name"] or ("<unknown>" if not r["pid"] else ""),
        "ProcessPath": r["proc_path"], "User": r["proc_user"],
        "FirstTime": from_ns(r["first_ns"]), "LastTime": from_ns(r["last_ns"]),
        "PacketsOut": r["packets_out"], "BytesOut": r["bytes_out"],
        "PacketsIn": r["packets_in"], "BytesIn": r["bytes_in"], "State": r["state"],
        "Hostname": r["hostname"], "AppProtocol": r["app_proto"], "App": r["app"],
        "Category": r["category"]}


@endpoint(DataType.JSON)
def fleet_group_by(ctx, *, group_by: str, metric: str = "bytes", direction: str = "both",
                   top: Annotated[int, Bounds(1, 1000, "top is 1 to 1000 rows")] = 10,
                   filter: str = "", host: str = "", start_dtg: int = 0, end_dtg: int = 0,
                   relative_time: str = "") -> dict:
    """Top-N over every sensor's connections: stats_group_by's answer (Rows of {Key, Name,
    Packets, Bytes, Connections}, Other, Total; rows + Other = Total) with `host` as one
    more key. Keys: host, process (Host:ProcessId), program (the executable's path), ip (the
    local end), remote_ip, port (the remote end's), protocol, hostname, app, app_proto,
    category. No series, no country (the fleet keeps neither).
    - group_by: host process program ip remote_ip port protocol hostname app app_proto category
    - metric: bytes, packets or connections: what orders the rows
    - direction: in, out or both
    - top: rows to return, 1..1000 (default 10)
    - filter: display filter over connection fields (as fleet_search)
    - host: only these sensors (comma-separated fleet_host names); empty = all
    - start_dtg: connections active from this UTC FILETIME on; 0 = no bound
    - end_dtg: connections active up to this UTC FILETIME; 0 = no bound
    - relative_time: the last interval up to now, e.g. 30s, 15m, 24h, 7d
    """
    start, end = open_range(start_dtg, end_dtg, relative_time)  # as stats_group_by: range first
    query.check_group(group_by, metric, direction)
    return _ask(ctx, query.group_by, group_by, metric, direction, top, filter,
                _hosts(host), start, end)


@endpoint(DataType.JSON)
def fleet_fetch_packets(ctx, *, host: str, capture_id: int, connection_id: int) -> dict:
    """A fleet connection's packets, fetched from the sensor that owns them into this
    server's export directory as PCAPNG (download it with GET /download/export/<Name>).

    The sensor is asked through its own /ajax (capture_export with filter conn.id, then the
    file, then export_delete), at the address the setting fleet_sensors gives for `host`,
    with the setting fleet_sensor_credentials (HTTP Basic). Answers {Host, CaptureId,
    ConnectionId, Name, Path, Size}. NOT_FOUND when fleet_sensors names no such host;
    IO_ERROR when the sensor does not answer or refuses (a capture still active is BUSY
    there: its packets can be fetched once it stops).
    - host: the sensor's fleet_host name (as fleet_search's Host)
    - capture_id: the capture on that sensor
    - connection_id: the connection in that capture
    """
    if capture_id <= 0 or connection_id <= 0:
        raise Malformed("capture_id, connection_id: a sensor's ids (1 or more)")
    return fetch_packets(
        ctx.settings,
        lambda name: new_target(ctx, os.path.join(ctx.config.export_dir, name), overwrite=True),
        host, capture_id, connection_id)
