"""Resolve latency and correctness for short-lived curl flows on loopback (PAB-1 W1-like).

Starts `python3 -m http.server` on a free loopback port and runs N `curl --local-port P`
clients at concurrency C. A raw AF_PACKET socket on `lo` sees each flow's SYN and calls
LinuxOwners.resolve() right away on that (sniffer) thread; ground truth is P -> Popen pid.

Prints: sock_diag lookup us, cached-inode find us, resolve p50/p95/max, first packet ->
label latency (kernel packet timestamp to resolve end), flows resolved correctly, wrong
labels, server-side correctness, names kept for exited curls, resolver CPU.

Run as root:  .venv/bin/python benchmarks/resolve.py [--count 200] [--concurrency 8] [--rt]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from apppaccap.attribution.owners import LinuxOwners  # noqa: E402
from apppaccap.attribution.owners import boost_current_thread  # noqa: E402
from apppaccap.attribution.procfs import InodeOwners  # noqa: E402
from apppaccap.attribution.sockdiag import SockDiag  # noqa: E402

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # lo shows each packet twice (outgoing, then incoming): keep one
SO_TIMESTAMPNS = 35


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_ports(n: int) -> list[int]:
    """n consecutive ports below the ephemeral range, none bound or in TIME_WAIT."""
    while True:
        base = random.randrange(10000, 32000 - n)
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return list(range(base, base + n))


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def micro(n: int = 2000) -> dict:
    """Per-call cost of the two hot primitives on a long-lived socket (best of 5)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    diag, inodes = SockDiag(), InodeOwners()
    args = (6, "127.0.0.1", cli.getsockname()[1], "127.0.0.1", srv.getsockname()[1])
    inode = os.fstat(cli.fileno()).st_ino
    inodes.find(inode)

    def best(fn, *a):
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n):
                fn(*a)
            runs.append((time.perf_counter() - t) / n * 1e6)
        return round(min(runs), 2)

    out = {"lookup_us": best(diag.lookup, *args), "find_cached_us": best(inodes.find, inode)}
    diag.close()
    cli.close()
    srv.close()
    return out


class Sniffer(threading.Thread):
    def __init__(self, owners: LinuxOwners, server_port: int, rt: bool):
        super().__init__(daemon=True, name="sniffer")
        self.owners, self.server_port, self.rt = owners, server_port, rt
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.results: dict[int, tuple] = {}  # client port -> (resolve s, latency s, owners)
        self.stop_flag = threading.Event()
        self.boosted = None
        self.cpu = 0.0

    def run(self):
        if self.rt:
            self.boosted = boost_current_thread()
        cpu0 = time.thread_time()
        while not self.stop_flag.is_set():
            try:
                data, anc, _flags, addr = self.sock.recvmsg(256, 64)
            except socket.timeout:
                continue
            if addr[2] != PACKET_OUTGOING or len(data) < 14 + 20 + 14:
                continue
            if data[12:14] != b"\x08\x00" or data[14 + 9] != 6:
                continue
            ihl = (data[14] & 0x0F) * 4
            tcp = 14 + ihl
            sport, dport = struct.unpack_from(">HH", data, tcp)
            flags = data[tcp + 13]
            if dport != self.server_port or not flags & 0x02 or flags & 0x10:
                continue  # only the client's SYN opens a flow here
            src = socket.inet_ntoa(data[26:30])
            dst = socket.inet_ntoa(data[30:34])
            t0 = time.perf_counter()
            owners = self.owners.resolve(6, src, sport, dst, dport)
            t1 = time.perf_counter()
            latency = None
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("=qq", raw[:16])
                    latency = (time.time_ns() - (sec * 10**9 + nsec)) / 1e9
            if sport not in self.results:
                self.results[sport] = (t1 - t0, latency, owners)
        self.cpu = time.thread_time() - cpu0


def run(count: int, concurrency: int, rt: bool, events: bool, threads: bool) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, cwd="/tmp")
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        owners = LinuxOwners(events=None if events else False, threads=threads,
                             boost_events=rt)
        owners.start()
        sniffer = Sniffer(owners, port, rt)
        sniffer.start()
        time.sleep(0.3)
        ports = fresh_ports(count)
        url = f"http://127.0.0.1:{port}/"
        # The curls are started from a separate process: launcher threads in this one
        # would compete with the resolver for the GIL, which a real capture service
        # does not have to do.
        t_start = time.monotonic()
        launched = subprocess.run([sys.executable, __file__, "--launch", url,
                                   str(concurrency)] + [str(p) for p in ports],
                                  capture_output=True, text=True, check=True)
        wall = time.monotonic() - t_start
        truth, rcs = {}, {}
        for p, pid, rc in json.loads(launched.stdout):
            truth[p], rcs[p] = pid, rc
        time.sleep(0.5)
        sniffer.stop_flag.set()
        sniffer.join(2)
        res = sniffer.results
        done = [p for p in ports if rcs.get(p) == 0]
        seen = [p for p in done if p in res]
        correct = wrong = server_ok = server_wrong = named = 0
        misses = []
        for p in seen:
            sides = {o.local_is_src: o.pid for o in res[p][2]}
            if sides.get(True) != truth[p] or sides.get(False) != server.pid:
                misses.append((p, truth[p], res[p][2], round(res[p][0] * 1e3, 3)))
            for o in res[p][2]:
                if o.local_is_src:
                    if o.pid == truth[p]:
                        correct += 1
                        info = owners.process(o.pid)
                        named += bool(info and info.name == "curl")
                    else:
                        wrong += 1
                elif o.pid == server.pid:
                    server_ok += 1
                else:
                    server_wrong += 1
        times = [r[0] * 1e3 for r in res.values()]
        lat = [r[1] * 1e3 for r in res.values() if r[1] is not None]
        out = {
            "count": count, "concurrency": concurrency, "rt": rt, "rt_applied": sniffer.boosted,
            "events": events, "threads": threads, "flows_per_s": round(count / wall, 1),
            "completed": len(done), "seen": len(seen),
            "client_correct": correct,
            "client_correct_ratio": round(correct / max(1, len(done)), 4),
            "client_wrong": wrong, "server_correct": server_ok, "server_wrong": server_wrong,
            "curl_name_kept": named,
            "resolve_ms_p50": round(statistics.median(times), 3) if times else None,
            "resolve_ms_p95": round(pct(times, 95), 3), "resolve_ms_max": round(max(times), 3),
            "label_latency_ms_p50": round(pct(lat, 50), 3),
            "label_latency_ms_p95": round(pct(lat, 95), 3),
            "resolver_cpu_s": round(sniffer.cpu, 3),
            "inode_stats": dict(owners.inodes.stats),
            "misses": misses[:10],
        }
        owners.stop()
        return out
    finally:
        server.terminate()
        server.wait(5)


def launch(url: str, concurrency: int, ports: list[int]) -> None:
    """Child mode: run the curls, print [[port, pid, returncode], ...] as JSON."""
    out = []

    def one(p):
        proc = subprocess.Popen(["/usr/bin/curl", "-s", "-o", "/dev/null",
                                 "--local-port", str(p), url])
        out.append((p, proc.pid, proc.wait()))

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, ports))
    print(json.dumps(out))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--launch"]:
        return launch(argv[1], int(argv[2]), [int(p) for p in argv[3:]])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rt", action="store_true", help="SCHED_FIFO 10 for the resolver thread")
    ap.add_argument("--no-events", action="store_true", help="without the proc connector")
    ap.add_argument("--no-threads", action="store_true", help="skip the thread search")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("needs root (AF_PACKET, /proc/*/fd of other processes, cn_proc)")
    m = micro()
    results = [run(a.count, a.concurrency, a.rt, not a.no_events, not a.no_threads)
               for _ in range(a.runs)]
    if a.json:
        print(json.dumps({"micro": m, "runs": results}, indent=2))
        return
    print(f"sock_diag exact lookup: {m['lookup_us']} us   cached inode->pid: "
          f"{m['find_cached_us']} us")
    for r in results:
        print(f"{r['count']} curls, C={r['concurrency']}, rt={r['rt']}({r['rt_applied']}), "
              f"events={r['events']}, threads={r['threads']}, {r['flows_per_s']} flows/s")
        print(f"  completed {r['completed']}, SYN seen {r['seen']}, client pid correct "
              f"{r['client_correct']} ({r['client_correct_ratio']:.1%}), wrong "
              f"{r['client_wrong']}; server side correct {r['server_correct']}, wrong "
              f"{r['server_wrong']}; 'curl' name kept {r['curl_name_kept']}")
        print(f"  resolve ms p50 {r['resolve_ms_p50']} p95 {r['resolve_ms_p95']} max "
              f"{r['resolve_ms_max']}; SYN->label ms p50 {r['label_latency_ms_p50']} p95 "
              f"{r['label_latency_ms_p95']}; resolver CPU {r['resolver_cpu_s']} s")
        print(f"  inode search: {r['inode_stats']}")
        for miss in r["misses"]:
            print(f"  miss: port {miss[0]} curl pid {miss[1]} got {miss[2]} in {miss[3]} ms")


if __name__ == "__main__":
    main()
