"""Ingest and export against tshark and editcap, measured in the same run.

Builds 1,000,000-packet pcaps of realistic flows (benchmarks/gen_flows.py: the "long"
profile, ~106 packets a flow, and the "short" one, ~10 packets a flow, DNS-heavy) and their
pcapng conversions (editcap), then times, per profile and run: our ingest of the pcap and
of the pcapng (capture database, connections and statistics built, nDPI labels on as by
default), `tshark -r F -q -z conv,tcp` (the same connection table) right after, and the
peak RSS of our ingest; on the long profile also our export to pcapng (as the service
does it: the ingested blocks copied; and packet by packet, the path of live captures and
filtered exports) against `editcap -F pcapng`, and the cost of nDPI labels. Targets:
ingest ≤ 0.5× tshark with peak RSS ≤ 300 MB; export ≤ 2× editcap.

Every timed step starts after os.sync(), so no step is timed while the kernel writes back
an earlier one's ~0.6 GB (packet bytes, the database); tshark writes nothing. Ingests late
in one process used to take more CPU (+0.7 s by the 3rd per 1M short-flow packets): the
side file's new page-cache pages came from memory the VM had handed back to its host; it
is written with O_DIRECT now (docs/DECISIONS.md: The side file bypasses the page cache).
On a VM with free page reporting, what the machine did before still moves figures by
tenths of a second (tshark's too): compare runs, not single figures.

Run:  .venv/bin/python benchmarks/ingest_export.py [--packets 1000000] [--runs 2]
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
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
from apppaccap.context import Config, build_context
from apppaccap.ingest import export, ingest
from apppaccap.store.capturedb import CaptureDb
ctx = build_context(Config(data_dir=sys.argv[3]))
full = sys.argv[6] == "1"  # export and labels figures too
reader = ingest.open_reader(sys.argv[2])
cid = ingest.create_capture(ctx, sys.argv[2])
os.sync()  # start clean: no earlier step's dirty pages being written back
t, c = time.perf_counter(), time.process_time()
res = ingest.ingest(ctx, reader, cid)
t_ingest, cpu_ingest = time.perf_counter() - t, time.process_time() - c
kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the bulk writer process, ended
cpu_all = cpu_ingest + kids.ru_utime + kids.ru_stime
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t_export = t_packets = n = labels = None
if full:
    db = CaptureDb(ctx.config.data_dir, cid)
    t = time.perf_counter()
    n = export.write_capture(db, sys.argv[4])
    t_export = time.perf_counter() - t
    t = time.perf_counter()
    export.write_capture(db, sys.argv[4] + ".pp", copy_blocks=False)
    t_packets = time.perf_counter() - t
    db.close()
    # application labels (nDPI) cost: the same file with labelling off and on again,
    # alternated (main-process CPU too: the bulk writer process does the same work)
    labels = {"0": [], "1": [[t_ingest, cpu_ingest]]}
    for on in ("0", "1", "0"):
        ctx.settings.set("app_labels_enabled", on)
        reader = ingest.open_reader(sys.argv[2])
        os.sync()
        t, c = time.perf_counter(), time.process_time()
        ingest.ingest(ctx, reader, ingest.create_capture(ctx, sys.argv[2]))
        labels[on].append([time.perf_counter() - t, time.process_time() - c])
    ctx.settings.set("app_labels_enabled", "1")
# the same packets as pcapng (editcap's conversion)
reader = ingest.open_reader(sys.argv[5])
os.sync()
t = time.perf_counter()
ingest.ingest(ctx, reader, ingest.create_capture(ctx, sys.argv[5]))
t_png = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the peak of it all
ctx.catalog.close()
print(json.dumps({"packets": res["Packets"], "ingest": t_ingest, "rss_mb": rss,
                  "cpu": cpu_ingest, "cpu_all": cpu_all,
                  "ingest_pcapng": t_png,
                  "export": t_export, "exported": n, "export_packets": t_packets,
                  "conns": res and None, "labels": labels}))
"""


def timed(cmd, cpu=None) -> float:
    """Wall seconds of `cmd`; with a list `cpu`, its CPU seconds are appended to it."""
    import resource
    os.sync()  # as before each of our ingests
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return wall


def _spread(values) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}" if len(values) == 1 else f"{lo:.2f}-{hi:.2f}"


def _against(values, target: float) -> str:
    """The spread of ratios, their median and how many runs met the target: a target is
    met when every run meets it, and machine noise moves single runs by ~10 %."""
    import statistics
    met = sum(1 for v in values if v <= target)
    return (f"{_spread(values)}x (median {statistics.median(values):.3f}x, "
            f"{met} of {len(values)} runs at or under {target}x)")


def _profile(tmp, profile, packets, runs, full):
    import json

    from benchmarks.gen_flows import generate
    src = os.path.join(tmp, f"{profile}.pcap")
    n = generate(src, packets, profile=profile)
    png = os.path.join(tmp, f"{profile}.pcapng")
    subprocess.run(["editcap", "-F", "pcapng", src, png], check=True)
    print(f"\n== profile {profile}: {n} packets, {os.path.getsize(src) / 1e6:.0f} MB ==")
    rows = []
    for run in range(runs):
        data = os.path.join(tmp, f"data-{profile}-{run}")
        proc = subprocess.run([sys.executable, "-c", CHILD, ROOT, src, data,
                               os.path.join(tmp, "ours.pcapng"), png,
                               "1" if full and run == 0 else "0"],
                              capture_output=True, text=True, check=True)
        ours = json.loads(proc.stdout.strip().splitlines()[-1])
        cpu: list = []
        t_tshark = timed(["tshark", "-r", src, "-q", "-z", "conv,tcp"], cpu)  # right after
        ours["tshark"], ours["tshark_cpu"] = t_tshark, cpu[0]
        rows.append(ours)
        subprocess.run(["rm", "-rf", data])
        print(f"run {run + 1}: ingest pcap {ours['ingest']:.2f} s, pcapng "
              f"{ours['ingest_pcapng']:.2f} s, tshark {t_tshark:.2f} s -> "
              f"{ours['ingest'] / t_tshark:.2f}x / {ours['ingest_pcapng'] / t_tshark:.2f}x, "
              f"peak RSS {ours['rss_mb']:.0f} MB; CPU (pcap) parser {ours['cpu']:.2f} s + "
              f"writer {ours['cpu_all'] - ours['cpu']:.2f} s, tshark {cpu[0]:.2f} s")
    pcap = [r["ingest"] / r["tshark"] for r in rows]
    pcapng = [r["ingest_pcapng"] / r["tshark"] for r in rows]
    rate = [n / r["ingest"] for r in rows]
    parser = [r["cpu"] / r["tshark_cpu"] for r in rows]
    print(f"{profile}: ingest pcap {_against(pcap, 0.5)} tshark, pcapng "
          f"{_against(pcapng, 0.5)} tshark; {min(rate):,.0f}-{max(rate):,.0f} packets/s; peak RSS "
          f"{_spread([r['rss_mb'] for r in rows])} MB (target <= 300 MB); parser CPU "
          f"{_spread(parser)}x tshark's CPU")
    return n, rows[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--profiles", default="long,short")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="apc-bench-")
    first = None
    for i, profile in enumerate(args.profiles.split(",")):
        n, ours = _profile(tmp, profile, args.packets, args.runs, i == 0)
        if i == 0:
            first = (profile, n, ours)
    profile, n, ours = first
    src = os.path.join(tmp, f"{profile}.pcap")
    t_editcap = timed(["editcap", "-F", "pcapng", src, os.path.join(tmp, "editcap.pcapng")])
    print(f"\n== export ({profile} profile) ==")
    print(f"{'step':<34}{'seconds':>9}{'packets/s':>12}   ratio")
    print(f"{'our export (blocks copied)':<34}{ours['export']:>9.2f}"
          f"{ours['exported'] / ours['export']:>12,.0f}   "
          f"{ours['export'] / t_editcap:.2f}x editcap (target <= 2x)")
    print(f"{'our export (packet by packet)':<34}{ours['export_packets']:>9.2f}"
          f"{ours['exported'] / ours['export_packets']:>12,.0f}   "
          f"{ours['export_packets'] / t_editcap:.2f}x editcap")
    print(f"{'editcap -F pcapng':<34}{t_editcap:>9.2f}{n / t_editcap:>12,.0f}")
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
