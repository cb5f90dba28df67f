"""conn_follow against tshark's Follow TCP Stream (`tshark -q -z follow,tcp,raw,N`).

Corpus files with TCP are ingested through the API; every TCP connection whose 5-tuple is
one tshark stream (tshark splits a reused 5-tuple into several streams, the capture
database keeps one connection) is followed and compared byte for byte, direction by
direction and in order, with tshark's output. A live capture on `lo` of a small HTTP
exchange is compared with tshark on a tcpdump recorded at the same time.
"""

from __future__ import annotations

import collections
import urllib.request

import pytest

from tests.helpers import corpus
from tests.helpers.app import ingest
from tests.helpers.live import Tcpdump
from tests.helpers.packets import eth
from tests.helpers.packets import ipv4
from tests.helpers.packets import tcp
from tests.helpers.pcapfiles import pcap_header
from tests.helpers.pcapfiles import pcap_record
from tests.helpers.tshark import fields
from tests.helpers.tshark import needs_tshark
from tests.helpers.tshark import run

TCP_FILES = ["wellformed/http_get_file_download.pcap", "wellformed/http_vlan_download.pcap",
             "wellformed/http_bro_org_multi_object.pcap",
             "wellformed/http_large_mixed_2k_packets.pcap", "wellformed/ftp_bigtransfer.pcap",
             "wellformed/ftp_ipv6_retr.pcap", "wellformed/rawip_ipv6_http_streams.pcap",
             "wellformed/tls_three_sessions.pcap", "wellformed/smb2_readwrite.pcap"]
GAPPED = {"wellformed/http_bro_org_multi_object.pcap", "wellformed/ftp_bigtransfer.pcap",
          "wellformed/http_large_mixed_2k_packets.pcap"}
MAX = 8 << 20


def tshark_streams(path, kind: str = "tcp") -> dict:
    """{frozenset of the two (ip, port) ends: {tcp.stream (udp.stream), ...}}."""
    out = collections.defaultdict(set)
    for row in fields(path, f"{kind}.stream", "ip.src", "ipv6.src", f"{kind}.srcport",
                      "ip.dst", "ipv6.dst", f"{kind}.dstport", display_filter=kind):
        stream, s4, s6, sport, d4, d6, dport = row
        src = (s4 or s6).split(",")[-1]  # the innermost header (tunnels list several)
        dst = (d4 or d6).split(",")[-1]
        out[frozenset({(src, int(sport)), (dst, int(dport))})].add(int(stream))
    return out


def _node(text: str) -> tuple:
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


def tshark_follow(path, stream: int, kind: str = "tcp") -> tuple:
    """(node 0 as (ip, port), [(dir, bytes)] with consecutive same-direction data merged)
    from tshark's raw follow output: hex lines, tab-indented ones from node 1."""
    text = run(path, "-q", "-z", f"follow,{kind},raw,{stream}")
    node0, chunks = None, []
    body = text.split("=" * 67)[1]
    for line in body.splitlines():
        if line.startswith("Node 0: "):
            node0 = _node(line[8:])
        elif not line or line.startswith(("Follow:", "Filter:", "Node 1: ")):
            continue
        else:
            chunks.append((1 if line.startswith("\t") else 0, bytes.fromhex(line.strip())))
    return node0, merge(chunks)


def merge(chunks) -> list:
    out = []
    for d, data in chunks:
        if out and out[-1][0] == d:
            out[-1] = (d, out[-1][1] + data)
        elif data:
            out.append((d, data))
    return out


def ours(result: dict) -> list:
    """conn_follow's segments as tshark writes them (a hole is tshark's marker text)."""
    chunks = []
    for s in result["Segments"]:
        if "Missing" in s:
            data = b"[%d bytes missing in capture file]\x00" % s["Missing"]
        else:
            data = bytes.fromhex(s["Data"])
        chunks.append((s["Dir"], data))
    return merge(chunks)


def check_result_shape(r: dict) -> None:
    per = [0, 0]
    want = [0, 0]
    for s in r["Segments"]:
        assert s["Data"] == s["Data"].lower()
        assert s["Offset"] == want[s["Dir"]]
        n = len(s["Data"]) // 2
        per[s["Dir"]] += n
        want[s["Dir"]] += n + s.get("Missing", 0)
    assert per == [r["ClientBytes"], r["ServerBytes"]]
    assert r["MissingBytes"] == sum(s.get("Missing", 0) for s in r["Segments"])


def compare_capture(ajax, capture_id: int, path, proto: int = 6,
                    first: int = 100) -> tuple[int, int, int]:
    """Compare the `first` TCP (UDP) connections that are one tshark stream each (one
    tshark run per stream): (compared, skipped, with holes)."""
    kind = {6: "tcp", 17: "udp"}[proto]
    streams = tshark_streams(path, kind)
    conns = [c for c in ajax.ok("capture_list_conns", capture_id=capture_id, limit=10000)
             if c["Protocol"] == proto]
    compared = skipped = holes = 0
    for c in conns[:first]:
        key = frozenset({(c["LocalIp"], c["LocalPort"]), (c["RemoteIp"], c["RemotePort"])})
        if len(streams.get(key, ())) != 1:
            skipped += 1
            continue
        (stream,) = streams[key]
        r = ajax.ok("conn_follow", capture_id=capture_id, connection_id=c["ConnectionId"],
                    max_bytes=MAX)
        assert not r["Truncated"]
        check_result_shape(r)
        node0, want = tshark_follow(path, stream, kind)
        got = ours(r)
        if node0 != (r["ClientIp"], r["ClientPort"]):
            assert node0 == (r["ServerIp"], r["ServerPort"]), (node0, r["ClientIp"])
            got = [(1 - d, data) for d, data in got]
        assert [(d, len(b)) for d, b in got] == [(d, len(b)) for d, b in want], \
            (path, stream, c["ConnectionId"])
        assert got == want, (path, stream)
        compared += 1
        holes += r["MissingBytes"] > 0
    return compared, skipped, holes


@needs_tshark
@pytest.mark.parametrize("rel", TCP_FILES)
def test_corpus_follow_equals_tshark(live, live_ajax, rel):
    path = corpus.path(rel)
    capture_id = ingest(live, live_ajax, path)
    compared, skipped, holes = compare_capture(live_ajax, capture_id, path)
    assert compared >= 1
    assert skipped <= compared
    # the captures with lost segments do exercise tshark's "bytes missing" rule
    assert (holes > 0) == (rel in GAPPED)
    print(f"{rel}: {compared} connections equal tshark ({holes} with holes), {skipped} "
          "reused 5-tuples skipped")


@needs_tshark
def test_udp_follow_equals_tshark(live, live_ajax):
    """UDP: every datagram in order, as `tshark -z follow,udp,raw,N`."""
    path = corpus.path("wellformed/dns_udp_mixed.pcap")
    capture_id = ingest(live, live_ajax, path)
    compared, skipped, holes = compare_capture(live_ajax, capture_id, path, proto=17,
                                               first=40)
    assert compared >= 10 and skipped <= compared and holes == 0
    print(f"dns_udp_mixed: {compared} UDP connections equal tshark, {skipped} skipped")


def test_limit_cuts_and_says_so(live, live_ajax):
    path = corpus.path("wellformed/http_get_file_download.pcap")
    capture_id = ingest(live, live_ajax, path)
    (conn,) = [c for c in live_ajax.ok("capture_list_conns", capture_id=capture_id)
               if c["Protocol"] == 6]
    full = live_ajax.ok("conn_follow", capture_id=capture_id,
                        connection_id=conn["ConnectionId"])
    assert not full["Truncated"] and full["ClientBytes"] + full["ServerBytes"] > 1000
    cut = live_ajax.ok("conn_follow", capture_id=capture_id,
                       connection_id=conn["ConnectionId"], max_bytes=1000)
    assert cut["Truncated"]
    check_result_shape(cut)
    assert cut["ClientBytes"] + cut["ServerBytes"] == 1000
    whole = b"".join(bytes.fromhex(s["Data"]) for s in full["Segments"])
    assert b"".join(bytes.fromhex(s["Data"]) for s in cut["Segments"]) == whole[:1000]
    for bad in (0, 8 * 1024 * 1024 + 1):
        body = live_ajax("conn_follow", capture_id=capture_id,
                         connection_id=conn["ConnectionId"], max_bytes=bad)
        assert body["ErrorCode"] != 0 and "max_bytes" in str(body["ReturnValue"])
    body = live_ajax("conn_follow", capture_id=capture_id, connection_id=99999)
    assert body["ErrorCode"] != 0 and "connection_id" in str(body["ReturnValue"])


@needs_tshark
def test_live_http_follow_equals_tshark(live, live_ajax, http_server, tmp_path):
    port, _ = http_server
    bpf = f"tcp port {port}"
    ref = tmp_path / "ref.pcap"
    dump = Tcpdump("lo", bpf, str(ref))
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter=bpf)
    try:
        for _ in range(2):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello.txt", timeout=10) as r:
                assert r.read() == b"hello world\n" * 100
    finally:
        dump.stop()
        live_ajax.ok("capture_stop_system", capture_id=cap["CaptureId"])
    capture_id = cap["CaptureId"]
    compared, skipped, holes = compare_capture(live_ajax, capture_id, ref)
    assert (compared, skipped, holes) == (2, 0, 0)
    for c in live_ajax.ok("capture_list_conns", capture_id=capture_id):
        r = live_ajax.ok("conn_follow", capture_id=capture_id, connection_id=c["ConnectionId"])
        assert r["ServerPort"] == port and r["ClientIp"] == "127.0.0.1"
        request = bytes.fromhex(r["Segments"][0]["Data"])
        assert r["Segments"][0]["Dir"] == 0 and request.startswith(b"GET /hello.txt HTTP/1.1")
        response = b"".join(bytes.fromhex(s["Data"]) for s in r["Segments"] if s["Dir"] == 1)
        assert response.startswith(b"HTTP/1.0 200") and \
            response.endswith(b"\r\n\r\n" + b"hello world\n" * 100)


def _tcp_frame(src, dst, sport, dport, seq, ack, flags, payload=b"") -> bytes:
    return eth(ipv4(src, dst, 6, tcp(sport, dport, seq, ack, flags, payload=payload)))


@needs_tshark
def test_reordered_retransmitted_lost_and_cut_segments(live, live_ajax, tmp_path):
    """A made-up exchange with every case: out of order, a retransmission carrying new
    bytes (and different old ones), a hole the server acknowledges, a segment cut by the
    snap length, a segment left waiting at the end. Equal to tshark, and to the bytes
    worked out by hand."""
    c, s = ("10.0.0.1", 40000), ("10.0.0.2", 80)
    A, S_, PA, F = 0x10, 0x02, 0x18, 0x11
    frames = [
        (c, s, 1000, 0, S_, b""), (s, c, 5000, 1001, 0x12, b""), (c, s, 1001, 5001, A, b""),
        (c, s, 1006, 5001, PA, b"WORLD"), (c, s, 1001, 5001, PA, b"HELLO"),
        (c, s, 1001, 5001, PA, b"xxxxxxxxxx!!"), (s, c, 5001, 1013, PA, b"OK"),
        (c, s, 1023, 5003, PA, b"later"), (s, c, 5003, 1028, PA, b"ack past hole"),
        (c, s, 1028, 5016, PA, b"0123456789"), (c, s, 1038, 5016, PA, b"next"),
        (c, s, 1100, 5016, PA, b"never"), (s, c, 5016, 1042, F, b""),
    ]
    path = tmp_path / "made.pcap"
    with open(path, "wb") as fh:
        fh.write(pcap_header())
        for i, (src, dst, seq, ack, flags, payload) in enumerate(frames):
            frame = _tcp_frame(src[0], dst[0], src[1], dst[1], seq, ack, flags, payload)
            cut = frame[:-6] if payload == b"0123456789" else frame  # snap length: "0123"
            fh.write(pcap_record(1_700_000_000_000_000_000 + i * 1000, cut,
                                 origlen=len(frame)))
    capture_id = ingest(live, live_ajax, path)
    assert compare_capture(live_ajax, capture_id, path) == (1, 0, 1)
    (conn,) = live_ajax.ok("capture_list_conns", capture_id=capture_id)
    r = live_ajax.ok("conn_follow", capture_id=capture_id, connection_id=conn["ConnectionId"])
    assert (r["ClientIp"], r["ClientPort"], r["ServerIp"], r["ServerPort"]) == (*c, *s)
    assert [(g["Dir"], g["Offset"], bytes.fromhex(g["Data"]), g.get("Missing"))
            for g in r["Segments"]] == [
        (0, 0, b"HELLOWORLD!!", None), (1, 0, b"OK", None), (0, 12, b"", 10),
        (0, 22, b"later", None), (1, 2, b"ack past hole", None), (0, 27, b"0123next", None)]
    assert (r["ClientBytes"], r["ServerBytes"], r["MissingBytes"]) == (25, 15, 10)


@needs_tshark
def test_reused_port_pair_is_both_streams_in_turn(live, live_ajax, tmp_path):
    """Two connections on one address and port pair: the capture keeps one connection,
    tshark two streams; conn_follow gives stream 0 then stream 1."""
    c, s = ("10.0.0.1", 40001), ("10.0.0.2", 80)
    frames = []
    for isn_c, isn_s, ask, say in ((1000, 5000, b"one", b"uno"), (90000, 70000, b"two",
                                                                  b"dos")):
        frames += [(c, s, isn_c, 0, 0x02, b""), (s, c, isn_s, isn_c + 1, 0x12, b""),
                   (c, s, isn_c + 1, isn_s + 1, 0x18, ask),
                   (s, c, isn_s + 1, isn_c + 4, 0x18, say),
                   (c, s, isn_c + 4, isn_s + 4, 0x11, b""),
                   (s, c, isn_s + 4, isn_c + 5, 0x11, b""),
                   (c, s, isn_c + 5, isn_s + 5, 0x10, b"")]
    path = tmp_path / "reused.pcap"
    with open(path, "wb") as fh:
        fh.write(pcap_header())
        for i, (src, dst, seq, ack, flags, payload) in enumerate(frames):
            fh.write(pcap_record(1_700_000_000_000_000_000 + i * 1_000_000,
                                 _tcp_frame(src[0], dst[0], src[1], dst[1], seq, ack, flags,
                                            payload)))
    capture_id = ingest(live, live_ajax, path)
    (conn,) = live_ajax.ok("capture_list_conns", capture_id=capture_id)
    assert tshark_streams(path) == {frozenset({c, s}): {0, 1}}
    want = merge(tshark_follow(path, 0)[1] + tshark_follow(path, 1)[1])
    r = live_ajax.ok("conn_follow", capture_id=capture_id, connection_id=conn["ConnectionId"])
    check_result_shape(r)
    assert ours(r) == want == [(0, b"one"), (1, b"uno"), (0, b"two"), (1, b"dos")]
