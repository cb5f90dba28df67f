"""One request cannot take the service down: text that is not valid Unicode, NULs and
numbers out of range stop at the registry as MALFORMED_REQUEST naming the parameter; a
filter that libpcap would choke on never reaches it."""

import json
import subprocess
import sys

import pytest

from apppaccap.api.registry import REGISTRY
from tests.helpers.httpjson import call_json
from tests.helpers.server import ROOT
from tests.helpers.server import Server

SURROGATE = "\ud800"


def post_json(client, action, **params) -> dict:
    # json.dumps escapes the surrogate as \ud800: what a hostile client sends
    resp = client.post("/ajax", data=json.dumps(dict(params, action=action)),
                       content_type="application/json")
    assert resp.status_code == 200
    return resp.get_json()


def _text_params():
    for act in REGISTRY.endpoints.values():
        for p in act.params:
            if p.kind in (str, list):
                yield act.name, p.name


@pytest.mark.parametrize("action,param", sorted(_text_params()))
@pytest.mark.parametrize("bad,problem", [(SURROGATE, "lone surrogate U+D800"),
                                         ("ab\x00cd", "NUL character at position 3")])
def test_text_that_c_cannot_take_is_malformed_naming_the_parameter(client, action, param, bad,
                                                                   problem):
    body = post_json(client, action, **{param: "x" + bad})
    assert body["ErrorCode"] == 4, body
    assert f"{param}: " in body["ReturnValue"] and problem in body["ReturnValue"], body


@pytest.mark.parametrize("action,params,needle", [
    ("process_list_threads", {"pid": -1}, "pid: -1 is out of range"),
    ("process_list_threads", {"pid": 2**31}, "pid: 2147483648 is out of range"),
    ("capture_get_details", {"capture_id": -5}, "capture_id: -5 is out of range: an id is 0"),
    ("capture_read", {"capture_id": 1, "limit": 0}, "limit: 0 is out of range"),
    ("search_start", {"filter": "", "start_dtg": -1}, "start_dtg: -1 is out of range"),
    ("search_start", {"filter": "", "end_dtg": 2650467744000000000}, "end_dtg: "),
    ("stats_by_port", {"capture_id": 1, "port": 70000}, "port: 70000 is out of range"),
    ("ip_set_geo", {"ip": "1.2.3.4", "lat": 91, "lng": 0}, "lat: 91.0 is out of range"),
    ("apc_flush", {"flags": 2**40}, "flags: 1099511627776 is out of range"),
    ("capture_get_details", {"capture_id": [[1]]}, "capture_id: expected one value, got a list"),
    ("capture_get_details", {"capture_id": {"a": 1}}, "capture_id: expected one value, got an "
     "object"),
    ("settings_set", {"key_name": "max_active_captures", "value": "\u00b2"},
     "value: max_active_captures must be a positive integer"),
    ("settings_set", {"key_name": "token_timeout", "value": "9" * 5000},
     "value: token_timeout must be a positive integer"),
])
def test_numbers_out_of_range_are_malformed(client, action, params, needle):
    body = post_json(client, action, **params)
    assert body["ErrorCode"] == 4 and needle in body["ReturnValue"], body


def test_every_number_parameter_declares_its_range():
    missing = [(a.name, p.name) for a in REGISTRY.endpoints.values() for p in a.params
               if p.kind in (int, float) and p.bounds is None]
    assert missing == [], "add them to registry.WIRE_BOUNDS or annotate them with Bounds"


def test_early_filetimes_are_before_every_packet_not_a_crash(live, live_ajax):
    # FILETIME 1 is year 1601: before any packet time SQLite holds (1677-2262)
    meta = live_ajax.ok("search_start", filter="", start_dtg=1, end_dtg=2)
    assert meta["StartTime"] > 0 and meta["EndTime"] >= meta["StartTime"]
    meta = live_ajax.ok("search_start", filter="", relative_time="999999999w")
    assert meta["StartTime"] > 0
    body = live_ajax("stats_by_date", capture_id=999, start_dtg=1)
    assert body["ErrorCode"] == 6, body  # reaches the capture lookup: no such capture


def _in_subprocess(code: str) -> subprocess.CompletedProcess:
    """Run code that used to abort the interpreter (glibc double free) out of our process."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.live
def test_open_handle_refuses_a_filter_libpcap_cannot_receive():
    run = _in_subprocess(
        "from apppaccap.errors import Malformed\n"
        "from apppaccap.capture.sniffer import open_handle\n"
        "import gc\n"
        "for bad in ('\\ud800', 'tcp\\x00 and port 1', b'tcp'):\n"
        "    try:\n"
        "        open_handle('lo', bad)\n"
        "    except Malformed as err:\n"
        "        print(err.message)\n"
        "    gc.collect()\n"
        "print('alive')\n")
    assert run.returncode == 0 and "double free" not in run.stderr, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines == ["filter: is not valid Unicode (a lone surrogate at position 0)",
                     "filter: contains a NUL character", "filter: expected a string", "alive"]


def test_trigger_filter_check_refuses_what_libpcap_cannot_receive(client):
    body = post_json(client, "trigger_add", name="t", trigger_type=1, path=sys.executable,
                     filter="tcp" + SURROGATE)
    assert body["ErrorCode"] == 4 and body["ReturnValue"].startswith("filter: "), body
    from apppaccap.errors import Malformed
    from apppaccap.triggers.store import check_filter
    with pytest.raises(Malformed, match="filter: is not valid Unicode"):
        check_filter("tcp" + SURROGATE)  # called from elsewhere than the registry too


@pytest.mark.live
def test_surrogate_filter_does_not_abort_the_server(tmp_path):
    server = Server(tmp_path / "data", tmp_path / "export")
    try:
        for action in ("capture_start_system", "capture_start_process"):
            body = call_json(server, action, filter=SURROGATE, adapter="lo",
                             pid=1 if action == "capture_start_process" else 0)
            assert body["ErrorCode"] == 4 and body["ReturnValue"].startswith("filter: "), body
        assert call_json(server, "apppaccap")["ErrorCode"] == 0
        assert server.proc.poll() is None
        assert server.ok("capture_list_active") == []
    finally:
        server.stop()
    assert b"double free" not in server.proc.stderr.read()
