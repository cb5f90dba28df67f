"""The search actions end to end: start/read/open/list, errors, time bounds, cancel, delete,
restart, export (one and several captures), capture_export's filter, active captures."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time

import pytest

from apppaccap.filetime import from_ns
from apppaccap.search import engine as engine_mod
from tests.helpers import corpus
from tests.helpers import tshark
from tests.helpers.app import Ajax
from tests.helpers.app import ingest
from tests.helpers.app import make_ctx

HTTP = "wellformed/http_bro_org_multi_object.pcap"
DNS = "wellformed/dns_udp_mixed.pcap"
BIG = "wellformed/http_large_mixed_2k_packets.pcap"


def wait(ajax, sid, timeout=60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        meta = ajax.ok("search_open", search_id=sid)
        if meta["State"] >= 3:
            return meta
        assert time.monotonic() < deadline, meta
        time.sleep(0.01)


def read_all(ajax, sid, limit=10000) -> list:
    out, last = [], 0
    while True:
        page = ajax.ok("search_read", search_id=sid, last_id=last, limit=limit)
        out += page["Results"]
        last = page["LastId"]
        if not page["More"]:
            return out


def tshark_rows(path, flt, *fields) -> list:
    """The frame numbers tshark finds for `flt`, or those frames' `fields`."""
    if not fields:
        return tshark.frames(path, flt)
    return tshark.fields(path, *fields, display_filter=flt)


def slow_down(monkeypatch):
    """Make every scan chunk one packet long and 20 ms slow, so a search can be caught
    running (cancel, delete, export while running, shutdown)."""
    real = engine_mod.scan

    def slow(scope, plan, cancelled=None):
        for item in real(scope, plan, chunk=1, cancelled=cancelled):
            time.sleep(0.02)
            yield item
    monkeypatch.setattr(engine_mod, "scan", slow)


@pytest.fixture
def slow_scan(monkeypatch):
    slow_down(monkeypatch)


def test_search_results_pages_and_meta(live, live_ajax):
    http = ingest(live, live_ajax, corpus.path(HTTP))
    dns = ingest(live, live_ajax, corpus.path(DNS))
    flt = 'frame contains "HTTP/1.1 200" || dns.qry.name contains "local"'
    meta = live_ajax.ok("search_start", q=flt)  # `q`, the reference's name
    assert list(meta)[0] == "Version" and meta["Filter"] == flt and meta["State"] in (1, 2, 3)
    assert meta["CaptureIds"] == [http, dns] and meta["CaptureId"] == 0
    done = wait(live_ajax, meta["SearchId"])
    want_http = tshark_rows(corpus.path(HTTP), flt)
    want_dns = tshark_rows(corpus.path(DNS), flt)
    assert done["State"] == 3 and done["Progress"] == 100 and done["Message"] == ""
    assert done["ResultCount"] == len(want_http) + len(want_dns) > 30
    assert done["ScannedPackets"] == done["TotalPackets"] == 751 + 464
    assert done["Finished"] >= done["Started"] >= done["Created"] > 0
    pages = [live_ajax.ok("search_read", search_id=meta["SearchId"], limit=7)]
    while pages[-1]["More"]:
        pages.append(live_ajax.ok("search_read", search_id=meta["SearchId"], limit=7,
                                  last_id=pages[-1]["LastId"]))
    results = [r for p in pages for r in p["Results"]]
    assert [r["ItemId"] for r in results] == list(range(1, done["ResultCount"] + 1))
    assert [r["PacketId"] for r in results if r["CaptureId"] == http] == want_http
    assert [r["PacketId"] for r in results if r["CaptureId"] == dns] == want_dns
    assert pages[0]["SearchId"] == meta["SearchId"] and len(pages[0]["Results"]) == 7
    # each result points at the packet capture_read shows (time and summary)
    for r in (results[0], results[-1]):
        page = live_ajax.ok("capture_read", capture_id=r["CaptureId"], last_id=r["PacketId"] - 1,
                            limit=1)
        pkt = page["Packets"][0]
        assert pkt["PacketId"] == r["PacketId"] and r["Summary"]
        assert (r["Time"], r["Summary"]) == (pkt["Time"], pkt["Summary"])
    assert meta["SearchId"] in [s["SearchId"] for s in live_ajax.ok("search_list")]
    end = live_ajax.ok("search_read", search_id=meta["SearchId"], last_id=done["ResultCount"])
    assert end["Results"] == [] and end["More"] is False and end["LastId"] == done["ResultCount"]


def test_bad_filters_and_parameters(live, live_ajax):
    cid = ingest(live, live_ajax, corpus.path(HTTP))
    bad = "tcp.port == 99999 && ip"
    syntax = live_ajax.ok("search_verify_filter", filter=bad)
    assert syntax == {"Version": 1, "Valid": False, "Filter": bad, "Position": 12,
                      "Error": "filter: '99999' too big for this field, maximum 65535 "
                               "(at position 12)"}
    for action, extra in (("search_start", {}), ("capture_export", {"capture_id": cid})):
        body = live_ajax(action, filter=bad, **extra)
        assert body["ErrorCode"] == 4 and body["ReturnValue"] == syntax["Error"], body
    assert live_ajax("search_start", q=bad)["ReturnValue"] == syntax["Error"]
    ok = live_ajax.ok("search_verify_filter", filter="tcp.port == 80")
    assert ok == {"Version": 1, "Valid": True, "Filter": "tcp.port == 80", "Error": "",
                  "Position": -1}
    assert live_ajax.ok("search_verify_filter", filter="  ")["Valid"] is True
    assert live_ajax("search_start")["ReturnValue"] == "filter: required"
    assert live_ajax("search_start", filter="tcp", capture_id=999)["ErrorCode"] == 6
    for params, text in [
        ({"relative_time": "15 minutes"}, "relative_time: expected a number and a unit"),
        ({"relative_time": "15m", "start_dtg": 1}, "relative_time: cannot be combined"),
        ({"start_dtg": 200, "end_dtg": 100}, "end_dtg: must not be before start_dtg"),
        ({"start_dtg": -5}, "start_dtg: -5 is out of range: a UTC FILETIME"),
    ]:
        body = live_ajax("search_start", filter="tcp", **params)
        assert body["ErrorCode"] == 4 and body["ReturnValue"].startswith(text), body
    for sid_action in ("search_open", "search_read", "search_cancel", "search_delete",
                       "search_export"):
        body = live_ajax(sid_action, search_id=12345)
        assert body == {"Version": 1, "ErrorCode": 6, "DataType": 1,
                        "ReturnValue": "search_id: no search 12345"}, sid_action
    sid = wait(live_ajax, live_ajax.ok("search_start", filter="tcp")["SearchId"])["SearchId"]
    assert live_ajax("search_read", search_id=sid, limit=0)["ErrorCode"] == 4
    assert live_ajax("search_read", search_id=sid, limit=10001)["ErrorCode"] == 4
    assert live_ajax("search_export", search_id=sid, path="relative.pcapng")["ErrorCode"] == 4


def test_time_bounds(live, live_ajax):
    cid = ingest(live, live_ajax, corpus.path(HTTP))
    times = tshark_rows(corpus.path(HTTP), "frame", "frame.number", "frame.time_epoch")
    ns = [(int(n), int(t.replace(".", ""))) for n, t in times]  # tshark prints 9 decimals
    lo, hi = ns[100][1], ns[200][1]
    want = [n for n, t in ns if lo <= t <= hi]
    meta = live_ajax.ok("search_start", filter="", capture_id=cid, start_dtg=from_ns(lo),
                        end_dtg=from_ns(hi))
    assert wait(live_ajax, meta["SearchId"])["StartTime"] == from_ns(lo)
    assert [r["PacketId"] for r in read_all(live_ajax, meta["SearchId"])] == want
    both = live_ajax.ok("search_start", filter="tcp.len > 0", capture_id=cid,
                        start_dtg=from_ns(lo), end_dtg=from_ns(hi))
    wait(live_ajax, both["SearchId"])
    expect = [n for n in tshark_rows(corpus.path(HTTP), "tcp.len > 0") if n in want]
    assert [r["PacketId"] for r in read_all(live_ajax, both["SearchId"])] == expect
    # the file is from 2012: the last day of traffic holds none of it
    recent = live_ajax.ok("search_start", filter="tcp", relative_time="1d")
    assert wait(live_ajax, recent["SearchId"])["ResultCount"] == 0
    years = live_ajax.ok("search_start", filter="tcp", relative_time="700w", capture_id=cid)
    tcp = tshark_rows(corpus.path(HTTP), "tcp")
    assert wait(live_ajax, years["SearchId"])["ResultCount"] == len(tcp)


def test_cancel_keeps_results_and_delete_removes_them(live, live_ajax, slow_scan):
    cid = ingest(live, live_ajax, corpus.path(BIG))
    sid = live_ajax.ok("search_start", filter="tcp", capture_id=cid)["SearchId"]
    deadline = time.monotonic() + 30
    while live_ajax.ok("search_open", search_id=sid)["ResultCount"] < 5:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    running = live_ajax.ok("search_open", search_id=sid)
    assert running["State"] == 2 and 0 <= running["Progress"] < 100
    assert 0 < running["ScannedPackets"] < 1985
    assert live_ajax("search_export", search_id=sid)["ErrorCode"] == 7  # BUSY while running
    early = read_all(live_ajax, sid)           # results stream while the search runs
    assert len(early) >= 5
    assert live_ajax.ok("search_cancel", search_id=sid) == 0
    done = wait(live_ajax, sid, timeout=5)
    assert done["State"] == 5 and done["Message"] == "cancelled"
    kept = read_all(live_ajax, sid)
    assert kept[:len(early)] == early and len(kept) == done["ResultCount"] < 1985
    assert live_ajax.ok("search_cancel", search_id=sid) == 0  # cancelling again is harmless
    assert live_ajax.ok("search_delete", search_id=sid) == 0
    assert live_ajax("search_open", search_id=sid)["ErrorCode"] == 6
    assert live.catalog.one("SELECT count(*) FROM search_results WHERE search_id = ?",
                            (sid,))[0] == 0
    # deleting a running search stops it, and nothing is written for it afterwards
    sid = live_ajax.ok("search_start", filter="tcp", capture_id=cid)["SearchId"]
    time.sleep(0.2)
    assert live_ajax.ok("search_delete", search_id=sid) == 0
    time.sleep(0.3)
    assert live.catalog.one("SELECT count(*) FROM search_results WHERE search_id = ?",
                            (sid,))[0] == 0


def test_searches_survive_a_restart(tmp_path, monkeypatch):
    from apppaccap.server import start_services
    from apppaccap.server import stop_services
    from apppaccap.web.app import create_app
    ctx = make_ctx(tmp_path)
    start_services(ctx)
    ajax = Ajax(create_app(ctx).test_client())
    cid = ingest(ctx, ajax, corpus.path(HTTP))
    finished = ajax.ok("search_start", filter="udp || tcp.port == 80", capture_id=cid)
    assert wait(ajax, finished["SearchId"])["State"] == 3
    slow_down(monkeypatch)
    stopped = ajax.ok("search_start", filter="tcp", capture_id=cid)["SearchId"]
    time.sleep(0.3)
    # a crash: a row left RUNNING with some results (a clean stop cancels it itself)
    ctx.catalog.execute("INSERT INTO searches(filter, state, created, result_count) "
                        "VALUES ('ip', 2, 1, 1)")
    crashed = ctx.catalog.one("SELECT max(id) FROM searches")[0]
    ctx.catalog.execute("INSERT INTO search_results VALUES (?, 1, ?, 3, 0)", (crashed, cid))
    before = read_all(ajax, finished["SearchId"])
    stop_services(ctx)

    ctx2 = make_ctx(tmp_path)
    start_services(ctx2)
    try:
        ajax2 = Ajax(create_app(ctx2).test_client())
        assert ajax2.ok("search_open", search_id=finished["SearchId"])["State"] == 3
        assert read_all(ajax2, finished["SearchId"]) == before and len(before) == 751
        was_running = ajax2.ok("search_open", search_id=stopped)
        assert was_running["State"] == 5 and was_running["ResultCount"] > 0
        assert was_running["Message"] == "interrupted: the service stopped"
        assert len(read_all(ajax2, stopped)) == was_running["ResultCount"]
        lost = ajax2.ok("search_open", search_id=crashed)
        assert lost["State"] == 5 and lost["Message"] == "interrupted: the service stopped"
        assert [r["PacketId"] for r in read_all(ajax2, crashed)] == [3]
    finally:
        stop_services(ctx2)


def test_search_export_merges_captures(live, live_ajax, tmp_path):
    paths = [corpus.path(HTTP), corpus.path(DNS),
             corpus.path("wellformed/pcapng_multi_interface_ns_us.pcapng")]
    ids = [ingest(live, live_ajax, p) for p in paths]
    flt = "tcp.flags.syn == 1 || dns || frame.len < 80"
    sid = live_ajax.ok("search_start", filter=flt)["SearchId"]
    meta = wait(live_ajax, sid)
    out = str(tmp_path / "found.pcapng")
    cmd = live_ajax.ok("search_export", search_id=sid, path=out)
    done = live.jobs.wait(cmd["CommandUid"])
    assert done["Type"] == "EXPORT" and done["State"] == 3 and done["Result"] == out
    got = tshark_rows(out, "frame", "frame.time_epoch", "frame.len", "frame.cap_len",
                 "frame.interface_id")
    want = []
    offset = 0
    for path in paths:
        rows = tshark_rows(path, flt, "frame.time_epoch", "frame.len", "frame.cap_len",
                      "frame.interface_id")
        n_if = int(subprocess.run(["capinfos", "-I", "-T", path], capture_output=True,
                                  text=True).stdout.count("Interface #")) or 1
        want += [[t, n, c, str(int(i or 0) + offset)] for t, n, c, i in rows]
        offset += max(n_if, 1 + max((int(r[3] or 0) for r in rows), default=0))
    assert len(got) == meta["ResultCount"] == len(want) > 20
    key = lambda r: (float(r[0]), r[1])  # noqa: E731 - merged by time
    assert sorted(got, key=key) == sorted(want, key=key)
    assert [float(r[0]) for r in got] == sorted(float(r[0]) for r in got)
    info = subprocess.run(["capinfos", out], capture_output=True, text=True).stdout
    assert f"capture {ids[0]}:" in info and f"capture {ids[2]}:" in info
    # default path: the export directory
    done = live.jobs.wait(live_ajax.ok("search_export", search_id=sid)["CommandUid"])
    assert os.path.dirname(done["Result"]) == live.config.export_dir
    assert os.path.basename(done["Result"]).startswith(f"search-{sid}-")


@pytest.mark.parametrize("flt", ['tcp.port == 80 && ip.addr == 192.150.187.43',
                                 'frame contains "image/png" || tcp.flags.reset == 1'])
def test_capture_export_filter_matches_tshark(live, live_ajax, tmp_path, flt):
    cid = ingest(live, live_ajax, corpus.path(HTTP))
    out = str(tmp_path / "x.pcapng")
    done = live.jobs.wait(live_ajax.ok("capture_export", capture_id=cid, filter=flt,
                                       path=out)["CommandUid"])
    assert done["State"] == 3
    fields = ("frame.time_epoch", "frame.len", "frame.cap_len")
    want = tshark_rows(corpus.path(HTTP), flt, *fields)
    assert tshark_rows(out, "frame", *fields) == want and len(want) > 3


def test_searching_an_active_capture(live, live_ajax, http_server):
    port, _ = http_server
    old = ingest(live, live_ajax, corpus.path(DNS))
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter=f"tcp port {port}")
    try:
        for _ in range(3):
            subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/hello.txt"],
                           check=True)
        flt = f'proc.name == "curl" && tcp.dstport == {port} && tcp.flags.syn == 1'

        def stored_syns():
            page = live_ajax.ok("capture_stream", capture_id=cap["CaptureId"], limit=10000)
            return [p for p in page["Packets"]
                    if p["DstPort"] == port and "[SYN]" in p["Summary"]]
        deadline = time.monotonic() + 10
        while len(stored_syns()) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)  # the writer flushes in batches: wait for the three SYNs to land
        syns = stored_syns()
        assert len(syns) == 3
        # the oracle is the capture itself: exactly its SYNs labelled curl (attribution
        # labels them all when the machine is not starved; at least one, always)
        want = [p["PacketId"] for p in syns if p["ProcessName"] == "curl"]
        assert want
        sid = live_ajax.ok("search_start", filter=flt, capture_id=cap["CaptureId"])["SearchId"]
        meta = wait(live_ajax, sid)
        assert meta["State"] == 3 and meta["ResultCount"] == len(want)
        assert [r["PacketId"] for r in read_all(live_ajax, sid)] == want
        everything = wait(live_ajax, live_ajax.ok("search_start", filter="tcp")["SearchId"])
        assert everything["CaptureIds"] == [old]  # active captures only when named
    finally:
        live_ajax.ok("capture_stop_system", capture_id=cap["CaptureId"])
    after = wait(live_ajax, live_ajax.ok("search_start", filter=flt)["SearchId"])
    assert after["CaptureIds"] == [old, cap["CaptureId"]] and after["ResultCount"] == len(want)


def test_fields_fall_back_to_the_bytes_without_columns(live, live_ajax):
    """Columns the schema may drop (eth_src/eth_dst/summary already went): the same filters
    give the same packets, decoded from the stored bytes."""
    cid = ingest(live, live_ajax, corpus.path("wellformed/http_vlan_download.pcap"))
    filters = ["eth.src == 00:d0:2b:1c:24:00", "eth.addr == 00:0b:db:27:b7:6f", "vlan",
               "vlan.id == 10", "tcp.flags.syn == 1", "icmp.type == 8", "ip.ttl > 60"]

    def run_all():
        out = {}
        for f in filters:
            sid = live_ajax.ok("search_start", filter=f, capture_id=cid)["SearchId"]
            wait(live_ajax, sid)
            out[f] = read_all(live_ajax, sid)
        return out
    before = run_all()
    path = os.path.join(live.config.data_dir, "captures", f"{cid}.db")
    live.captures.forget(cid)
    db = sqlite3.connect(path)
    have = {r[1] for r in db.execute("PRAGMA table_info(packets)")}
    dropped = {"eth_src", "eth_dst", "summary", "vlan", "tcp_flags", "ttl", "icmp_type"} & have
    assert {"vlan", "tcp_flags", "ttl"} <= dropped
    for col in dropped:
        db.execute(f"ALTER TABLE packets DROP COLUMN {col}")
    db.commit()
    db.close()
    after = run_all()
    assert after == before
    wanted = {f: tshark_rows(corpus.path("wellformed/http_vlan_download.pcap"), f)
              for f in filters}
    assert {f: [r["PacketId"] for r in rows] for f, rows in after.items()} == wanted
    assert all(r["Summary"] for rows in after.values() for r in rows)


def test_engine_shutdown_cancels_running_searches(tmp_path, slow_scan):
    from apppaccap.server import start_services
    from apppaccap.server import stop_services
    from apppaccap.web.app import create_app
    ctx = make_ctx(tmp_path)
    start_services(ctx)
    ajax = Ajax(create_app(ctx).test_client())
    cid = ingest(ctx, ajax, corpus.path(BIG))
    sid = ajax.ok("search_start", filter="tcp", capture_id=cid)["SearchId"]
    time.sleep(0.2)
    start = time.monotonic()
    stop_services(ctx)
    assert time.monotonic() - start < 5
    db = sqlite3.connect(os.path.join(ctx.config.data_dir, "catalog.db"))
    assert db.execute("SELECT state, message FROM searches WHERE id = ?", (sid,)).fetchone() == \
        (5, "interrupted: the service stopped")


def test_times_beyond_2262_are_refused_by_name(live, live_ajax):
    body = live_ajax("search_start", filter="tcp", start_dtg=4 * 10**17)  # year 2868
    assert body["ErrorCode"] == 4 and body["ReturnValue"].startswith("start_dtg: beyond")
