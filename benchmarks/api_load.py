"""A live capture under API load, against tcpdump in the same run.

The real service (`apppaccap serve`, tests/helpers/server.py) runs a system capture of
`lo` (filter: the UDP stream's port or the HTTP server's port) while
- 20 pollers (4 processes x 5 threads) continuously call capture_stream (following
  last_id), stats_totals and capture_list_conns (paging by last_id);
- a separate HTTP server on loopback answers 200 requests/s;
- benchmarks/sender.py sends 20,000 UDP packets/s;
and tcpdump captures the same filter. Reported: packets tcpdump kept that we did not,
our DroppedCount, and the p50/p99/max of the API answers the pollers timed.

Run as root:  .venv/bin/python benchmarks/api_load.py [--seconds 10] [--pps 20000]
              [--http 200] [--pollers 20]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from benchmarks.live_rate import Tcpdump  # noqa: E402
from benchmarks.live_rate import sink  # noqa: E402
from benchmarks.sender import result  # noqa: E402
from benchmarks.sender import send  # noqa: E402
from tests.helpers.ports import free_port  # noqa: E402
from tests.helpers.server import Server  # noqa: E402

CALLS = ("capture_stream", "stats_totals", "capture_list_conns")


class Client:
    """One keep-alive connection to /ajax (as a browser tab polling would hold; the door
    keeps it open since web/server.py keeps connections alive)."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, action: str, **params):
        body = urllib.parse.urlencode(dict(params, action=action)).encode()
        try:
            self.conn.request("POST", "/ajax", body,
                              {"Content-Type": "application/x-www-form-urlencoded"})
            out = json.loads(self.conn.getresponse().read())
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            raise
        return out


def poller_role(port: int, capture_id: int, seconds: float, threads: int) -> None:
    """A poller process: `threads` pollers; prints {call: [seconds...]} as JSON."""
    times: dict = {c: [] for c in CALLS}
    errors = [0]
    end = time.monotonic() + seconds

    def run():
        c = Client(port)
        last_pkt = last_conn = 0
        while time.monotonic() < end:
            for call in CALLS:
                params = {}
                if call == "capture_stream":
                    params = {"capture_id": capture_id, "last_id": last_pkt, "limit": 1000}
                elif call == "capture_list_conns":
                    params = {"capture_id": capture_id, "last_id": last_conn, "limit": 1000}
                t = time.perf_counter()
                try:
                    body = c.call(call, **params)
                except (OSError, http.client.HTTPException):
                    errors[0] += 1
                    continue
                times[call].append(time.perf_counter() - t)
                if body.get("ErrorCode"):
                    errors[0] += 1
                    continue
                value = body["ReturnValue"]
                if call == "capture_stream":
                    last_pkt = value["LastId"]
                elif call == "capture_list_conns":
                    conns = value["Connections"]
                    last_conn = conns[-1]["ConnectionId"] if value["More"] else 0
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"times": times, "errors": errors[0]}))


def http_role(port: int, rate: float, seconds: float) -> None:
    """200 requests/s (paced) to the HTTP server on `port`, each on a new connection;
    prints how many were answered."""
    done = 0
    start = time.monotonic()
    while (now := time.monotonic()) - start < seconds:
        due = int((now - start) * rate) + 1
        while done < due:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                c.request("GET", "/")
                c.getresponse().read()
            except OSError:
                pass
            c.close()
            done += 1
        time.sleep(0.002)
    print(done)


def me(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *map(str, args)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def pct(values: list, q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--pps", type=int, default=20_000)
    ap.add_argument("--http", type=int, default=200)
    ap.add_argument("--pollers", type=int, default=20)
    ap.add_argument("--role", choices=("poller", "http"), help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "poller":
        port, cid, secs, threads = args.args
        poller_role(int(port), int(cid), float(secs), int(threads))
        return 0
    if args.role == "http":
        port, rate, secs = args.args
        http_role(int(port), float(rate), float(secs))
        return 0

    work = tempfile.mkdtemp(prefix="apc-api-load-")
    server = Server(os.path.join(work, "data"), log_dir=work)
    web_port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "http.server", str(web_port), "--bind",
                            "127.0.0.1", "--directory", work], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    rx = sink()
    udp_port = rx.getsockname()[1]
    bpf = f"udp dst port {udp_port} or tcp port {web_port}"
    time.sleep(0.5)
    load = os.getloadavg()[0]
    try:
        dump = Tcpdump(bpf)
        cap = server.ok("capture_start_system", filter=bpf, adapter="lo")
        cid = cap["CaptureId"]
        per = 5
        pollers = [me("--role", "poller", server.port, cid, args.seconds, per)
                   for _ in range(args.pollers // per)]  # 0: the capture's own cost
        time.sleep(0.5)  # pollers connected and busy before the traffic starts
        # the service's CPU (its threads) and its sniffer process's, while traffic runs
        procs = [server.proc.pid, *children(server.proc.pid)]
        cpu0, wall0 = [cpu_seconds(p) for p in procs], time.monotonic()
        httpc = me("--role", "http", web_port, args.http, args.seconds - 1)
        sender = send(udp_port, args.pps, args.seconds - 1)
        sent, took = result(sender)
        cpu = [cpu_seconds(p) - c for p, c in zip(procs, cpu0)]
        wall = time.monotonic() - wall0
        answered = int(httpc.communicate()[0])
        polled = [json.loads(p.communicate()[0]) for p in pollers]
        time.sleep(1.0)
        server.ok("capture_stop_system", capture_id=cid)
        row = server.ok("capture_get_details", capture_id=cid)
        time.sleep(1.2)  # tcpdump's last ring block (see live_rate.py)
        theirs, their_drops = dump.stop()
    finally:
        web.terminate()
        server.stop()
        rx.close()
        shutil.rmtree(work, ignore_errors=True)
    ours, dropped = row["PacketCount"], row["DroppedCount"]
    print(f"load average before: {load:.2f}, after: {os.getloadavg()[0]:.2f}")
    print(f"traffic: {sent} UDP datagrams in {took:.1f} s ({sent / took:.0f}/s), "
          f"{answered} HTTP requests ({answered / (args.seconds - 1):.0f}/s); "
          f"{args.pollers} pollers")
    print(f"tcpdump stored {theirs} (kernel drops {their_drops}); we stored {ours}, "
          f"DroppedCount {dropped}; lost that tcpdump kept: {max(0, theirs - ours)} "
          f"({100 * max(0, theirs - ours) / max(1, theirs):.2f} %)")
    print(f"CPU while the traffic ran ({wall:.1f} s): service {100 * cpu[0] / wall:.0f} % "
          f"of a core, its child processes (sniffer) {100 * sum(cpu[1:]) / wall:.0f} %")
    errors = sum(p["errors"] for p in polled)
    alltimes = []
    for call in CALLS:
        ts = [t for p in polled for t in p["times"][call]]
        alltimes += ts
        print(f"  {call:<20} {len(ts):>6} answers  p50 {pct(ts, .5):7.1f} ms  "
              f"p99 {pct(ts, .99):7.1f} ms  max {pct(ts, 1):7.1f} ms")
    print(f"  {'all':<20} {len(alltimes):>6} answers  p50 {pct(alltimes, .5):7.1f} ms  "
          f"p99 {pct(alltimes, .99):7.1f} ms  ({errors} errors)")
    # Less load-sensitive than latencies on a shared box: the service's CPU per answer
    # (answers pro rata to the CPU window: pollers ran `seconds`, the window `wall`) and,
    # with --pollers 0, per packet stored
    if alltimes:
        per = 1000 * cpu[0] / (len(alltimes) * min(1.0, wall / args.seconds))
        print(f"  service CPU per answer (capture's share included): {per:.2f} ms")
    elif sent:
        print(f"  service CPU per packet sent: {1e6 * cpu[0] / sent:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
