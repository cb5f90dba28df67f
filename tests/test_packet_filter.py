"""capture_filter_packets (the capture view's quick filter) on ingested corpus captures:
the same packets as a search with the same filter and as tshark, every match exactly once
across pages (also when a page's scan budget runs out before it finds anything), errors;
and process_list_running's kernel_threads switch."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter

import pytest

from apppaccap.api import packet_filter
from tests.helpers import corpus
from tests.helpers import tshark
from tests.helpers.app import ingest
from tests.test_search_api import read_all
from tests.test_search_api import wait

BIG = "wellformed/http_large_mixed_2k_packets.pcap"


def filter_all(ajax, cid, flt, limit=1000) -> tuple[list[dict], int]:
    """Every packet of the quick filter, page by page → (packets, requests made)."""
    out, last, pages = [], 0, 0
    while True:
        page = ajax.ok("capture_filter_packets", capture_id=cid, filter=flt, last_id=last,
                       limit=limit)
        pages += 1
        assert page["Matched"] == len(page["Packets"]) <= limit
        assert page["LastId"] >= last and page["ScannedTo"] == page["LastId"]
        assert all(p["PacketId"] > last for p in page["Packets"])
        assert all(p["PacketId"] <= page["LastId"] for p in page["Packets"])
        out += page["Packets"]
        last = page["LastId"]
        if not page["More"]:
            assert last == page["MaxId"]
            return out, pages


def search_ids(ajax, cid, flt) -> list[int]:
    sid = ajax.ok("search_start", filter=flt, capture_id=cid)["SearchId"]
    assert wait(ajax, sid)["State"] == 3
    return [r["PacketId"] for r in read_all(ajax, sid)]


@pytest.fixture
def big(live, live_ajax):
    return ingest(live, live_ajax, corpus.path(BIG))


def busiest_port(path) -> int:
    ports = Counter()
    for row in tshark.fields(path, "tcp.srcport", "tcp.dstport", display_filter="tcp"):
        ports.update(set(row))
    return int(next(p for p, _ in ports.most_common() if p != "80"))


def test_quick_filter_equals_search_and_tshark(live_ajax, big):
    path = corpus.path(BIG)
    port = busiest_port(path)
    for flt in (f"tcp.port == {port}", 'frame contains "HTTP/1.1"', "udp || icmp",
                f"tcp.port == {port} && tcp.flags.syn == 1"):
        got, _ = filter_all(live_ajax, big, flt)
        ids = [p["PacketId"] for p in got]
        assert ids == search_ids(live_ajax, big, flt), flt
        # the capture's packet ids are tshark's frame numbers (ingest keeps the order)
        assert ids == tshark.frames(path, flt), flt
    # the packets are capture_read's PACKET objects, field for field
    got, _ = filter_all(live_ajax, big, f"tcp.port == {port}", limit=7)
    read = {p["PacketId"]: p for p in
            live_ajax.ok("capture_read", capture_id=big, last_id=0, limit=10000)["Packets"]}
    assert got and all(p == read[p["PacketId"]] for p in got)
    assert all(port in (p["SrcPort"], p["DstPort"]) for p in got)
    # search results carry their packet's Process, PID, Protocol (and Info) columns
    sid = live_ajax.ok("search_start", filter=f"tcp.port == {port}", capture_id=big)["SearchId"]
    wait(live_ajax, sid)
    results = read_all(live_ajax, sid, limit=5)
    assert len(results) == len(got)
    for r in results:
        p = read[r["PacketId"]]
        for k in ("ProcessName", "Pid", "Protocol", "SrcIp", "SrcPort", "DstIp", "DstPort",
                  "Length", "Summary"):
            assert r[k] == p[k], k
        assert r.get("Info") == p.get("Info")


def test_paging_returns_every_match_once(live_ajax, big, monkeypatch):
    flt = 'tcp.flags.push == 1 || frame contains "Content-Type"'
    want = search_ids(live_ajax, big, flt)
    assert 20 < len(want) < 2000
    for limit in (1, 7, 10000):
        got, _ = filter_all(live_ajax, big, flt, limit=limit)
        assert [p["PacketId"] for p in got] == want, limit
    # a tiny scan budget: many pages hold nothing yet say More, none loses or repeats a match
    monkeypatch.setattr(packet_filter, "SCAN_EXACT", 50)
    monkeypatch.setattr(packet_filter, "SCAN_TESTED", 13)
    monkeypatch.setattr(packet_filter, "CHUNK", 5)
    got, pages = filter_all(live_ajax, big, flt, limit=3)
    assert [p["PacketId"] for p in got] == want
    assert pages >= 2000 // 13
    exact = "tcp && !tcp.flags.push == 1"  # SQL decides it: the larger budget
    got, pages = filter_all(live_ajax, big, exact, limit=10000)
    assert [p["PacketId"] for p in got] == search_ids(live_ajax, big, exact)
    assert pages >= 2000 // 50


def test_blank_filter_and_nothing_matching(live_ajax, big):
    every, _ = filter_all(live_ajax, big, "", limit=10000)
    read = live_ajax.ok("capture_read", capture_id=big, last_id=0, limit=10000)["Packets"]
    assert every == read
    none, _ = filter_all(live_ajax, big, 'proc.name == "no-such-program"')
    assert none == []
    # past the end: nothing, and no More
    page = live_ajax.ok("capture_filter_packets", capture_id=big, filter="tcp",
                        last_id=10**9)
    assert page["Packets"] == [] and page["More"] is False


def test_errors_are_the_search_messages(live_ajax, big):
    bad = "tcp.port == "
    syntax = live_ajax.ok("search_verify_filter", filter=bad)
    assert syntax["Valid"] is False
    r = live_ajax("capture_filter_packets", capture_id=big, filter=bad)
    assert r["ErrorCode"] != 0 and r["ReturnValue"] == syntax["Error"]
    r = live_ajax("capture_filter_packets", capture_id=big, filter="proc:curl")
    assert r["ErrorCode"] != 0 and "proc" in r["ReturnValue"]
    for params in ({"limit": 0}, {"limit": 10001}, {"last_id": -1}, {"flags": 2}):
        r = live_ajax("capture_filter_packets", capture_id=big, filter="tcp", **params)
        assert r["ErrorCode"] != 0, params
        assert "Traceback" not in str(r["ReturnValue"])
    r = live_ajax("capture_filter_packets", capture_id=big + 999, filter="tcp")
    assert r["ErrorCode"] != 0
    with_data = live_ajax.ok("capture_filter_packets", capture_id=big, filter="tcp", limit=2,
                             flags=1)["Packets"]
    assert all(len(p["Data"]) == 2 * p["CapturedLength"] for p in with_data)


def test_kernel_threads_switch(ajax):
    every = ajax.ok("process_list_running")
    by_pid = {p["Pid"]: p for p in every}
    assert by_pid[2]["KernelThread"] is True  # kthreadd
    assert by_pid[os.getpid()]["KernelThread"] is False
    kernel = {p["Pid"] for p in every if p["KernelThread"]}
    assert len(kernel) > 1 and all(by_pid[k]["Path"] == "" for k in kernel)
    users = ajax.ok("process_list_running", kernel_threads=0)
    pids = {p["Pid"] for p in users}
    assert os.getpid() in pids and not pids & kernel
    assert not any(p["KernelThread"] for p in users)
    r = ajax("process_list_running", kernel_threads=2)
    assert r["ErrorCode"] != 0


def test_live_loopback_capture_active_then_stored(live, live_ajax, http_server):
    """A real capture on lo: while it runs, the quick filter pages through what is stored so
    far; tcp.port == N then counts what a search counts, before and after the stop."""
    port, _ = http_server
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter=f"tcp port {port}")
    cid = cap["CaptureId"]
    try:
        for _ in range(5):
            subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/hello.txt"],
                           check=True)
        deadline = time.monotonic() + 10
        while len(live_ajax.ok("capture_stream", capture_id=cid, limit=10000)["Packets"]) < 40:
            assert time.monotonic() < deadline
            time.sleep(0.2)  # five HTTP exchanges, ~10 packets each, flushed in batches
        flt = f"tcp.port == {port}"
        got, _ = filter_all(live_ajax, cid, flt, limit=7)
        ids = [p["PacketId"] for p in got]
        # a search of an active capture covers the packets it had when it started
        searched = search_ids(live_ajax, cid, flt)
        n = min(len(ids), len(searched))  # (the capture may still be storing the last FINs)
        assert n >= 40 and ids[:n] == searched[:n]
        assert len(ids) >= 40 and len(set(ids)) == len(ids)
    finally:
        live_ajax.ok("capture_stop_system", capture_id=cid)
    got, _ = filter_all(live_ajax, cid, flt)
    want = search_ids(live_ajax, cid, flt)
    assert [p["PacketId"] for p in got] == want and len(want) >= len(ids)
    stored = live_ajax.ok("capture_read", capture_id=cid, limit=10000)["Packets"]
    assert len(want) == len(stored)  # the BPF filter kept only that port's packets
    curl = [p["PacketId"] for p in got if p["ProcessName"] == "curl"]
    by_proc, _ = filter_all(live_ajax, cid, f'{flt} && proc.name == "curl"')
    assert [p["PacketId"] for p in by_proc] == curl and curl
