"""Pages whose JSON SQLite builds (api/fastpages.py) answer exactly what the reference
(packet_object / connection_object, api/packets.py) answers for the same rows.

The reference is computed here from the very database the server wrote, through a
read-only connection; the answers come from the real server (a live capture of `lo`) and
from the in-process app (corpus files ingested)."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections import OrderedDict

import pytest

from apppaccap.api import captures as captures_api
from apppaccap.api import fastpages
from apppaccap.api import packets as ref
from apppaccap.api.fastpages import KEPT_BYTES
from apppaccap.api.fastpages import KEPT_MAX
from apppaccap.settings import DEFAULTS
from apppaccap.settings import Settings
from apppaccap.store.blocks import BlockReader
from apppaccap.store.capturedb import capture_path
from apppaccap.store.database import Database
from apppaccap.store.database import connect
from tests.helpers import corpus
from tests.helpers.app import ingest
from tests.helpers.live import wait_for
from tests.helpers.packets import dns
from tests.helpers.packets import udp_frame
from tests.helpers.pcapfiles import write_pcap
from tests.helpers.ports import free_port
from tests.helpers.server import Server


class ReadOnly:
    """What packet_list needs of a capture database, on a read-only connection."""

    def __init__(self, path: str):
        self.path = path
        self.conn = connect(path, readonly=True)

    def read(self, sql, params=()):
        return self.conn.execute(sql, params).fetchall()

    def tuples(self, sql, params=()):
        cur = self.conn.cursor()
        cur.row_factory = None
        return cur.execute(sql, params)

    def block_reader(self):
        return BlockReader(self.conn, self.path)

    def packet_bytes(self, blk, off, caplen):
        return self.block_reader().packet(blk, off, caplen)


def reference_stream(db, capture_id, last_id, limit, where="", params=()):
    rows = db.read(ref.PACKET_SQL + f"WHERE p.id > ? {where} ORDER BY p.id LIMIT ?",
                   (last_id, *params, limit + 1))
    more, rows = len(rows) > limit, rows[:limit]
    return {"Version": 1, "CaptureId": capture_id,
            "LastId": rows[-1]["id"] if rows else last_id, "More": more,
            "Packets": ref.packet_list(db, capture_id, rows)}


def reference_conns(db, capture_id, last_id, limit, label=""):
    cond, params = ref.label_filter(label, "c.")
    rows = db.read(ref.CONN_SQL + f"WHERE c.id > ? {'AND ' + cond if cond else ''} "
                   "ORDER BY c.id LIMIT ?", (last_id or 0, *params, limit + 1))
    return ref._listed(rows, last_id, limit, "Connections", capture_id,
                       lambda r: ref.connection_object(r, capture_id))


def same(answer, expected):
    # the wire's JSON both ways: the server's text against json.dumps of the reference
    assert answer == json.loads(json.dumps(expected))


def traffic(udp_port: int, tcp_port: int, src_port: int) -> None:
    """UDP datagrams of varied sizes, a DNS question nobody answers (ICMP back), all from
    `src_port`, and one TCP connection carrying an HTTP request and its answer."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", tcp_port))
    srv.listen(1)

    def answer():
        conn, _ = srv.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        conn.close()

    t = threading.Thread(target=answer)
    t.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", src_port))
        for n in range(300):
            s.sendto(bytes([n % 256]) * (1 + n * 3 % 1400), ("127.0.0.1", udp_port))
        dns = bytes.fromhex("12340100000100000000000003777777076578616d706c6503636f6d0000010001")
        s.sendto(dns, ("127.0.0.1", 53))
    c = socket.create_connection(("127.0.0.1", tcp_port))
    c.sendall(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
    c.recv(4096)
    c.close()
    t.join(5)
    srv.close()


@pytest.mark.live
def test_live_capture_pages_match_the_reference(tmp_path):
    udp_port, tcp_port, src_port = free_port(), free_port(), free_port()
    server = Server(tmp_path / "data", log_dir=tmp_path)
    try:
        # this test's packets only: the pages are compared while the capture runs, and a
        # packet of another test's (any ICMP or DNS on `lo`) written between an answer and
        # its reference made them differ (CI: LastId 658 against 662). icmp[28:2] is the
        # source port of the datagram an ICMP error quotes (8-byte ICMP, 20-byte IP header).
        bpf = (f"udp port {src_port} or (icmp and icmp[28:2] = {src_port}) "
               f"or tcp port {tcp_port}")
        cid = server.ok("capture_start_system", filter=bpf, adapter="lo")["CaptureId"]
        traffic(udp_port, tcp_port, src_port)
        wait_for(lambda: server.ok("capture_get_details", capture_id=cid)["PacketCount"] >= 300,
                 what="the capture's packets")
        time.sleep(1.0)  # the TCP teardown and the ICMP answer are written too
        first = server.ok("capture_stream", capture_id=cid, limit=1)["Packets"][0]
        note = 'a "quoted" note \\ with é, 中文 and a\ttab'
        server.ok("capture_set_notes", capture_id=cid, packet_id=first["PacketId"], notes=note)
        db = ReadOnly(capture_path(str(tmp_path / "data"), cid))
        total = db.read("SELECT count(*) FROM packets")[0][0]
        assert total >= 300
        for last_id, limit in ((0, 1), (0, 7), (0, 1000), (5, 100), (total - 3, 10),
                               (total + 5, 10)):
            same(server.ok("capture_stream", capture_id=cid, last_id=last_id, limit=limit),
                 reference_stream(db, cid, last_id, limit))
        for last_id, limit in ((None, None), (0, 1), (0, 1000), (1, 2)):
            params = {"last_id": last_id} if last_id is not None else {}
            if limit is not None:
                params["limit"] = limit
            same(server.ok("capture_list_conns", capture_id=cid, **params),
                 reference_conns(db, cid, last_id, limit or (10000 if last_id is None else
                                                            1000)))
        answer = server.ok("capture_stream", capture_id=cid, limit=1)["Packets"][0]
        assert answer["Notes"] == note
        kinds = {p["Protocol"] for p in server.ok("capture_stream", capture_id=cid)["Packets"]}
        assert {1, 6, 17} <= kinds  # ICMP, TCP and UDP rows all went through the new path
        server.ok("capture_stop_system", capture_id=cid)
        conn = server.ok("capture_list_conns", capture_id=cid)[0]["ConnectionId"]
        for last_id, limit in ((0, 1000), (10, 50)):
            same(server.ok("capture_read", capture_id=cid, last_id=last_id, limit=limit),
                 reference_stream(db, cid, last_id, limit))
        same(server.ok("capture_conn_stream", capture_id=cid, conn_id=conn, last_id=0),
             reference_stream(db, cid, 0, 1000, "AND p.conn_id = ? ", (conn,)))
        # these rows took the new path (it answers None where the reference must answer)
        assert fastpages.packet_page(db, cid, "", (), 0, 10000) is not None
        assert fastpages.conn_page(db, cid, "", (), 0, 10000) is not None
        # with Data the reference builds the page (bytes are not in the rows)
        with_data = server.ok("capture_read", capture_id=cid, last_id=0, limit=5, flags=1)
        assert all(len(p["Data"]) == 2 * p["CapturedLength"] for p in with_data["Packets"])
    finally:
        server.stop()


@pytest.mark.parametrize("rel", ["wellformed/http_large_mixed_2k_packets.pcap",
                                 "wellformed/dns_udp_mixed.pcap",
                                 "wellformed/icmpv6_ping.pcap",
                                 "wellformed/http_vlan_download.pcap"])
def test_ingested_pages_match_the_reference(live, live_ajax, rel):
    ajax = live_ajax
    cid = ingest(live, ajax, corpus.path(rel))
    db = ReadOnly(capture_path(live.config.data_dir, cid))
    assert fastpages.packet_page(db, cid, "", (), 0, 10000) is not None
    assert fastpages.conn_page(db, cid, "", (), None, 10000) is not None
    last = 0
    while True:  # every page, read twice: decoded first, then from the kept Summary
        for _ in range(2):
            page = ajax.ok("capture_read", capture_id=cid, last_id=last, limit=500)
            same(page, reference_stream(db, cid, last, 500))
        if not page["More"]:
            break
        last = page["LastId"]
    same(ajax.ok("capture_list_conns", capture_id=cid), reference_conns(db, cid, None, 10000))
    same(ajax.ok("capture_list_conns", capture_id=cid, last_id=0, limit=3),
         reference_conns(db, cid, 0, 3))
    for label in ("HTTP", "dns", "nothing-like-this"):
        same(ajax.ok("capture_list_conns", capture_id=cid, last_id=0, label=label),
             reference_conns(db, cid, 0, 1000, label))


def test_kept_objects_are_bounded_in_bytes_newest_kept():
    size = sys.getsizeof("x" * 10)
    cache, used = OrderedDict(), [0]
    fastpages._remember(cache, {i: "x" * 10 for i in range(100)}, used, bound=50 * size)
    assert len(cache) == 50 and used[0] == 50 * size
    assert 49 not in cache and 50 in cache and 99 in cache
    fastpages._remember(cache, {99: "y" * 30, -1: "z"}, used, bound=50 * size)
    assert used[0] == sum(map(sys.getsizeof, cache.values())) <= 50 * size
    assert cache[99] == "y" * 30 and -1 in cache and 50 not in cache
    # four bytes a character: held as what it takes, and a note too long is not kept
    fastpages._remember(cache, {-2: "\U0001F600" * 100, -3: "n" * (KEPT_MAX + 1)}, used,
                        bound=50 * size)
    assert used[0] == sum(map(sys.getsizeof, cache.values())) <= 50 * size
    assert -2 in cache and -3 not in cache
    assert KEPT_BYTES <= 48 << 20  # one bound for every database


def test_a_note_written_after_a_page_was_read_is_in_the_next_page(live, live_ajax):
    """Pages keep each packet's JSON; a note changes it, and the next page says so."""
    ajax = live_ajax
    cid = ingest(live, ajax, corpus.path("wellformed/dns_udp_mixed.pcap"))
    db = ReadOnly(capture_path(live.config.data_dir, cid))
    first = ajax.ok("capture_read", capture_id=cid, last_id=0, limit=5)
    target = first["Packets"][2]["PacketId"]
    for notes in ("first look", "", "looked at twice"):
        ajax.ok("capture_set_notes", capture_id=cid, packet_id=target, notes=notes)
        page = ajax.ok("capture_read", capture_id=cid, last_id=0, limit=5)
        assert page["Packets"][2]["Notes"] == notes
        same(page, reference_stream(db, cid, 0, 5))


def _dns_capture(live, ajax, tmp_path, n):
    path = tmp_path / "many.pcap"
    write_pcap(path, [(1_700_000_000_000_000_000 + i * 1000,
                       udp_frame(dns(i & 0xFFFF, [f"h{i}.example.com"]), sport=40000 + i % 2000,
                                 dport=53)) for i in range(n)])
    return ingest(live, ajax, path)


def test_a_note_committed_after_its_request_gave_up_is_still_seen(live, live_ajax, tmp_path,
                                                                   monkeypatch):
    """The kept JSON is forgotten when the note is committed, not when the request waited
    for it: a busy writer that commits after the answer still invalidates it."""
    cid = _dns_capture(live, live_ajax, tmp_path, 20)
    target = live_ajax.ok("capture_read", capture_id=cid, last_id=0, limit=5)[
        "Packets"][2]["PacketId"]  # kept now
    live.captures.db(cid).submit(lambda c: time.sleep(1.5))  # the writer busy meanwhile
    monkeypatch.setattr(captures_api, "NOTE_WAIT", 0.2)
    answer = live_ajax("capture_set_notes", capture_id=cid, packet_id=target, notes="NEW")
    assert answer["ErrorCode"]  # the request gave up waiting
    wait_for(lambda: live_ajax.ok("capture_read", capture_id=cid, last_id=0, limit=5)[
        "Packets"][2]["Notes"] == "NEW", what="the note committed later")


def test_a_page_being_built_does_not_hold_other_pages_of_the_database(live, live_ajax,
                                                                      tmp_path, monkeypatch):
    """Pollers of the same new page wait for its builder; a page of other packets does not
    (one lock per database made every poller wait for a 10,000-packet build)."""
    cid = _dns_capture(live, live_ajax, tmp_path, 300)
    db = live.captures.db(cid)
    fastpages.forget(db)
    inside, release = threading.Event(), threading.Event()
    fill = fastpages._fill

    def slow_fill(db_, capture_id, serial, ids, texts):
        if len(ids) == 200:
            inside.set()
            release.wait(30)
        return fill(db_, capture_id, serial, ids, texts)

    monkeypatch.setattr(fastpages, "_fill", slow_fill)
    big = threading.Thread(target=fastpages.packet_page, args=(db, cid, "", (), 0, 200))
    big.start()
    try:
        assert inside.wait(10)
        got = []
        small = threading.Thread(  # while the big one builds
            target=lambda: got.append(fastpages.packet_page(db, cid, "", (), 250, 10)))
        small.start()
        small.join(5)
        assert not small.is_alive(), "a page of other packets waited for the big one"
        assert [p["PacketId"] for p in got[0]["Packets"].value()] == list(range(251, 261))
    finally:
        release.set()
        big.join()


def test_a_setting_written_through_one_settings_is_read_by_another(ctx):
    """Settings keeps what it read per catalog (two or three reads a request); a write
    through any Settings of that catalog (the service's, the scheduler's) is seen at once."""
    other = Settings(ctx.catalog)
    assert ctx.settings.get_int("max_request_bytes") == other.get_int("max_request_bytes")
    other.set("max_request_bytes", "123456")
    assert ctx.settings.get_int("max_request_bytes") == 123456
    ctx.settings.clear()
    assert other.get("max_request_bytes") == DEFAULTS["max_request_bytes"]


def test_a_read_connection_is_lent_again_only_without_a_live_cursor(tmp_path):
    """Request threads end after each request; their read connections are lent to the next
    threads, except one a live cursor still holds (its snapshot would be the next
    thread's: it would never see newer rows)."""
    db = Database(str(tmp_path / "x.db"))
    try:
        db.write(lambda c: c.execute("CREATE TABLE t (x)"))
        db.write(lambda c: c.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(50)]))
        kept, seen = [], []

        def in_thread(fn):
            t = threading.Thread(target=fn)
            t.start()
            t.join()

        def leave_a_cursor_open():
            cur = db.tuples("SELECT x FROM t")
            cur.fetchone()
            kept.append(cur)

        def count():
            seen.append((db.one("SELECT count(*) FROM t")[0], id(db._reader())))

        in_thread(leave_a_cursor_open)
        db.write(lambda c: c.execute("INSERT INTO t VALUES (50)"))
        in_thread(count)
        assert seen[-1][0] == 51  # not the open cursor's snapshot of 50 rows
        assert kept[0].fetchone() == (1,)  # and that cursor still reads
        for _ in range(3):
            in_thread(count)
        assert len({conn for _, conn in seen[1:]}) == 1  # one connection, lent again
    finally:
        db.close()
