"""Throughput and memory of the file-extraction engine.

Builds one synthetic HTTP/1.1 keep-alive connection in memory (requests,
Content-Length responses cut into 1460-byte segments, one client ACK per two
data segments, one adjacent pair of data segments swapped every
``--reorder-every`` segments), then replays it as many connections as needed
to reach ``--mb`` megabytes of server payload, through
``apppaccap.extract.Extractor`` with spool files on disk (deleted by the sink
as they arrive).

Reports reassembled MB/s (server payload bytes / wall time of the feed loop),
files, peak RSS (ru_maxrss) before/after the feed, and, in a second smaller
run under tracemalloc, the peak of memory allocated by the engine itself.

    .venv/bin/python benchmarks/extract.py --mb 500
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import resource
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from apppaccap.extract import Extractor  # noqa: E402

MSS = 1460
ACK, PSH, SYN = 0x10, 0x08, 0x02
CLIENT, SERVER = ("10.0.0.1", 40000), ("10.0.0.2", 80)


def build_connection(objects: int, object_bytes: int, reorder_every: int,
                     framing: str = "length"):
    """Packets of one keep-alive connection: list of (from_client, seq, ack, flags, payload)."""
    # Half random, half text: realistic for the gzip variant.
    pattern = os.urandom(1 << 19) + b"the quick brown fox jumps over the lazy dog\n" * 11916
    body = (pattern * (object_bytes // len(pattern) + 1))[:object_bytes]
    wire, extra = body, b""
    if framing == "gzip":
        wire, extra = gzip.compress(body, 6), b"Content-Encoding: gzip\r\n"
    if framing == "chunked":
        step = 8192
        wire = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                        for i in range(0, len(body), step)) + b"0\r\n\r\n"
        length = b"Transfer-Encoding: chunked\r\n"
    else:
        length = b"Content-Length: %d\r\n" % len(wire)
    pkts = [(True, 999, 0, SYN, b""), (False, 4999, 1000, SYN | ACK, b"")]
    cseq, sseq = 1000, 5000
    for i in range(objects):
        req = (f"GET /files/object{i}.bin HTTP/1.1\r\nHost: bench.example\r\n"
               f"User-Agent: bench\r\n\r\n").encode()
        pkts.append((True, cseq, sseq, ACK | PSH, req))
        cseq += len(req)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n" + length + extra
        stream = head + b"\r\n" + wire
        data = []
        for off in range(0, len(stream), MSS):
            seg = stream[off:off + MSS]
            data.append((False, sseq, cseq, ACK, seg))
            sseq += len(seg)
        # Reordering: swap an adjacent pair now and then.
        for k in range(reorder_every, len(data) - 1, reorder_every):
            data[k], data[k + 1] = data[k + 1], data[k]
        for k, p in enumerate(data):
            pkts.append(p)
            if k % 2:
                pkts.append((True, cseq, p[1] + len(p[4]), ACK, b""))
    return pkts, sseq - 5000, hashlib.sha256(body).hexdigest()


class CountingSink:
    """Counts files, checks their hash, removes their spool files."""

    def __init__(self, sha256: str):
        self.sha256 = sha256
        self.files = self.bytes = self.incomplete = self.wrong = 0

    def file(self, ev):
        self.files += 1
        self.bytes += ev.size
        self.incomplete += not ev.complete
        self.wrong += ev.sha256 != self.sha256
        os.unlink(ev.spool_path)


def feed(pkts, conns: int, spool: str, sha256: str):
    """Replay ``pkts`` as ``conns`` connections; return (seconds, sink)."""
    sink = CountingSink(sha256)
    ex = Extractor(sink, spool_dir=spool)
    tcp = ex.tcp
    (cip, cport), (sip, sport) = CLIENT, SERVER
    t0 = time.perf_counter()
    for conn_id in range(1, conns + 1):
        for from_client, seq, ack, flags, payload in pkts:
            if from_client:
                tcp(conn_id, 0, cip, cport, sip, sport, seq, ack, flags, payload)
            else:
                tcp(conn_id, 0, sip, sport, cip, cport, seq, ack, flags, payload)
        ex.close_conn(conn_id)
    ex.flush()
    return time.perf_counter() - t0, sink


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=500, help="server payload to feed (MB)")
    ap.add_argument("--object-mb", type=float, default=5.0, help="size of each object (MB)")
    ap.add_argument("--objects-per-conn", type=int, default=10)
    ap.add_argument("--reorder-every", type=int, default=50)
    ap.add_argument("--framing", choices=("length", "chunked", "gzip"), default="length",
                    help="Content-Length bodies, chunked bodies, or gzip-encoded bodies")
    ap.add_argument("--trace-mb", type=int, default=50, help="size of the tracemalloc run")
    args = ap.parse_args()

    obj = int(args.object_mb * 1e6)
    pkts, per_conn, sha = build_connection(args.objects_per_conn, obj, args.reorder_every,
                                           args.framing)
    conns = max(1, round(args.mb * 1e6 / per_conn))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as spool:
        secs, sink = feed(pkts, conns, spool, sha)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    total = per_conn * conns
    print(f"fed {total / 1e6:.0f} MB server payload in {len(pkts) * conns} packets "
          f"({conns} connections x {args.objects_per_conn} objects of {obj / 1e6:g} MB, "
          f"{args.framing})")
    print(f"throughput: {total / 1e6 / secs:.1f} MB/s ({secs:.2f} s), "
          f"{len(pkts) * conns / secs / 1e3:.0f} k packets/s")
    print(f"files: {sink.files} ({sink.incomplete} incomplete, {sink.wrong} with a wrong "
          f"sha256), {sink.bytes / 1e6:.0f} MB spooled")
    print(f"peak RSS: {rss0 / 1024:.0f} MiB after building the input, "
          f"{rss1 / 1024:.0f} MiB after the feed (+{(rss1 - rss0) / 1024:.1f} MiB)")

    trace_conns = max(1, round(args.trace_mb * 1e6 / per_conn))
    tracemalloc.start()
    with tempfile.TemporaryDirectory() as spool:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        feed(pkts, trace_conns, spool, sha)
        peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    print(f"tracemalloc peak allocated by the engine over {per_conn * trace_conns / 1e6:.0f} MB: "
          f"{peak / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
