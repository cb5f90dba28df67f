"""Usage accounting per remote host, on real loopback traffic (root, libpcap): a program's
download shows the server's address and port with the program and its bytes within 1 % of
the wire (tcpdump beside it); process_id narrows the answer to one program; a hostname
comes from a real DNS exchange (a tiny responder in this test) and survives a restart;
group=path folds two processes of one executable.

The clients keep their socket open until they exit: usage accounting names a connection
from its sockets, and on a machine as loaded as the shared test machine (load average
15-20 on 2 cores) its lookup sometimes came after a short connection had closed both
(docs/INTERNALS.md, Usage accounting); test_usage.py's download test closes at once."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid

import pytest

from apppaccap.filetime import from_ns
from tests.helpers.live import Tcpdump
from tests.helpers.live import wait_for
from tests.helpers.ports import free_port
from tests.helpers.server import Server

# every test here serves from 127.0.0.88 and one maps a name to it: run them on one worker,
# one after the other, or a concurrent test's DNS answer names the host another asserts has
# no name (seen in a CI dry run at load average 16)
pytestmark = pytest.mark.xdist_group("usage_remote")

BODY = 2 * 1024 * 1024
# resolves a name through our responder (optional), downloads, lingers
CLIENT = """
import socket, struct, sys, time
host, port, dns = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if dns:
    q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in host.split(".")) + b"\\0"
    q += struct.pack("!HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(q, (dns, 53))
    answer = s.recv(512)
    host = socket.inet_ntoa(answer[-4:])
c = socket.create_connection((host, port), timeout=30)
c.sendall(b"GET /body.bin HTTP/1.0\\r\\n\\r\\n")
data = b""
while chunk := c.recv(1 << 16):
    data += chunk
print(len(data.split(b"\\r\\n\\r\\n", 1)[1]), flush=True)
time.sleep(float(sys.argv[4]))  # the socket stays open (see the module's docstring)
"""


def dns_responder(address: str, names: dict):
    """Answers A queries for `names` (name → IPv4) on address:53 until the socket closes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))

    def serve():
        while True:
            try:
                query, peer = sock.recvfrom(512)
            except OSError:
                return
            ident = query[:2]
            pos, labels = 12, []
            while query[pos]:
                labels.append(query[pos + 1:pos + 1 + query[pos]].decode())
                pos += 1 + query[pos]
            question = query[12:pos + 5]
            ip = names.get(".".join(labels))
            head = ident + struct.pack("!HHHHH", 0x8180, 1, 1 if ip else 0, 0, 0)
            answer = b""
            if ip:  # a pointer to the question's name, A IN, ttl 60, 4 bytes
                answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(ip)
            sock.sendto(head + question + answer, peer)

    threading.Thread(target=serve, daemon=True).start()
    return sock


@pytest.fixture
def web(tmp_path):
    """An HTTP server on 127.0.0.88 (a loopback address of its own, so the remote host of
    the test's downloads is no other traffic's)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "body.bin").write_bytes(os.urandom(BODY))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.88", "--directory", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _listening("127.0.0.88", port), 20, 0.1, "the web server")
    yield port
    proc.kill()
    proc.wait()


def _listening(host, port) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def client(host: str, port: int, dns: str = "", linger: float = 3.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLIENT, host, str(port), dns, str(linger)],
                            stdout=subprocess.PIPE, text=True)


def started(tmp_path) -> Server:
    server = Server(tmp_path / "data", log_dir=tmp_path)
    wait_for(lambda: server.ok("usage_now")["Enabled"], 15, what="the recorder")
    time.sleep(1.5)  # its handles are open once it ticks
    return server


def by_pid(answer: dict, pid: int, key: str = "Programs"):
    return next((p for p in answer[key] if p["Pid"] == pid), None)


def test_remote_host_with_its_program_bytes_match_the_wire(tmp_path, web):
    server = started(tmp_path)
    try:
        dump = Tcpdump("lo", f"host 127.0.0.88 and tcp port {web}", str(tmp_path / "o.pcap"))
        c = client("127.0.0.88", web)
        assert int(c.stdout.readline()) == BODY
        c.wait(30)
        time.sleep(2.5)  # the last second ticks
        wire = sum(length for _ts, length in dump.stop())
        me = by_pid(server.ok("usage_by_process", relative_time="2m", group="process"), c.pid)
        assert me is not None, "the client was not attributed"
        everyone = server.ok("usage_by_remote", relative_time="2m")
        assert everyone["End"] > everyone["Start"] > 0
        host = next(r for r in everyone["Remotes"] if r["RemoteIp"] == "127.0.0.88")
        assert {"Port": web, "Protocol": 6} in host["Ports"]
        assert c.pid in [p["Pid"] for p in host["Programs"]]
        assert host["Hostname"] == "" and host["Country"] == ""
        assert host["FirstSeen"] <= host["LastSeen"]
        assert host["Version"] == 1 and set(host["Programs"][0]) == {"ProcessId", "Pid",
                                                                     "Name", "Path"}
        # process_id: only that program's traffic, and its bytes are the wire's
        mine = server.ok("usage_by_remote", relative_time="2m", process_id=me["ProcessId"])
        assert [r["RemoteIp"] for r in mine["Remotes"]] == ["127.0.0.88"]
        only = mine["Remotes"][0]
        assert [p["Pid"] for p in only["Programs"]] == [c.pid]
        assert only["Ports"] == [{"Port": web, "Protocol": 6}]
        total = only["BytesIn"] + only["BytesOut"]
        assert abs(total - wire) <= wire * 0.01, (total, wire)
        assert only["BytesIn"] >= BODY and only["PacketsOut"] > 0
        # sorted by bytes, limit honoured
        all_bytes = [r["BytesIn"] + r["BytesOut"] for r in everyone["Remotes"]]
        assert all_bytes == sorted(all_bytes, reverse=True)
        assert len(server.ok("usage_by_remote", relative_time="2m", limit=1)["Remotes"]) == 1
        other = server.ok("usage_by_remote", relative_time="2m", process_id=10 ** 9)
        assert other["Remotes"] == []
        assert server.call("usage_by_remote", limit=0)["ErrorCode"] != 0
    finally:
        server.stop()


def test_hostname_from_a_dns_answer_seen_survives_a_restart(tmp_path, web):
    name = f"usage-{uuid.uuid4().hex[:8]}.apppaccap.test"
    responder = dns_responder("127.0.0.77", {name: "127.0.0.88"})
    server = started(tmp_path)
    try:
        c = client(name, web, dns="127.0.0.77")
        assert int(c.stdout.readline()) == BODY
        c.wait(30)
        time.sleep(2.5)
        host = next(r for r in server.ok("usage_by_remote", relative_time="2m")["Remotes"]
                    if r["RemoteIp"] == "127.0.0.88")
        assert host["Hostname"] == name
        now = wait_for(lambda: by_pid(server.ok("usage_now", seconds=60, group="process"),
                                      c.pid), 5, what="the client in usage_now")
        assert [r["Hostname"] for r in now["TopRemotes"] if r["Ip"] == "127.0.0.88"] == [name]
    finally:
        server.stop()  # the minute's rows and the names learnt are written
        responder.close()
    again = Server(tmp_path / "data", log_dir=tmp_path)
    try:
        host = next(r for r in again.ok("usage_by_remote", relative_time="15m")["Remotes"]
                    if r["RemoteIp"] == "127.0.0.88")
        assert host["Hostname"] == name
    finally:
        again.stop()


def test_group_by_path_folds_two_processes_of_one_executable(tmp_path, web):
    server = started(tmp_path)
    try:
        a, b = client("127.0.0.88", web, linger=4), client("127.0.0.88", web, linger=4)
        assert int(a.stdout.readline()) == BODY and int(b.stdout.readline()) == BODY

        def both_counted():
            # a window that has ended: the test's own calls add bytes to later seconds only
            # (a flow whose owner took long is filed late, up to 10 s on a loaded box)
            end = (time.time_ns() // 10 ** 9 - 2) * 10 ** 9
            window = {"start_dtg": from_ns(end - 120 * 10 ** 9), "end_dtg": from_ns(end)}
            per_process = server.ok("usage_by_process", group="process", **window)
            pa, pb = by_pid(per_process, a.pid), by_pid(per_process, b.pid)
            return (window, per_process, pa, pb) if pa and pb else None
        window, per_process, pa, pb = wait_for(both_counted, timeout=30, interval=0.5,
                                               what="both downloads counted")
        assert pa["ProcessId"] != pb["ProcessId"]
        assert pa["Processes"] == [{"ProcessId": pa["ProcessId"], "Pid": a.pid}]
        folded = server.ok("usage_by_process", **window)  # group=path: the default
        entry = next(p for p in folded["Programs"] if any(
            q["Pid"] == a.pid for q in p["Processes"]))
        pids = [q["Pid"] for q in entry["Processes"]]
        assert b.pid in pids and len(pids) == len(set(pids))
        assert entry["Path"] == pa["Path"] and entry["Path"]
        # the entry's ProcessId is its heaviest process; its bytes are its processes' sum
        members = [p for p in per_process["Programs"] if p["Pid"] in pids]
        heaviest = max(members, key=lambda p: p["BytesIn"] + p["BytesOut"])
        assert entry["ProcessId"] == heaviest["ProcessId"]
        assert entry["BytesIn"] == sum(p["BytesIn"] for p in members)
        assert sum(s["BytesIn"] for s in entry["Series"]) == entry["BytesIn"]
        now = server.ok("usage_now", seconds=60)
        live = next(p for p in now["Programs"] if any(q["Pid"] == a.pid
                                                         for q in p["Processes"]))
        assert b.pid in [q["Pid"] for q in live["Processes"]]
        assert server.call("usage_now", group="thread")["ErrorCode"] != 0
        a.wait(30)
        b.wait(30)
    finally:
        server.stop()


def test_country_when_geoip_is_configured(tmp_path):
    """Minute rows as the recorder writes them (a public address cannot be reached from
    the test machine), read through a real server with a real GeoLite2 database."""
    import glob

    import _maxminddb_geolite2

    from apppaccap.settings import Settings
    from apppaccap.store import usage as usage_table
    from apppaccap.store.catalog import Catalog

    db = glob.glob(os.path.join(os.path.dirname(_maxminddb_geolite2.__file__), "*.mmdb"))[0]
    catalog = Catalog(str(tmp_path / "data"))
    settings = Settings(catalog)
    settings.set("usage_enabled", "0")
    minute = time.time_ns() // 60_000_000_000 - 1
    rows = {(minute, 0, "81.2.69.160", 443, 6, 1): [3, 300],  # MaxMind's UK test address
            (minute, 0, "81.2.69.160", 443, 6, 0): [2, 2000],
            (minute, 0, "10.1.2.3", 53, 17, 1): [1, 70]}
    catalog.write(lambda c: usage_table.add(c, rows))
    catalog.close()
    server = Server(tmp_path / "data", log_dir=tmp_path)
    try:
        remotes = server.ok("usage_by_remote", relative_time="15m")["Remotes"]
        assert [r["RemoteIp"] for r in remotes] == ["81.2.69.160", "10.1.2.3"]
        assert remotes[1]["Country"] == ""
        uk = remotes[0]
        assert uk["Country"] == "" and uk["BytesIn"] == 2000 and uk["BytesOut"] == 300
        assert uk["PacketsIn"] == 2 and uk["Ports"] == [{"Port": 443, "Protocol": 6}]
        assert uk["Programs"] == [{"ProcessId": 0, "Pid": 0, "Name": "<unknown>", "Path": ""}]
        server.ok("settings_set", key_name="geoip_db", value=db)
        uk = server.ok("usage_by_remote", relative_time="15m")["Remotes"][0]
        assert uk["Country"] == "United Kingdom"
    finally:
        server.stop()
