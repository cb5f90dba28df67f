"""Usage accounting: CPU cost of the recorder per 10,000 packets/s on loopback, and its
accuracy (target: under 10 % of one core at 10,000 packets/s).

A real `apppaccap serve` runs as a subprocess; a paced UDP sender (benchmarks/live_rate.py)
sends 100-byte datagrams to a socket of this process at the given rate. The service's CPU
time (utime + stime of /proc/<pid>/stat, plus its fast-path child's) is measured over the
sending window with usage_enabled=1 and again with usage_enabled=0; the difference is the
recorder's cost. Accuracy: the sender's packets and bytes out in usage_by_process against
what it sent (each datagram is 14 + 20 + 8 + 100 = 142 bytes on lo).

With --new-flows N the cost of nDPI labels (usage/applabel.py) is measured instead: a
sender opens N new UDP flows a second (a socket each, `--per-flow` datagrams of 100 random
bytes: nothing nDPI can name, so each flow is fed up to its cap and given up, the worst
case), once with app_labels_enabled=1 and once with 0 (the recorder restarted in between);
the difference is the labels' cost.

On a loaded machine that difference drowns in the noise of the rest (each new flow's
attribution costs more than its label), so --labeller measures the labeller alone, in
this process: CPU time of begin + `--per-flow` feeds + give-up for that many flows of
synthetic 100-byte UDP datagrams.

Run as root:  .venv/bin/python benchmarks/usage.py [--rate 10000] [--seconds 10]
              .venv/bin/python benchmarks/usage.py --new-flows 1000 [--per-flow 5]
              .venv/bin/python benchmarks/usage.py --labeller 20000 [--per-flow 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from apppaccap.settings import Settings  # noqa: E402
from apppaccap.store.catalog import Catalog  # noqa: E402
from benchmarks.sender import sender_binary  # noqa: E402

FRAME = 14 + 20 + 8 + 100
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """utime + stime of a process, and of its children still running (e.g. the attribution
    fast path a capture starts; usage accounting must not start one)."""
    children = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                children += [int(p) for p in fh.read().split()]
        except OSError:
            pass
    return _cpu(pid), sum(_cpu(c) for c in children)


def _cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except OSError:
        return 0.0


class Service:
    def __init__(self, data_dir: str):
        # off from the first moment: the baseline runs no attribution at all
        catalog = Catalog(data_dir)
        Settings(catalog).set("usage_enabled", "0")
        catalog.close()
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apppaccap", "serve", "--port", str(self.port),
             "--data-dir", data_dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=os.path.join(os.path.dirname(__file__), ".."))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.ok("apppaccap")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the service did not start")

    def ok(self, action: str, **params):
        data = urllib.parse.urlencode(dict(params, action=action)).encode()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ajax", data=data,
                                    timeout=30) as resp:
            body = json.loads(resp.read())
        assert body["ErrorCode"] == 0, body
        return body["ReturnValue"]

    def enabled(self, on: bool) -> None:
        self.ok("settings_set", key_name="usage_enabled", value="1" if on else "0")
        deadline = time.monotonic() + 10
        while self.ok("usage_now")["Enabled"] != on:
            if time.monotonic() > deadline:
                raise RuntimeError("usage_enabled did not take effect")
            time.sleep(0.2)
        time.sleep(1.5)

    def labels(self, on: bool) -> None:
        """app_labels_enabled, applied by restarting the recorder."""
        self.ok("settings_set", key_name="app_labels_enabled", value="1" if on else "0")
        self.enabled(False)
        self.enabled(True)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def send(service: Service, rate: int, seconds: float) -> dict:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    sink.setblocking(False)
    before = cpu_seconds(service.proc.pid)
    started = time.monotonic()
    sender = subprocess.Popen([sender_binary(), str(sink.getsockname()[1]), str(rate),
                               str(seconds), "100"], stdout=subprocess.PIPE, text=True)
    while sender.poll() is None:
        try:
            while True:
                sink.recv(2048)
        except BlockingIOError:
            time.sleep(0.01)
    window = time.monotonic() - started
    after = cpu_seconds(service.proc.pid)
    cpu = (after[0] - before[0], after[1] - before[1])
    sent, took = sender.stdout.read().split()
    sink.close()
    return {"pid": sender.pid, "sent": int(sent), "took": float(took), "cpu": cpu,
            "window": window}


FLOWS = """
import os, socket, sys, time
port, rate, seconds, per = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
payload = os.urandom(100)
start, n = time.monotonic(), 0
while (elapsed := time.monotonic() - start) < seconds:
    while n < int(elapsed * rate):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(per):
            s.sendto(payload, ("127.0.0.1", port))
        s.close()
        n += 1
    time.sleep(0.001)
print(n, time.monotonic() - start)
"""


def send_flows(service: Service, rate: int, seconds: float, per: int) -> dict:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    before = cpu_seconds(service.proc.pid)
    started = time.monotonic()
    sender = subprocess.Popen([sys.executable, "-c", FLOWS, str(sink.getsockname()[1]),
                               str(rate), str(seconds), str(per)], stdout=subprocess.PIPE,
                              text=True)
    while sender.poll() is None:
        try:
            while True:
                sink.recv(2048)
        except BlockingIOError:
            time.sleep(0.01)
    time.sleep(6)  # flows in detection are given up after 5 s: that work counts too
    window = time.monotonic() - started
    after = cpu_seconds(service.proc.pid)
    flows, took = sender.stdout.read().split()
    sink.close()
    return {"flows": int(flows), "took": float(took), "window": window,
            "cpu": after[0] - before[0] + after[1] - before[1]}


def flows_main(args) -> None:
    """Labels on and off in turn (on, off, on, off: load that drifts shows as a spread)."""
    service = Service(tempfile.mkdtemp(prefix="apc-usage-bench-"))
    runs = {True: [], False: []}
    try:
        service.enabled(True)
        for on in (True, False, True, False):
            if not on or runs[False]:
                service.labels(on)
            runs[on].append(send_flows(service, args.new_flows, args.seconds, args.per_flow))
    finally:
        service.stop()
    share = {on: [r["cpu"] / r["window"] for r in rs] for on, rs in runs.items()}
    rate = runs[True][0]["flows"] / runs[True][0]["took"]
    print(f"new flows at {rate:,.0f}/s ({args.per_flow} datagrams each) for "
          f"{runs[True][0]['took']:.1f} s per run")
    print("service CPU with labels: " + ", ".join(f"{x:.1%}" for x in share[True]) +
          "; without: " + ", ".join(f"{x:.1%}" for x in share[False]))
    costs = [a - b for a, b in zip(share[True], share[False])]
    print("labels cost (pairs): " + ", ".join(f"{c:.1%}" for c in costs) + " of one core = " +
          ", ".join(f"{c * 1000 / rate:.1%}" for c in costs) + " per 1,000 new flows/s")


def labeller_main(flows: int, per: int) -> None:
    import struct

    from apppaccap.usage.applabel import FlowLabeller
    from apppaccap.usage.applabel import FlowLabels
    lab = FlowLabeller.open(FlowLabels())
    if lab is None:
        raise SystemExit("nDPI 4.2 is not available")
    payload = os.urandom(100)
    a, b = socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.2")
    frames = []
    for i in range(flows):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 128, 0, 0, 64, 17, 0, a, b)
        frames.append(b"\0" * 14 + ip + struct.pack("!HHHH", 1024 + i % 60000, 9999, 108, 0)
                      + payload)
    started = time.process_time()
    for i, frame in enumerate(frames):
        st = lab.begin((17, "127.0.0.1", 1024 + i % 60000, "127.0.0.2", 9999), time.time_ns())
        for _ in range(per):
            if st is not None:
                lab.feed(st, frame, 14, 34, len(frame), 17, time.time_ns())
        if i % 10000 == 9999:
            lab.sweep(time.time_ns() + 10 ** 10)  # give up, as the counting thread does
    lab.sweep(time.time_ns() + 10 ** 10)
    took = time.process_time() - started
    lab.close()
    print(f"labeller: {took / flows * 1e6:.1f} us per flow of {per} packets (begin, feeds, "
          f"give-up) = {took / flows * 1000:.1%} of one core per 1,000 new flows/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--new-flows", type=int, default=0)
    ap.add_argument("--per-flow", type=int, default=5)
    ap.add_argument("--labeller", type=int, default=0)
    args = ap.parse_args()
    if args.labeller:
        labeller_main(args.labeller, args.per_flow)
        return
    if args.new_flows:
        flows_main(args)
        return
    service = Service(tempfile.mkdtemp(prefix="apc-usage-bench-"))
    try:
        off = send(service, args.rate, args.seconds)
        service.enabled(True)
        on = send(service, args.rate, args.seconds)
        time.sleep(2.5)  # the last seconds tick
        span = f"{int(args.seconds + 30)}s"
        progs = service.ok("usage_by_process", relative_time=span)["Programs"]
        mine = next((p for p in progs if p["Pid"] == on["pid"]), None)
        dropped = service.ok("usage_now")["Dropped"]
    finally:
        service.stop()
    rate = on["sent"] / on["took"]
    own = on["cpu"][0] / on["window"] - off["cpu"][0] / off["window"]
    child = on["cpu"][1] / on["window"] - off["cpu"][1] / off["window"]
    print(f"sent {on['sent']} datagrams at {rate:,.0f} packets/s for {on['took']:.1f} s")
    print(f"service process: {on['cpu'][0] / on['window']:.1%} of a core with usage on, "
          f"{off['cpu'][0] / off['window']:.1%} with it off; its child processes: "
          f"{on['cpu'][1] / on['window']:.1%} on, {off['cpu'][1] / off['window']:.1%} off "
          f"(usage accounting starts none)")
    per10k = (own + child) * 10000 / rate
    print(f"recorder cost: {own:.1%} of one core in the service + {child:.1%} in children "
          f"= {per10k:.1%} per 10,000 packets/s (target < 10 %)")
    if mine is None:
        print("accuracy: the sender was not found in usage_by_process")
        return
    want = on["sent"] * FRAME
    print(f"accuracy: {mine['PacketsOut']} of {on['sent']} packets "
          f"({mine['PacketsOut'] / on['sent']:.2%}), {mine['BytesOut']} of {want} bytes "
          f"({mine['BytesOut'] / want:.2%}) attributed to the sender (pid {on['pid']}, "
          f"{mine['Name']}); libpcap drops reported: {dropped}")


if __name__ == "__main__":
    main()
