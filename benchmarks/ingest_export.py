"""Ingest and export against tshark and editcap, measured in the same run.

Builds a 1,000,000-packet pcap of realistic flows (benchmarks/gen_flows.py), then times:
our ingest (pcap → capture database, connections and statistics built), `tshark -r F -q
-z conv,tcp` (the same connection table), our export to pcapng (as the service does it:
the ingested blocks copied; and packet by packet, the path of live captures and filtered
exports), `editcap -F pcapng`, and the peak RSS of our ingest. Targets: ingest ≤ 0.5× tshark (≥ 250,000 packets/s) with peak
RSS ≤ 300 MB; export ≤ 2× editcap.

Run:  .venv/bin/python benchmarks/ingest_export.py [--packets 1000000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from apppaccap.context import Config, build_context
from apppaccap.ingest import export, ingest
from apppaccap.store.capturedb import CaptureDb
ctx = build_context(Config(data_dir=sys.argv[3]))
reader = ingest.open_reader(sys.argv[2])
cid = ingest.create_capture(ctx, sys.argv[2])
t, c = time.perf_counter(), time.process_time()
res = ingest.ingest(ctx, reader, cid)
t_ingest, cpu_ingest = time.perf_counter() - t, time.process_time() - c
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
db = CaptureDb(ctx.config.data_dir, cid)
t = time.perf_counter()
n = export.write_capture(db, sys.argv[4])
t_export = time.perf_counter() - t
t = time.perf_counter()
export.write_capture(db, sys.argv[4] + ".pp", copy_blocks=False)
t_packets = time.perf_counter() - t
db.close()
# application labels (nDPI) cost: the same file with labelling off and on again, alternated
# (main-process CPU too: the bulk writer process does the same work either way)
labels = {"0": [], "1": [[t_ingest, cpu_ingest]]}
for on in ("0", "1", "0"):
    ctx.settings.set("app_labels_enabled", on)
    reader = ingest.open_reader(sys.argv[2])
    t, c = time.perf_counter(), time.process_time()
    ingest.ingest(ctx, reader, ingest.create_capture(ctx, sys.argv[2]))
    labels[on].append([time.perf_counter() - t, time.process_time() - c])
ctx.settings.set("app_labels_enabled", "1")
t_png = None
if len(sys.argv) > 5:  # the same packets as pcapng (editcap's conversion)
    reader = ingest.open_reader(sys.argv[5])
    t = time.perf_counter()
    ingest.ingest(ctx, reader, ingest.create_capture(ctx, sys.argv[5]))
    t_png = time.perf_counter() - t
ctx.catalog.close()
print(json.dumps({"packets": res["Packets"], "ingest": t_ingest, "rss_mb": rss,
                  "ingest_pcapng": t_png,
                  "export": t_export, "exported": n, "export_packets": t_packets,
                  "conns": res and None, "labels": labels}))
"""


def timed(cmd) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    import json
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=1_000_000)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="apc-bench-")
    src = os.path.join(tmp, "flows.pcap")
    from benchmarks.gen_flows import generate
    n = generate(src, args.packets)
    size = os.path.getsize(src)
    print(f"input: {n} packets, {size / 1e6:.0f} MB")
    out = os.path.join(tmp, "ours.pcapng")
    png = os.path.join(tmp, "flows.pcapng")
    subprocess.run(["editcap", "-F", "pcapng", src, png], check=True)
    proc = subprocess.run([sys.executable, "-c", CHILD, ROOT, src, os.path.join(tmp, "data"), out,
                           png],
                          capture_output=True, text=True, check=True)
    ours = json.loads(proc.stdout.strip().splitlines()[-1])
    t_tshark = timed(["tshark", "-r", src, "-q", "-z", "conv,tcp"])
    t_editcap = timed(["editcap", "-F", "pcapng", src, os.path.join(tmp, "editcap.pcapng")])
    rate = ours["packets"] / ours["ingest"]
    print(f"{'step':<34}{'seconds':>9}{'packets/s':>12}   ratio")
    print(f"{'our ingest':<34}{ours['ingest']:>9.2f}{rate:>12,.0f}   "
          f"{ours['ingest'] / t_tshark:.2f}x tshark (target <= 0.5x)")
    print(f"{'tshark -q -z conv,tcp':<34}{t_tshark:>9.2f}{n / t_tshark:>12,.0f}")
    print(f"{'our ingest, same packets as pcapng':<34}{ours['ingest_pcapng']:>9.2f}"
          f"{n / ours['ingest_pcapng']:>12,.0f}   {ours['ingest_pcapng'] / t_tshark:.2f}x tshark")
    print(f"{'our export (blocks copied)':<34}{ours['export']:>9.2f}"
          f"{ours['exported'] / ours['export']:>12,.0f}   "
          f"{ours['export'] / t_editcap:.2f}x editcap (target <= 2x)")
    print(f"{'our export (packet by packet)':<34}{ours['export_packets']:>9.2f}"
          f"{ours['exported'] / ours['export_packets']:>12,.0f}   "
          f"{ours['export_packets'] / t_editcap:.2f}x editcap")
    print(f"{'editcap -F pcapng':<34}{t_editcap:>9.2f}{n / t_editcap:>12,.0f}")
    print(f"peak RSS of our ingest + export: {ours['rss_mb']:.0f} MB (target <= 300 MB)")
    on, off = ours["labels"]["1"], ours["labels"]["0"]
    for i, what in ((0, "wall"), (1, "main-process CPU")):
        a, b = [r[i] for r in on], [r[i] for r in off]
        runs = f"{', '.join(f'{x:.2f}' for x in a)} / {', '.join(f'{x:.2f}' for x in b)}"
        print(f"ingest with nDPI labels / without ({what}): "
              f"{sum(a) / len(a):.2f} s / {sum(b) / len(b):.2f} s = "
              f"{sum(a) / len(a) / (sum(b) / len(b)):.2f}x (runs: {runs}; target <= 1.2x)")
    subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
