"""Benchmark the capture view's quick filter (capture_filter_packets) against tshark.

Uses benchmarks/search.py's generated capture (TCP/UDP flows, HTTP-like payloads, process
comments), ingests it through the product's path, then for each filter pages through the
whole capture the way the theme does (limit 1000, from LastId while More) and measures:

- the first page (what the user waits for after Enter), the slowest single request (the
  per-request bound), the number of requests and the total to reach the end, and
- `tshark -r FILE -Y FILTER` on the same file in the same run (a full pass, as a reference).

Three runs each; the table shows the median and the range. Timings are figures, not a
pass/fail test. Requests are timed in-process (no HTTP/JSON), building the same PACKET
objects the action returns.

Run:  .venv/bin/python benchmarks/quickfilter.py [--packets N] [--keep DIR] [--no-tshark]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from apppaccap.api import packet_filter  # noqa: E402
from apppaccap.api.packets import packets_by_id  # noqa: E402
from apppaccap.context import Config  # noqa: E402
from apppaccap.context import build_context  # noqa: E402
from apppaccap.ingest import ingest  # noqa: E402
from apppaccap.search import parse_filter  # noqa: E402
from apppaccap.search.compiler import compile_plan  # noqa: E402
from apppaccap.search.scope import Scope  # noqa: E402
from apppaccap.search.scope import open_readonly  # noqa: E402
from apppaccap.store.capturedb import CaptureDb  # noqa: E402
from benchmarks.search import NEEDLE  # noqa: E402
from benchmarks.search import dotted  # noqa: E402
from benchmarks.search import generate  # noqa: E402
from benchmarks.search import run_tshark  # noqa: E402


def request(db, capture_id, flt, last_id, limit=1000):
    """One capture_filter_packets request, as the endpoint runs it."""
    conn = open_readonly(db.path)
    try:
        scope = Scope(conn, capture_id, db.path)
        plan = compile_plan(flt, scope)
        ids, upto = packet_filter._page(scope, plan, last_id, limit)
    finally:
        conn.close()
    packets = packets_by_id(db, capture_id, ids)
    return packets, upto, upto < scope.max_id


def page_through(db, capture_id, text):
    flt = parse_filter(text)
    last, found, times = 0, 0, []
    while True:
        t = time.perf_counter()
        packets, last, more = request(db, capture_id, flt, last)
        times.append(time.perf_counter() - t)
        found += len(packets)
        if not more:
            return found, times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=300_000)
    ap.add_argument("--keep", help="keep the pcapng and data dir here (reused when present)")
    ap.add_argument("--no-tshark", action="store_true")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="apc-qf-bench-")
    os.makedirs(work, exist_ok=True)
    pcap = os.path.join(work, "flows.pcapng")
    facts = generate(pcap if not os.path.exists(pcap) else os.path.join(work, "facts.tmp"),
                     args.packets)
    ctx = build_context(Config(data_dir=os.path.join(work, "data")))
    done = ctx.catalog.read("SELECT id FROM captures WHERE source_file = ? AND state = 2", (pcap,))
    if done:
        capture_id = done[0]["id"]
    else:
        capture_id = ingest.create_capture(ctx, pcap)
        ingest.ingest(ctx, ingest.open_reader(pcap), capture_id)
    db = CaptureDb(ctx.config.data_dir, capture_id)
    client = dotted(facts["client"])
    cases = [("tcp.port (rare)", "tcp.port == 5432", None),
             ("tcp.port (common)", "tcp.port == 443", None),
             ("ip.addr", f"ip.addr == {client}", None),
             ("proc.name", 'proc.name == "app7"', 'frame.comment contains "Cmd: /usr/bin/app7\\n"'),
             ("contains", f'frame contains "{NEEDLE.decode()}"', None),
             ("tcp.len (Python test)", "tcp.len > 1400", None)]
    print(f"\n{args.packets:,} packets; median of 3 runs [min–max]\n")
    head = ("filter", "matches", "tshark", "requests", "first page s", "slowest request s",
            "all pages s", "tshark s")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, ours, theirs in cases:
        runs = [page_through(db, capture_id, ours) for _ in range(3)]
        n = runs[0][0]
        firsts = [r[1][0] for r in runs]
        slowest = [max(r[1]) for r in runs]
        totals = [sum(r[1]) for r in runs]
        ts = [run_tshark(pcap, theirs or ours) for _ in range(1 if args.no_tshark else 3)] \
            if not args.no_tshark else [(float("nan"), n)]

        def fig(v):
            return f"{statistics.median(v):.3f} [{min(v):.3f}–{max(v):.3f}]"
        print(f"| {label} | {n:,} | {ts[0][1]:,} | {len(runs[0][1])} | {fig(firsts)} | "
              f"{fig(slowest)} | {fig(totals)} | {fig([t[0] for t in ts])} |")
    db.close()
    ctx.catalog.close()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
