"""fleet_fetch_packets against sensors that misbehave: real HTTP servers on 127.0.0.1 (one
thread each) answer /ajax and /download/export the way a hostile or broken sensor could,
and the action runs in-process (no ClickHouse: the sensor's address is this server's
setting fleet_sensors)."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

import pytest

from apppaccap.fleet import fetch
from apppaccap.wire import ErrorCode

PCAPNG = b"\x0a\x0d\x0d\x0a" + b"packets of one connection " * 100
CREDENTIALS = "fleet:s3cret-pw"


class Sensor(ThreadingHTTPServer):
    """A sensor's /ajax and /download/export as fetch_packets uses them. `ajax` and
    `download` say what to answer (None = a well-behaved sensor's answer); `seen` records
    (method, path, Authorization header) of every request."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list = []
        self.ajax = None        # callable(handler, action) that answers, or None
        self.download = None    # callable(handler) that answers, or None
        self.sent = 0           # bytes a streaming answer got out before the client left
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def stream(self, handler, head: bytes, total: int, length: int | None) -> None:
        """Send `head` then zeros up to `total` bytes, then close; note how much got out."""
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        if length is not None:
            handler.send_header("Content-Length", str(length))
        handler.end_headers()
        try:
            handler.wfile.write(head)
            self.sent = len(head)
            chunk = b"0" * (1 << 20)
            while self.sent < total:
                handler.wfile.write(chunk)
                self.sent += len(chunk)
        except OSError:
            pass  # the client stopped reading and closed
        finally:
            self.done.set()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args):
        pass

    def _answer(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value) -> None:
        self._answer(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def do_POST(self):
        sensor = self.server
        sensor.seen.append(("POST", self.path, self.headers.get("Authorization")))
        length = int(self.headers.get("Content-Length") or 0)
        fields = dict(p.split("=", 1) for p in self.rfile.read(length).decode().split("&"))
        action = fields.get("action")
        if sensor.ajax is not None:
            return sensor.ajax(self, action)
        if action in ("capture_export", "command_query"):
            return self._json({"ErrorCode": 0, "ReturnValue": {
                "CommandUid": "c1", "State": 3, "Result": "/x/capture-1.pcapng"}})
        return self._json({"ErrorCode": 0, "ReturnValue": 0})  # export_delete

    def do_GET(self):
        sensor = self.server
        sensor.seen.append(("GET", self.path, self.headers.get("Authorization")))
        if sensor.download is not None:
            return sensor.download(self)
        self._answer(200, PCAPNG)


@pytest.fixture
def sensor(ctx):
    s = Sensor()
    ctx.settings.set("fleet_sensors", f"sensor-x={s.url}")
    ctx.settings.set("fleet_sensor_credentials", CREDENTIALS)
    yield s
    s.close()


def _fetch(ajax):
    return ajax("fleet_fetch_packets", host="sensor-x", capture_id=1, connection_id=2)


def _export_files(ctx) -> list:
    return sorted(os.listdir(ctx.config.export_dir))


def test_a_well_behaved_sensor_still_works(ctx, ajax, sensor):
    got = ajax.ok("fleet_fetch_packets", host="sensor-x", capture_id=1, connection_id=2)
    with open(got["Path"], "rb") as fh:
        assert fh.read() == PCAPNG
    assert got["Size"] == len(PCAPNG) and os.stat(got["Path"]).st_mode & 0o777 == 0o600
    basic = "Basic " + base64.b64encode(CREDENTIALS.encode()).decode()
    assert [s[2] for s in sensor.seen] == [basic] * len(sensor.seen)
    assert ("GET", "/download/export/capture-1.pcapng", basic) in sensor.seen


@pytest.mark.parametrize("answer", [b"[1, 2]", b'"text"', b"not json",
                                    b'{"ErrorCode": 0, "ReturnValue": [1]}',
                                    b'{"ErrorCode": 0, "ReturnValue": {"State": "x"}}',
                                    b'{"ReturnValue": {}}'])
def test_an_answer_that_is_not_an_ajax_envelope_is_an_io_error(ctx, ajax, sensor, answer):
    sensor.ajax = lambda handler, _action: handler._answer(200, answer)
    r = _fetch(ajax)
    assert r["ErrorCode"] == ErrorCode.IO_ERROR, r
    assert "sensor sensor-x" in r["ReturnValue"] and "capture_export" in r["ReturnValue"], r


def test_a_huge_answer_is_not_read_past_the_cap(ctx, ajax, sensor):
    """A sensor answering 128 MiB to capture_export: only the cap is read (the sensor
    gets out at most the cap plus the sockets' buffers before the fetch hangs up)."""
    total = 128 << 20
    sensor.ajax = lambda handler, _action: sensor.stream(
        handler, b'{"ErrorCode": 0, "ReturnValue": "', total, None)
    r = _fetch(ajax)
    assert sensor.done.wait(10)
    assert r["ErrorCode"] == ErrorCode.IO_ERROR, r
    assert "larger than" in r["ReturnValue"] and "sensor-x" in r["ReturnValue"], r
    assert sensor.sent < 32 << 20, sensor.sent


def test_a_redirect_is_not_followed_and_the_credentials_stay(ctx, ajax, sensor):
    """fleet_sensors is the only address the credentials go to: a sensor answering 302 to
    another server must not make this one send them there."""
    other = Sensor()
    try:
        target = other.url + "/ajax"
        sensor.ajax = lambda handler, _action: handler._answer(302, b"", {"Location": target})
        r = _fetch(ajax)
        assert other.seen == []  # no request at all, so no credentials
        assert r["ErrorCode"] == ErrorCode.IO_ERROR, r
        assert "sensor-x" in r["ReturnValue"] and "redirect" in r["ReturnValue"], r
        # the download too
        sensor.ajax = None
        sensor.download = lambda handler: handler._answer(
            302, b"", {"Location": other.url + "/download/export/capture-1.pcapng"})
        r = _fetch(ajax)
        assert other.seen == []
        assert r["ErrorCode"] == ErrorCode.IO_ERROR and "redirect" in r["ReturnValue"], r
        assert _export_files(ctx) == []
    finally:
        other.close()


def test_a_download_announced_past_the_cap_is_refused_before_it_is_read(ctx, ajax, sensor):
    """Content-Length above the cap (2 GiB): refused at once, nothing written."""
    sensor.download = lambda handler: sensor.stream(handler, b"", 64 << 20, 3 << 30)
    r = _fetch(ajax)
    assert sensor.done.wait(10)
    assert r["ErrorCode"] == ErrorCode.IO_ERROR, r
    assert "larger than" in r["ReturnValue"] and "sensor-x" in r["ReturnValue"], r
    assert sensor.sent < 32 << 20, sensor.sent
    assert _export_files(ctx) == []
    assert sensor.seen[-1][:2] == ("POST", "/ajax")  # its copy was still deleted


def test_a_download_past_the_cap_stops_and_leaves_nothing(ctx, ajax, sensor, monkeypatch):
    """No Content-Length (or a false one): counted while read, cut off at the cap and the
    partial file deleted. The cap is lowered here so the test does not write gigabytes."""
    monkeypatch.setattr(fetch, "MAX_DOWNLOAD_BYTES", 4 << 20)
    sensor.download = lambda handler: sensor.stream(handler, b"", 256 << 20, None)
    r = _fetch(ajax)
    assert sensor.done.wait(10)
    assert r["ErrorCode"] == ErrorCode.IO_ERROR, r
    assert "larger than" in r["ReturnValue"] and "sensor-x" in r["ReturnValue"], r
    assert sensor.sent < 64 << 20, sensor.sent
    assert _export_files(ctx) == []


def test_a_symlink_planted_at_the_part_name_is_not_written_through(ctx, ajax, sensor,
                                                                     tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    outside.chmod(0o644)
    part = os.path.join(ctx.config.export_dir, "fleet-sensor-x-1-2.pcapng.part")
    os.symlink(outside, part)
    got = ajax.ok("fleet_fetch_packets", host="sensor-x", capture_id=1, connection_id=2)
    assert outside.read_bytes() == b"precious"
    assert outside.stat().st_mode & 0o777 == 0o644
    with open(got["Path"], "rb") as fh:
        assert fh.read() == PCAPNG
    assert not os.path.islink(got["Path"])


def test_a_download_in_progress_is_journalled_as_every_export(ajax, ctx, sensor):
    """Its temporary file is in the journal while it is written (a crash then leaves nothing
    after the next start: safefs's recovery removes what the journal names), and the entry
    goes when the file is in place."""
    from apppaccap.safefs.journal import JOURNAL_DIR
    journal = os.path.join(ctx.config.data_dir, JOURNAL_DIR)
    seen, release = [], threading.Event()

    def slow(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(PCAPNG)))
        handler.end_headers()
        handler.wfile.write(PCAPNG[:100])
        handler.wfile.flush()
        release.wait(10)
        handler.wfile.write(PCAPNG[100:])

    def look():
        time.sleep(0.5)   # the first bytes are written by then
        seen.append(os.listdir(journal) if os.path.isdir(journal) else [])
        release.set()

    sensor.download = slow
    looker = threading.Thread(target=look)
    looker.start()
    got = ajax.ok("fleet_fetch_packets", host="sensor-x", capture_id=1, connection_id=2)
    looker.join()
    assert got["Size"] == len(PCAPNG)
    assert seen[-1], "no journal entry while the download was written"
    assert not (os.listdir(journal) if os.path.isdir(journal) else [])
