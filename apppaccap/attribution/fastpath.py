"""The time-critical half of attribution in its own process.

A short-lived client (curl) lives ~5 ms. In the service process the sniffer, the
pipeline, the SQLite writer and the web threads share one GIL, and the first SYN of a
flow reached the resolver 4 ms (median) to 40 ms late under load, after many clients
had exited. This child process does nothing else: it sniffs only flow starts (TCP SYNs,
UDP) on every interface with a narrow BPF filter, resolves each new flow at once
(sock_diag → inode → pid, proc-connector hints, real-time priority) and sends the owners
with the processes' facts to the parent, which files them in Attribution.flows. The
parent's own resolver stays as the fallback for flows whose start this child missed.
"""

from __future__ import annotations

import heapq
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

from apppaccap.attribution.owners import LinuxOwners
from apppaccap.attribution.owners import Owner
from apppaccap.attribution.owners import boost_current_thread
from apppaccap.attribution.procfs import ProcInfo
from apppaccap.dissect.decode import decode
from apppaccap.lifeline import die_with_parent
from apppaccap.lifeline import parent_gone
from apppaccap.lifeline import spawn
from apppaccap.store.faults import reason

log = logging.getLogger(__name__)

# Flow starts only: IPv4 TCP SYNs, all IPv6 TCP (extension headers make the flags offset
# unknowable in BPF; IPv6 TCP is rarer), and UDP.
BPF = "(ip and tcp and tcp[tcpflags] & tcp-syn != 0) or (ip6 and tcp) or udp"
# Under a UDP flood every datagram would cost this process Python time (UDP has no
# "first packet" bit for BPF to select), starving the capture itself. Above this rate the
# child drops UDP from its filter for a while; the service's own resolver covers it.
BPF_NO_UDP = "(ip and tcp and tcp[tcpflags] & tcp-syn != 0) or (ip6 and tcp)"
UDP_FLOOD_PPS = 3000
UDP_PAUSE = 5.0
RETRY_MS = (2, 4, 8, 16)
SEEN_TTL = 2.0  # seconds a flow is not re-resolved by this process


def _child(conn) -> None:  # pragma: no cover - runs in the child process
    import pcap  # lazily, as in capture/adapters.py: only capturing needs libpcap loaded

    die_with_parent()  # a service killed -9 takes this process with it
    owners = LinuxOwners(boost_events=True)
    owners.start()
    boost_current_thread()
    # immediate mode is fine here: frames of snaplen 160 make an 8 MiB ring of ~40k slots
    h = pcap.pcap(name="any", snaplen=160, promisc=False, immediate=True,
                  timestamp_in_ns=True, buffer_size=8 << 20, timeout_ms=1)
    h.setfilter(BPF)
    h.setnonblock(True)
    linktype = h.datalink()
    conn.send(("ready",))
    seen: dict = {}
    delayed: list = []
    seq = 0

    def resolve(key5, attempt, ts=0):
        nonlocal seq
        found = owners.resolve(*key5)
        proto, src, sport, dst, dport = key5
        src_found = any(o.local_is_src for o in found)
        if attempt < len(RETRY_MS) and not src_found and owners_local(src):
            seq += 1
            heapq.heappush(delayed, (time.monotonic() + RETRY_MS[attempt] / 1000, seq,
                                     key5, attempt + 1, ts))
            if not found:
                return
        if found:
            infos = {o.pid: owners.process(o.pid) for o in found}
            # latency: from the kernel's timestamp of the flow's first packet to the answer
            took = (time.time_ns() - ts) / 1e9 if ts else None
            conn.send(("flow", key5, [tuple(o) for o in found],
                       {p: (tuple(i) if i else None) for p, i in infos.items()}, took))

    is_local = getattr(owners.sockdiag, "is_local", None)

    def owners_local(ip):
        # LocalAddresses memoises and follows address changes itself
        return bool(is_local(ip)) if is_local else ip.startswith("127.") or ip == "::1"

    udp = {"count": 0, "since": time.monotonic(), "paused_until": 0.0}

    def on_packet(ts, pkt):
        d = decode(linktype, bytes(pkt))
        if d.src is None or d.proto not in (6, 17) or d.fragment:
            return
        if d.proto == 17:
            udp["count"] += 1
        a, b = (d.src, d.sport), (d.dst, d.dport)
        fk = (d.proto, a, b) if a <= b else (d.proto, b, a)
        now = time.monotonic()
        if now - seen.get(fk, -1e9) < SEEN_TTL:
            return
        seen[fk] = now
        if len(seen) > 100_000:
            seen.clear()
        resolve((d.proto, d.src, d.sport, d.dst, d.dport), 0, ts)

    fds = [h.fileno(), conn.fileno()]
    while True:
        timeout = max(0.0, delayed[0][0] - time.monotonic()) if delayed else 0.5
        ready, _, _ = select.select(fds, [], [], timeout)
        if h.fileno() in ready:
            h.dispatch(-1, on_packet)
        if conn.fileno() in ready:
            try:
                msg = conn.recv()
            except EOFError:
                break
            if msg[0] == "stop":
                break
        if parent_gone():
            break  # no prctl here: the service ended without telling us
        now = time.monotonic()
        if now - udp["since"] >= 0.25:
            rate = udp["count"] / (now - udp["since"])
            udp["count"], udp["since"] = 0, now
            if rate > UDP_FLOOD_PPS and not udp["paused_until"]:
                h.setfilter(BPF_NO_UDP)
                udp["paused_until"] = now + UDP_PAUSE
            elif udp["paused_until"] and now >= udp["paused_until"]:
                h.setfilter(BPF)
                udp["paused_until"] = 0.0
        while delayed and delayed[0][0] <= time.monotonic():
            _, _, key5, attempt, ts = heapq.heappop(delayed)
            resolve(key5, attempt, ts)
    owners.stop()
    h.close()


class FastPath:
    """Runs the child and hands its answers to `deliver(key5, owners, infos)`."""

    def __init__(self, deliver):
        self.deliver = deliver
        self.proc = None
        self.conn = None
        self._reader = None
        self.received = 0
        self.errors = 0
        self.latencies: list[float] = []  # seconds from a flow's first packet to its owners

    def start(self) -> bool:
        # A plain subprocess (`python -m apppaccap.attribution.fastpath FD`), not
        # multiprocessing: spawn would re-import the host's __main__ (the server itself).
        mine, theirs = socket.socketpair()
        try:
            self.proc = spawn(
                [sys.executable, "-m", "apppaccap.attribution.fastpath", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), cwd=os.path.dirname(os.path.dirname(
                    os.path.dirname(os.path.abspath(__file__)))))
        except OSError as exc:
            log.warning("attribution fast path unavailable: %s", exc)
            return False
        finally:
            theirs.close()
        self.conn = Connection(mine.detach())
        # Wait until the child listens: a capture must not start before its fast path does.
        if not self.conn.poll(20):
            log.warning("attribution fast path did not start in time; using the fallback only")
            self.stop()
            return False
        try:
            ready = self.conn.recv()
        except EOFError:
            ready = None
        if ready != ("ready",):
            log.warning("attribution fast path failed to start (%r)", ready)
            self.stop()
            return False
        self._reader = threading.Thread(target=self._read, daemon=True, name="fastpath-reader")
        self._reader.start()
        return True

    def _read(self):
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                return
            if msg[0] == "flow":
                _, key5, owners, infos, took = msg
                self.received += 1
                if took is not None and len(self.latencies) < 100_000:
                    self.latencies.append(took)
                try:
                    self.deliver(key5, [Owner(*o) for o in owners],
                                 {p: ProcInfo(*i) for p, i in infos.items() if i})
                except Exception as exc:  # noqa: BLE001 - one flow lost, not the fast path
                    # (e.g. the catalog cannot record a new process: disk full)
                    self.errors += 1
                    if self.errors == 1 or self.errors % 1000 == 0:
                        log.warning("attribution fast path: delivering a flow failed (%d so "
                                    "far): %s", self.errors, exc,
                                    exc_info=None if reason(exc) else exc)

    def cpu_seconds(self) -> float:
        """CPU time used by the child so far (Linux /proc)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, AttributeError, IndexError, ValueError):
            return 0.0

    def stop(self):
        if self.proc is None:
            return
        try:
            self.conn.send(("stop",))
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.conn.close()
        self.proc = None


if __name__ == "__main__":  # pragma: no cover - the child process
    _child(Connection(int(sys.argv[1])))
