"""What eBPF attribution costs: CPU per loopback TCP connection with the programs loaded
vs not (alternating rounds, same processes), and the consumer's CPU per event.

Run as root:  .venv/bin/python benchmarks/attribution.py --overhead [--connections 2000]
(or this file directly). CPU = user + system time of the client and of the echo server,
read from /proc/<pid>/stat: the programs run in those tasks' context (and in the softirq
that loopback delivery runs on top of them), so their in-kernel cost lands there.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from apppaccap.attribution.ebpf import KernelFlows  # noqa: E402

SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(512); print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept(); d = c.recv(100); c.sendall(d); c.close()
"""
CLIENT = r"""
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", port)); c.sendall(b"x"); c.recv(100); c.close()
"""
def cpu_of(pid: int) -> float:
    """Seconds on the CPU (ns resolution: schedstat, not the 10 ms ticks of stat)."""
    with open(f"/proc/{pid}/schedstat") as fh:
        return int(fh.read().split()[0]) / 1e9


def one_round(port: int, server_pid: int, n: int) -> float:
    """Seconds of CPU (client + server) for n connections."""
    s0 = cpu_of(server_pid)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", CLIENT, str(port), str(n)], check=True)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return client + cpu_of(server_pid) - s0


def prog_stats() -> dict:
    """name → (run_time_ns, run_cnt) of our loaded programs (bpftool; kernel.bpf_stats_enabled
    must be 1). Names are cut to 15 characters by the kernel."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True)
    if out.returncode:
        return {}
    return {p["name"]: (p.get("run_time_ns", 0), p.get("run_cnt", 0))
            for p in json.loads(out.stdout) if p.get("name", "").startswith("on_")}


def run(n: int = 2000, rounds: int = 3) -> None:
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    # the client's start-up (python) is in every round alike; measure it to subtract
    base = []
    off, on, per_event = [], [], []
    kernel: dict = {}          # program → [ns, invocations] over the loaded rounds
    kernel_per_conn = []       # µs of program run time per connection (all of the box's traffic)
    stats_path = "/proc/sys/kernel/bpf_stats_enabled"
    old_stats = open(stats_path).read()
    with open(stats_path, "w") as fh:
        fh.write("1")   # run-time accounting of BPF programs, only while measuring
    try:
        for r in range(rounds):
            base.append(one_round(port, server.pid, 0))
            for loaded in (False, True) if r % 2 == 0 else (True, False):   # ABBA order
                if not loaded:
                    off.append(one_round(port, server.pid, n))
                    continue
                k = KernelFlows()
                k.start()
                try:
                    before = prog_stats()
                    on.append(one_round(port, server.pid, n))
                    after = prog_stats()
                    for name, (ns, cnt) in after.items():
                        ns0, cnt0 = before.get(name, (0, 0))
                        acc = kernel.setdefault(name, [0, 0])
                        acc[0] += ns - ns0
                        acc[1] += cnt - cnt0
                    kernel_per_conn.append(sum(a[0] - before.get(k_, (0, 0))[0]
                                               for k_, a in after.items()) / n / 1000)
                    time.sleep(0.1)
                    k.drain()
                    if k.stats["events"]:
                        per_event.append(k.stats["consumer_cpu"] / k.stats["events"])
                    counters = k.counters()
                finally:
                    k.stop()
    finally:
        server.kill()
        with open(stats_path, "w") as fh:
            fh.write(old_stats)
    b = statistics.median(base)
    us = [(x - b) / n * 1e6 for x in off], [(x - b) / n * 1e6 for x in on]
    added = [a - o for a, o in zip(*reversed(us))]
    fmt = "median {:.1f} µs (range {:.1f}–{:.1f})"
    print(f"{n} loopback TCP connections x {rounds} rounds (client + server CPU):")
    print("  eBPF off: " + fmt.format(statistics.median(us[0]), min(us[0]), max(us[0])))
    print("  eBPF on:  " + fmt.format(statistics.median(us[1]), min(us[1]), max(us[1])))
    print("  added:    " + fmt.format(statistics.median(added), min(added), max(added)))
    if per_event:
        print("  consumer: " + fmt.format(statistics.median(per_event) * 1e6,
                                          min(per_event) * 1e6, max(per_event) * 1e6)
              + f" per event (the last round's kernel counters: {counters})")
    if kernel_per_conn:
        print("  in-kernel program time per connection: " + fmt.format(
            statistics.median(kernel_per_conn), min(kernel_per_conn), max(kernel_per_conn))
            + " (every packet on the box counts)")
        for name, (ns, cnt) in sorted(kernel.items()):
            if cnt:
                print(f"    {name:<18} {ns / cnt / 1000:.2f} µs per run, {cnt} runs")


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
