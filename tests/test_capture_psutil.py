"""The portable path: a live capture attributed through psutil only (what non-Linux gets)."""

import socket
import subprocess
import sys
import time

import pytest

from apppaccap.attribution.owners import PsutilOwners
from apppaccap.capture.manager import CaptureManager
from apppaccap.web.app import create_app
from tests.helpers.app import Ajax
from tests.helpers.app import make_ctx
from tests.helpers.live import read_all

pytestmark = pytest.mark.live

CLIENT = ("import socket, sys, time\n"
          "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
          "for _ in range(5):\n"
          "    s.sendall(b'ping'); s.recv(10); time.sleep(0.1)\n")


def test_long_lived_flow_labelled_through_psutil(tmp_path):
    ctx = make_ctx(tmp_path)
    ctx.settings.set("attribution_hold_ms", "300")
    ctx.captures = CaptureManager(ctx, owners=PsutilOwners())
    ajax = Ajax(create_app(ctx).test_client())
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    try:
        cap = ajax.ok("capture_start_system", adapter="lo", filter=f"tcp port {port}")
        assert ctx.captures.attribution.fastpath is None   # psutil only: no netlink child
        client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port)])
        conn, _ = srv.accept()
        for _ in range(5):
            conn.recv(10)
            conn.sendall(b"pong")
        client.wait(10)
        conn.close()
        time.sleep(0.5)
        ajax.ok("capture_stop_all")
        packets = read_all(ajax, cap["CaptureId"])
    finally:
        srv.close()
        ctx.captures.close()
        ctx.catalog.close()
    data = [p for p in packets if p["Length"] > 66]
    assert data and all(p["Pid"] == client.pid for p in data)
    assert {p["ProcessName"] for p in data} <= {"python3", "python"}
