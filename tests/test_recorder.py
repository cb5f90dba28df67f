"""Recorder logic with fabricated frames and an in-memory writer (no root)."""

from concurrent.futures import Future

from apppaccap.capture import recorder as rec_mod
from apppaccap.capture.recorder import Recorder
from apppaccap.dissect.decode import decode
from tests.helpers.packets import eth
from tests.helpers.packets import ipv4
from tests.helpers.packets import tcp


class Sink:
    """Stands in for the database writer: runs nothing, remembers batches."""

    def __init__(self):
        self.batches = []

    def submit(self, fn):
        self.batches.append(fn)
        f = Future()
        f.set_result(None)
        return f


def tcp_frame(src, dst, sport, dport, flags, payload=b""):
    segment = tcp(sport, dport, seq=1, ack=1, flags=flags, win=1000, payload=payload)
    return eth(ipv4(src, dst, 6, segment, ident=0))


def feed(rec, frames, t0=0):
    for i, f in enumerate(frames):
        d = decode(1, f)
        rec.add(t0 + i * 1000, 0, f, len(f), d, rec.conn_for(d, t0 + i * 1000))


def test_connection_counters_and_state():
    rec = Recorder(Sink(), local_ips=frozenset({"10.0.0.1"}))
    feed(rec, [tcp_frame("10.0.0.1", "10.0.0.2", 5000, 80, 0x02),
               tcp_frame("10.0.0.2", "10.0.0.1", 80, 5000, 0x12),
               tcp_frame("10.0.0.1", "10.0.0.2", 5000, 80, 0x10),
               tcp_frame("10.0.0.1", "10.0.0.2", 5000, 80, 0x18, b"hello"),
               tcp_frame("10.0.0.1", "10.0.0.2", 5000, 80, 0x11),
               tcp_frame("10.0.0.2", "10.0.0.1", 80, 5000, 0x11)])
    (c,) = rec.conns.values()
    assert (c.local, c.remote) == (("10.0.0.1", 5000), ("10.0.0.2", 80))
    assert (c.pout, c.pin, c.state) == (4, 2, "CLOSED")
    assert c.bout == 54 * 3 + 59 and c.bin == 54 * 2


def test_flow_aggregates_expand_per_ip_port_protocol():
    rec = Recorder(Sink())
    feed(rec, [tcp_frame("10.0.0.1", "10.0.0.2", 5000, 80, 0x18, b"x")] * 3)
    ips, agg, (agg_sec, proc_sec, span) = rec._expand()
    assert ips["10.0.0.1"][:2] == [3, 165] and ips["10.0.0.2"][:2] == [3, 165]
    assert agg[(0, "", 0, 6)] == [3, 165]
    assert agg[(2, "80", 0, 6)] == [3, 165] and agg[(2, "5000", 0, 6)] == [3, 165]
    # the same by second, and the batch's first and last packet time
    assert agg_sec == {(k, key, 0, p): v for (k, key, _m, p), v in agg.items()}
    assert proc_sec == {}  # no process labels here
    assert span[0] <= span[1]


def test_per_second_aggregates_split_minutes_and_processes():
    rec = Recorder(Sink())
    frame = tcp_frame("10.0.0.1", "10.0.0.2", 5000, 80, 0x18, b"x")
    for t in (0, 1, 61):  # seconds 0, 1 (minute 0) and 61 (minute 1)
        feed(rec, [frame], t0=t * 10**9)
    _ips, agg, (agg_sec, _procs, span) = rec._expand()
    assert agg[(0, "", 0, 6)] == [2, 110] and agg[(0, "", 1, 6)] == [1, 55]
    assert [agg_sec[(0, "", s, 6)] for s in (0, 1, 61)] == [[1, 55]] * 3
    assert span[1] - span[0] >= 61 * 10**9


def test_ended_and_idle_flows_are_forgotten(monkeypatch):
    monkeypatch.setattr(rec_mod, "MAX_CONNS", 2)
    rec = Recorder(Sink())
    feed(rec, [tcp_frame("10.0.0.1", "10.0.0.2", 5000 + i, 80, 0x04) for i in range(3)])
    feed(rec, [tcp_frame("10.0.0.1", "10.0.0.2", 6000, 80, 0x18)], t0=10**9)
    rec.flush()
    assert len(rec.conns) == 1   # the three reset flows went; the live one stays
    assert rec.next_conn == 5


def test_an_ended_tcp_flow_is_labelled_at_its_last_packet():
    """nDPI's state of a flow is freed when the flow is CLOSED or RESET (not at the end of
    the capture): a file of many short flows keeps only the open ones in detection."""
    from apppaccap.capture.applabels import AppLabeller
    labeller = AppLabeller.open()
    assert labeller is not None   # the test image installs libndpi
    rec = Recorder(Sink(), local_ips=frozenset({"10.0.0.1"}))
    rec.labeller = labeller
    try:
        feed(rec, [tcp_frame("10.0.0.1", "10.0.0.2", 5000, 8080, 0x02),
                   tcp_frame("10.0.0.2", "10.0.0.1", 8080, 5000, 0x12),
                   tcp_frame("10.0.0.1", "10.0.0.2", 5000, 8080, 0x18, b"\x01\x02\x03")])
        (c,) = rec.conns.values()
        assert c.app is None and c.id in labeller.pending   # open: still in detection
        feed(rec, [tcp_frame("10.0.0.1", "10.0.0.2", 5000, 8080, 0x11),
                   tcp_frame("10.0.0.2", "10.0.0.1", 8080, 5000, 0x11)], t0=10_000)
        assert c.state == "CLOSED" and c.app is not None and not labeller.pending
        feed(rec, [tcp_frame("10.0.0.1", "10.0.0.3", 5001, 8080, 0x02),
                   tcp_frame("10.0.0.3", "10.0.0.1", 8080, 5001, 0x04)], t0=20_000)
        assert len(rec.conns) == 2 and not labeller.pending   # RESET: settled too
    finally:
        labeller.close()
