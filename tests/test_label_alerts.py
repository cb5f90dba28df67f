"""LABEL alerts on live loopback traffic: a capture running, curl to a local HTTP server
fires an "HTTP" alert with curl's pid and connection, a DNS query does not; no connection
fires twice, not even for an alert engine started again (a restart) while the capture runs;
connections from before the alert never fire. Plus alert_add's checks for the kind."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

from apppaccap.analytics.alerts import AlertEngine
from tests.helpers.live import wait_for
from tests.test_applabels import _dns_answer
from tests.test_applabels import _dns_query


def _resolver():
    """A DNS responder of our own on 127.0.0.1:53 (root), answering 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 53))
    sock.settimeout(0.2)
    stop = threading.Event()

    def answer():
        while not stop.is_set():
            try:
                q, peer = sock.recvfrom(512)
            except OSError:
                continue
            sock.sendto(_dns_answer(q, "127.0.0.1"), peer)
    t = threading.Thread(target=answer, daemon=True)
    t.start()

    def close():
        stop.set()
        t.join(5)
        sock.close()
    return close


def _dns(name: str) -> int:
    """One query from a socket of ours; the client port."""
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    client.sendto(_dns_query(name), ("127.0.0.1", 53))
    assert client.recvfrom(512)[0][:2] == b"\x12\x34"
    port = client.getsockname()[1]
    client.close()
    return port


def _curl(port: int) -> int:
    """curl at 20 kB/s for a 1.2 kB file plus headers (alive long enough to be attributed);
    its pid."""
    proc = subprocess.Popen(["curl", "-s", "--limit-rate", "1k", "-o", "/dev/null",
                             f"http://127.0.0.1:{port}/hello.txt"])
    assert proc.wait(timeout=30) == 0
    return proc.pid


def test_label_alert_fires_once_per_labelled_connection(live, live_ajax, http_server):
    port, _server = http_server
    close = _resolver()
    cap = live_ajax.ok("capture_start_system", adapter="lo",
                       filter=f"tcp port {port} or udp port 53")
    cid = cap["CaptureId"]
    try:
        time.sleep(0.3)
        before = _curl(port)  # before the alert: never fires
        wait_for(lambda: any(c["AppProtocol"] == "HTTP" for c in
                             live_ajax.ok("capture_list_conns", capture_id=cid)),
                 timeout=20, what="the first connection labelled")
        time.sleep(0.05)  # its FirstTime is strictly before the alert's creation
        http = live_ajax.ok("alert_add", name="web", alert_type="LABEL", label="http",
                            interval=1)
        dns = live_ajax.ok("alert_add", name="names", alert_type="4", label="DNS",
                           interval=1)
        web_only = live_ajax.ok("alert_add", name="web by python", alert_type="LABEL",
                                label="HTTP", process_path="/usr/lib/python3", interval=1)
        assert http["Label"] == "http" and http["AlertType"] == 4
        ha, da = http["AlertId"], dns["AlertId"]

        pid = _curl(port)
        got = wait_for(lambda: live_ajax.ok("alert_events", alert_id=ha), timeout=20,
                       what="the LABEL event for curl")
        e = got[0]
        assert e["Pid"] == pid != before, got
        assert e["ProcessName"] == "curl" and e["ProcessPath"].endswith("/curl")
        assert e["RemoteIp"] == "127.0.0.1" and e["RemotePort"] == port
        assert "labelled http (HTTP" in e["Message"] and f"capture {cid}" in e["Message"]
        conns = {c["ConnectionId"]: c for c in
                 live_ajax.ok("capture_list_conns", capture_id=cid, label="http")}
        conn = conns[int(e["GroupKey"].split(":")[1])]
        assert conn["Pid"] == pid and e["GroupKey"] == f"{cid}:{conn['ConnectionId']}"

        # a DNS query: the DNS alert fires (for our own process), the HTTP alert does not
        client_port = _dns("alerts.example.test")
        wait_for(lambda: live_ajax.ok("alert_events", alert_id=da), timeout=20,
                 what="the DNS alert")
        d = live_ajax.ok("alert_events", alert_id=da)
        assert len(d) == 1 and d[0]["RemotePort"] in (53, client_port)
        time.sleep(2.5)
        events = live_ajax.ok("alert_events", alert_id=ha)
        assert [x["Pid"] for x in events] == [pid], events  # not the DNS one, not twice
        assert live_ajax.ok("alert_events", alert_id=web_only["AlertId"]) == []

        # the engine started again (what a restart does) while the capture runs: the
        # labelled connections it has fired for stay fired; a new one fires once
        live.alerts.stop()
        live.alerts = AlertEngine(live)
        live.alerts.start()
        time.sleep(2.5)
        assert len(live_ajax.ok("alert_events", alert_id=ha)) == 1
        second = _curl(port)
        wait_for(lambda: len(live_ajax.ok("alert_events", alert_id=ha)) == 2, timeout=20,
                 what="a second LABEL event")
        time.sleep(2.5)
        events = live_ajax.ok("alert_events", alert_id=ha)
        assert [x["Pid"] for x in events] == [pid, second]
        assert len(live_ajax.ok("alert_events", alert_id=da)) == 1
        assert live_ajax.ok("alert_list")[0]["FireCount"] == 2
    finally:
        live_ajax.ok("capture_stop_system", capture_id=cid)
        close()


def test_label_alert_checks(ctx, ajax):
    def err(action="alert_add", **params) -> str:
        body = ajax(action, **params)
        assert body["ErrorCode"] != 0, body
        return body["ReturnValue"]

    assert "label: a LABEL alert needs one" in err(name="x", alert_type="LABEL")
    assert "label: an application" in err(name="x", alert_type="LABEL", label="y" * 65)
    a = ajax.ok("alert_add", name="x", alert_type="ALERT_TYPE_LABEL", label=" BitTorrent ")
    assert a["Label"] == "BitTorrent" and a["AlertType"] == 4
    assert ajax.ok("alert_mod", alert_id=a["AlertId"], label="VPN")["Label"] == "VPN"
    assert "label:" in err("alert_mod", alert_id=a["AlertId"], label="")
