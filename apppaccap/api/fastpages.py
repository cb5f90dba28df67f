"""Pages of PACKET and CONNECTION objects whose JSON SQLite builds.

The reference is `packet_object` / `connection_object` (api/packets.py): a dict per row,
then json.dumps — ~14 ms of Python for 1,000 packets, read row by row. Under a live
capture and 20 pollers (benchmarks/api_load.py) every one of those rows waited for the
interpreter lock again, so a page took up to seconds. Here one aggregate statement builds
the whole page's JSON (json_object per row, group_concat), and sqlite3 runs a statement's
step with the lock released: the page costs the interpreter a few string operations.

Summary and Info are decoded from the packet bytes (not stored: ingest speed), which only
Python can do; a packet's bytes never change, so their JSON is kept by database and packet
id (bounded, oldest first out) and pollers following the same stream decode each packet
once. Rows the SQL cannot render exactly as the reference does (a timestamp kept as text,
a negative time, a value json_object refuses) make the caller use the reference path.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import weakref

from apppaccap.api.encoded import Encoded
from apppaccap.dissect.decode import decode
from apppaccap.dissect.info import info
from apppaccap.filetime import EPOCH_DIFF_TICKS

SEP = "\x1e"  # json_object escapes control characters, so no object contains it
SUMMARY_CACHE = 100_000  # packets, all databases together (~20 MB): 5 s of 20,000/s


def _filetime(col: str) -> str:
    # from_ns: 0 or NULL stays 0; negative times are left to the reference (floor division)
    return f"CASE WHEN coalesce({col}, 0) = 0 THEN 0 ELSE {col} / 100 + {EPOCH_DIFF_TICKS} END"


PACKET_JSON = (
    "json_object('Version', 1, 'PacketId', p.id, 'CaptureId', {capture_id}, "
    f"'Time', {_filetime('p.ts')}, 'Length', p.len, 'CapturedLength', p.caplen, "
    "'Adapter', coalesce(i.name, ''), 'LinkType', coalesce(i.linktype, 0), "
    "'Protocol', p.proto, 'SrcIp', coalesce(p.src, ''), 'DstIp', coalesce(p.dst, ''), "
    "'SrcPort', p.sport, 'DstPort', p.dport, 'Direction', p.direction, "
    "'ConnectionId', coalesce(p.conn_id, 0), 'ProcessId', coalesce(p.process_id, 0), "
    "'Pid', p.pid, 'ThreadId', p.tid, 'ProcessName', CASE WHEN coalesce(pr.name, '') != '' "
    "THEN pr.name WHEN coalesce(p.pid, 0) = 0 THEN '<unknown>' ELSE '' END, "
    "'Notes', coalesce(p.notes, ''))")

PACKET_PAGE = (
    "SELECT count(*), group_concat(j, char(30)), '[' || group_concat(id) || ']', max(odd) "
    f"FROM (SELECT p.id AS id, {PACKET_JSON} AS j, "
    "(p.ts_raw IS NOT NULL OR p.ts < 0) AS odd "
    "FROM packets p LEFT JOIN interfaces i ON i.id = p.iface "
    "LEFT JOIN processes pr ON pr.process_id = p.process_id "
    "WHERE p.id > ? {where} ORDER BY p.id LIMIT ?)")

# where the bytes of packets not decoded yet are (ids: a JSON list), in one step
WHERE_BYTES = (
    "SELECT json_group_array(json_array(p.id, p.blk, p.off, p.caplen, "
    "coalesce(i.linktype, 0))) FROM packets p LEFT JOIN interfaces i ON i.id = p.iface "
    "WHERE p.id IN (SELECT value FROM json_each(?))")

CONN_JSON = (
    "json_object('Version', 1, 'ConnectionId', c.id, 'CaptureId', {capture_id}, "
    "'Protocol', c.proto, "
    "'LocalIp', c.local_ip, 'LocalPort', c.local_port, 'RemoteIp', c.remote_ip, "
    "'RemotePort', c.remote_port, 'ProcessId', coalesce(c.process_id, 0), 'Pid', c.pid, "
    "'ThreadId', c.tid, 'ProcessName', CASE WHEN coalesce(p.name, '') != '' THEN p.name "
    "WHEN coalesce(c.pid, 0) = 0 THEN '<unknown>' ELSE '' END, "
    f"'FirstTime', {_filetime('c.first_time')}, 'LastTime', {_filetime('c.last_time')}, "
    "'PacketsOut', c.packets_out, 'BytesOut', c.bytes_out, 'PacketsIn', c.packets_in, "
    "'BytesIn', c.bytes_in, 'State', c.state, 'Hostname', c.hostname, "
    "'PeerPid', c.peer_pid, 'AppProtocol', coalesce(c.app_proto, ''), "
    "'App', coalesce(c.app, ''), 'Category', coalesce(c.category, ''))")

CONN_PAGE = (
    "SELECT count(*), group_concat(j, char(30)), '[' || group_concat(id) || ']', max(odd) "
    f"FROM (SELECT c.id AS id, {CONN_JSON} AS j, "
    "(coalesce(c.first_time, 0) < 0 OR coalesce(c.last_time, 0) < 0) AS odd "
    "FROM connections c LEFT JOIN processes p ON p.process_id = c.process_id "
    "WHERE c.id > ? {where} ORDER BY c.id LIMIT ?)")

# (database's serial, packet id) -> its Summary/Info text; one bound for every database, so
# reading many captures cannot grow it. A serial, not id(db): ids are reused after a
# database object goes, serials never.
_kept: dict[tuple[int, int], str] = {}
_serials: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_next_serial = itertools.count(1)
_lock = threading.Lock()


def _serial(db) -> int:
    with _lock:
        serial = _serials.get(db)
        if serial is None:
            serial = _serials[db] = next(_next_serial)
        return serial


def _remember(cache: dict, fresh: dict) -> None:
    with _lock:
        cache.update(fresh)
        for _ in range(len(cache) - SUMMARY_CACHE):
            cache.pop(next(iter(cache)), None)  # oldest first: streams move forward


def _summaries(db, ids: list) -> list | None:
    """`, "Summary": …, "Info": …}` for each packet id (decoded once per database)."""
    serial = _serial(db)
    tails = [_kept.get((serial, i)) for i in ids]
    if None not in tails:
        return tails
    missing = [i for i, tail in zip(ids, tails) if tail is None]
    locs = {row[0]: row[1:] for row in json.loads(db.tuples(WHERE_BYTES, (json.dumps(missing),))
                                                 .fetchone()[0])}
    if len(locs) != len(missing):
        return None  # rows gone meanwhile (the capture deleted): the reference will say so
    reader = db.block_reader()
    fresh = {}
    try:
        for n, tail in enumerate(tails):
            if tail is None:
                blk, off, caplen, linktype = locs[ids[n]]
                data = reader.get(blk)[off:off + caplen]
                dec = decode(linktype, data)
                tail = (f', "Summary": {json.dumps(dec.summary)}, '
                        f'"Info": {json.dumps(info(dec))}}}')
                tails[n] = fresh[serial, ids[n]] = tail
    finally:
        reader.close()
    _remember(_kept, fresh)
    return tails


def _page(db, sql: str, params: tuple):
    """The aggregate row of a page, or None when the reference must answer it."""
    try:
        row = db.tuples(sql, params).fetchone()
    except sqlite3.OperationalError:  # e.g. json_object refusing a BLOB where text belongs
        return None
    return None if row[-1] else row


def _sql(template: str, capture_id: int, where: str) -> str:
    # capture_id is a validated int; formatted in, so the caller's `where` keeps plain `?`s
    return template.replace("{capture_id}", str(int(capture_id))).replace("{where}", where)


def packet_page(db, capture_id: int, where: str, params: tuple, last_id: int,
                limit: int) -> dict | None:
    """The answer of capture_stream / capture_read (without Data) for packets with
    id > last_id, `where` (AND ...) and `params` as the reference's; None: use the reference."""
    row = _page(db, _sql(PACKET_PAGE, capture_id, where), (last_id, *params, limit + 1))
    if row is None:
        return None
    count, objs, ids, _odd = row
    if not count:
        return {"Version": 1, "CaptureId": capture_id, "LastId": last_id, "More": False,
                "Packets": Encoded("[]")}
    objs = objs.split(SEP)[:limit]
    ids = json.loads(ids)[:limit]
    if ids != sorted(ids):  # group_concat kept the subquery's order so far; never assume it
        return None
    tails = _summaries(db, ids)
    if tails is None:
        return None
    text = "[" + ", ".join([o[:-1] + t for o, t in zip(objs, tails)]) + "]"
    return {"Version": 1, "CaptureId": capture_id, "LastId": ids[-1], "More": count > limit,
            "Packets": Encoded(text)}


def conn_page(db, capture_id: int, where: str, params: tuple, last_id: int | None,
              limit: int):
    """capture_list_conns' answer (a page with last_id, else the plain list) for
    connections with id > last_id; None: use the reference."""
    row = _page(db, _sql(CONN_PAGE, capture_id, where), (last_id or 0, *params, limit + 1))
    if row is None:
        return None
    count, objs, ids, _odd = row
    if not count:
        items, last = "[]", last_id
    else:
        ids = json.loads(ids)[:limit]
        if ids != sorted(ids):
            return None
        if count > limit:
            objs = objs.rpartition(SEP)[0]
        items = "[" + objs.replace(SEP, ", ") + "]"
        last = ids[-1]
    if last_id is None:
        return Encoded(items)
    return {"Version": 1, "CaptureId": capture_id, "LastId": last, "More": count > limit,
            "Connections": Encoded(items)}
