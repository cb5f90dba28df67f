"""Attack review of conn_follow and the download door: what a sender of crafted packets
(or a caller with crafted ids) can make them spend.

Findings fixed here (each test failed before its fix):
* segments waiting behind a hole were kept without bound - a connection whose sender
  skips one sequence number and never fills it made conn_follow hold all its payload in
  memory (max_bytes counted only bytes delivered) and scan the whole waiting list for
  every later packet (quadratic time);
* the number of Segments was bounded only through max_bytes: one-byte segments in
  alternating directions (or one-byte holes) made a Segment object per byte, 8 million
  objects for max_bytes = 8 MiB;
* /download/extract/1/² answered 500 (str.isdigit accepts superscripts, int() does not).
"""

from __future__ import annotations

import tracemalloc

from apppaccap.extract.follow import MAX_SEGMENTS
from apppaccap.extract.follow import Follow
from tests.helpers.app import ingest
from tests.helpers.packets import eth
from tests.helpers.packets import ipv4
from tests.helpers.packets import tcp
from tests.helpers.pcapfiles import pcap_header
from tests.helpers.pcapfiles import pcap_record

C, S = ("10.0.0.1", 40000), ("10.0.0.2", 80)
MIB = 1 << 20


def test_segments_behind_a_hole_are_bounded_in_memory():
    f = Follow(MIB, C)
    f.tcp(C, S, 1000, 0, 0x02, b"", 0)
    tracemalloc.start()
    try:
        # 30 MB, every segment one byte ahead of what the receiver still waits for
        for i in range(30000):
            f.tcp(C, S, 1002 + i * 1000, 0, 0x18, b"x" * 1000, 1000)
            if f.truncated:
                break
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f.truncated
    assert peak < 3 * MIB, peak


def test_one_byte_segments_do_not_make_millions_of_objects():
    f = Follow(8 * MIB, C)
    n = 0
    while not f.truncated and n < 3 * MAX_SEGMENTS:
        f.udp(C if n % 2 == 0 else S, S if n % 2 == 0 else C, b"z")
        n += 1
    assert f.truncated and len(f.chunks) <= MAX_SEGMENTS


def _frame(src, dst, seq, ack, flags, payload=b"") -> bytes:
    return eth(ipv4(src[0], dst[0], 6, tcp(src[1], dst[1], seq, ack, flags, payload=payload)))


def test_conn_follow_of_a_never_filled_hole_says_truncated(live, live_ajax, tmp_path):
    path = tmp_path / "hole.pcap"
    with open(path, "wb") as fh:
        fh.write(pcap_header())
        fh.write(pcap_record(1_700_000_000_000_000_000, _frame(C, S, 1000, 0, 0x02)))
        for i in range(4000):  # byte 1001 never comes: everything after it waits
            fh.write(pcap_record(1_700_000_000_000_000_000 + (i + 1) * 1000,
                                 _frame(C, S, 1002 + i * 1000, 1, 0x18, b"y" * 1000)))
    capture_id = ingest(live, live_ajax, path)
    (conn,) = live_ajax.ok("capture_list_conns", capture_id=capture_id)
    r = live_ajax.ok("conn_follow", capture_id=capture_id, connection_id=conn["ConnectionId"],
                     max_bytes=MIB)
    assert r["Segments"] == [] and r["Truncated"] is True  # not a silent empty stream


def test_download_with_non_ascii_digits_is_not_found(live):
    from apppaccap.web.app import create_app
    live.config.open_door = True  # no login asked: the path itself is under test
    client = create_app(live).test_client()
    for path in ("/download/extract/1/\u00b2", "/download/extract/\u0663/1"):
        assert client.get(path).status_code == 404
