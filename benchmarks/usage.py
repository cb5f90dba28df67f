"""Usage accounting: CPU cost of the recorder per 10,000 packets/s on loopback, and its
accuracy (target: under 10 % of one core at 10,000 packets/s).

A real `apppaccap serve` runs as a subprocess; a paced UDP sender (benchmarks/live_rate.py)
sends 100-byte datagrams to a socket of this process at the given rate. The service's CPU
time (utime + stime of /proc/<pid>/stat, plus its fast-path child's) is measured over the
sending window with usage_enabled=1 and again with usage_enabled=0; the difference is the
recorder's cost. Accuracy: the sender's packets and bytes out in usage_by_process against
what it sent (each datagram is 14 + 20 + 8 + 100 = 142 bytes on lo).

Run as root:  .venv/bin/python benchmarks/usage.py [--rate 10000] [--seconds 10]
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
from benchmarks.live_rate import sender_binary  # noqa: E402

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
                               str(seconds)], stdout=subprocess.PIPE, text=True)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
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
