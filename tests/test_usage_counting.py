"""Usage accounting's counting, the compiled module (usage/_usagecount.c) against the
Python callback it replaces (usage/counting.py, the reference): the same packets counted
both ways give the same take() (packets, bytes and key5 per raw 5-tuple, nDPI state or
not), the same attribution asks in the same order and the same nDPI labels. Packets: every
file of the corpus replayed through libpcap's offline mode (pypcap's for the Python path),
and a real capture on `lo` read by both handles at once."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from apppaccap.usage import counting
from apppaccap.usage.applabel import FlowLabeller
from apppaccap.usage.applabel import FlowLabels
from apppaccap.usage.counting import Counter
from apppaccap.usage.counting import open_usage_file
from apppaccap.usage.counting import open_usage_handle
from tests.helpers import corpus
from tests.helpers.ports import free_port


def test_the_compiled_module_is_built():
    # setup.py builds it where libpcap-dev and a compiler are (CI, this box): without it
    # the tests below would compare the Python path with itself
    assert counting.COMPILED


class Run:
    """One Counter over a handle, with what it asked and labelled."""

    def __init__(self, handle, labels: bool):
        self.asks: list = []
        self.labels = FlowLabels()
        labeller = FlowLabeller.open(self.labels) if labels else None
        if labels:
            assert labeller is not None, "nDPI (libndpi4.2) is needed for this test"
        self.counter = Counter(handle, "test", lambda key5, syn: self.asks.append((key5, syn)),
                               labeller)

    def read(self) -> None:
        try:
            self.counter.read()
        except OSError:
            # a file cut mid-packet: pcap_dispatch says so, which pypcap lets pass; what
            # was read before is compared
            pass

    def result(self) -> tuple:
        took = self.counter.take()
        if self.counter.labeller is not None:
            self.counter.labeller.close()
        counts = {raw: (p, b, key5, st is not None) for raw, (p, b, key5, st) in took.items()}
        return counts, self.asks, dict(self.labels.known)


def both(rel: str, labels: bool):
    path = corpus.path(rel)
    try:
        py = open_usage_file(path, python=True)
    except OSError:
        with pytest.raises(OSError):
            open_usage_file(path)  # libpcap refuses it: so must the compiled opener
        return None
    runs = [Run(py, labels), Run(open_usage_file(path), labels)]
    assert runs[0].counter.linktype == runs[1].counter.linktype
    for r in runs:
        r.read()
        r.counter.handle.close()
    return runs[0].result(), runs[1].result()


@pytest.mark.parametrize("rel", corpus.files())
@pytest.mark.parametrize("labels", [True, False], ids=["labels", "nolabels"])
def test_same_counts_both_ways_over_the_corpus(rel, labels):
    out = both(rel, labels)
    if out is None:
        return
    python, compiled = out
    assert compiled[0] == python[0]
    assert compiled[1] == python[1]
    assert compiled[2] == python[2]


def test_the_corpus_is_counted_at_all():
    # the comparison above means something: most files give flows, asks and labels
    flows = asks = labelled = 0
    for rel in corpus.files("wellformed/"):
        out = both(rel, True)
        if out is not None:
            flows += len(out[1][0])
            asks += len(out[1][1])
            labelled += len(out[1][2])
    assert flows > 500 and asks > 500 and labelled > 50


def test_same_counts_both_ways_on_lo():
    """Both handles open on lo at once see the same packets: TCP connections (SYNs, data
    nDPI labels as HTTP), UDP datagrams, between two take()s."""
    port = free_port()
    runs = [Run(open_usage_handle("lo", python=True), True),
            Run(open_usage_handle("lo"), True)]
    assert runs[1].counter.compiled and not runs[0].counter.compiled
    srv = socket.create_server(("127.0.0.1", port))
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.recv(4096)
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            c.close()
    threading.Thread(target=serve, daemon=True).start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink_port = sink.getsockname()[1]
    takes = [[], []]
    try:
        for round_ in range(3):
            for _ in range(5):
                c = socket.create_connection(("127.0.0.1", port))
                c.sendall(b"GET / HTTP/1.0\r\nHost: example.test\r\n\r\n")
                while c.recv(4096):
                    pass
                c.close()
            for i in range(200):
                udp.sendto(bytes([round_, i % 256]) * 50, sink.getsockname())
            time.sleep(0.5)  # the kernel's block timeout (50 ms) hands the rest over
            for r, t in zip(runs, takes):
                r.read()
                t.append({raw: (p, b, key5, st is not None)
                          for raw, (p, b, key5, st) in r.counter.take().items()})
    finally:
        stop.set()
        srv.close()
        udp.close()
        sink.close()
    results = [r.result() for r in runs]
    for r in runs:
        r.counter.handle.close()
    # only this test's flows: other traffic on lo (other tests, benchmarks) may fall in
    # another take for each handle, read a moment apart
    mine = {port, sink_port}

    def ours(key) -> bool:
        return key[2] in mine or key[4] in mine
    for a, b in zip(takes[0], takes[1]):
        a, b = ({k: v for k, v in t.items() if ours(k)} for t in (a, b))
        assert len(a) >= 11  # 5 connections both ways, the datagrams' flow
        assert b == a
    asks = [[a for a in r[1] if ours(a[0])] for r in results]
    assert len(asks[0]) >= 30 and asks[1] == asks[0]
    labels = [{k: v for k, v in r[2].items() if port in (k[1][1], k[2][1])} for r in results]
    assert len(labels[0]) == 15 and labels[1] == labels[0]
    assert all("HTTP" in v[0] or "HTTP" in v[1] for v in labels[1].values())
