"""Usage accounting on real traffic (root, libpcap, `lo`): a program downloading a known
body is counted per program within 1 % of what crossed the wire (a tcpdump beside it is the
oracle), shows a live rate within 3 seconds, its minute rows survive a restart, and
usage_enabled=0 stops counting."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers.live import Tcpdump
from tests.helpers.live import wait_for
from tests.helpers.ports import free_port
from tests.helpers.ports import wait_port
from tests.helpers.server import Server

BODY = 5 * 1024 * 1024
CLIENT = ("import sys, time, urllib.request\n"
          "n = len(urllib.request.urlopen(sys.argv[1], timeout=30).read())\n"
          "print(n, flush=True)\n"
          "time.sleep(float(sys.argv[2]))\n")


@pytest.fixture
def web(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "body.bin").write_bytes(os.urandom(BODY))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    yield port
    proc.kill()
    proc.wait()


# the same download that keeps its socket open while it lingers: for the tests about what
# happens after counting (restarts, kill -9), not about naming a connection in time
HOLDING = ("import socket, sys, time\n"
           "c = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=30)\n"
           "c.sendall(b'GET /body.bin HTTP/1.0\\r\\n\\r\\n')\n"
           "data = b''\n"
           "while chunk := c.recv(1 << 16):\n"
           "    data += chunk\n"
           "print(len(data.split(b'\\r\\n\\r\\n', 1)[1]), flush=True)\n"
           "time.sleep(float(sys.argv[2]))\n")


def download(port: int, linger: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLIENT, f"http://127.0.0.1:{port}/body.bin",
                             str(linger)], stdout=subprocess.PIPE, text=True)


def holding_download(port: int, linger: float = 1.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDING, str(port), str(linger)],
                            stdout=subprocess.PIPE, text=True)


def program(answer: dict, pid: int):
    return next((p for p in answer["Programs"] if p["Pid"] == pid), None)


def now_of(server) -> dict:
    """usage_now one entry per process (grouping by path folds every python3 together)."""
    return server.ok("usage_now", group="process")


def by_process(server, span: str) -> dict:
    return server.ok("usage_by_process", relative_time=span, group="process")


def test_download_counted_live_and_per_minute(tmp_path, web):
    server = Server(tmp_path / "data", log_dir=tmp_path)
    try:
        wait_for(lambda: now_of(server)["Enabled"], 15, what="the recorder")
        time.sleep(1.5)  # its handles are open once it ticks
        dump = Tcpdump("lo", f"tcp port {web}", str(tmp_path / "oracle.pcap"))
        started = time.monotonic()
        client = download(web, linger=4)
        assert int(client.stdout.readline()) == BODY
        now = wait_for(lambda: (lambda p: p if p and p["BytesInPerSec"] > 0 else None)(
            program(now_of(server), client.pid)), 5, 0.1, "a live rate")
        assert time.monotonic() - started < 3.0, "the rate showed after more than 3 s"
        assert now["Connections"] >= 1
        assert now["TopRemotes"][0]["Port"] == web
        assert sum(s["BytesIn"] for s in now["Series"]) > 0
        client.wait(30)
        time.sleep(2.5)  # the last second ticks
        wire = dump.stop()
        # the client's direction: packets from the server's port to the client
        on_wire = sum(length for _ts, length in wire)
        got = program(by_process(server, "60s"), client.pid)
        assert got is not None
        assert got["Series"] and server.ok("usage_by_process",
                                           relative_time="60s")["BucketSeconds"] == 1
        total = got["BytesIn"] + got["BytesOut"]
        assert abs(total - on_wire) <= on_wire * 0.01, (total, on_wire)
        # the oracle is the wire (retransmissions on a loaded machine count there too)
        assert got["BytesIn"] >= BODY
        assert got["BytesOut"] > 0
        process_id = got["ProcessId"]
    finally:
        server.stop()  # SIGTERM: the current minute is written
    again = Server(tmp_path / "data", log_dir=tmp_path)
    try:
        after = server_program = program(by_process(again, "15m"),
                                         client.pid)
        assert server_program is not None and after["ProcessId"] == process_id
        assert by_process(again, "15m")["BucketSeconds"] == 60
        assert after["BytesIn"] == got["BytesIn"] and after["BytesOut"] == got["BytesOut"]
    finally:
        again.stop()


def test_disabled_stops_counting(tmp_path, web):
    server = Server(tmp_path / "data", log_dir=tmp_path)
    try:
        wait_for(lambda: now_of(server)["Enabled"], 15, what="the recorder")
        server.ok("settings_set", key_name="usage_enabled", value="0")
        wait_for(lambda: not now_of(server)["Enabled"], 5, what="the recorder to stop")
        client = download(web)
        assert int(client.stdout.readline()) == BODY
        client.wait(30)
        time.sleep(2)
        assert now_of(server)["Programs"] == []
        assert program(by_process(server, "5m"), client.pid) is None
        server.ok("settings_set", key_name="usage_enabled", value="1")
        wait_for(lambda: now_of(server)["Enabled"], 5, what="the recorder again")
    finally:
        server.stop()


def test_bad_ranges_are_refused(tmp_path):
    server = Server(tmp_path / "data", log_dir=tmp_path)
    try:
        bad = server.call("usage_by_process", relative_time="soon")
        assert bad["ErrorCode"] != 0 and "relative_time" in bad["ReturnValue"]
        both = server.call("usage_by_process", relative_time="5m", start_dtg=1)
        assert both["ErrorCode"] != 0
        assert server.call("usage_now", seconds=0)["ErrorCode"] != 0
    finally:
        server.stop()


def test_retention_rolls_minutes_up_to_hours_and_drops_old_rows(tmp_path):
    from apppaccap.settings import Settings
    from apppaccap.store import usage as usage_table
    from apppaccap.store.catalog import Catalog
    from apppaccap.usage.service import UsageService

    catalog = Catalog(str(tmp_path))
    ctx = type("Ctx", (), {"catalog": catalog, "settings": Settings(catalog)})()
    now = 30_000_000  # minutes since 1970, an hour's first minute
    day = 1440
    rows = {}
    for age_days, minutes in ((1, range(5)), (8, range(0, 120, 7)), (100, range(3))):
        for m in minutes:
            rows[(now - age_days * day + m, 7, "10.0.0.1", 443, 6, 0)] = [2, 1000]
    catalog.write(lambda c: usage_table.add(c, rows))
    try:
        UsageService(ctx, lambda: None).apply_retention(now)
        left = catalog.read("SELECT minute, packets, bytes FROM usage_minute ORDER BY minute")
        recent = [r for r in left if r[0] >= now - day - 1]
        old = [r for r in left if r[0] < now - day - 1]
        assert len(recent) == 5  # within usage_minute_days: untouched
        # 8 days old: minutes 0..119 of two hours → two hour rows, nothing lost
        assert [(r[0] - (now - 8 * day)) for r in old] == [0, 60]
        assert sum(r[2] for r in old) == 1000 * len(range(0, 120, 7))
        assert all(r[0] >= now - 90 * day for r in left)  # 100 days old: gone
    finally:
        catalog.close()


def test_kill_9_loses_at_most_the_current_minute(tmp_path, web):
    server = Server(tmp_path / "data", log_dir=tmp_path)
    try:
        wait_for(lambda: now_of(server)["Enabled"], 15, what="the recorder")
        time.sleep(1.5)
        client = holding_download(web)
        assert int(client.stdout.readline()) == BODY
        client.wait(30)
        minute = time.time() // 60
        time.sleep(2.5)
        counted = program(by_process(server, "5m"), client.pid)
        assert counted is not None and counted["BytesIn"] > 0
        # the minute of the download ends, its rows are written at the next tick
        wait_for(lambda: time.time() // 60 > minute, 65, 0.2, "the next minute")
        time.sleep(2.0)
    finally:
        server.kill(9)
    again = Server(tmp_path / "data", log_dir=tmp_path)
    try:
        after = program(by_process(again, "15m"), client.pid)
        assert after is not None
        assert (after["BytesIn"], after["BytesOut"]) == (counted["BytesIn"],
                                                         counted["BytesOut"])
    finally:
        again.stop()


# one datagram burst from a process that exits at once: its socket is gone before any look
# at the socket table, only the kernel's record (eBPF) still names it
ONE_SHOT = ("import socket, sys\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for _ in range(3):\n"
            "    s.sendto(b'x' * 1000, ('127.0.0.1', int(sys.argv[1])))\n")


def test_one_shot_senders_are_named_by_the_kernel_record(tmp_path):
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    server = Server(tmp_path / "data", log_dir=tmp_path)
    try:
        wait_for(lambda: now_of(server)["Enabled"], 15, what="the recorder")
        time.sleep(1.5)
        pids = []
        for _ in range(20):
            p = subprocess.Popen([sys.executable, "-c", ONE_SHOT, str(port)])
            p.wait(30)
            pids.append(p.pid)

        def named():
            answer = by_process(server, "5m")
            got = {pid: program(answer, pid) for pid in pids}
            return got if all(got.values()) else None
        got = wait_for(named, 10, 0.5, "every one-shot sender named")
        for pid, prog in got.items():
            assert prog["BytesOut"] >= 3 * 1000, (pid, prog)
    finally:
        server.stop()
        sink.close()
