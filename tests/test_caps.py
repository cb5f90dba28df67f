"""Caps on what requests may start: captures, searches, commands. Over a cap: BUSY, a
message naming the setting, and nothing left behind; under it again: the start works."""

import os
import threading

import pytest

from tests.helpers.live import wait_for
from tests.helpers.pcapgen import redos_payloads
from tests.helpers.pcapgen import write_udp_pcap

pytestmark = pytest.mark.live

BUSY = 7


def _busy(body, setting):
    assert body["ErrorCode"] == BUSY, body
    assert setting in body["ReturnValue"] and "raise the setting" in body["ReturnValue"], body


def test_active_captures_are_capped(live, live_ajax):
    live_ajax.ok("settings_set", key_name="max_active_captures", value="2")
    first = live_ajax.ok("capture_start_system", adapter="lo", filter="udp port 9")
    live_ajax.ok("capture_start_process", pid=os.getpid(), adapter="lo")
    _busy(live_ajax("capture_start_system", adapter="lo"), "max_active_captures")
    assert len(live_ajax.ok("capture_list_active")) == 2  # the refused start left no row
    live_ajax.ok("capture_stop_system", capture_id=first["CaptureId"])
    third = live_ajax.ok("capture_start_system", adapter="lo")
    assert third["State"] == 1
    live_ajax.ok("capture_stop_all")


def _slow_capture(live, live_ajax) -> int:
    folder = os.path.join(live.config.data_dir, "import")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "slow.pcap")
    write_udp_pcap(path, redos_payloads(3000))
    done = live.jobs.wait(live_ajax.ok("pcap_ingest_file", path=path)["CommandUid"])
    assert done["State"] == 3, done
    return int(done["Result"])


def test_active_searches_are_capped(live, live_ajax):
    cid = _slow_capture(live, live_ajax)
    live_ajax.ok("settings_set", key_name="max_active_searches", value="1")
    slow = 'frame matches "[01]*1[01]{20}x"'  # ~2 s over this capture
    first = live_ajax.ok("search_start", filter=slow, capture_id=cid)
    before = len(live_ajax.ok("search_list"))
    _busy(live_ajax("search_start", filter="udp", capture_id=cid), "max_active_searches")
    assert len(live_ajax.ok("search_list")) == before
    live_ajax.ok("search_cancel", search_id=first["SearchId"])
    wait_for(lambda: live_ajax.ok("search_open", search_id=first["SearchId"])["State"] >= 3,
             what="the cancelled search ending")
    assert live_ajax.ok("search_start", filter="udp", capture_id=cid)["SearchId"]


def test_queued_commands_are_capped(live, live_ajax, tmp_path):
    live_ajax.ok("settings_set", key_name="max_queued_commands", value="1")
    release = threading.Event()
    held = live.jobs.submit("HOLD", {}, lambda progress: release.wait(30))
    try:
        folder = os.path.join(live.config.data_dir, "import")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "one.pcap")
        write_udp_pcap(path, redos_payloads(3))
        _busy(live_ajax("pcap_ingest_file", path=path), "max_queued_commands")
        # no FILE capture was created for the refused ingest
        assert live.catalog.one("SELECT count(*) FROM captures")[0] == 0
        assert [c["Type"] for c in live_ajax.ok("command_list")] == ["HOLD"]
    finally:
        release.set()
    wait_for(lambda: live.jobs.get(held["CommandUid"])["State"] == 3, what="the held command")
    wait_for(lambda: not live.jobs._running, what="its place freed")
    done = live.jobs.wait(live_ajax.ok("pcap_ingest_file", path=path)["CommandUid"])
    assert done["State"] == 3, done


def test_caps_are_settings_with_defaults_and_positive_integers(ctx, ajax):
    assert (ctx.settings.get("max_active_captures"), ctx.settings.get("max_active_searches"),
            ctx.settings.get("max_queued_commands")) == ("16", "4", "64")
    for key in ("max_active_captures", "max_active_searches", "max_queued_commands"):
        for bad in ("0", "-3", "many", ""):
            body = ajax("settings_set", key_name=key, value=bad)
            assert body["ErrorCode"] == 4 and key in body["ReturnValue"], body
