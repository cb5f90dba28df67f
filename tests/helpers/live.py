"""Helpers for live tests: a tcpdump running beside us, waiting for conditions, reading
every page of an action."""

from __future__ import annotations

import signal
import subprocess
import time


class NoOwners:
    """Attribution's OS seam: a socket table where nobody owns anything (the sweep walks
    the flows and finds none)."""

    def start(self):
        pass

    def stop(self):
        pass

    def resolve(self, *key5):
        return []

    def snapshot(self):
        return {}

    def process(self, pid):
        return None


class Tcpdump:
    """tcpdump -i IFACE -w FILE FILTER, started and ready before traffic begins."""

    def __init__(self, iface: str, bpf: str, path: str):
        self.path = path
        self.proc = subprocess.Popen(
            ["tcpdump", "-i", iface, "-w", path, "-U", "--immediate-mode", "-B", "32768",
             "-s", "262144", bpf], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        line = self.proc.stderr.readline().decode()  # "listening on lo, ..." once the handle is set
        assert "listening" in line, f"tcpdump did not start: {line}"

    def stop(self) -> list[tuple[int, int]]:
        """Stop and return [(ts_ns, length)] of every packet it saw."""
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        from apppaccap.pcap.reader import CaptureReader
        with CaptureReader(self.path) as r:
            return [(rec.ts_ns // 1000, rec.origlen) for rec in r]


def wait_for(cond, timeout=10.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def page_through(caller, action, key, limit=10000, **params) -> list:
    """Every item of a paged action (capture_read, search_read, extract_query …): pages
    of `limit` after LastId until More is false. `caller` has ok(): Ajax or a Server."""
    out, last = [], 0
    while True:
        page = caller.ok(action, last_id=last, limit=limit, **params)
        out.extend(page[key])
        last = page["LastId"]
        if not page["More"]:
            return out


def read_all(caller, capture_id, action="capture_read", **kw):
    """Every packet of a capture."""
    return page_through(caller, action, "Packets", capture_id=capture_id, **kw)


def assert_same_packets(ours, theirs, tolerance_us: int = 5000):
    """Same packets as a reference capture: equal count, equal lengths in time order, and
    timestamps within tolerance (two libpcap handles stamp the same packet separately)."""
    ours, theirs = sorted(ours), sorted(theirs)
    assert len(ours) == len(theirs), f"{len(ours)} packets, reference saw {len(theirs)}"
    assert [n for _, n in ours] == [n for _, n in theirs], "packet lengths differ"
    worst = max((abs(a - b) for (a, _), (b, _) in zip(ours, theirs)), default=0)
    assert worst <= tolerance_us, f"timestamps differ by up to {worst} µs"
