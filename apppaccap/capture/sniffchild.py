"""The sniffer process of one live capture: libpcap → a bounded buffer → a pipe.

Run as `python -m apppaccap.capture.sniffchild` by capture/sniffer.py; its stdin brings
one JSON line (adapters, BPF filter) and then the parent's "stop" (closed = stop), its
stdout carries frames (docs/INTERNALS.md,
Capture). In the service process the sniffer threads shared the GIL with the web server:
20 clients polling the API kept them from draining the kernel ring (~128 ms of traffic at
1 ms blocks) and a capture lost 28 % of 20,000 packets/s. Here nothing but draining runs,
so the ring is emptied whatever the service does; what the service has not taken yet
waits in this process's buffer (bounded by BUFFER_BYTES, overflow counted).

Frames: u32 length of what follows, u8 kind, then
  H  JSON {"adapters": [[name, linktype], ...]} or {"error": class name, "message": ...}
  P  packets, each u64 ts_ns, u16 adapter index, u32 length, the bytes
  S  JSON {"drops": [libpcap drops per adapter], "overflow": packets this buffer refused}
"""

from __future__ import annotations

import json
import os
import select
import sys
import threading
import time
from collections import deque

from apppaccap.capture.sniffer import PACKET
from apppaccap.capture.sniffer import frame
from apppaccap.capture.sniffer import open_handle
from apppaccap.lifeline import die_with_parent

BUFFER_BYTES = 256 << 20  # what the service may lag behind by before packets are refused
PACKET_COST = 96  # bytes of Python objects per buffered packet, besides its data
BATCH_BYTES = 1 << 20
STATS_EVERY = 0.25


class Buffer:
    """Packets between the reading thread (append) and the writing thread (take): the two
    counters are each written by one thread only, so their difference needs no lock."""

    def __init__(self):
        self.items: deque = deque()
        self.added = self.taken = 0  # bytes, with PACKET_COST each
        self.overflow = 0

    def add(self, item: bytes) -> None:
        cost = len(item) + PACKET_COST
        if self.added - self.taken + cost > BUFFER_BYTES:
            self.overflow += 1
            return
        self.items.append(item)
        self.added += cost

    def take(self) -> list:
        out, size, items = [], 0, self.items
        while items and size < BATCH_BYTES:
            item = items.popleft()
            out.append(item)
            size += len(item)
        self.taken += size + PACKET_COST * len(out)
        return out


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Child:
    def __init__(self, handles: list, names: list):
        self.handles, self.names = handles, names
        self.buffer = Buffer()
        self.stats: bytes | None = None
        self.done = threading.Event()
        self.out = sys.stdout.fileno()

    def drops(self) -> list:
        out = []
        for name, h in zip(self.names, self.handles):
            try:
                _received, dropped, if_dropped = h.stats()
                # on lo the kernel counts every packet twice, so are its drops
                out.append((dropped + if_dropped) // (2 if name == "lo" else 1))
            except OSError:
                out.append(0)
        return out

    def stats_frame(self) -> bytes:
        return frame(b"S", json.dumps({"drops": self.drops(),
                                       "overflow": self.buffer.overflow}).encode())

    def writer(self) -> None:
        """Frames to the service as fast as it reads them (os.write releases the GIL)."""
        buf = self.buffer
        while True:
            finished = self.done.is_set()  # read before taking: nothing added after it
            items = buf.take()
            if items:
                payload = b"".join(items)
                write_all(self.out, frame(b"P", payload))
            stats, self.stats = self.stats, None
            if stats is not None:
                write_all(self.out, stats)
            if finished and not items:
                return
            if not items:
                time.sleep(0.001)

    def run(self) -> None:
        add, pack = self.buffer.add, PACKET.pack
        callbacks = []
        for i in range(len(self.handles)):
            def on_packet(ts, pkt, i=i):
                add(pack(ts, i, len(pkt)) + pkt)
            callbacks.append(on_packet)
        fds = {h.fileno(): (h, cb) for h, cb in zip(self.handles, callbacks)}
        stdin = sys.stdin.fileno()
        writer = threading.Thread(target=self.writer, name="sniffer-writer", daemon=True)
        writer.start()
        next_stats = time.monotonic() + STATS_EVERY
        running = True
        while running:
            ready, _, _ = select.select([stdin, *fds], [], [], 0.1)
            for fd in ready:
                if fd == stdin:
                    running = bool(os.read(stdin, 64))  # closed: the capture stops
                    continue
                h, cb = fds[fd]
                h.dispatch(-1, cb)
            now = time.monotonic()
            if now >= next_stats:
                self.stats, next_stats = self.stats_frame(), now + STATS_EVERY
        # What the kernel already holds belongs to the capture: read it before closing.
        for h, cb in fds.values():
            for _ in range(100):
                try:
                    if h.dispatch(-1, cb) <= 0:
                        break
                except OSError:
                    break
        final = self.stats_frame()
        for h in self.handles:
            h.close()
        self.done.set()
        writer.join()
        write_all(self.out, final)


def main() -> int:  # pragma: no cover - the child process (tests run it for real)
    die_with_parent()  # a service killed -9 takes this process with it
    try:
        # draining costs little per packet; when the CPU is saturated (the service's own
        # pollers, other programs) the kernel ring must still be emptied in time
        os.nice(-10)
    except OSError:
        pass  # not root: the default priority
    spec = json.loads(sys.stdin.buffer.readline())  # then stdin stays open until "stop"
    out = sys.stdout.fileno()
    handles = []
    try:
        for name in spec["adapters"]:
            handles.append(open_handle(name, spec["bpf"]))
    except Exception as exc:  # noqa: BLE001 - reported to the service, which raises it
        for h in handles:
            h.close()
        write_all(out, frame(b"H", json.dumps({"error": type(exc).__name__,
                                               "message": str(exc)}).encode()))
        return 1
    write_all(out, frame(b"H", json.dumps(
        {"adapters": [[n, h.datalink()] for n, h in zip(spec["adapters"], handles)]}).encode()))
    try:
        Child(handles, spec["adapters"]).run()
    except BrokenPipeError:
        return 1  # the service stopped reading (it closed a capture it never started)
    return 0


if __name__ == "__main__":  # pragma: no cover - the child process
    sys.exit(main())
