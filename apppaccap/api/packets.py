"""Reading a capture: packet streams, single packets, connections, processes, IPs.

Paging (docs/DECISIONS.md: the wire envelope and paging): items with
id > last_id, at most `limit` (default 1000, max 10000), with LastId and More. A client
of the reference sends no last_id to the list actions and knows no paging for a
connection's or thread's packets: without last_id those answer as the reference does, a
plain list (resp. a PACKETSTREAM) of up to REFERENCE_PAGE items.
"""

from __future__ import annotations

import json

import psutil

from apppaccap.api.captures import captures
from apppaccap.api.fastpages import conn_page
from apppaccap.api.fastpages import packet_page
from apppaccap.api.labels import label_filter
from apppaccap.api.registry import endpoint
from apppaccap.dissect.decode import decode
from apppaccap.dissect.info import info
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.filetime import from_ns
from apppaccap.wire import DataType

PACKET_SQL = (
    "SELECT p.*, i.name AS adapter, i.linktype AS linktype, pr.name AS pname "
    "FROM packets p LEFT JOIN interfaces i ON i.id = p.iface "
    "LEFT JOIN processes pr ON pr.process_id = p.process_id ")


PAGE = 1000             # default page size when last_id is sent
REFERENCE_PAGE = 10000  # default without last_id (the reference's clients): the largest page


def _page(limit: int | None, last_id: int | None = 0) -> int:
    if limit is None:
        return PAGE if last_id is not None else REFERENCE_PAGE
    if not 1 <= limit <= 10000:
        raise Malformed("limit: must be 1-10000")
    return limit


def _flags(flags: int) -> bool:
    if flags not in (0, 1):
        raise Malformed("flags: must be 0 (metadata) or 1 (with packet bytes)")
    return flags == 1


def packet_object(db, row, capture_id: int, with_data: bool, blocks: dict | None = None) -> dict:
    """The PACKET object of a packets row (PACKET_SQL): every packet list builds it here."""
    obj = {
        "Version": 1, "PacketId": row["id"], "CaptureId": capture_id,
        "Time": from_ns(int(row["ts_raw"] or row["ts"])),
        "Length": row["len"], "CapturedLength": row["caplen"], "Adapter": row["adapter"] or "",
        "LinkType": row["linktype"] or 0, "Protocol": row["proto"], "SrcIp": row["src"] or "",
        "DstIp": row["dst"] or "", "SrcPort": row["sport"], "DstPort": row["dport"],
        "Direction": row["direction"], "ConnectionId": row["conn_id"] or 0,
        "ProcessId": row["process_id"] or 0, "Pid": row["pid"], "ThreadId": row["tid"],
        "ProcessName": row["pname"] or ("<unknown>" if not row["pid"] else ""),
        "Notes": row["notes"] or "",
    }
    if blocks is not None and row["blk"] in blocks:
        data = blocks[row["blk"]][row["off"]:row["off"] + row["caplen"]]
    else:
        data = db.packet_bytes(row["blk"], row["off"], row["caplen"])
    # Summary and Info are decoded from the bytes on read (not stored: ingest speed).
    dec = decode(row["linktype"] or 0, data)
    obj["Summary"] = dec.summary
    obj["Info"] = info(dec)
    if with_data:
        obj["Data"] = data.hex()
    return obj


def _listed(rows, last_id: int | None, limit: int, key: str, capture_id: int, make,
            idcol: str = "id"):
    """A list action's answer: the reference's plain list without last_id, else a page
    object {CaptureId, LastId, More, key: [...]} (rows: up to limit + 1, by id)."""
    more = len(rows) > limit
    rows = rows[:limit]
    items = [make(r) for r in rows]
    if last_id is None:
        return items
    return {"Version": 1, "CaptureId": capture_id, "LastId": rows[-1][idcol] if rows else last_id,
            "More": more, key: items}


def _stream(db, capture_id, where, params, last_id, limit, with_data) -> dict:
    last_id = last_id or 0
    if not with_data:  # the page's JSON from SQLite (api/fastpages.py); same answer
        fast = packet_page(db, capture_id, where, params, last_id, limit)
        if fast is not None:
            return fast
    rows = db.read(PACKET_SQL + f"WHERE p.id > ? {where} ORDER BY p.id LIMIT ?",
                   (last_id, *params, limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    return {"Version": 1, "CaptureId": capture_id, "LastId": rows[-1]["id"] if rows else last_id,
            "More": more, "Packets": packet_list(db, capture_id, rows, with_data)}


def packet_list(db, capture_id: int, rows, with_data: bool = False) -> list[dict]:
    """PACKET objects for PACKET_SQL rows: every list of packets the API returns is built
    here (capture_read/stream, capture_filter_packets, search results)."""
    # One read per block for the whole page (a block holds thousands of packets), not one
    # query per packet: the Summary is decoded from every packet's bytes.
    blocks = {}
    if len(rows) > 8:
        reader = db.block_reader()
        try:
            for blk in {r["blk"] for r in rows}:
                blocks[blk] = reader.get(blk)
        finally:
            reader.close()
    return [packet_object(db, r, capture_id, with_data, blocks) for r in rows]


def packets_by_id(db, capture_id: int, ids: list[int], with_data: bool = False) -> list[dict]:
    """PACKET objects for these packet ids (in id order; unknown ids are skipped)."""
    if not ids:
        return []
    rows = db.read(PACKET_SQL + "WHERE p.id IN (SELECT value FROM json_each(?)) ORDER BY p.id",
                   (json.dumps(ids),))
    return packet_list(db, capture_id, rows, with_data)


@endpoint(DataType.JSON)
def capture_stream(ctx, *, capture_id: int, last_id: int = 0, flags: int = 0,
                   limit: int = 1000) -> dict:
    """Packets of an ACTIVE capture after last_id (BUSY on a completed one).

    - capture_id: an active capture
    - last_id: return packets with PacketId > last_id (0 = from the start)
    - flags: 1 adds the packet bytes (Data, hex)
    - limit: page size, 1-10000
    """
    db = captures(ctx).db(capture_id, active=True)
    return _stream(db, capture_id, "", (), last_id, _page(limit), _flags(flags))


@endpoint(DataType.JSON)
def capture_read(ctx, *, capture_id: int, last_id: int = 0, flags: int = 0,
                 limit: int = 1000) -> dict:
    """Packets of a completed capture after last_id (BUSY while it is active).

    - capture_id: a completed capture
    - last_id: return packets with PacketId > last_id
    - flags: 1 adds the packet bytes (Data, hex)
    - limit: page size, 1-10000
    """
    db = captures(ctx).db(capture_id, active=False)
    return _stream(db, capture_id, "", (), last_id, _page(limit), _flags(flags))


@endpoint(DataType.JSON)
def capture_get_packet(ctx, *, capture_id: int, packet_id: int) -> dict:
    """One packet with its bytes (Data, hex).

    - capture_id: the capture
    - packet_id: the packet
    """
    db = captures(ctx).db(capture_id)
    row = db.one(PACKET_SQL + "WHERE p.id = ?", (packet_id,))
    if row is None:
        raise NotFound(f"packet_id: capture {capture_id} has no packet {packet_id}")
    return packet_object(db, row, capture_id, True)


@endpoint(DataType.JSON)
def capture_conn_stream(ctx, *, capture_id: int, conn_id: int = 0, last_id: int | None = None,
                        flags: int = 0, limit: int | None = None, label: str = "") -> dict:
    """Packets of one connection, or of every connection with an application label.

    - capture_id: the capture
    - conn_id: a ConnectionId of that capture; 0 = every connection carrying `label`
    - last_id: return packets with PacketId > last_id; without it, the first 10000 (reference)
    - flags: 1 adds the packet bytes
    - limit: page size, 1-10000 (default 1000 with last_id, 10000 without)
    - label: only connections whose AppProtocol, App or Category is this (any case)
    """
    db = captures(ctx).db(capture_id)
    cond, params = label_filter(label)
    if not conn_id and not cond:
        raise Malformed("conn_id: give a connection, a label, or both")
    if conn_id and db.one("SELECT 1 FROM connections WHERE id = ?", (conn_id,)) is None:
        raise NotFound(f"conn_id: capture {capture_id} has no connection {conn_id}")
    where, args = "", []
    if conn_id:
        where, args = "AND p.conn_id = ? ", [conn_id]
    if cond:
        where += f"AND p.conn_id IN (SELECT id FROM connections WHERE {cond})"
        args += params
    return _stream(db, capture_id, where, tuple(args), last_id, _page(limit, last_id),
                   _flags(flags))


@endpoint(DataType.JSON)
def capture_thread_stream(ctx, *, capture_id: int, pid: int, thread_id: int,
                          last_id: int | None = None, flags: int = 0,
                          limit: int | None = None) -> dict:
    """Packets attributed to one process and thread.

    - capture_id: the capture
    - pid: system process id
    - thread_id: system thread id (tid)
    - last_id: return packets with PacketId > last_id; without it, the first 10000 (reference)
    - flags: 1 adds the packet bytes
    - limit: page size, 1-10000 (default 1000 with last_id, 10000 without)
    """
    db = captures(ctx).db(capture_id)
    return _stream(db, capture_id, "AND p.pid = ? AND p.tid = ?", (pid, thread_id), last_id,
                   _page(limit, last_id), _flags(flags))


# a CONNECTION row with its process name (capture_list_conns, the /ws flows stream)
CONN_SQL = ("SELECT c.*, p.name AS pname FROM connections c LEFT JOIN processes p "
            "ON p.process_id = c.process_id ")


def connection_object(r, capture_id: int) -> dict:
    """A CONNECTION from a CONN_SQL row."""
    return {
        "Version": 1, "ConnectionId": r["id"], "CaptureId": capture_id, "Protocol": r["proto"],
        "LocalIp": r["local_ip"], "LocalPort": r["local_port"], "RemoteIp": r["remote_ip"],
        "RemotePort": r["remote_port"], "ProcessId": r["process_id"] or 0, "Pid": r["pid"],
        "ThreadId": r["tid"], "ProcessName": r["pname"] or ("<unknown>" if not r["pid"] else ""),
        "FirstTime": from_ns(r["first_time"]), "LastTime": from_ns(r["last_time"]),
        "PacketsOut": r["packets_out"], "BytesOut": r["bytes_out"], "PacketsIn": r["packets_in"],
        "BytesIn": r["bytes_in"], "State": r["state"], "Hostname": r["hostname"],
        "PeerPid": r["peer_pid"], "AppProtocol": r["app_proto"] or "", "App": r["app"] or "",
        "Category": r["category"] or "",
    }


@endpoint(DataType.JSON)
def capture_list_conns(ctx, *, capture_id: int, last_id: int | None = None,
                       limit: int | None = None, label: str = ""):
    """Connections of a capture (CONNECTION list), by ConnectionId.

    Without last_id (the reference) the answer is a plain list of up to 10000 items; with
    last_id it is a page: {CaptureId, LastId, More, Connections: [...]}. Each CONNECTION
    also carries nDPI's application labels (docs/LABELS.md): AppProtocol (HTTP, TLS,
    DNS...; "Unknown" when nDPI could not tell), App (Google...; "" when it named none) and
    Category (Web...); all three "" when the connection was recorded without nDPI.
    - capture_id: the capture
    - last_id: return items with ConnectionId > last_id
    - limit: page size, 1-10000 (default 1000 with last_id, 10000 without)
    - label: only connections whose AppProtocol, App or Category is this (any case)
    """
    db = captures(ctx).db(capture_id)
    page = _page(limit, last_id)
    cond, params = label_filter(label, "c.")
    fast = conn_page(db, capture_id, f"AND {cond}" if cond else "", params, last_id, page)
    if fast is not None:  # the page's JSON from SQLite (api/fastpages.py); same answer
        return fast
    rows = db.read(CONN_SQL + f"WHERE c.id > ? {'AND ' + cond if cond else ''} "
                   "ORDER BY c.id LIMIT ?", (last_id or 0, *params, page + 1))
    return _listed(rows, last_id, page, "Connections", capture_id,
                   lambda r: connection_object(r, capture_id))


@endpoint(DataType.JSON)
def capture_get_processes(ctx, *, capture_id: int, last_id: int | None = None,
                          limit: int | None = None):
    """Processes seen in a capture (PROCESS list with packet and byte counts), by ProcessId.

    Without last_id (the reference) the answer is a plain list of up to 10000 items; with
    last_id it is a page: {CaptureId, LastId, More, Processes: [...]}.
    - capture_id: the capture
    - last_id: return items with ProcessId > last_id
    - limit: page size, 1-10000 (default 1000 with last_id, 10000 without)
    """
    db = captures(ctx).db(capture_id)
    page = _page(limit, last_id)
    rows = db.read("SELECT * FROM processes WHERE process_id > ? ORDER BY process_id LIMIT ?",
                   (last_id or 0, page + 1))

    def make(r):
        cat = ctx.processes.by_id(r["process_id"])
        return {
            "Version": 1, "ProcessId": r["process_id"], "Pid": r["pid"],
            "ParentPid": r["ppid"] or 0, "Name": r["name"] or "", "Path": r["path"] or "",
            "CommandLine": r["cmdline"] or "", "User": r["user"] or "",
            "StartTime": from_ns(r["start_time"]),
            "EndTime": from_ns(cat["end_time"]) if cat else 0,
            "Running": bool(cat and cat["end_time"] is None
                            and _alive(r["pid"], r["start_time"])),
            "PacketCount": r["packets"], "ByteCount": r["bytes"]}
    return _listed(rows, last_id, page, "Processes", capture_id, make, "process_id")



def _alive(pid: int, start_ns: int) -> bool:
    try:
        return int(round(psutil.Process(pid).create_time() * 100)) * 10_000_000 == start_ns
    except psutil.Error:
        return False


def ip_object(r) -> dict:
    return {"Version": 1, "IpId": r["id"], "Ip": r["ip"], "Hostname": r["hostname"],
            "Country": r["country"], "City": r["city"], "Lat": r["lat"], "Lng": r["lng"],
            "Data": r["data"], "PacketCount": r["packets"], "ByteCount": r["bytes"],
            "FirstTime": from_ns(r["first_time"]), "LastTime": from_ns(r["last_time"])}


@endpoint(DataType.JSON)
def capture_query_ip(ctx, *, capture_id: int, last_id: int | None = None,
                     limit: int | None = None):
    """The unique IP addresses of a capture (IP list), by IpId; 0 = every capture.

    Without last_id (the reference) the answer is a plain list of up to 10000 items; with
    last_id it is a page: {CaptureId, LastId, More, Ips: [...]}.
    - capture_id: the capture; 0 for the system-wide list (live captures and ingested files)
    - last_id: return items with IpId > last_id
    - limit: page size, 1-10000 (default 1000 with last_id, 10000 without)
    """
    sql = "SELECT * FROM ips WHERE id > ? ORDER BY id LIMIT ?"
    page = _page(limit, last_id)
    db = ctx.catalog if capture_id == 0 else captures(ctx).db(capture_id)
    rows = db.read(sql, (last_id or 0, page + 1))
    return _listed(rows, last_id, page, "Ips", capture_id, ip_object)

