"""A live capture is read by its own sniffer process (capture/sniffchild.py): API work in
the service cannot starve it, and the process never outlives its capture or the service.

Real service (`apppaccap serve`), real capture of `lo`, real pollers over HTTP."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
import urllib.parse

from apppaccap.wire import CaptureState
from tests.helpers.live import wait_for
from tests.helpers.server import Server

CHILD = "apppaccap.capture.sniffchild"


def sniffer_pids(parent: int) -> set[int]:
    """Sniffer processes whose parent is `parent` (0: any parent)."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if CHILD.encode() in argv and (parent == 0 or ppid == parent):
            out.add(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Poller(threading.Thread):
    """Calls capture_stream (following LastId), stats_totals and capture_list_conns back
    to back on one keep-alive connection until told to stop."""

    def __init__(self, port: int, capture_id: int):
        super().__init__(daemon=True)
        self.port, self.capture_id = port, capture_id
        self.done = threading.Event()
        self.answers = {"capture_stream": 0, "stats_totals": 0, "capture_list_conns": 0}
        self.errors: list = []

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        last_pkt = last_conn = 0
        while not self.done.is_set():
            for action, params in (
                    ("capture_stream", {"capture_id": self.capture_id, "last_id": last_pkt,
                                        "limit": 1000}),
                    ("stats_totals", {}),
                    ("capture_list_conns", {"capture_id": self.capture_id,
                                            "last_id": last_conn, "limit": 1000})):
                body = urllib.parse.urlencode(dict(params, action=action))
                conn.request("POST", "/ajax", body,
                             {"Content-Type": "application/x-www-form-urlencoded"})
                answer = json.loads(conn.getresponse().read())
                if answer["ErrorCode"] != 0:
                    self.errors.append(answer)
                    continue
                self.answers[action] += 1
                value = answer["ReturnValue"]
                if action == "capture_stream":
                    last_pkt = value["LastId"]
                elif action == "capture_list_conns":
                    conns = value["Connections"]
                    last_conn = conns[-1]["ConnectionId"] if value["More"] else 0
        conn.close()


def test_capture_keeps_every_packet_while_pollers_hammer_the_api(tmp_path):
    server = Server(tmp_path / "data", log_dir=tmp_path)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # never read: no ICMP errors
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    try:
        cap = server.ok("capture_start_system", filter=f"udp dst port {port}", adapter="lo")
        cid = cap["CaptureId"]
        pollers = [Poller(server.port, cid) for _ in range(20)]
        for p in pollers:
            p.start()
        time.sleep(1.0)  # the pollers are busy before the stream starts
        # a modest paced stream: 3,000 datagrams/s for 3 s, each with its sequence number
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sent, rate, start = 0, 10000, time.monotonic()
        while sent < 30000:
            due = min(30000, int((time.monotonic() - start) * rate) + 1)
            while sent < due:
                tx.sendto(sent.to_bytes(8, "big") + bytes(92), ("127.0.0.1", port))
                sent += 1
            time.sleep(0.001)
        tx.close()
        time.sleep(0.5)
        for p in pollers:
            p.done.set()
        for p in pollers:
            p.join(60)
        server.ok("capture_stop_system", capture_id=cid)
        row = server.ok("capture_get_details", capture_id=cid)
        seqs = set()
        last = 0
        while True:
            page = server.ok("capture_read", capture_id=cid, last_id=last, flags=1,
                             limit=10000)
            for pkt in page["Packets"]:
                data = bytes.fromhex(pkt["Data"])
                seqs.add(int.from_bytes(data[42:50], "big"))  # after Ethernet, IPv4, UDP
            last = page["LastId"]
            if not page["More"]:
                break
    finally:
        rx.close()
        server.stop()
    # the API really was under load the whole time, and answered
    assert all(not p.errors for p in pollers), [p.errors[:1] for p in pollers if p.errors]
    assert all(min(p.answers.values()) >= 1 for p in pollers), [p.answers for p in pollers]
    assert row["DroppedCount"] == 0, row
    assert row["PacketCount"] == sent == 30000, row
    assert seqs == set(range(sent))


def test_sniffer_process_ends_with_its_capture_and_with_the_service(tmp_path):
    server = Server(tmp_path / "data", log_dir=tmp_path)
    try:
        cap = server.ok("capture_start_system", filter="udp port 9", adapter="lo")
        first = sniffer_pids(server.proc.pid)
        assert len(first) == 1, "one sniffer process per capture"
        server.ok("capture_stop_system", capture_id=cap["CaptureId"])
        wait_for(lambda: not any(alive(p) for p in first), 10, what="sniffer gone after stop")
        assert not sniffer_pids(server.proc.pid)

        server.ok("capture_start_system", filter="udp port 9", adapter="lo")
        second = sniffer_pids(server.proc.pid)
        assert len(second) == 1 and not second & first
        server.kill(signal.SIGKILL)  # no cleanup runs in the service
        wait_for(lambda: not any(alive(p) for p in second), 10,
                 what="sniffer gone after the service was killed")
    finally:
        server.stop()


def test_a_sniffer_process_that_dies_interrupts_its_capture(tmp_path):
    """Its packets can no longer arrive: the capture is INTERRUPTED and says why."""
    server = Server(tmp_path / "data", log_dir=tmp_path)
    try:
        cap = server.ok("capture_start_system", filter="udp port 9", adapter="lo")
        (pid,) = sniffer_pids(server.proc.pid)
        os.kill(pid, signal.SIGKILL)
        row = wait_for(lambda: (r := server.ok("capture_get_details",
                                               capture_id=cap["CaptureId"]))["State"]
                       != CaptureState.ACTIVE and r, 20, what="capture interrupted")
        assert row["State"] == CaptureState.INTERRUPTED, row
        assert "sniffer process ended unexpectedly" in row["Message"], row
        assert server.ok("capture_list_active") == []
    finally:
        server.stop()
