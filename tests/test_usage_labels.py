"""nDPI labels in usage accounting, on real loopback traffic (root, libpcap, libndpi4.2):
a program that asks a DNS responder (UDP) for a name and downloads from an HTTP server
gets DNS and HTTP on the remote hosts of usage_by_remote, in its own Labels of
usage_by_process, and as rows of stats_group_by capture_id 0 grouped by app_proto; the
labels are written with the minute rows and read back after a restart; a THRESHOLD alert
grouped by app_proto fires for the HTTP row only. Retention keeps an hour's label when it
rolls minutes up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from apppaccap.dissect import ndpi
from tests.helpers.live import wait_for
from tests.helpers.ports import free_port
from tests.helpers.server import Server
from tests.test_usage_remote import _listening
from tests.test_usage_remote import dns_responder

# The tests share WEB, whose host name the usage recorder (one per host) learns from
# whichever DNS answer it saw last: they run one after another on one worker (a CI dry run
# had one test read the other's name).
pytestmark = pytest.mark.xdist_group("usage_labels")

WEB, DNS = "127.0.0.89", "127.0.0.78"  # loopback addresses of this test's own
# the second test's responder: a closed responder's port stays bound while its thread
# waits in recvfrom (tests/test_usage_remote.py dns_responder)
DNS2 = "127.0.0.79"
BODY = 256 * 1024
# resolves the web server's name through the responder, downloads with a Host header,
# then lingers with its sockets open (usage names a flow from its sockets)
CLIENT = """
import socket, struct, sys, time
name, port, dns = sys.argv[1], int(sys.argv[2]), sys.argv[3]
q = struct.pack("!HHHHHH", 0x4321, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
q += struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, (dns, 53))
host = socket.inet_ntoa(s.recv(512)[-4:])
c = socket.create_connection((host, port), timeout=30)
c.sendall(f"GET /body.bin HTTP/1.1\\r\\nHost: {name}:{port}\\r\\nUser-Agent: usage-test\\r\\n"
          "Accept: */*\\r\\nConnection: close\\r\\n\\r\\n".encode())
data = b""
while chunk := c.recv(1 << 16):
    data += chunk
print(len(data.split(b"\\r\\n\\r\\n", 1)[1]), flush=True)
time.sleep(3)
"""


@pytest.fixture
def web(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "body.bin").write_bytes(os.urandom(BODY))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", WEB,
                             "--directory", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _listening(WEB, port), 20, 0.1, "the web server")
    yield port
    proc.kill()
    proc.wait()


def _remote(server, ip: str, span: str):
    hosts = server.ok("usage_by_remote", relative_time=span)["Remotes"]
    return next((r for r in hosts if r["RemoteIp"] == ip), None)


def _groups(server, group_by: str, ip: str, span: str) -> dict:
    answer = server.ok("stats_group_by", capture_id=0, group_by=group_by, relative_time=span,
                       top=1000, filter=f"ip.addr == {ip}")
    return {r["Key"]: r for r in answer["Rows"]}


def test_http_and_dns_flows_are_labelled_and_survive_a_restart(tmp_path, web):
    assert ndpi.open_detector() is not None, "libndpi4.2 is needed (Makefile RUN_DEBS)"
    name = f"labels-{uuid.uuid4().hex[:8]}.apppaccap.test"
    responder = dns_responder(DNS, {name: WEB})
    server = Server(tmp_path / "data", log_dir=tmp_path)
    try:
        wait_for(lambda: server.ok("usage_now")["Enabled"], 15, what="the recorder")
        time.sleep(1.5)  # its handles are open once it ticks
        # a THRESHOLD alert on a label of usage accounting: more than half the body over HTTP
        alert = server.ok("alert_add", name="web volume", alert_type="THRESHOLD",
                          group_by="app_proto", metric="bytes", threshold=BODY // 2,
                          window="1m", interval=5)["AlertId"]
        c = subprocess.Popen([sys.executable, "-c", CLIENT, name, str(web), DNS],
                             stdout=subprocess.PIPE, text=True)
        assert int(c.stdout.readline()) == BODY
        http = wait_for(lambda: (_remote(server, WEB, "2m") or {}).get("AppProtocol"), 10,
                        what="the web server's label")
        assert http == "HTTP"
        # the label comes with the first packets; the body's last second is filed a tick later
        host = wait_for(lambda: (lambda h: h if h and h["BytesIn"] >= BODY else None)(
            _remote(server, WEB, "2m")), 10, what="the whole body counted")
        assert host["Category"] == "Web" and host["Hostname"] == name
        assert [(x["AppProtocol"], x["Category"]) for x in host["Labels"]] == [("HTTP", "Web")]
        assert host["Labels"][0]["BytesIn"] == host["BytesIn"] >= BODY
        dns = wait_for(lambda: _remote(server, DNS, "2m"), 10, what="the DNS responder")
        assert (dns["AppProtocol"], dns["Category"]) == ("DNS", "Network")
        # the labels under the program, when usage accounting named it
        c.wait(30)
        time.sleep(2)
        me = next((p for p in server.ok("usage_by_process", relative_time="2m",
                                        group="process")["Programs"]
                   if p["Pid"] == c.pid), None)
        if me is not None:
            assert {x["AppProtocol"] for x in me["Labels"]} >= {"HTTP", "DNS"}
        # group-by over usage accounting, from the ring (last 10 minutes: per second)
        rows = _groups(server, "app_proto", WEB, "2m")
        host = _remote(server, WEB, "2m")  # the connection's end counted too
        assert list(rows) == ["HTTP"] and rows["HTTP"]["Bytes"] == host["BytesIn"] + \
            host["BytesOut"]
        assert list(_groups(server, "app_proto", DNS, "2m")) == ["DNS"]
        assert list(_groups(server, "category", WEB, "2m")) == ["Web"]
        assert list(_groups(server, "app", DNS, "2m")) == ["DNS"]
        fired = wait_for(lambda: server.ok("alert_events", alert_id=alert), 15,
                         what="the THRESHOLD event of the HTTP row")
        # (the shared machine's other loopback traffic may fire rows of its own)
        keys = [e["GroupKey"] for e in fired]
        assert "HTTP" in keys and "DNS" not in keys  # DNS's few bytes stay below
        assert "app_proto HTTP" in fired[keys.index("HTTP")]["Message"]
        only = server.ok("stats_group_by", capture_id=0, group_by="remote_ip",
                         relative_time="2m", filter='app.proto == "HTTP"', top=1000)
        assert WEB in [r["Key"] for r in only["Rows"]]
        assert DNS not in [r["Key"] for r in only["Rows"]]
    finally:
        server.stop()  # writes the minute's rows with their labels
        responder.close()
    again = Server(tmp_path / "data", log_dir=tmp_path)
    try:
        host = _remote(again, WEB, "15m")
        assert (host["AppProtocol"], host["Category"]) == ("HTTP", "Web")
        assert _remote(again, DNS, "15m")["AppProtocol"] == "DNS"
        # after a restart the ring is new: the minute rows answer, labels included
        rows = _groups(again, "app_proto", WEB, "15m")
        assert list(rows) == ["HTTP"] and rows["HTTP"]["Bytes"] >= BODY
        assert list(_groups(again, "app_proto", DNS, "15m")) == ["DNS"]
    finally:
        again.stop()


def test_retention_keeps_the_label_of_the_latest_labelled_minute(tmp_path):
    from apppaccap.store import usage as usage_table
    from apppaccap.store.catalog import Catalog

    catalog = Catalog(str(tmp_path))
    hour = 30_000_000 - 8 * 1440  # an hour's first minute, older than usage_minute_days
    rows = {(hour + m, 7, "10.0.0.1", 443, 6, 0): [1, 100] for m in (1, 2, 3)}
    try:
        catalog.write(lambda c: usage_table.add(c, {k: rows[k] for k in rows if k[0] == hour + 1},
                                                {(7, "10.0.0.1", 443, 6): ("TLS", "", "Web")}))
        catalog.write(lambda c: usage_table.add(
            c, {k: rows[k] for k in rows if k[0] == hour + 2},
            {(7, "10.0.0.1", 443, 6): ("TLS", "YouTube", "Media")}))
        catalog.write(lambda c: usage_table.add(c, {k: rows[k] for k in rows if k[0] == hour + 3}))
        catalog.write(lambda c: usage_table.roll_up(c, hour + 60, 0))
        left = catalog.read("SELECT minute, bytes, app_proto, app, category FROM usage_minute")
        assert [tuple(r) for r in left] == [(hour, 300, "TLS", "YouTube", "Media")]
        assert usage_table.labels(catalog, hour, hour) == {
            (7, "10.0.0.1", 443, 6): ("TLS", "YouTube", "Media")}
    finally:
        catalog.close()


def test_a_live_captures_label_is_reused(tmp_path, web):
    """Usage accounting without labels of its own (app_labels_enabled=0 when it started)
    still labels a flow a live capture labelled: it reads the capture's connection."""
    name = f"reuse-{uuid.uuid4().hex[:8]}.apppaccap.test"
    responder = dns_responder(DNS2, {name: WEB})
    server = Server(tmp_path / "data", log_dir=tmp_path)
    try:
        wait_for(lambda: server.ok("usage_now")["Enabled"], 15, what="the recorder")
        server.ok("settings_set", key_name="app_labels_enabled", value="0")
        server.ok("settings_set", key_name="usage_enabled", value="0")
        wait_for(lambda: not server.ok("usage_now")["Enabled"], 15, what="usage off")
        server.ok("settings_set", key_name="usage_enabled", value="1")
        wait_for(lambda: server.ok("usage_now")["Enabled"], 15, what="usage on, unlabelled")
        server.ok("settings_set", key_name="app_labels_enabled", value="1")  # captures only
        time.sleep(1.5)
        cid = server.ok("capture_start_system", adapter="lo",
                        filter=f"host {WEB} or host {DNS2}")["CaptureId"]
        try:
            time.sleep(0.5)
            c = subprocess.Popen([sys.executable, "-c", CLIENT, name, str(web), DNS2],
                                 stdout=subprocess.PIPE, text=True)
            assert int(c.stdout.readline()) == BODY
            conns = wait_for(lambda: [x for x in server.ok("capture_list_conns", capture_id=cid)
                                      if x["AppProtocol"] == "HTTP"], 10,
                             what="the capture's HTTP label")
            assert conns[0]["RemoteIp"] == WEB
            http = wait_for(lambda: (_remote(server, WEB, "2m") or {}).get("AppProtocol"), 10,
                            what="usage's label from the capture")
            assert http == "HTTP"
            c.wait(30)
        finally:
            server.ok("capture_stop_system", capture_id=cid)
        # and without a capture, flows stay unlabelled in usage (its own labeller is off)
        before = _remote(server, WEB, "2m")["BytesIn"]
        c = subprocess.Popen([sys.executable, "-c", CLIENT, name, str(web), DNS2],
                             stdout=subprocess.PIPE, text=True)
        assert int(c.stdout.readline()) == BODY
        wait_for(lambda: _remote(server, WEB, "2m")["BytesIn"] >= before + BODY, 10,
                 what="the second download counted")
        time.sleep(1.5)
        host = _remote(server, WEB, "2m")
        # the second program's flow is nobody's label: its bytes are in no label
        assert [x["AppProtocol"] for x in host["Labels"]] == ["HTTP"]
        assert host["Labels"][0]["BytesIn"] <= host["BytesIn"] - BODY
        c.wait(30)
    finally:
        server.stop()
        responder.close()
