"""Cost of one /ws `flows` tick (web/feeds.py) on a capture with many connections, beside
what a polling client pays to read the same table with capture_list_conns.

    .venv/bin/python benchmarks/stream.py [--packets 1000000]

The capture is ingested through the product's own path (benchmarks/gen_flows.py makes the
pcap); its catalog row is shown to the feed as ACTIVE so the feed ticks as for a live one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from apppaccap.api.packets import capture_list_conns  # noqa: E402
from apppaccap.context import Config  # noqa: E402
from apppaccap.context import build_context  # noqa: E402
from apppaccap.ingest import ingest  # noqa: E402
from apppaccap.store import captures as capture_table  # noqa: E402
from apppaccap.store.capturedb import CaptureDb  # noqa: E402
from apppaccap.web import feeds  # noqa: E402
from benchmarks.gen_flows import generate  # noqa: E402


class Captures:
    """The two calls a feed makes of the capture manager, for one ingested capture."""

    def __init__(self, ctx, capture_id):
        self.ctx, self.live = ctx, {}
        self._db = CaptureDb(ctx.config.data_dir, capture_id)

    def get(self, capture_id):
        return dict(capture_table.get(self.ctx.catalog, capture_id), state=1)  # ACTIVE

    def db(self, capture_id, active=None):
        return self._db


def timed(fn, runs=5):
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def show(name, times):
    ms = [t * 1000 for t in times]
    print(f"{name:<46} median {statistics.median(ms):8.1f} ms   "
          f"(min {min(ms):.1f}, max {max(ms):.1f}; {len(ms)} runs)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="apc-stream-bench-")
    pcap = os.path.join(work, "flows.pcap")
    generate(pcap, args.packets)
    ctx = build_context(Config(data_dir=os.path.join(work, "data")))
    cid = ingest.create_capture(ctx, pcap)
    ingest.ingest(ctx, ingest.open_reader(pcap), cid)
    ctx.captures = Captures(ctx, cid)
    conns = ctx.captures.db(cid).one("SELECT count(*) AS n FROM connections")["n"]
    print(f"{args.packets:,} packets, {conns:,} connections")

    def first_tick():
        feed = feeds.FlowFeed(1, {"capture_id": cid}, ctx)
        msgs = feed.poll(ctx)
        assert sum(len(m["Connections"]) for m in msgs) == conns
    show("flows: first tick (every connection sent)", timed(first_tick))
    feed = feeds.FlowFeed(1, {"capture_id": cid}, ctx)
    feed.poll(ctx)

    def full():
        feed.full_at = 0.0
        assert feed.poll(ctx) == []
    show("flows: full comparison, nothing changed", timed(full))

    def window():
        assert feed.poll(ctx) == []
    show("flows: ordinary tick (recent window)", timed(window))

    def polling():
        last, n = 0, 0
        while True:
            page = capture_list_conns(ctx, capture_id=cid, last_id=last, limit=10000)
            if not page:
                break
            n += len(page)
            last = page[-1]["ConnectionId"]
        assert n == conns
    show("capture_list_conns: every page (a poller)", timed(polling))
    return 0


if __name__ == "__main__":
    sys.exit(main())
