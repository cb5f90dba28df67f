"""`matches` cannot freeze the service: a real server, a capture of hostile packets.

Before RE2, `frame matches "(a+)+$"` over one 29-byte packet of 'a's froze every answer
for 18 s: Python's backtracking `re` held the GIL for the whole match.
"""

import time

import pytest

from tests.helpers.httpjson import call_json
from tests.helpers.httpjson import drain_stderr
from tests.helpers.live import wait_for
from tests.helpers.pcapgen import redos_payloads
from tests.helpers.pcapgen import write_udp_pcap
from tests.helpers.server import Server

pytestmark = pytest.mark.live

PACKETS = 8000  # ~0.7 ms each for the busy pattern: a search of several seconds
RUNNING, COMPLETED, CANCELLED = 2, 3, 5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("redos")
    data = tmp / "data"
    (data / "import").mkdir(parents=True)
    path = data / "import" / "hostile.pcap"  # the ingest root's default place
    write_udp_pcap(path, redos_payloads(PACKETS))
    srv = Server(data, tmp / "export")
    drain_stderr(srv)
    try:
        uid = srv.ok("pcap_ingest_file", path=str(path))["CommandUid"]
        wait_for(lambda: srv.ok("command_query", command_uid=uid)["State"] >= 3, timeout=60,
                 what="ingest")
        cmd = srv.ok("command_query", command_uid=uid)
        assert cmd["State"] == COMPLETED, cmd
        srv.capture_id = int(cmd["Result"])
        yield srv
    finally:
        srv.stop()


def _timed(fn, *args, **kw):
    t0 = time.monotonic()
    out = fn(*args, **kw)
    return out, time.monotonic() - t0


def _search_ends_within(server, sid, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        meta = server.ok("search_open", search_id=sid)
        if meta["State"] >= COMPLETED:
            return meta
        time.sleep(0.02)
    raise AssertionError(f"search {sid} still {server.ok('search_open', search_id=sid)} "
                         f"{seconds} s later")


def test_backtracking_pattern_never_freezes_other_requests(server):
    meta = server.ok("search_start", filter='frame matches "(a+)+$"',
                     capture_id=server.capture_id)
    body, took = _timed(call_json, server, "apppaccap", timeout=10)
    assert body["ErrorCode"] == 0 and took < 1.0, f"another request took {took:.2f} s"
    _, took = _timed(server.ok, "search_cancel", search_id=meta["SearchId"])
    assert took < 1.0, f"search_cancel took {took:.2f} s"
    _search_ends_within(server, meta["SearchId"], 1.0)  # ended by the cancel, or done


def test_long_search_is_cancelled_within_a_second(server):
    meta = server.ok("search_start", filter='frame matches "[01]*1[01]{20}x"',
                     capture_id=server.capture_id)
    sid = meta["SearchId"]
    wait_for(lambda: server.ok("search_open", search_id=sid)["State"] == RUNNING,
             what="the search running")
    time.sleep(0.3)
    for _ in range(3):  # the service answers while RE2 works in the search thread
        body, took = _timed(call_json, server, "apppaccap", timeout=10)
        assert body["ErrorCode"] == 0 and took < 1.0, f"another request took {took:.2f} s"
    assert server.ok("search_open", search_id=sid)["State"] == RUNNING, \
        "the search ended before it could be cancelled: make it longer"
    _, took = _timed(server.ok, "search_cancel", search_id=sid)
    assert took < 1.0
    meta = _search_ends_within(server, sid, 1.0)
    assert meta["State"] == CANCELLED and meta["Message"] == "cancelled"
    scanned = meta["ScannedPackets"]
    time.sleep(0.5)
    assert server.ok("search_open", search_id=sid)["ScannedPackets"] == scanned  # stopped


def test_unsupported_pcre_features_refused_at_verify_and_start(server):
    for pattern, why in (("(a)\\\\1", "backreferences are not supported"),
                         ("a(?=b)", "lookahead and lookbehind are not supported")):
        flt = f'frame matches "{pattern}"'
        check = server.ok("search_verify_filter", filter=flt)
        assert not check["Valid"] and why in check["Error"], check
        body = server.call("search_start", filter=flt)
        assert body["ErrorCode"] == 4 and why in body["ReturnValue"], body
