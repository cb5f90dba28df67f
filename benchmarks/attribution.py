"""Attribution benchmark "PAB-1" (docs/ARCHITECTURE.md, Decisions: the attribution benchmark)
through the real capture path.

A system capture on `lo` (this process, the product's CaptureManager), then workloads with
known truth (client port → pid):
  W1  N short-lived `curl --local-port P` against a local HTTP server, concurrency 8
  W2  20 long-lived clients, each holding one connection and sending every 100 ms
  W3  N one-shot UDP senders (python binding port P, one datagram, exit)
  W4  10 connections opened before the capture starts, then sending
Reports flow recall, packet recall, wrong labels, name accuracy, resolve latency, CPU.
Targets: W1 ≥ 99 % flows with 0 wrong labels; W2, W4 100 %; W3 ≥ 95 %.

Run as root:  .venv/bin/python benchmarks/attribution.py [--n 500]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from apppaccap.context import Config  # noqa: E402
from apppaccap.context import build_context  # noqa: E402
from apppaccap.server import start_services  # noqa: E402
from apppaccap.server import stop_services  # noqa: E402
from apppaccap.store.capturedb import CaptureDb  # noqa: E402

ECHO = r"""
import socket, threading, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(128)
def serve(c):
    while True:
        d = c.recv(4096)
        if not d: break
        c.sendall(d)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
CLIENT = r"""
import socket, sys, time
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])), source_address=("127.0.0.1", int(sys.argv[2])))
print("up", flush=True); sys.stdin.readline()
end = time.time() + float(sys.argv[3])
while time.time() < end:
    c.sendall(b"ping"); c.recv(100); time.sleep(0.1)
"""
UDP = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", int(sys.argv[2])))
s.sendto(b"hello", ("127.0.0.1", int(sys.argv[1])))
"""


def ports(n: int) -> list[int]:
    """n free local ports (bound then released: fresh, not in TIME_WAIT)."""
    socks, out = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        out.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return out


def score(db, truth: dict, proto: int, names: set, peers: set) -> dict:
    """truth: client port → pid. A packet belongs to a flow by its client port. A packet
    labelled with the server's (peer's) pid is counted apart from a wrong label: that
    process does own the other end, but the benchmark's label is the client's."""
    rows = db.read("SELECT p.sport, p.dport, p.pid, pr.name FROM packets p LEFT JOIN processes pr "
                   "ON pr.process_id = p.process_id WHERE p.proto = ?", (proto,))
    flows_ok, pk_ok, pk_all, wrong, named, peer = set(), 0, 0, 0, 0, 0
    for sport, dport, pid, name in rows:
        port = sport if sport in truth else dport if dport in truth else None
        if port is None:
            continue
        pk_all += 1
        if pid == truth[port]:
            pk_ok += 1
            flows_ok.add(port)
            named += name in names
        elif pid in peers:
            peer += 1
        elif pid:
            wrong += 1
    return {"flows": len(truth), "flow_recall": len(flows_ok) / max(1, len(truth)),
            "packet_recall": pk_ok / max(1, pk_all), "wrong": wrong,
            "name_accuracy": named / max(1, pk_ok), "packets": pk_all, "peer": peer}


def run_capture(ctx, workload) -> tuple[dict, float, list]:
    att = ctx.captures.attribution
    att.acquire()  # keep the engine (and its fast-path process) up across the workloads
    fp = att.fastpath
    cpu0 = time.process_time() + (fp.cpu_seconds() if fp else 0)
    att.latencies.clear()
    if fp:
        fp.latencies.clear()
    row = ctx.captures.start(1, adapters=["lo"], bpf="tcp or udp")
    time.sleep(0.5)
    truth = workload()
    time.sleep(1.5)
    ctx.captures.stop(row["id"])
    cpu = time.process_time() + (fp.cpu_seconds() if fp else 0) - cpu0
    att.release()
    return row["id"], truth, cpu, list(fp.latencies if fp else att.latencies)


def w1(n, http_port):
    def one(p):
        proc = subprocess.Popen(["curl", "-s", "-o", "/dev/null", "--local-port", str(p),
                                 f"http://127.0.0.1:{http_port}/"])
        proc.wait()
        return p, proc.pid if proc.returncode == 0 else None
    with ThreadPoolExecutor(8) as ex:
        return {p: pid for p, pid in ex.map(one, ports(n)) if pid}


def w2(echo_port, count=20, seconds=5.0):
    procs = {}
    for p in ports(count):
        proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(echo_port), str(p), str(seconds)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()
        procs[p] = proc
    return procs


def w3(n, udp_port):
    def one(p):
        proc = subprocess.Popen([sys.executable, "-c", UDP, str(udp_port), str(p)])
        proc.wait()
        return p, proc.pid if proc.returncode == 0 else None
    with ThreadPoolExecutor(8) as ex:
        return {p: pid for p, pid in ex.map(one, ports(n)) if pid}


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="apc-attr-")
    ctx = build_context(Config(data_dir=tmp))
    start_services(ctx)
    http_port, echo_port, udp_port = ports(3)
    http = subprocess.Popen([sys.executable, "-m", "http.server", str(http_port), "--bind",
                             "127.0.0.1", "--directory", tmp], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    echo = subprocess.Popen([sys.executable, "-c", ECHO, str(echo_port)])
    udp_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_sink.bind(("127.0.0.1", udp_port))
    time.sleep(1)
    results = []
    try:
        cid, truth, cpu, lat = run_capture(ctx, lambda: w1(args.n, http_port))
        results.append(("W1 curl x%d, C=8" % args.n, 6, truth, cid, cpu, lat, {"curl"},
                        {http.pid}))

        holder = {}

        def long_lived():
            holder["procs"] = w2(echo_port)
            for proc in holder["procs"].values():
                proc.stdin.write("go\n")
                proc.stdin.flush()
            for proc in holder["procs"].values():
                proc.wait()
            return {p: proc.pid for p, proc in holder["procs"].items()}
        cid, truth, cpu, lat = run_capture(ctx, long_lived)
        results.append(("W2 20 long-lived", 6, truth, cid, cpu, lat, {"python3", "python"},
                        {echo.pid}))

        cid, truth, cpu, lat = run_capture(ctx, lambda: w3(args.n, udp_port))
        results.append(("W3 UDP one-shot x%d" % args.n, 17, truth, cid, cpu, lat,
                        {"python3", "python"}, {os.getpid()}))

        pre = w2(echo_port, count=10, seconds=3.0)   # connected before the capture starts

        def go():
            for proc in pre.values():
                proc.stdin.write("go\n")
                proc.stdin.flush()
            for proc in pre.values():
                proc.wait()
            return {p: proc.pid for p, proc in pre.items()}
        cid, truth, cpu, lat = run_capture(ctx, go)
        results.append(("W4 10 pre-existing", 6, truth, cid, cpu, lat, {"python3", "python"},
                        {echo.pid}))
    finally:
        http.kill()
        echo.kill()
    print(f"{'workload':<24}{'flows':>6}{'flow rec':>10}{'pkt rec':>9}{'wrong':>7}{'peer':>6}"
          f"{'names':>7}{'p50 ms':>8}{'p95 ms':>8}{'CPU s':>7}")
    for name, proto, truth, cid, cpu, lat, names, peers in results:
        db = CaptureDb(ctx.config.data_dir, cid)
        s = score(db, truth, proto, names, peers)
        db.close()
        print(f"{name:<24}{s['flows']:>6}{s['flow_recall']:>10.1%}{s['packet_recall']:>9.1%}"
              f"{s['wrong']:>7}{s['peer']:>6}{s['name_accuracy']:>7.0%}{pct(lat, .5):>8.2f}"
              f"{pct(lat, .95):>8.2f}{cpu:>7.1f}")
    print("wrong = packets labelled with a pid that owns neither end; peer = labelled with the "
          "server's pid\n(first packet → owner known, in the fast-path process; CPU = service "
          "+ fast-path process)")
    stop_services(ctx)


if __name__ == "__main__":
    main()
