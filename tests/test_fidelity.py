"""Reference fidelity (issue 18): paging of every list action, the reference's answer
without last_id, Warnings for unknown parameters, ip_query over ingested files, apc_flush
leaving nothing that points at what it deleted. Real corpus files through the API."""

from __future__ import annotations

import logging
import socket
import subprocess
import time

import pytest

from tests.helpers import corpus
from tests.helpers import tshark
from tests.helpers.app import ingest
from tests.helpers.live import page_through
from tests.helpers.ports import free_port

NO_REASSEMBLY = ("-o", "tcp.desegment_tcp_streams:FALSE")

BRO = "wellformed/http_bro_org_multi_object.pcap"     # 751 packets, 192.150.187.43
DNS = "wellformed/dns_udp_mixed.pcap"                 # many UDP flows and IPs

LISTS = [("capture_list_conns", "Connections", "ConnectionId"),
         ("capture_get_processes", "Processes", "ProcessId"),
         ("capture_query_ip", "Ips", "IpId")]


@pytest.fixture
def dns_capture(live, live_ajax):
    return ingest(live, live_ajax, corpus.path(DNS))


@pytest.mark.parametrize("action,key,idname", LISTS)
def test_list_actions_page_every_item_once(live, live_ajax, dns_capture, action, key, idname):
    reference = live_ajax.ok(action, capture_id=dns_capture)
    assert isinstance(reference, list)  # no last_id: the reference's plain list
    ids = [x[idname] for x in reference]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    if action == "capture_get_processes":
        assert ids == []  # an ingested file has no processes; the shape still holds
    else:
        assert len(ids) > 7
    pages, last = [], 0
    while True:
        page = live_ajax.ok(action, capture_id=dns_capture, last_id=last, limit=3)
        assert set(page) >= {"LastId", "More", key, "CaptureId"}
        assert len(page[key]) <= 3
        pages.append(page)
        if not page["More"]:
            break
        assert len(page[key]) == 3
        last = page["LastId"]
    got = [x[idname] for p in pages for x in p[key]]
    assert got == ids  # every item exactly once, in order
    assert pages[-1]["More"] is False
    assert pages[-1]["LastId"] == (ids[-1] if ids else 0)
    # the page after the end is empty and stays where it was
    after = live_ajax.ok(action, capture_id=dns_capture, last_id=pages[-1]["LastId"])
    assert after[key] == [] and after["More"] is False
    # limit alone (no last_id) keeps the reference shape
    assert live_ajax.ok(action, capture_id=dns_capture, limit=2) == reference[:2]


def test_packet_streams_page_and_keep_the_reference_without_last_id(live, live_ajax):
    cid = ingest(live, live_ajax, corpus.path(BRO))
    conns = live_ajax.ok("capture_list_conns", capture_id=cid)
    big = max(conns, key=lambda c: c["PacketsIn"] + c["PacketsOut"])
    n = big["PacketsIn"] + big["PacketsOut"]
    whole = live_ajax.ok("capture_conn_stream", capture_id=cid, conn_id=big["ConnectionId"])
    assert len(whole["Packets"]) == n and whole["More"] is False  # no last_id: all of it
    paged = page_through(live_ajax, "capture_conn_stream", "Packets", limit=50, capture_id=cid,
                         conn_id=big["ConnectionId"])
    assert [p["PacketId"] for p in paged] == [p["PacketId"] for p in whole["Packets"]]
    first = live_ajax.ok("capture_conn_stream", capture_id=cid, conn_id=big["ConnectionId"],
                         last_id=0)
    assert len(first["Packets"]) == min(n, 1000)  # with last_id: the documented 1000
    every = page_through(live_ajax, "capture_read", "Packets", limit=100, capture_id=cid)
    assert [p["PacketId"] for p in every] == list(range(1, 752))


def test_unknown_parameters_are_warned_about_not_refused(live, live_ajax, dns_capture,
                                                         caplog):
    caplog.set_level(logging.WARNING, logger="apppaccap.api.registry")
    body = live_ajax("capture_read", capture_id=dns_capture, limit=1, bogus=1)
    assert body["ErrorCode"] == 0 and len(body["ReturnValue"]["Packets"]) == 1
    assert body["Warnings"] == ["bogus: unknown parameter of capture_read, ignored"]
    typo = live_ajax("capture_read", captur_id=dns_capture)
    assert typo["ErrorCode"] == 4  # capture_id is required: the typo shows why
    assert typo["Warnings"] == [
        "captur_id: unknown parameter of capture_read, ignored (did you mean capture_id?)"]
    typo = live_ajax("capture_query_ip", capture_id=0, lastid=5)
    assert typo["ErrorCode"] == 0 and "did you mean last_id?" in typo["Warnings"][0]
    # known parameters, jQuery's list form and the token: no Warnings
    for action, params in [("capture_read", {"capture_id": dns_capture, "last_id": 3,
                                             "flags": 1, "limit": 2}),
                           ("capture_query_ip", {"capture_id": 0}),
                           ("apppaccap", {}),
                           ("capture_start_system", {"adapter[]": "lo", "filter": "udp port 9",
                                                     "token": "x"})]:
        body = live_ajax(action, **params)
        assert "Warnings" not in body, (action, body)
    live_ajax.ok("capture_stop_all")
    live_ajax("capture_read", capture_id=dns_capture, bogus=2)
    logged = [r.getMessage() for r in caplog.records if "bogus" in r.getMessage()]
    assert logged == ["action capture_read: unknown parameter 'bogus' ignored"]  # once


def test_ip_query_covers_ingested_captures(live, live_ajax):
    assert live_ajax("ip_query", ip="192.150.187.43")["ErrorCode"] == 6
    cid = ingest(live, live_ajax, corpus.path(BRO))
    ip = live_ajax.ok("ip_query", ip="192.150.187.43")
    inside = live_ajax.ok("ip_query", ip="192.150.187.43", capture_id=cid)
    assert ip["PacketCount"] == inside["PacketCount"] > 0
    assert ip["ByteCount"] == inside["ByteCount"]
    assert "192.150.187.43" in [r["Ip"] for r in live_ajax.ok("capture_query_ip", capture_id=0)]
    everything = page_through(live_ajax, "capture_query_ip", "Ips", limit=2, capture_id=0)
    assert sorted(r["Ip"] for r in everything) == sorted(
        r["Ip"] for r in live_ajax.ok("capture_query_ip", capture_id=cid))


def test_apc_flush_leaves_no_command_or_search_pointing_at_deleted_data(live, live_ajax,
                                                                      tmp_path):
    cid = ingest(live, live_ajax, corpus.path(DNS))
    export = live_ajax.ok("capture_export", capture_id=cid, path=str(tmp_path / "x.pcapng"))
    live.jobs.wait(export["CommandUid"])
    sid = live_ajax.ok("search_start", filter="dns", capture_id=cid)["SearchId"]
    everything = live_ajax.ok("search_start", filter="udp")["SearchId"]
    for s in (sid, everything):
        _wait_search(live_ajax, s)
    assert len(live_ajax.ok("command_list")) == 2
    assert live_ajax.ok("apc_flush", flags=0x1) == 0
    left = live_ajax.ok("command_list")
    assert left == [], left  # the ingest (Result: the capture) and the export are gone
    assert live_ajax.ok("search_list") == []
    assert live_ajax("search_open", search_id=sid)["ErrorCode"] == 6


def _wait_search(ajax, sid):
    deadline = time.monotonic() + 60
    while ajax.ok("search_open", search_id=sid)["State"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.live
def test_live_traffic_info_fields_and_paging(live, live_ajax, http_server, tmp_path):
    """On a real capture of lo: curl's request/response and a DNS query get their Info,
    the new fields find them (compared with tshark on the export), and the lists page."""
    port, _server = http_server
    dns_port = free_port()
    bpf = f"tcp port {port} or (udp port 53 and udp port {dns_port})"
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter=bpf)["CaptureId"]
    for _ in range(3):
        subprocess.run(["curl", "-s", "-o", "/dev/null", "-A", "fidelity-test/1",
                        f"http://127.0.0.1:{port}/hello.txt"], check=True)
    query = (b"\x1a\x2b\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
             b"\x07example\x03com\x00\x00\x01\x00\x01")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", dns_port))
        u.sendto(query, ("127.0.0.1", 53))
    time.sleep(0.5)
    stream = live_ajax.ok("capture_stream", capture_id=cap)["Packets"]
    live_ajax.ok("capture_stop_system", capture_id=cap)
    packets = page_through(live_ajax, "capture_read", "Packets", limit=7, capture_id=cap)
    assert [p["Info"] for p in stream] == [p["Info"] for p in packets[:len(stream)]]
    infos = [p["Info"] for p in packets]
    assert infos.count("GET /hello.txt HTTP/1.1") == 3
    assert infos.count("HTTP/1.0 200 OK") == 3  # python's http.server answers HTTP/1.0
    assert "Standard query 0x1a2b A example.com" in infos
    assert all(i == "" for i in infos if not i.startswith(("GET", "HTTP", "Standard")))
    conns = page_through(live_ajax, "capture_list_conns", "Connections", limit=1,
                         capture_id=cap)
    assert [c["ConnectionId"] for c in conns] == [
        c["ConnectionId"] for c in live_ajax.ok("capture_list_conns", capture_id=cap)]
    assert len(conns) == 4  # three curls and the DNS flow
    path = str(tmp_path / "live.pcapng")
    live.jobs.wait(live_ajax.ok("capture_export", capture_id=cap, path=path)["CommandUid"])
    for text in ['http.user_agent == "fidelity-test/1"', "http.response.code == 200",
                 'dns.qry.name == "example.com" && dns.flags.response == 0',
                 "http.request || http.response"]:
        sid = live_ajax.ok("search_start", filter=text, capture_id=cap)["SearchId"]
        _wait_search(live_ajax, sid)
        ours = [r["PacketId"] for r in page_through(live_ajax, "search_read", "Results",
                                                    search_id=sid)]
        theirs = [int(r[0]) for r in tshark.fields(path, "frame.number", display_filter=text,
                                                   options=NO_REASSEMBLY)]
        assert ours == theirs and ours, text
    # `http` on a port tshark does not give to HTTP: only the segments with a head
    # (docs/FILTERS.md, "HTTP on other ports"); tshark's heuristic adds the body segments
    sid = live_ajax.ok("search_start", filter="http", capture_id=cap)["SearchId"]
    _wait_search(live_ajax, sid)
    ours = [r["PacketId"] for r in live_ajax.ok("search_read", search_id=sid)["Results"]]
    assert ours == theirs


def _pages(ajax, action, key, idname, limit, **params):
    out, last, pages = [], 0, 0
    while True:
        page = ajax.ok(action, last_id=last, limit=limit, **params)
        assert len(page[key]) <= limit
        out += [x[idname] for x in page[key]]
        pages += 1
        if not page["More"]:
            return out, pages
        last = page["LastId"]


def test_every_list_action_pages(live, live_ajax, tmp_path):
    """The list actions without last_id in the reference page the same way when asked
    (the running processes and threads too, but they change between two calls)."""
    for name in (DNS, BRO, "wellformed/pcapng_http_image.pcapng"):
        ingest(live, live_ajax, corpus.path(name))
    for i in range(5):
        t = live_ajax.ok("trigger_add", name=f"t{i}", trigger_type=1,
                         path=str(tmp_path))["TriggerId"]
        live_ajax.ok("action_add", name=f"a{i}", action_type=2, path=str(tmp_path),
                     trigger_id=t)
        _wait_search(live_ajax, live_ajax.ok("search_start", filter=f"frame.len > {i}")[
            "SearchId"])
    for action, key, idname, params in [
            ("capture_list_completed", "Captures", "CaptureId", {}),
            ("trigger_list", "Triggers", "TriggerId", {}),
            ("action_list", "Actions", "ActionId", {}),
            ("search_list", "Searches", "SearchId", {})]:
        whole = live_ajax.ok(action, **params)
        assert isinstance(whole, list) and len(whole) >= 3, action
        ids, pages = _pages(live_ajax, action, key, idname, 2, **params)
        assert ids == sorted(x[idname] for x in whole), action  # each exactly once
        assert pages == (len(whole) + 1) // 2 + (len(whole) % 2 == 0), action
        assert live_ajax.ok(action, limit=2, **params) == whole[:2]


def test_application_dissectors_never_raise_on_cut_or_random_bytes():
    """HTTP, TLS and DNS parsing reads bytes anyone can send: every prefix of real messages
    and random bytes give an answer, never an exception."""
    import random

    from apppaccap.dissect import dns
    from apppaccap.dissect import http
    from apppaccap.dissect import tls
    from apppaccap.dissect.decode import decode
    from apppaccap.dissect.info import info
    from apppaccap.pcap.reader import CaptureReader
    rng = random.Random(18)
    payloads = []
    for name in ("wellformed/tls_three_sessions.pcap", DNS, BRO):
        for rec in list(CaptureReader(corpus.path(name)))[:120]:
            d = decode(rec.linktype, bytes(rec.data))
            if d.payload_len > 0:
                payloads.append(bytes(rec.data[d.payload_off:d.payload_off + d.payload_len]))
    payloads += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
                 for _ in range(300)]
    payloads += [b"\x16\x03\x01" + bytes(rng.randrange(256) for _ in range(80))
                 for _ in range(200)]  # TLS-looking records with garbage inside
    for p in payloads:
        for cut in {len(p), len(p) // 2, 13, 5, 1}:
            q = p[:cut]
            http.info(q), http.parse(q), tls.info(q), tls.handshake_types(q)
            tls.server_names(q), dns.info(q), dns.records(q), dns.a_records(q)
    for rec in CaptureReader(corpus.path(BRO)):
        data = bytes(rec.data)
        for cut in (len(data), 60, 54, 40):
            assert isinstance(info(decode(rec.linktype, data[:cut])), str)
