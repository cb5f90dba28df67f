"""`relative_time` wherever start_dtg/end_dtg are (docs/API.md, Time ranges): every such
action takes it, refuses malformed text and a mix with start_dtg/end_dtg in words a
person reads, and on a real capture the last minutes give what the capture's own range
gives; usage accounting holds nothing of the captures' attribution and releases what it
holds when usage_enabled goes off."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from apppaccap.api import endpoints  # noqa: F401 - registers every action
from apppaccap.api.registry import REGISTRY
from apppaccap.wire import ErrorCode
from tests.helpers.live import wait_for

RANGED = sorted(name for name, act in REGISTRY.endpoints.items()
                if any(p.name == "start_dtg" for p in act.params))


def test_every_ranged_action_takes_relative_time():
    assert {"search_start", "stats_by_date", "stats_by_process", "usage_by_process",
            "usage_by_remote"} <= set(RANGED)
    for name in RANGED:
        params = {p.name for p in REGISTRY.endpoints[name].params}
        assert "relative_time" in params, name


@pytest.mark.parametrize("name", RANGED)
def test_malformed_relative_time_is_refused_readably(live_ajax, name):
    need = {p.name: 1 for p in REGISTRY.endpoints[name].params
            if p.required and p.name not in ("start_dtg", "filter")}
    if "filter" in {p.name for p in REGISTRY.endpoints[name].params}:
        need["filter"] = "tcp"
    for bad in ("soon", "15 minutes", "-5m", "5", "m", "1.5h", "5y"):
        got = live_ajax(name, relative_time=bad, **need)
        assert got["ErrorCode"] == ErrorCode.MALFORMED_REQUEST, (name, bad, got)
        text = got["ReturnValue"]
        assert text.startswith("relative_time: ") and "30s, 15m, 24h or 7d" in text, text
        assert "'" not in text and "\\x" not in text, text
    mixed = live_ajax(name, relative_time="5m", start_dtg=1, **need)
    assert mixed["ErrorCode"] == ErrorCode.MALFORMED_REQUEST
    assert "cannot be combined" in mixed["ReturnValue"]


def test_relative_time_on_usage_and_stats_of_a_live_capture(live, live_ajax, http_server):
    port, _ = http_server
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter=f"tcp port {port}")
    for _ in range(3):
        subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/hello.txt"],
                       check=True)
    time.sleep(0.3)
    live_ajax.ok("capture_stop_all")
    cid = cap["CaptureId"]
    whole = live_ajax.ok("stats_by_process", capture_id=cid)
    recent = live_ajax.ok("stats_by_process", capture_id=cid, relative_time="10m")
    assert whole["Processes"] and recent["Processes"] == whole["Processes"]
    old = live_ajax.ok("stats_by_process", capture_id=cid, start_dtg=1, end_dtg=2)
    assert old["Processes"] == []
    by_date = live_ajax.ok("stats_by_date", capture_id=cid, relative_time="1h")
    assert by_date["Bytes"] == sum(p["Bytes"] for p in whole["Processes"])
    for unit in ("30s", "15m", "24h", "7d", "2w", "90S"):
        assert live_ajax("usage_by_process", relative_time=unit)["ErrorCode"] == 0, unit
        assert live_ajax("usage_by_remote", relative_time=unit)["ErrorCode"] == 0, unit
    span = live_ajax.ok("usage_by_process", relative_time="15m")
    assert span["End"] - span["Start"] == 15 * 60 * 10 ** 7
    assert live_ajax.ok("usage_by_process", relative_time="30s")["BucketSeconds"] in (1, 60)
    started = live_ajax.ok("search_start", filter="tcp", relative_time="7d")
    assert started["SearchId"]


def _usage_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("usage")
            and t.name != "usage-service"]


def test_usage_alone_runs_no_capture_machinery_and_releases_all(live, live_ajax):
    before = sys.getswitchinterval()
    wait_for(lambda: live.usage.recorder is not None, 15, what="usage accounting")
    time.sleep(1.0)
    names = _usage_threads()
    assert "usage-tick" in names and "usage-lookup" in names and "usage:lo" in names
    assert "usage-syn:lo" in names and "usage-dns:lo" in names
    # no capture runs: no resolver, no fast path, no faster GIL hand-over; the only
    # attribution thread is the consumer of usage's own load of the eBPF programs
    assert live.usage.recorder.lookup.backend.active, "eBPF did not load for usage"
    assert [t.name for t in threading.enumerate()
            if t.name.startswith("attribution-")] == ["attribution-ebpf"]
    assert live.captures.attribution.fastpath is None
    assert sys.getswitchinterval() == before == 0.005
    live_ajax.ok("settings_set", key_name="usage_enabled", value="0")
    wait_for(lambda: live.usage.recorder is None, 15, what="the recorder to stop")
    wait_for(lambda: not _usage_threads(), 40, what="the usage threads to end")
    wait_for(lambda: not [t for t in threading.enumerate()
                          if t.name.startswith("attribution-")], 10,
             what="usage's eBPF consumer to end")
    live_ajax.ok("settings_set", key_name="usage_enabled", value="1")
    wait_for(lambda: live.usage.recorder is not None, 10, what="the recorder again")
