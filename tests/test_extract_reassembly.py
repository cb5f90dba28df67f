"""Unit tests of the TCP reassembler with synthetic segments."""

import random

import pytest

from apppaccap.extract.reassembly import Reassembler


class Rec:
    """Sink recording what the reassembler delivers."""

    def __init__(self):
        self.out = bytearray()
        self.events = []
        self.ended = None

    def data(self, buf, ts):
        self.out += buf
        self.events.append(("data", bytes(buf), ts))

    def gap(self, n):
        self.events.append(("gap", n))

    def end(self, fin=False):
        assert self.ended is None, "end() called twice"
        self.ended = fin


def make(limit=1 << 20, isn=1000, syn=True):
    rec = Rec()
    r = Reassembler(rec, limit)
    if syn:
        r.segment(isn, b"", 0, syn=True)
    return r, rec


def segs(data, seq, mss):
    return [((seq + off) & 0xFFFFFFFF, data[off:off + mss]) for off in range(0, len(data), mss)]


DATA = bytes(range(256)) * 40


def test_in_order():
    r, rec = make()
    for seq, p in segs(DATA, 1001, 100):
        r.segment(seq, p, 1)
    assert rec.out == DATA and r.missing == 0


def test_out_of_order_shuffled():
    r, rec = make()
    s = segs(DATA, 1001, 97)
    random.Random(7).shuffle(s)
    for seq, p in s:
        r.segment(seq, p, 1)
    assert rec.out == DATA
    assert r.missing == 0 and not r.starts and r.pend_bytes == 0


def test_retransmission_dropped():
    r, rec = make()
    s = segs(DATA, 1001, 100)
    for seq, p in s[:10] + s[3:6] + s[10:] + s[-2:]:
        r.segment(seq, p, 1)
    assert rec.out == DATA
    assert r.dup_bytes == 300 + len(s[-2][1]) + len(s[-1][1])


def test_overlap_first_received_wins_after_delivery():
    r, rec = make()
    r.segment(1001, b"AAAAAAAAAA", 1)
    # A retransmission with different bytes over the delivered range plus 5 new bytes.
    r.segment(1006, b"BBBBBBBBBB", 2)
    assert bytes(rec.out) == b"AAAAAAAAAABBBBB"


def test_overlap_first_received_wins_while_buffered():
    r, rec = make()
    r.segment(1011, b"XXXXXXXXXX", 1)       # [10, 20) buffered first
    r.segment(1006, b"yyyyyyyyyyyyyyyyyyyy", 2)  # [5, 25) overlaps it
    r.segment(1001, b"aaaaa", 3)            # fills [0, 5)
    assert bytes(rec.out) == b"aaaaa" + b"yyyyy" + b"XXXXXXXXXX" + b"yyyyy"
    assert r.missing == 0


def test_wraparound_near_2_32():
    isn = 0xFFFFFFFF - 3000
    r, rec = make(isn=isn)
    s = segs(DATA, isn + 1, 1000)
    s[2], s[4] = s[4], s[2]                 # reorder across the wrap too
    for seq, p in s:
        r.segment(seq, p, 1)
    assert rec.out == DATA and r.missing == 0


def test_wraparound_mid_stream_pickup():
    r, rec = make(syn=False)
    s = segs(DATA, 0xFFFFFF00, 500)
    for seq, p in s:
        r.segment(seq, p, 1)
    assert rec.out == DATA


def test_mid_stream_pickup_starts_at_first_seq():
    r, rec = make(syn=False)
    s = segs(DATA, 777, 100)
    for seq, p in s[5:]:
        r.segment(seq, p, 1)
    # Earlier data arriving later is older than the start point: dropped.
    r.segment(*s[0], 1)
    assert rec.out == DATA[500:]


def test_gap_skipped_when_buffer_full():
    r, rec = make(limit=1000)
    s = segs(DATA, 1001, 100)
    lost = s[3]
    for seq, p in s:
        if (seq, p) != lost:
            r.segment(seq, p, 1)
    assert r.missing == 100
    assert ("gap", 100) in rec.events
    assert rec.out == DATA[:300] + DATA[400:]
    assert r.pend_bytes <= 1000


def test_gap_filled_before_limit_is_not_a_gap():
    r, rec = make(limit=10_000)
    s = segs(DATA, 1001, 100)
    for seq, p in s[:3] + s[4:40] + [s[3]] + s[40:]:
        r.segment(seq, p, 1)
    assert rec.out == DATA and r.missing == 0


def test_hole_wider_than_buffer_skipped_at_once():
    r, rec = make(limit=1000)
    r.segment(1001, b"a" * 100, 1)
    r.segment(1001 + 100 + 50_000, b"b" * 100, 2)   # 50 kB hole > limit
    assert r.missing == 50_000
    assert bytes(rec.out) == b"a" * 100 + b"b" * 100


def test_finish_delivers_buffered_data_with_gaps():
    r, rec = make()
    r.segment(1001, b"a" * 10, 1)
    r.segment(1031, b"c" * 10, 1)
    r.segment(1021, b"b" * 5, 1)
    assert bytes(rec.out) == b"a" * 10
    r.finish()
    assert bytes(rec.out) == b"a" * 10 + b"b" * 5 + b"c" * 10
    assert r.missing == 15
    assert [e for e in rec.events if e[0] == "gap"] == [("gap", 10), ("gap", 5)]
    assert rec.ended is False           # no FIN seen


def test_fin_ends_stream_after_out_of_order_data():
    r, rec = make()
    r.segment(1011, b"b" * 10, 1, fin=True)  # FIN with data, out of order
    assert rec.ended is None
    r.segment(1001, b"a" * 10, 2)
    assert rec.ended is True
    assert bytes(rec.out) == b"a" * 10 + b"b" * 10
    r.segment(1021, b"late", 3)          # nothing after the FIN
    assert bytes(rec.out) == b"a" * 10 + b"b" * 10


def test_syn_with_payload_and_retransmitted_syn():
    rec = Rec()
    r = Reassembler(rec)
    r.segment(500, b"hello", 1, syn=True)
    r.segment(500, b"hello", 2, syn=True)
    r.segment(506, b" world", 3)
    assert bytes(rec.out) == b"hello world"


def test_timestamps_follow_segments():
    r, rec = make()
    r.segment(1011, b"b" * 10, 20)
    r.segment(1001, b"a" * 10, 10)
    assert [(e[1][:1], e[2]) for e in rec.events if e[0] == "data"] == [(b"a", 10), (b"b", 20)]


@pytest.mark.parametrize("seed", range(5))
def test_random_loss_reorder_duplication(seed):
    rnd = random.Random(seed)
    r, rec = make(limit=3000)
    s = segs(DATA, 1001, 64)
    dropped = set(rnd.sample(range(len(s)), 6))
    stream = [x for i, x in enumerate(s) if i not in dropped]
    stream += rnd.sample(stream, 20)            # duplicates
    # Local reordering only (a window of 8 segments).
    stream = sorted(stream, key=lambda x: ((x[0] - 1001) & 0xFFFFFFFF) + rnd.randint(0, 8 * 64))
    for seq, p in stream:
        r.segment(seq, p, 1)
    r.finish()
    expect = b"".join(p for i, (_, p) in enumerate(s) if i not in dropped)
    assert bytes(rec.out) == expect
    last_kept = max(i for i in range(len(s)) if i not in dropped)
    assert r.missing == sum(len(s[i][1]) for i in dropped if i < last_kept)


def test_many_tiny_segments_in_reverse_order_stay_fast():
    import time

    r, rec = make(limit=1 << 20)
    data = bytes(range(256)) * 39       # 9984 one-byte segments (~650 kB with overhead)
    t0 = time.perf_counter()
    for i in range(len(data) - 1, -1, -1):
        r.segment(1001 + i, data[i:i + 1], 1)
    assert bytes(rec.out) == data
    assert time.perf_counter() - t0 < 5


def test_buffer_bound_counts_per_segment_overhead():
    r, rec = make(limit=10_000)
    for i in range(1, 1000):                       # 1-byte segments after a 1-byte hole
        r.segment(1001 + 2 * i, b"x", 1)
    assert r.pend_bytes <= 10_000 and r.missing > 0


def test_release_delivers_what_waits_and_reports_the_holes():
    # What the Extractor calls when its connections together hold too much.
    r, rec = make()
    r.segment(1004, b"def", 1)
    r.segment(1010, b"jk", 2, fin=True)
    assert r.pend_bytes and rec.out == b""
    r.release()
    assert bytes(rec.out) == b"defjk" and r.missing == 3 + 3 and r.pend_bytes == 0
    assert [e for e in rec.events if e[0] == "gap"] == [("gap", 3), ("gap", 3)]
    assert rec.ended is True                    # the FIN was reached in sequence
