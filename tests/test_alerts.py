"""Alerts on usage accounting, end to end on a real server: a new program, a new
destination and a threshold fire on loopback traffic we generate, do not fire otherwise,
and survive a restart (history kept, still evaluated); an alert's EXECUTE action runs with
its placeholders. Plus the checks alert_add makes."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time

import pytest

from apppaccap.analytics.alerts import ephemeral_ports
from tests.helpers.live import wait_for
from tests.helpers.ports import free_port
from tests.helpers.server import Server

BIG = 3_000_000


def service_port() -> int:
    """A free loopback port below the kernel's client-port range, where services listen."""
    lo, _hi = ephemeral_ports()
    for _ in range(200):
        port = random.randrange(20000, min(lo, 32000))
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        return port
    raise AssertionError("no free port below the ephemeral range")


@pytest.fixture
def web(tmp_path):
    """Three `python3 -m http.server`s on loopback serving a small and a 3 MB file: two on
    service ports, one on a port of the client range (ip_local_port_range)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "small.txt").write_bytes(b"x" * 40_000)
    (root / "big.bin").write_bytes(os.urandom(BIG))
    procs, ports = [], []
    lo, hi = ephemeral_ports()
    for i in range(3):
        port = service_port() if i < 2 else free_port()
        assert i < 2 or lo <= port <= hi
        procs.append(subprocess.Popen([sys.executable, "-m", "http.server", str(port),
                                       "--bind", "127.0.0.1", "--directory", str(root)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ports.append(port)
    for port in ports:
        wait_for(lambda p=port: _listening(p), what=f"http.server on {port}")
    yield ports
    for p in procs:
        p.kill()
        p.wait()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _program(tmp_path, name: str) -> str:
    """A copy of curl under a name never seen: a program new to the machine."""
    path = str(tmp_path / name)
    shutil.copy2(shutil.which("curl"), path)
    return path


def _fetch(program: str, port: int, what: str = "small.txt") -> None:
    """A small file at 20 kB/s: the connection lives ~2 s, so usage accounting names its
    program even on a loaded machine (a curl that exits within milliseconds may be gone
    before anyone asks the kernel who owned the socket: then it counts as nobody's)."""
    rate = ["--limit-rate", "20k"] if what == "small.txt" else []
    subprocess.run([program, "-s", *rate, "-o", "/dev/null",
                    f"http://127.0.0.1:{port}/{what}"], check=True, timeout=30)


def _events(server, alert_id: int) -> list:
    return server.ok("alert_events", alert_id=alert_id)


def _settle(seconds: float = 4.0) -> None:
    """Usage accounting files a second once it ends; the observer and the alerts run every
    second here: a few seconds let everything that will fire, fire."""
    time.sleep(seconds)


def test_alerts_fire_on_what_is_new_or_above_and_survive_a_restart(tmp_path, web):
    port_a, port_b, port_client_range = web
    server = Server(tmp_path / "data", log_dir=tmp_path)
    try:
        wait_for(lambda: server.ok("usage_now")["Enabled"], timeout=20,
                 what="usage accounting on")
        first = _program(tmp_path, "curl-alert-first")
        marker = tmp_path / "ran.txt"
        script = tmp_path / "on-alert.sh"
        script.write_text(f"#!/bin/sh\necho \"$1 $2 $3\" >> {marker}\n")
        script.chmod(0o755)
        action = server.ok("action_add", name="note", action_type=1, path=str(script),
                           params="{alert_name} {remote_ip} {remote_port}")
        new_prog = server.ok("alert_add", name="new program", alert_type="NEW_PROGRAM",
                             interval=1, action_id=action["ActionId"])
        new_dest = server.ok("alert_add", name="new destination", alert_type="3",
                             process_path=first, interval=1)
        over = server.ok("alert_add", name="big download", alert_type="ALERT_TYPE_THRESHOLD",
                         group_by="program", metric="bytes", direction="in",
                         threshold=BIG // 2, window="30s", process_path=first, interval=1)
        assert new_prog["Interval"] == 1 and over["Window"] == "30s"
        # the observer's first look learns what is already there: no news for it
        wait_for(lambda: server.ok("usage_now")["Programs"], timeout=20, what="usage data")
        _settle()
        before_prog = len(_events(server, new_prog["AlertId"]))

        _fetch(first, port_a)
        ev = wait_for(lambda: [e for e in _events(server, new_prog["AlertId"])
                               if e["ProcessPath"] == first], timeout=20,
                      what="NEW_PROGRAM event")
        assert len(ev) == 1
        e = ev[0]
        assert e["RemoteIp"] == "127.0.0.1" and e["RemotePort"] == port_a and e["Pid"] > 0
        assert "first time" in e["Message"] and e["ProcessName"]
        dest = wait_for(lambda: _events(server, new_dest["AlertId"]), timeout=20,
                        what="NEW_DESTINATION event")
        assert [(d["ProcessPath"], d["RemotePort"]) for d in dest] == [(first, port_a)]
        wait_for(lambda: marker.exists() and "new program 127.0.0.1" in marker.read_text(),
                 timeout=20, what="the alert's action to run")
        assert f"new program 127.0.0.1 {port_a}" in marker.read_text()

        # the same program to the same place again: nothing new, nothing above
        _fetch(first, port_a)
        _fetch(first, port_a)
        _settle()
        assert [e["ProcessPath"] for e in _events(server, new_prog["AlertId"])
                if e["ProcessPath"] == first] == [first]
        assert len(_events(server, new_dest["AlertId"])) == 1
        assert _events(server, over["AlertId"]) == []

        # a new port for it: NEW_DESTINATION only
        _fetch(first, port_b)
        wait_for(lambda: len(_events(server, new_dest["AlertId"])) == 2, timeout=20,
                 what="a second NEW_DESTINATION")
        assert _events(server, new_dest["AlertId"])[1]["RemotePort"] == port_b
        assert len([e for e in _events(server, new_prog["AlertId"])
                    if e["ProcessPath"] == first]) == 1

        # a server on a client-range port: like an inbound connection's client, never a
        # destination (ephemeral_ports)
        _fetch(first, port_client_range)
        _settle()
        assert len(_events(server, new_dest["AlertId"])) == 2

        # 3 MB in: above the 1.5 MB threshold, once
        _fetch(first, port_a, "big.bin")
        hit = wait_for(lambda: _events(server, over["AlertId"]), timeout=20,
                       what="THRESHOLD event")
        assert len(hit) == 1 and hit[0]["Value"] >= BIG and hit[0]["ProcessPath"] == first
        assert hit[0]["GroupKey"] == first
        _settle(3)
        assert len(_events(server, over["AlertId"])) == 1  # still above: no repeat
        prog_events = len(_events(server, new_prog["AlertId"]))
        assert prog_events >= before_prog + 1
    finally:
        server.stop()

    # a real restart: the alerts, their history and what they have seen are kept
    again = Server(tmp_path / "data", log_dir=tmp_path)
    try:
        assert [a["Name"] for a in again.ok("alert_list")] == [
            "new program", "new destination", "big download"]
        assert len(again.ok("alert_events", alert_id=new_dest["AlertId"])) == 2
        assert len(again.ok("alert_events", alert_id=new_prog["AlertId"])) == prog_events
        wait_for(lambda: again.ok("usage_now")["Enabled"], timeout=20, what="usage on")
        _settle(2)
        _fetch(first, port_a)
        second = _program(tmp_path, "curl-alert-second")
        _fetch(second, port_b)
        wait_for(lambda: [e for e in again.ok("alert_events", alert_id=new_prog["AlertId"])
                          if e["ProcessPath"] == second], timeout=20,
                 what="NEW_PROGRAM after the restart")
        _settle(2)
        events = again.ok("alert_events", alert_id=new_prog["AlertId"])
        assert [e["ProcessPath"] for e in events].count(first) == 1  # known across restarts
        assert len(again.ok("alert_events", alert_id=new_dest["AlertId"])) == 2
        # paging: last_id and limit
        every = again.ok("alert_events")
        page = again.ok("alert_events", last_id=every[0]["AlertEventId"], limit=1)
        assert page == every[1:2]
    finally:
        again.stop()


def test_alert_add_checks(ctx, ajax, tmp_path):
    def err(**params) -> str:
        body = ajax("alert_add", **params)
        assert body["ErrorCode"] != 0, body
        return body["ReturnValue"]

    assert "THRESHOLD (1), NEW_PROGRAM (2), NEW_DESTINATION (3)" in err(name="x",
                                                                       alert_type="LABEL")
    assert "group_by: a THRESHOLD alert needs one" in err(name="x", alert_type="THRESHOLD")
    assert "not known to usage accounting" in err(name="x", alert_type="1", group_by="conn")
    assert "window:" in err(name="x", alert_type="1", group_by="program", window="soon")
    assert "30s" in err(name="x", alert_type="1", group_by="program", window="soon")
    assert "interval" in err(name="x", alert_type="2", interval=0)
    assert "process_path" in err(name="x", alert_type="2", process_path="curl")
    export = ajax.ok("action_add", name="e", action_type=2, path=str(tmp_path))
    assert "EXECUTE actions only" in err(name="x", alert_type="2",
                                         action_id=export["ActionId"])
    assert "no action" in err(name="x", alert_type="2", action_id=999)
    a = ajax.ok("alert_add", name="t", alert_type="THRESHOLD", group_by="remote_ip",
                metric="connections", threshold=10)
    assert (a["Interval"], a["Window"], a["Direction"], a["Enabled"]) == (5, "5m", "both", True)
    m = ajax.ok("alert_mod", alert_id=a["AlertId"], threshold=20, enabled=0, window="1h")
    assert (m["Threshold"], m["Enabled"], m["Window"]) == (20, False, "1h")
    assert ajax.ok("alert_list") == [m]
    assert ajax.ok("alert_remove", alert_id=a["AlertId"]) == 0
    assert ajax.ok("alert_list") == []
    assert ajax("alert_events", alert_id=a["AlertId"])["ErrorCode"] == 6  # NOT_FOUND
