"""Attribution benchmark "PAB-1" (docs/DECISIONS.md: the attribution benchmark)
through the real capture path.

A system capture on `lo` (this process, the product's CaptureManager), then workloads with
known truth (client port → pid):
  W1  N short-lived `curl --local-port P` against a local HTTP server, concurrency 8
  W2  20 long-lived clients, each holding one connection and sending every 100 ms
  W3  N one-shot UDP senders (python binding port P, one datagram, exit)
  W4  10 connections opened before the capture starts, then sending
  W5  a program with 4 worker threads, each making its own HTTP requests, against a
      thread-pool server: truth is client port → (pid, tid) and, for the server, the
      handler thread (a process capture of the server is scored on it)
  W6  ping -c N 127.0.0.1, ping -6 ::1 and an ICMP datagram socket (v4, v6): every echo
      request and reply → the pinging process
Reports flow recall, packet recall, wrong labels, thread accuracy, name accuracy, resolve
latency, CPU - for each backend (attribution_backend = ebpf, socket-table) in one run.
Targets with eBPF: W1, W3 100 % flows, 0 wrong; W5 every flow the right tid; W6 every echo.
`--overhead` instead measures CPU per loopback connection with the eBPF programs loaded vs
not (2,000 connections, alternating) and the consumer's CPU per event.

Run as root:  .venv/bin/python benchmarks/attribution.py [--n 500] [--backends ebpf,socket-table]
              .venv/bin/python benchmarks/attribution.py --overhead [--connections 2000]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
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
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])),
                             source_address=("127.0.0.1", int(sys.argv[2])))
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
POOL_SERVER = r"""
import socket, sys, threading
from concurrent.futures import ThreadPoolExecutor
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(128)
pool, lock = ThreadPoolExecutor(4), threading.Lock()
def serve(c, peer):
    c.recv(4096)
    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    c.close()
    with lock:
        print(peer[1], threading.get_native_id(), flush=True)
print("up", flush=True)
while True:
    c, peer = s.accept(); pool.submit(serve, c, peer)
"""
THREADS_CLIENT = r"""
import socket, sys, threading
port, n = int(sys.argv[1]), int(sys.argv[2])
lock = threading.Lock()
def work():
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port)); local = c.getsockname()[1]
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        while c.recv(4096):
            pass
        c.close()
        with lock:
            print(local, threading.get_native_id(), flush=True)
ts = [threading.Thread(target=work) for _ in range(int(sys.argv[3]))]
[t.start() for t in ts]; [t.join() for t in ts]
"""
PING_SOCKET = r"""
import socket, sys, time
v6 = ":" in sys.argv[1]
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM,
                  socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
s.settimeout(2)
for seq in range(int(sys.argv[2])):
    s.sendto(bytes([128 if v6 else 8, 0, 0, 0, 0, 0, 0, seq]) + b"x" * 8, (sys.argv[1], 0))
    s.recv(100); time.sleep(0.05)
"""
ECHO_TYPES = (0, 8, 128, 129)


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
    """truth: client port (ICMP: echo identifier) → pid, or → (pid, tid) when the thread
    is known. A packet belongs to a flow by its client port. A packet labelled with the
    server's (peer's) pid is counted apart from a wrong label: that process does own the
    other end, but the benchmark's label is the client's. `tid ok`: flows whose every
    packet carries the right thread (the pid's main thread when only a pid is given)."""
    rows = db.read("SELECT p.sport, p.dport, p.pid, p.tid, pr.name FROM packets p LEFT JOIN "
                   "processes pr ON pr.process_id = p.process_id WHERE p.proto = ?", (proto,))
    truth = {k: v if isinstance(v, tuple) else (v, v) for k, v in truth.items()}
    flows_ok, pk_ok, pk_all, wrong, named, peer = set(), 0, 0, 0, 0, 0
    tid_bad: set = set()
    captured: set = set()
    for sport, dport, pid, tid, name in rows:
        port = sport if sport in truth else dport if dport in truth else None
        if port is None:
            continue
        pk_all += 1
        captured.add(port)
        if pid == truth[port][0]:
            pk_ok += 1
            flows_ok.add(port)
            named += name in names
            if tid != truth[port][1]:
                tid_bad.add(port)
        elif pid in peers:
            peer += 1
        elif pid:
            wrong += 1
    return {"flows": len(truth), "flow_recall": len(flows_ok) / max(1, len(truth)),
            "packet_recall": pk_ok / max(1, pk_all), "wrong": wrong,
            "tid_ok": len(flows_ok - tid_bad) / max(1, len(truth)),
            "captured": len(captured),
            "name_accuracy": named / max(1, pk_ok), "packets": pk_all, "peer": peer}


def run_capture(ctx, workload, bpf="tcp or udp", also=None) -> tuple[dict, float, list]:
    att = ctx.captures.attribution
    att.acquire()  # keep the engine (and its fast-path process) up across the workloads
    fp = att.fastpath
    cpu0 = time.process_time() + (fp.cpu_seconds() if fp else 0)
    att.latencies.clear()
    if fp:
        fp.latencies.clear()
    row = ctx.captures.start(1, adapters=["lo"], bpf=bpf)
    if also is not None:
        also(row)
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
        proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(echo_port), str(p),
                                 str(seconds)],
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


def w5(server_port, server_out: dict, threads=4, per_thread=25):
    """A multi-threaded client against the thread-pool server: client port → (pid, tid)."""
    proc = subprocess.Popen([sys.executable, "-c", THREADS_CLIENT, str(server_port),
                             str(per_thread), str(threads)], stdout=subprocess.PIPE, text=True)
    out = {}
    for line in proc.stdout:
        port, tid = map(int, line.split())
        out[port] = (proc.pid, tid)
    proc.wait()
    time.sleep(0.3)   # the server's log lines of the last requests
    server_out["client_pid"] = proc.pid
    return out


def w6(n=5):
    """ping (raw sockets) v4 and v6, then ICMP datagram sockets: pid → echo packets due."""
    due = {}
    for cmd in (["ping", "-c", str(n), "-i", "0.2", "127.0.0.1"],
                ["ping", "-6", "-c", str(n), "-i", "0.2", "::1"]):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        p.wait()
        due[p.pid] = 2 * n
    path = "/proc/sys/net/ipv4/ping_group_range"
    old = open(path).read()
    try:
        with open(path, "w") as fh:
            fh.write("0 0")   # root's group may open ping sockets (only while measuring)
        for addr in ("127.0.0.1", "::1"):
            p = subprocess.Popen([sys.executable, "-c", PING_SOCKET, addr, str(n)])
            p.wait()
            due[p.pid] = 2 * n
    finally:
        with open(path, "w") as fh:
            fh.write(old)
    return due


def score_icmp(db, due: dict) -> dict:
    """Echo requests and replies labelled with the pinging process (due: pid → count)."""
    rows = db.read("SELECT pid FROM packets WHERE proto IN (1, 58) AND icmp_type IN "
                   "(0, 8, 128, 129)")
    got: dict = {}
    for (pid,) in rows:
        got[pid] = got.get(pid, 0) + 1
    hit = sum(min(got.get(pid, 0), n) for pid, n in due.items())
    want = sum(due.values())
    wrong = sum(n for pid, n in got.items() if pid and pid not in due)
    return {"flows": len(due), "flow_recall": sum(got.get(p, 0) >= n for p, n in due.items())
            / max(1, len(due)), "packet_recall": hit / max(1, want), "wrong": wrong,
            "tid_ok": float("nan"), "name_accuracy": float("nan"), "peer": 0,
            "captured": sum(got.get(p, 0) > 0 for p in due)}


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def run_backend(backend: str, args, http_port, echo_port, udp_port, pool_port, pool_out):
    """Every workload through one backend (its own service context); a list of results."""
    tmp = tempfile.mkdtemp(prefix=f"apc-attr-{backend}-")
    ctx = build_context(Config(data_dir=tmp))
    ctx.settings.set("attribution_backend", backend)
    # usage accounting is on by default and shares the process (and the eBPF programs)
    ctx.settings.set("usage_enabled", "1" if args.usage == "on" else "0")
    start_services(ctx)
    results = []
    try:
        cid, truth, cpu, lat = run_capture(ctx, lambda: w1(args.n, http_port))
        results.append((f"W1 curl x{args.n}, C=8", 6, truth, cid, cpu, lat, {"curl"},
                        {args.http_pid}))
        active = ctx.captures.attribution_status()
        cid, truth, cpu, lat = run_capture(ctx, lambda: w3(args.n, udp_port))
        results.append((f"W3 UDP one-shot x{args.n}", 17, truth, cid, cpu, lat,
                        {"python3", "python"}, {os.getpid()}))
        server_caps = []

        def server_capture(_row):
            server_caps.append(ctx.captures.start(2, adapters=["lo"], bpf="tcp",
                                                  pids=[args.pool_pid],
                                                  process={"id": None, "pid": args.pool_pid,
                                                           "name": "python3", "path": ""}))
        pool_out.clear()
        cid, truth, cpu, lat = run_capture(ctx, lambda: w5(pool_port, pool_out), bpf="tcp",
                                           also=server_capture)
        results.append(("W5 4 threads x25", 6, truth, cid, cpu, lat, {"python3", "python"},
                        {args.pool_pid}))
        server_truth = {port: (args.pool_pid, tid) for port, tid in pool_out.items()
                        if isinstance(port, int) and port in truth}
        results.append(("W5 pool server side", 6, server_truth, server_caps[0]["id"], 0.0, [],
                        {"python3", "python"}, {pool_out.get("client_pid")}))
        if args.all:
            cid, truth, cpu, lat = run_capture(ctx, lambda: long_lived(echo_port))
            results.append(("W2 20 long-lived", 6, truth, cid, cpu, lat, {"python3", "python"},
                            {args.echo_pid}))
        cid, due, cpu, lat = run_capture(ctx, w6, bpf="icmp or icmp6")
        results.append(("W6 ping v4/v6 + ICMP sock", 1, due, cid, cpu, lat, {"ping"}, set()))
    finally:
        rows = []
        for name, proto, truth, cid, cpu, lat, names, peers in results:
            db = CaptureDb(ctx.config.data_dir, cid)
            s = score_icmp(db, truth) if name.startswith("W6") else \
                score(db, truth, proto, names, peers)
            db.close()
            rows.append((name, s, cpu, lat))
        stop_services(ctx)
    return active, rows


def long_lived(echo_port):
    procs = w2(echo_port)
    for proc in procs.values():
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs.values():
        proc.wait()
    return {p: proc.pid for p, proc in procs.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--backends", default="ebpf,socket-table")
    ap.add_argument("--all", action="store_true", help="also W2 (long-lived connections)")
    ap.add_argument("--overhead", action="store_true")
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--usage", choices=("on", "off"), default="on",
                    help="usage accounting beside the captures (the product's default: on)")
    args = ap.parse_args()
    if args.overhead:
        from benchmarks.ebpf_overhead import run as run_overhead
        run_overhead(args.connections, args.rounds)
        return
    tmp = tempfile.mkdtemp(prefix="apc-attr-")
    http_port, echo_port, udp_port, pool_port = ports(4)
    http = subprocess.Popen([sys.executable, "-m", "http.server", str(http_port), "--bind",
                             "127.0.0.1", "--directory", tmp], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    echo = subprocess.Popen([sys.executable, "-c", ECHO, str(echo_port)])
    pool = subprocess.Popen([sys.executable, "-c", POOL_SERVER, str(pool_port)],
                            stdout=subprocess.PIPE, text=True)
    pool.stdout.readline()
    pool_out: dict = {}

    def read_pool():
        for line in pool.stdout:
            port, tid = map(int, line.split())
            pool_out[port] = tid
    threading.Thread(target=read_pool, daemon=True).start()
    args.http_pid, args.echo_pid, args.pool_pid = http.pid, echo.pid, pool.pid
    udp_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_sink.bind(("127.0.0.1", udp_port))
    time.sleep(1)
    try:
        for backend in args.backends.split(","):
            active, rows = run_backend(backend, args, http_port, echo_port, udp_port,
                                       pool_port, pool_out)
            print(f"\n== attribution_backend={backend}: ran {active['backend']} "
                  f"{active.get('reason') or ''}")
            print(f"{'workload':<27}{'flows':>6}{'in cap':>7}{'flow rec':>10}{'pkt rec':>9}"
                  f"{'wrong':>7}"
                  f"{'tid ok':>8}{'peer':>6}{'names':>7}{'p50 ms':>8}{'p95 ms':>8}{'CPU s':>7}")
            for name, s, cpu, lat in rows:
                print(f"{name:<27}{s['flows']:>6}{s['captured']:>7}{s['flow_recall']:>10.1%}"
                      f"{s['packet_recall']:>9.1%}{s['wrong']:>7}{s['tid_ok']:>8.1%}"
                      f"{s['peer']:>6}{s['name_accuracy']:>7.0%}{pct(lat, .5):>8.2f}"
                      f"{pct(lat, .95):>8.2f}{cpu:>7.1f}")
    finally:
        http.kill()
        echo.kill()
        pool.kill()
    print("in cap = flows with any packet in the capture (the rest: not captured at all); "
          "wrong = packets labelled with a pid that owns neither end; peer = labelled with the "
          "server's pid;\ntid ok = flows whose every packet names the right thread (W1/W3: the "
          "process's only thread);\nW6 rows count echo packets, not flows")


if __name__ == "__main__":
    main()
