"""The `alerts` subscription of GET /ws against a real root server: a LABEL alert fired by
curl on live loopback traffic reaches the socket as the same ALERTEVENT alert_events
returns, for every-alert and one-alert subscriptions; another alert's events do not reach
a one-alert subscription; `last_id` replays the history, a bounded part of it each tick."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import pytest

from apppaccap.api.alerts import alert_events
from apppaccap.store import alerts as alert_rows
from apppaccap.web import feeds
from tests.helpers.live import wait_for
from tests.helpers.ports import free_port
from tests.helpers.server import Server
from tests.helpers.ws import Ws
from tests.helpers.ws import raw_read
from tests.helpers.ws import raw_send
from tests.helpers.ws import upgrade

pytestmark = pytest.mark.live


def _events(ws, got: dict) -> bool:
    msg = ws.recv(0.2)
    if msg is not None and msg["type"] == "alerts":
        assert msg["LastId"] == msg["Events"][-1]["AlertEventId"]
        got.setdefault(msg["subscription"], []).extend(msg["Events"])
    return True


def test_alert_events_are_pushed_as_they_fire(tmp_path, http_server):
    port, _proc = http_server
    server = Server(tmp_path / "data", None, log_dir=tmp_path)
    try:
        other = server.ok("alert_add", name="never", alert_type="LABEL", label="SSH",
                          interval=1)
        ws = Ws(f"ws://127.0.0.1:{server.port}/ws")
        ws.send({"subscribe": "alerts", "interval_ms": 100})
        every = ws.next("subscribed")["subscription"]
        ws.send({"subscribe": "alerts", "alert_id": other["AlertId"], "interval_ms": 100})
        narrow = ws.next("subscribed")["subscription"]
        ws.send({"subscribe": "alerts", "filter": "x"})
        assert "filter" in ws.next("error")["message"]

        web = server.ok("alert_add", name="web", alert_type="LABEL", label="HTTP",
                        interval=1)
        cap = server.ok("capture_start_system", adapter="lo", filter=f"tcp port {port}")
        time.sleep(0.3)
        curl = subprocess.Popen(["curl", "-s", "--limit-rate", "1k", "-o", "/dev/null",
                                 f"http://127.0.0.1:{port}/hello.txt"])
        assert curl.wait(timeout=30) == 0
        got: dict = {}
        wait_for(lambda: _events(ws, got) and got.get(every), timeout=30,
                 what="the alert event on the socket")
        time.sleep(2.5)  # anything else that fires, and would reach `narrow`, has
        end = time.monotonic() + 1
        while time.monotonic() < end:
            _events(ws, got)
        stored = server.ok("alert_events")
        assert got[every] == stored  # the ALERTEVENTs exactly as alert_events returns them
        assert [e["AlertId"] for e in stored] == [web["AlertId"]]
        assert stored[0]["Pid"] == curl.pid and "HTTP" in stored[0]["Message"]
        assert narrow not in got

        # a new subscription from last_id 0 replays the history
        ws.send({"subscribe": "alerts", "last_id": 0, "interval_ms": 100})
        replay = ws.next("subscribed")["subscription"]
        msg = ws.next("alerts")
        assert msg["subscription"] == replay and msg["Events"] == stored
        ws.close()
        server.ok("capture_stop_system", capture_id=cap["CaptureId"])
    finally:
        server.stop()


def _curl(port: int) -> int:
    proc = subprocess.Popen(["curl", "-s", "--limit-rate", "1k", "-o", "/dev/null",
                             f"http://127.0.0.1:{port}/hello.txt"])
    assert proc.wait(timeout=30) == 0
    return proc.pid


def _attempt(server, cid: int, port: int, udp_port: int):
    """One socket that does not read while its queue fills and an alert fires; then it
    reads. None when the event still found room in the queue (the fill was too slow on a
    loaded machine); else the alerts subscription's messages around the next event."""
    sock, ws = upgrade(server.port, rcvbuf=4096)
    for _ in range(7):
        raw_send(sock, ws, {"subscribe": "packets", "capture_id": cid, "interval_ms": 100})
    raw_send(sock, ws, {"subscribe": "alerts", "interval_ms": 100})
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stop = threading.Event()

    def flood():
        end = time.monotonic() + 4
        while not stop.is_set():
            for _ in range(100 if time.monotonic() < end else 1):
                udp.sendto(b"q" * 64, ("127.0.0.1", udp_port))
            time.sleep(0.02 if time.monotonic() < end else 0.1)
    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        before = len(server.ok("alert_events"))
        time.sleep(9)  # never read meanwhile: the server's queue fills
        lost = _curl(port)
        wait_for(lambda: len(server.ok("alert_events")) > before, timeout=30,
                 what="the first event")
        time.sleep(1)
    finally:
        stop.set()
        t.join(5)
        udp.close()
    try:
        msgs = raw_read(sock, ws, 4)  # the queue drains
        sid = [m for m in msgs if m["type"] == "subscribed"][-1]["subscription"]
        if [m for m in msgs if m.get("subscription") == sid and m["type"] == "alerts"]:
            return None
        assert not [m for m in msgs if m.get("subscription") == sid and
                    m["type"] != "subscribed"], msgs
        nxt = _curl(port)
        wait_for(lambda: len(server.ok("alert_events")) > before + 1, timeout=30,
                 what="the second event")
        return lost, nxt, [m for m in raw_read(sock, ws, 3) if m.get("subscription") == sid]
    finally:
        sock.close()


def test_a_consumer_that_does_not_read_is_told_of_the_lost_events(tmp_path, http_server):
    """The socket's queue is filled by packets subscriptions nobody reads; the alert event
    that fires meanwhile is not queued, and the next message of the alerts subscription
    announces it as a gap. The queue is filled in two phases: a fast flood fills the kernel's
    buffers and the queue's bytes with large packets messages, then one datagram per tick
    fills what room is left with messages of one packet, up to the queue's message count
    or to less than an alerts message's size. On a loaded machine the fill can be too slow
    (the event then is delivered): another socket tries again."""
    port, _proc = http_server
    udp_port = free_port(socket.SOCK_DGRAM)
    server = Server(tmp_path / "data", None, log_dir=tmp_path)
    try:
        server.ok("alert_add", name="web", alert_type="LABEL", label="HTTP", interval=1)
        cid = server.ok("capture_start_system", adapter="lo",
                        filter=f"tcp port {port} or udp port {udp_port}")["CaptureId"]
        for _ in range(4):
            got = _attempt(server, cid, port, udp_port)
            if got is not None:
                break
        else:
            raise AssertionError("in 4 tries the queue never filled before the event")
        lost, nxt, msgs = got
        stored = server.ok("alert_events")
        assert [e["Pid"] for e in stored[-2:]] == [lost, nxt]
        assert [m["type"] for m in msgs] == ["dropped", "alerts"], msgs
        assert msgs[0]["dropped"] == 1 and msgs[1]["Events"] == stored[-1:]
        server.ok("capture_stop_system", capture_id=cid)
    finally:
        server.stop()


def _stored_event(i: int) -> dict:
    return {"alert_id": 1 + i % 2, "time": 1_700_000_000_000_000_000 + i, "pid": 1000 + i,
            "process_name": "curl", "process_path": "/usr/bin/curl", "remote_ip": "192.0.2.7",
            "remote_port": 443, "value": i, "group_key": f"/usr/bin/curl|{i}",
            "message": f"event {i}"}


def test_a_long_history_is_replayed_a_bounded_number_of_pages_a_tick(ctx):
    """`last_id: 0` over a long history: a tick reads at most EVENT_PAGES_PER_TICK pages (it
    read every event in one tick: a million took 7.5 s and 1 GB, again at each subscribe),
    and the ticks that follow send each stored event once, in order, then the new ones."""
    per_tick = feeds.EVENT_PAGES_PER_TICK * feeds.EVENTS_PER_MESSAGE
    ids = alert_rows.add_events(ctx.catalog, [_stored_event(i) for i in range(2 * per_tick + 7)])
    feed = feeds.AlertFeed(1, {"subscribe": "alerts", "last_id": 0}, ctx)
    sent, ticks = [], []

    def drain():
        while msgs := feed.poll(ctx):
            ticks.append(sum(len(m["Events"]) for m in msgs))
            # a poll cut short by the bound is due again at the next tick, not the next
            # interval (a minute at most: 20,000 events took 6 minutes)
            assert feed.behind == (ticks[-1] == per_tick)
            assert len(msgs) <= feeds.EVENT_PAGES_PER_TICK
            for m in msgs:
                assert m["type"] == "alerts" and m["LastId"] == m["Events"][-1]["AlertEventId"]
                sent.extend(m["Events"])

    drain()
    assert ticks == [per_tick, per_tick, 7]
    assert [e["AlertEventId"] for e in sent] == ids
    history = []
    while page := alert_events(ctx, last_id=history[-1]["AlertEventId"] if history else 0,
                               limit=10000):
        history += page
    assert sent == history  # the ALERTEVENTs exactly as alert_events returns them
    later = alert_rows.add_events(ctx.catalog, [_stored_event(i) for i in range(5)])
    drain()
    assert ticks[-1] == 5 and [e["AlertEventId"] for e in sent] == ids + later
