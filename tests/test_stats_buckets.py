"""Statistics series whose bucket follows the span (second buckets for a short capture,
the real span reported) and stats_by_process, on live captures on `lo` and an ingested
export with process comments."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

from apppaccap.api.series import DAY
from apppaccap.api.series import HOUR
from apppaccap.api.series import MINUTE
from apppaccap.api.series import SECOND
from apppaccap.api.series import bucket_for
from apppaccap.wire import Direction
from tests.helpers.live import read_all

TICKS_PER_SECOND = 10_000_000  # FILETIME
BODY = 300_000
IN, OUT = int(Direction.IN), int(Direction.OUT)


def test_bucket_rule():
    assert bucket_for(0) == bucket_for(16 * SECOND) == bucket_for(5 * MINUTE) == SECOND
    assert bucket_for(5 * MINUTE + 1) == bucket_for(5 * HOUR) == MINUTE
    assert bucket_for(5 * HOUR + 1) == bucket_for(5 * DAY) == HOUR
    assert bucket_for(5 * DAY + 1) == DAY
    for span in (5 * MINUTE + 1, 5 * HOUR + 1, 5 * DAY + 1, 30 * DAY):
        assert span / bucket_for(span) > 5   # a chart always has a few points


def _curl_for(port, seconds):
    """One small request every 0.4 s for `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/hello.txt"],
                       check=True)
        time.sleep(0.4)


def test_short_capture_gets_second_buckets_and_its_real_span(live_ajax, http_server):
    port, _ = http_server
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter=f"tcp port {port}")
    _curl_for(port, 3.5)
    time.sleep(0.3)
    live_ajax.ok("capture_stop_all")
    cid = cap["CaptureId"]
    packets = read_all(live_ajax, cid)
    times = sorted(p["Time"] for p in packets)
    span = times[-1] - times[0]
    assert 2.5 * TICKS_PER_SECOND < span < 6 * TICKS_PER_SECOND
    answers = [live_ajax.ok("stats_by_id", capture_id=cid),
               live_ajax.ok("stats_by_port", capture_id=cid, port=port),
               live_ajax.ok("stats_by_ip", capture_id=cid, ip="127.0.0.1"),
               live_ajax.ok("stats_by_protocol", capture_id=cid, protocol=6),
               live_ajax.ok("stats_by_date", capture_id=cid, start_dtg=times[0] - 600 *
                            TICKS_PER_SECOND, end_dtg=times[-1] + 600 * TICKS_PER_SECOND)]
    for st in answers:
        assert st["BucketSeconds"] == 1
        assert abs(st["FirstTime"] - times[0]) <= 1 and abs(st["LastTime"] - times[-1]) <= 1
        assert st["Packets"] == len(packets) == sum(s["Packets"] for s in st["Series"])
        assert st["Bytes"] == sum(p["Length"] for p in packets)
        starts = [s["Time"] for s in st["Series"]]
        assert len(starts) >= 3 and starts == sorted(starts)
        assert all((b - a) % TICKS_PER_SECOND == 0 for a, b in zip(starts, starts[1:]))
    # per second, as the packets say
    per_sec = collections.Counter((t - answers[0]["Series"][0]["Time"]) // TICKS_PER_SECOND
                                  for t in times)
    first = answers[0]["Series"][0]["Time"]
    assert {(s["Time"] - first) // TICKS_PER_SECOND: s["Packets"]
            for s in answers[0]["Series"]} == dict(per_sec)
    # a range inside the capture: its span and its packets only
    mid = times[len(times) // 2]
    part = live_ajax.ok("stats_by_date", capture_id=cid, start_dtg=mid, end_dtg=times[-1])
    assert part["FirstTime"] == mid and part["BucketSeconds"] == 1
    assert 0 < part["Packets"] < len(packets)


def _download(port, name) -> subprocess.Popen:
    code = ("import sys, urllib.request\n"
            f"data = urllib.request.urlopen('http://127.0.0.1:{port}/{name}').read()\n"
            f"assert len(data) == {BODY}\n")
    return subprocess.Popen([sys.executable, "-c", code])


def _sums(packets) -> dict:
    """process id → [packets, bytes, bytes in, bytes out] from the packets themselves."""
    sums: dict = {}
    for p in packets:
        if p["ProcessId"]:
            s = sums.setdefault(p["ProcessId"], [0, 0, 0, 0])
            s[0] += 1
            s[1] += p["Length"]
            if p["Direction"] in (IN, OUT):
                s[2 if p["Direction"] == IN else 3] += p["Length"]
    return sums


def _by_process(answer) -> dict:
    return {p["ProcessId"]: [p["Packets"], p["Bytes"], p["BytesIn"], p["BytesOut"]]
            for p in answer["Processes"]}


def test_stats_by_process_of_a_download(live, live_ajax, http_server, tmp_path):
    port, server = http_server
    (tmp_path / "www" / "body.bin").write_bytes(os.urandom(BODY))
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter=f"tcp port {port}")
    time.sleep(0.2)
    client = _download(port, "body.bin")
    assert client.wait(30) == 0
    time.sleep(0.4)
    live_ajax.ok("capture_stop_all")
    cid = cap["CaptureId"]
    st = live_ajax.ok("stats_by_process", capture_id=cid)
    assert st["BucketSeconds"] == 1 and st["Processes"]
    top = st["Processes"][0]
    assert top["Pid"] == client.pid and "python" in top["Name"]
    assert top["BytesIn"] >= BODY and top["Path"]
    assert [p["Bytes"] for p in st["Processes"]] == \
        sorted((p["Bytes"] for p in st["Processes"]), reverse=True)
    for p in st["Processes"]:
        assert p["Bytes"] == sum(s["Bytes"] for s in p["Series"])
        assert p["BytesIn"] == sum(s["BytesIn"] for s in p["Series"])
        assert p["BytesOut"] == sum(s["BytesOut"] for s in p["Series"])
    packets = read_all(live_ajax, cid)
    assert _by_process(st) == _sums(packets)
    # the export carries the processes as ptcpdump comments; ingested again, the same sums
    out = str(tmp_path / "download.pcapng")
    done = live.jobs.wait(live_ajax.ok("capture_export", capture_id=cid, path=out)["CommandUid"])
    assert done["State"] == 3, done
    again = live.jobs.wait(live_ajax.ok("pcap_ingest_file", path=out)["CommandUid"])
    assert again["State"] == 3, again
    cid2 = int(again["Result"])
    st2 = live_ajax.ok("stats_by_process", capture_id=cid2)
    assert _by_process(st2) == _sums(read_all(live_ajax, cid2))
    assert st2["Processes"][0]["Pid"] == client.pid
    assert st2["Processes"][0]["Packets"] == top["Packets"]


def test_stats_by_process_errors(live_ajax, http_server):
    port, _ = http_server
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter=f"tcp port {port}")
    live_ajax.ok("capture_stop_all")
    empty = live_ajax.ok("stats_by_process", capture_id=cap["CaptureId"])
    assert empty["Processes"] == [] and empty["FirstTime"] == 0
    assert live_ajax("stats_by_process", capture_id=999)["ErrorCode"] == 6
    assert live_ajax("stats_by_process", capture_id=cap["CaptureId"], start_dtg=5,
                     end_dtg=1)["ErrorCode"] == 4
