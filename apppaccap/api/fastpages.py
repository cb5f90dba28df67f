"""Pages of PACKET and CONNECTION objects whose JSON SQLite builds.

The reference is `packet_object` / `connection_object` (api/packets.py): a dict per row,
then json.dumps — ~14 ms of Python for 1,000 packets, read row by row. Under a live
capture and 20 pollers (benchmarks/api_load.py) every one of those rows waited for the
interpreter lock again, so a page took up to seconds. Here SQLite builds each object
(json_object), and sqlite3 runs a statement's step with the lock released.

A packet's row never changes but for its notes, so its whole object (with Summary and
Info, decoded from its bytes: only Python can) is kept by database and packet id, bounded,
oldest first out: pollers following the same stream build each packet's JSON once, and a
page is one statement for its ids and a join of kept texts. Building the objects of every
page for every poller cost ~2.4 ms of SQLite a 1,000-packet page, ~40 % of the service's
CPU under api_load. Rows the SQL cannot render exactly as the reference does (a
timestamp kept as text, a negative time, a value json_object refuses) make the caller use
the reference path. Connections change while a capture runs: their pages are built whole.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import sys
import threading
import weakref
from collections import OrderedDict

from apppaccap.api.encoded import Encoded
from apppaccap.dissect.decode import decode
from apppaccap.dissect.info import info
from apppaccap.filetime import EPOCH_DIFF_TICKS

SEP = "\x1e"  # json_object escapes control characters, so no object contains it
KEPT_BYTES = 48 << 20  # packets' JSON kept, all databases together: ~75,000 packets
KEPT_MAX = 64 << 10    # an object larger than this (a long note) is built each time


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

# the page's packet ids (the rows' JSON is kept per packet: see _objects)
PACKET_IDS = (
    "SELECT count(*), '[' || group_concat(id) || ']' "
    "FROM (SELECT p.id AS id FROM packets p WHERE p.id > ? {where} ORDER BY p.id LIMIT ?)")

# the JSON of packets not kept yet (ids: a JSON list) and where their bytes are, in one
# aggregate row: a cursor stepped row by row took the interpreter lock back 1,000 times a
# page, each wait a switch interval when 20 pollers wanted it too
PACKET_ROWS = (
    "SELECT group_concat(j, char(30)), json_group_array(json_array(id, blk, off, caplen, lt)), "
    "max(odd) "
    f"FROM (SELECT p.id AS id, {PACKET_JSON} AS j, p.blk AS blk, p.off AS off, "
    "p.caplen AS caplen, coalesce(i.linktype, 0) AS lt, "
    "(p.ts_raw IS NOT NULL OR p.ts < 0) AS odd "
    "FROM packets p LEFT JOIN interfaces i ON i.id = p.iface "
    "LEFT JOIN processes pr ON pr.process_id = p.process_id "
    "WHERE p.id IN (SELECT value FROM json_each(?)) ORDER BY p.id)")

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

# (database's serial, packet id) -> the packet's whole JSON object; one bound for every
# database, so reading many captures cannot grow it. A serial, not id(db): ids are reused
# after a database object goes, serials never; a note written gives the database a new
# serial (forget), so nothing kept before it is read again.
_kept: OrderedDict[tuple[int, int], str] = OrderedDict()  # popitem(last=False): O(1)
_kept_bytes = [0]
_serials: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_next_serial = itertools.count(1)
_lock = threading.Lock()
_building: dict[tuple, list] = {}  # a page being built -> [its lock, builders and waiters]


def _serial(db) -> int:
    with _lock:
        serial = _serials.get(db)
        if serial is None:
            serial = _serials[db] = next(_next_serial)
        return serial


def forget(db) -> None:
    """A packet of `db` changed (its notes): what was kept of its packets is not read
    again. Called after the change is committed, so a page begun later reads it."""
    with _lock:
        _serials[db] = next(_next_serial)


def _remember(cache: dict, fresh: dict, used: list = _kept_bytes,
              bound: int = KEPT_BYTES) -> None:
    # memory as the interpreter holds it (a text of emoji takes 4 bytes a character)
    with _lock:
        for key, text in fresh.items():
            size = sys.getsizeof(text)
            if size > KEPT_MAX:
                continue
            old = cache.pop(key, None)
            used[0] += size - (sys.getsizeof(old) if old is not None else 0)
            cache[key] = text
        while used[0] > bound and cache:  # oldest first: streams move forward
            used[0] -= sys.getsizeof(cache.popitem(last=False)[1])


def _objects(db, capture_id: int, ids: list) -> list | None:
    """The PACKET object (JSON text, with Summary and Info) of each packet id. A packet's
    row never changes but for its notes (forget), so each is built once however many
    pollers follow the stream; None: a row the reference must answer (or one gone)."""
    serial = _serial(db)
    texts = [_kept.get((serial, i)) for i in ids]
    if None not in texts:
        return texts
    # Pollers following one stream ask for the same new page at once: one builds it, the
    # others wait and read what it kept (all 20 built it, so nearly every page missed).
    # Only for that page: another page of the database is built meanwhile.
    key = (serial, ids[0], ids[-1], len(ids))
    with _lock:
        page = _building.setdefault(key, [threading.Lock(), 0])
        page[1] += 1
    try:
        with page[0]:
            return _fill(db, capture_id, serial, ids, texts)
    finally:
        with _lock:
            page[1] -= 1
            if not page[1]:
                del _building[key]


def _fill(db, capture_id: int, serial: int, ids: list, texts: list) -> list | None:
    texts = [t if t is not None else _kept.get((serial, i)) for i, t in zip(ids, texts)]
    missing = [i for i, text in zip(ids, texts) if text is None]
    if not missing:
        return texts
    objs, locs, odd = db.tuples(_sql(PACKET_ROWS, capture_id, ""),
                                (json.dumps(missing),)).fetchone()
    locs = json.loads(locs)
    if odd or len(locs) != len(missing):
        return None  # odd, or gone meanwhile (the capture deleted): the reference says
    rows = {loc[0]: (obj, *loc[1:]) for obj, loc in zip(objs.split(SEP), locs)}
    reader = db.block_reader()
    fresh = {}
    try:
        for n, text in enumerate(texts):
            if text is None:
                obj, blk, off, caplen, linktype = rows[ids[n]]
                dec = decode(linktype, reader.get(blk)[off:off + caplen])
                text = (f'{obj[:-1]}, "Summary": {json.dumps(dec.summary)}, '
                        f'"Info": {json.dumps(info(dec))}}}')
                texts[n] = fresh[serial, ids[n]] = text
    finally:
        reader.close()
    _remember(_kept, fresh)
    return texts


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
    count, ids = db.tuples(_sql(PACKET_IDS, capture_id, where),
                           (last_id, *params, limit + 1)).fetchone()
    if not count:
        return {"Version": 1, "CaptureId": capture_id, "LastId": last_id, "More": False,
                "Packets": Encoded("[]")}
    ids = json.loads(ids)[:limit]
    if ids != sorted(ids):  # group_concat kept the subquery's order so far; never assume it
        return None
    try:
        texts = _objects(db, capture_id, ids)
    except sqlite3.OperationalError:  # e.g. json_object refusing a BLOB where text belongs
        return None
    if texts is None:
        return None
    return {"Version": 1, "CaptureId": capture_id, "LastId": ids[-1], "More": count > limit,
            "Packets": Encoded("[" + ", ".join(texts) + "]")}


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
