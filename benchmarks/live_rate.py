"""Live capture rate on loopback, against tcpdump in the same run.

For each paced UDP rate (benchmarks/sender.py: sendmmsg in C, well past what tcpdump
keeps) a tcpdump and our system capture listen at once. Reported, from the same run:
the highest rate at which tcpdump lost nothing (it stored every datagram sent) and the
highest at which we stored >= 99.9 % of what tcpdump stored (and at which we stored all).
Per rate also the service's CPU per packet stored, from the capture's start to the end
of its stop (which returns once every packet received is written): what decides the
highest rate a capture keeps up with for more than the seconds its sniffer process's
buffer (256 MiB) can absorb; and how long the capture's stop took (it returns once every
packet received is written): more than a fraction of a second means the capture fell
behind the traffic and its buffer held the rest.

--flow-packets N sends short flows instead of one: every N datagrams come from a new
socket (a new flow to attribute and label), to 16 server ports in turn.

Run as root:  .venv/bin/python benchmarks/live_rate.py [--seconds 2] [--rates 25000,...]
              [--senders 1] [--backend auto|ebpf|socket-table] [--flow-packets N]
              [--set KEY=VALUE ...] [--stats]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from apppaccap.context import Config  # noqa: E402
from apppaccap.context import build_context  # noqa: E402
from apppaccap.pcap.reader import CaptureReader  # noqa: E402
from apppaccap.server import start_services  # noqa: E402
from apppaccap.server import stop_services  # noqa: E402
from apppaccap.server import tune_gc  # noqa: E402
from benchmarks.sender import result  # noqa: E402
from benchmarks.sender import send  # noqa: E402


def sink() -> socket.socket:
    """A bound socket that never reads: datagrams to a closed port would each make the
    kernel build an ICMP error, which slows the sender and is not what we measure."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind(("127.0.0.1", 0))
    return s


class Tcpdump:
    def __init__(self, bpf: str):
        self.path = tempfile.mktemp(suffix=".pcap")
        self.proc = subprocess.Popen(["tcpdump", "-i", "lo", "-w", self.path, "-B", "32768",
                                      "-s", "262144", bpf], stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True)
        self.proc.stderr.readline()
        time.sleep(0.3)  # "listening" is printed just before the filter is attached

    def stop(self) -> tuple[int, int]:
        """(packets stored, packets tcpdump says the kernel dropped)."""
        self.proc.terminate()
        err = self.proc.communicate()[1]
        m = re.search(r"(\d+) packets? dropped by kernel", err)
        with CaptureReader(self.path) as r:
            n = sum(1 for _ in r)
        os.remove(self.path)
        return n, int(m.group(1)) if m else -1


def sinks(n: int) -> list[socket.socket]:
    """n sinks on consecutive ports (the short-flow sender's destinations)."""
    while True:
        first = sink()
        base = first.getsockname()[1]
        if base + n > 65536:
            first.close()
            continue
        out = [first]
        try:
            for p in range(base + 1, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                out.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.bind(("127.0.0.1", p))
            return out
        except OSError:
            for s in out:
                s.close()


def one_rate(ctx, rate: int, seconds: float, senders: int = 1, flow: int = 0,
             stats: bool = False) -> dict:
    nports = 16 if flow else 1
    rxs = sinks(nports)
    port = rxs[0].getsockname()[1]
    bpf = f"udp dst portrange {port}-{port + nports - 1}" if flow else f"udp dst port {port}"
    dump = Tcpdump(bpf)
    cpu = _cpu()
    row = ctx.captures.start(1, bpf=bpf, adapters=["lo"])
    # several sender processes: on a busy machine one process gets too little of the CPU
    procs = [send(port, rate / senders, seconds, flow=flow, nports=nports)
             for _ in range(senders)]
    done = [result(p) for p in procs]
    sent, took = sum(n for n, _ in done), max(t for _, t in done)
    time.sleep(0.5)
    t = time.monotonic()
    ctx.captures.stop(row["id"])  # returns once every packet received is written
    behind = time.monotonic() - t  # > ~0.1 s: the capture fell behind, its buffer held up
    if stats:   # the resolver's counters so far (swept: answered late, by the sweeper)
        att = ctx.captures.attribution
        print(f"  attribution: {dict(att.stats)}, backend: "
              f"{dict(getattr(att.backend, 'stats', {}))}")
    cpu = _cpu() - cpu
    # tcpdump (not immediate mode) gets a ring block only when it fills or its 1 s timeout
    # retires it; a tcpdump stopped sooner never reads the last one
    time.sleep(1.2)
    theirs, their_drops = dump.stop()
    for rx in rxs:
        rx.close()
    ours = ctx.catalog.one("SELECT packet_count, dropped_count FROM captures WHERE id=?",
                           (row["id"],))
    return {"rate": rate, "achieved": sent / took, "sent": sent, "tcpdump": theirs,
            "tcpdump_dropped": their_drops, "ours": ours[0], "dropped": ours[1],
            "us_per_packet": 1e6 * cpu / max(ours[0], 1), "behind": behind}


def _cpu() -> float:
    """CPU seconds of this process: the service, every thread of it (the sniffer process,
    which only drains the kernel's ring, is not counted)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def _setting(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: give KEY=VALUE, e.g. app_labels_enabled=0")
    return key, value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rates", default="25000,50000,100000,150000,200000,300000")
    ap.add_argument("--senders", type=int, default=1, help="sender processes sharing the rate")
    ap.add_argument("--backend", default="auto", help="attribution_backend: auto, ebpf, "
                    "socket-table (eBPF must not make the live rate worse)")
    ap.add_argument("--flow-packets", type=int, default=0,
                    help="short flows: each this many datagrams from a new socket (a new "
                    "flow to attribute), over 16 destination ports; 0: one flow")
    ap.add_argument("--stats", action="store_true",
                    help="print the attribution resolver's counters after each rate")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    type=_setting, help="a service setting for the run (repeatable)")
    args = ap.parse_args()
    data_dir = tempfile.mkdtemp(prefix="apc-bench-")
    ctx = build_context(Config(data_dir=data_dir))
    ctx.settings.set("attribution_backend", args.backend)
    for key, value in args.set:  # e.g. app_labels_enabled=0: what nDPI costs
        ctx.settings.set(key, value)
    start_services(ctx)
    tune_gc()  # as `apppaccap serve` does once started (the cycle collector while serving)
    best_dump = best_999 = best_all = 0
    print(f"load average at start: {os.getloadavg()[0]:.2f}; "
          + (f"short flows of {args.flow_packets} datagrams" if args.flow_packets
             else "one flow"))
    print(f"{'target pps':>10} {'sent pps':>10} {'sent':>8} {'tcpdump':>8} {'its drops':>9} "
          f"{'ours':>8} {'dropped':>8}  ours/tcpdump  service CPU/packet  stop took")
    try:
        for rate in (int(r) for r in args.rates.split(",")):
            r = one_rate(ctx, rate, args.seconds, args.senders, args.flow_packets,
                         args.stats)
            share = r["ours"] / r["tcpdump"] if r["tcpdump"] else 0.0
            if r["tcpdump"] >= r["sent"]:
                best_dump = max(best_dump, int(r["achieved"]))
            if share >= 0.999:
                best_999 = max(best_999, int(r["achieved"]))
            if r["ours"] >= r["tcpdump"] and r["dropped"] == 0:
                best_all = max(best_all, int(r["achieved"]))
            print(f"{r['rate']:>10} {r['achieved']:>10.0f} {r['sent']:>8} {r['tcpdump']:>8} "
                  f"{r['tcpdump_dropped']:>9} {r['ours']:>8} {r['dropped']:>8}  "
                  f"{100 * share:6.2f} %  {r['us_per_packet']:6.2f} us  "
                  f"{r['behind']:8.1f} s")
    finally:
        stop_services(ctx)
        ctx.catalog.close()
        shutil.rmtree(data_dir, ignore_errors=True)  # each run's captures: ~200 MB
    print(f"highest rate tcpdump lost nothing at:          {best_dump} packets/s")
    print(f"highest rate we stored >= 99.9 % of tcpdump:   {best_999} packets/s")
    print(f"highest rate we stored every packet tcpdump did: {best_all} packets/s "
          f"(attribution {args.backend}; load average now {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
