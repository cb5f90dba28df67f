"""stats_group_by and search_count against a scan of the packets and against tshark, in
the same run.

Builds a pcap of realistic flows (benchmarks/gen_flows.py, 1,000,000 packets by default),
ingests it, then times (median and range of 5 runs): stats_group_by by conn, remote_ip and
protocol (top 10), remote_ip with a series per row, search_count of an exact filter; the
same top-10-by-bytes answer as one SQL scan of the packets table; and, once each,
`tshark -q -z conv,tcp`, `-z endpoints,ip` and `tshark -Y FILTER` counting the filter.

Run:  .venv/bin/python benchmarks/groupby.py [--packets 1000000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

FILTER = "tcp.port == 443"


class Captures:
    """What the endpoints ask of ctx.captures, for one ingested capture."""

    def __init__(self, ctx, capture_id):
        from apppaccap.store.capturedb import CaptureDb
        self.ctx, self.capture_id = ctx, capture_id
        self.database = CaptureDb(ctx.config.data_dir, capture_id)

    def db(self, capture_id, active=None):
        return self.database

    def get(self, capture_id):
        return self.ctx.catalog.one("SELECT * FROM captures WHERE id = ?", (capture_id,))


def runs(fn, n=5) -> tuple[float, float, float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), max(times)


def timed(cmd) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=1_000_000)
    args = ap.parse_args()
    from apppaccap.api.groupby import stats_group_by
    from apppaccap.api.search import search_count
    from apppaccap.context import Config
    from apppaccap.context import build_context
    from apppaccap.ingest import ingest
    from benchmarks.gen_flows import generate
    tmp = tempfile.mkdtemp(prefix="apc-groupby-")
    src = os.path.join(tmp, "flows.pcap")
    n = generate(src, args.packets)
    ctx = build_context(Config(data_dir=os.path.join(tmp, "data")))
    cid = ingest.create_capture(ctx, src)
    ingest.ingest(ctx, ingest.open_reader(src), cid)
    ctx.captures = Captures(ctx, cid)
    db = ctx.captures.database
    conns = db.one("SELECT count(*) FROM connections")[0]
    print(f"input: {n} packets, {conns} connections")
    rows = []
    for key in ("conn", "remote_ip", "protocol"):
        rows.append((f"stats_group_by {key}", runs(lambda k=key: stats_group_by(
            ctx, capture_id=cid, group_by=k))))
    rows.append(("stats_group_by remote_ip + series", runs(lambda: stats_group_by(
        ctx, capture_id=cid, group_by="remote_ip", series=True))))
    rows.append((f"search_count {FILTER}", runs(lambda: search_count(
        ctx, filter=FILTER, capture_id=cid))))
    rows.append(("SQL scan: top 10 dst by bytes", runs(lambda: db.read(
        "SELECT dst, sum(len) FROM packets GROUP BY dst ORDER BY 2 DESC LIMIT 10"), 3)))
    print(f"{'step':<40}{'median s':>10}{'min':>8}{'max':>8}")
    for name, (med, lo, hi) in rows:
        print(f"{name:<40}{med:>10.3f}{lo:>8.3f}{hi:>8.3f}")
    for name, cmd in (("tshark -q -z conv,tcp", ["-q", "-z", "conv,tcp"]),
                      ("tshark -q -z endpoints,ip", ["-q", "-z", "endpoints,ip"]),
                      (f"tshark -Y '{FILTER}' (count)", ["-Y", FILTER, "-T", "fields",
                                                         "-e", "frame.number"])):
        print(f"{name:<40}{timed(['tshark', '-r', src, *cmd]):>10.3f}")
    ctx.catalog.close()
    subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
