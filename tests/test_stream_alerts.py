"""The `alerts` subscription of GET /ws against a real root server: a LABEL alert fired by
curl on live loopback traffic reaches the socket as the same ALERTEVENT alert_events
returns, for every-alert and one-alert subscriptions; another alert's events do not reach
a one-alert subscription; `last_id` replays the history."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.helpers.live import wait_for
from tests.helpers.server import Server
from tests.helpers.ws import Ws

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
