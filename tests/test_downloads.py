"""GET /download/export/<name> and /download/extract/<capture_id>/<file_id> on the real
server: byte-identical streams, the callers /ajax accepts and no others, nothing outside
the export and extraction folders."""

from __future__ import annotations

import http.client
import os
import shutil
import time
import urllib.parse

import pytest

from apppaccap.web.downloads import content_disposition
from tests.helpers import corpus
from tests.helpers.door import DoorServer
from tests.helpers.live import wait_for
from tests.helpers.server import wait_command

PASSWORD = "correct horse battery staple"
PINGS = "wellformed/icmp_5_pings.pcap"
HTTP = "wellformed/http_get_file_download.pcap"   # one 4705-byte text/plain file


class Box:
    """A DoorServer with its own export directory and ingest root."""

    def __init__(self, tmp_path, *extra, users=()):
        self.export = tmp_path / "export"
        self.inn = tmp_path / "in"
        self.outside = tmp_path / "outside"
        for d in (self.export, self.inn, self.outside):
            d.mkdir()
        self.server = DoorServer(tmp_path, "--export-dir", self.export, "--ingest-root",
                                 self.inn, *extra, users=users)
        self.headers = {}

    def ok(self, action, **params):
        body = self.server.call(action, headers=self.headers, **params)
        assert body["ErrorCode"] == 0, body
        return body["ReturnValue"]

    def wait(self, cmd: dict, timeout: float = 60) -> dict:
        cmd = wait_command(self.ok, cmd, timeout)
        assert cmd["State"] == 3, cmd
        return cmd

    def ingest(self, name: str) -> int:
        target = self.inn / os.path.basename(name)
        shutil.copy(corpus.path(name), target)
        return int(self.wait(self.ok("pcap_ingest_file", path=str(target)))["Result"])

    def export_of(self, capture_id: int) -> str:
        return self.wait(self.ok("capture_export", capture_id=capture_id))["Result"]

    def get(self, path: str, headers=None, timeout=10):
        """(status, body bytes, response) of one GET."""
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=timeout)
        try:
            conn.request("GET", path, headers=dict(headers or {}))
            resp = conn.getresponse()
            return resp.status, resp.read(), resp
        finally:
            conn.close()

    def stop(self):
        self.server.stop()


@pytest.fixture
def box(tmp_path):
    b = Box(tmp_path)
    yield b
    b.stop()


@pytest.fixture
def locked(tmp_path):
    b = Box(tmp_path, "--auth", "on", users=[("opal", PASSWORD)])
    yield b
    b.stop()


def _read(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def test_export_download_is_the_file(box):
    path = box.export_of(box.ingest(PINGS))
    name = os.path.basename(path)
    assert os.path.dirname(path) == str(box.export)
    status, data, resp = box.get(f"/download/export/{urllib.parse.quote(name)}")
    assert status == 200, data
    assert data == _read(path) and data[:4] == b"\x0a\x0d\x0d\x0a"
    assert resp.getheader("Content-Type") == "application/x-pcapng"
    assert resp.getheader("Content-Length") == str(len(data))
    assert resp.getheader("Content-Disposition") == f'attachment; filename="{name}"'
    assert resp.getheader("X-Content-Type-Options") == "nosniff"
    assert resp.getheader("Cache-Control") == "no-store"
    # a name the export list shows, with characters that need encoding
    odd = "résumé \"q\";x.pcapng"
    shutil.copy(path, box.export / odd)
    assert odd in [f["FileName"] for f in box.ok("export_list")]
    status, data, resp = box.get(f"/download/export/{urllib.parse.quote(odd)}")
    assert status == 200 and data == _read(path)
    assert resp.getheader("Content-Disposition") == (
        "attachment; filename=\"r_sum_ _q__x.pcapng\"; "
        "filename*=UTF-8''r%C3%A9sum%C3%A9%20%22q%22%3Bx.pcapng")


def test_large_export_is_streamed(box):
    """A 96 MiB file goes out in pieces: the server's peak memory does not grow by it."""
    size = 96 << 20
    with open(box.export / "big.pcapng", "wb") as fh:
        fh.truncate(size)
    # Usage accounting counts this test's own loopback traffic: its start (eBPF, nDPI, pcap
    # rings) and the first fill of its rings are its memory, not the download's. Measure
    # after both: the recorder is up, and a smaller file went out first.
    wait_for(lambda: box.server.ok("usage_now")["Enabled"], 20, what="usage accounting")
    time.sleep(1.5)
    with open(box.export / "warm.pcapng", "wb") as fh:
        fh.truncate(16 << 20)
    conn = http.client.HTTPConnection("127.0.0.1", box.server.port, timeout=30)
    conn.request("GET", "/download/export/warm.pcapng")
    warm = conn.getresponse()
    while warm.read(1 << 20):
        pass
    conn.close()
    before = box.server.memory()["VmHWM"]
    conn = http.client.HTTPConnection("127.0.0.1", box.server.port, timeout=30)
    conn.request("GET", "/download/export/big.pcapng")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Length") == str(size)
    got = 0
    while True:
        piece = resp.read(1 << 20)
        if not piece:
            break
        assert not piece.strip(b"\0")
        got += len(piece)
    conn.close()
    assert got == size
    assert box.server.memory()["VmHWM"] - before < 32 << 10  # KiB


def test_extracted_download_is_the_file(box):
    box.ok("extract_enable")
    capture_id = box.ingest(HTTP)
    (stream,) = box.ok("extract_query", capture_id=capture_id)["Streams"]
    f = box.ok("extract_file_write", capture_id=capture_id, stream_id=stream["StreamId"])
    status, data, resp = box.get(f"/download/extract/{capture_id}/{f['FileId']}")
    assert status == 200, data
    assert data == _read(f["Path"]) and len(data) == 4705
    assert resp.getheader("Content-Type").startswith("text/plain")
    assert resp.getheader("X-Content-Type-Options") == "nosniff"
    assert resp.getheader("Content-Disposition") == \
        f'attachment; filename="{f["FileName"]}"'
    assert "sandbox" in resp.getheader("Content-Security-Policy")
    # the right file id under another capture, or an unknown id: not found
    assert box.get(f"/download/extract/{capture_id + 1}/{f['FileId']}")[0] == 404
    assert box.get(f"/download/extract/{capture_id}/{f['FileId'] + 1}")[0] == 404
    assert box.get(f"/download/extract/{capture_id}/-1")[0] == 404
    assert box.get(f"/download/extract/{capture_id}/x")[0] == 404
    # the file replaced by a symlink to a file outside its folder: refused, not followed
    secret = box.outside / "secret"
    secret.write_bytes(b"secret")
    os.remove(f["Path"])
    os.symlink(secret, f["Path"])
    status, data, _ = box.get(f"/download/extract/{capture_id}/{f['FileId']}")
    assert status in (403, 404) and b"secret" not in data


def test_other_accounts_must_log_in(box):
    path = box.export_of(box.ingest(PINGS))
    url = f"/download/export/{os.path.basename(path)}"
    (answer,) = box.server.as_user([{"method": "GET", "path": url, "fields": {}}])
    assert answer["status"] == 403 and "token" in answer["body"], answer
    assert box.get(url)[0] == 200  # root: no token with auth off on loopback


def test_token_in_cookie_or_header_never_the_url(locked):
    status, body, _ = locked.server.post({"action": "login", "username": "opal",
                                          "password": PASSWORD})
    token = body["ReturnValue"]
    locked.headers = {"X-AppPacCap-Token": token}
    path = locked.export_of(locked.ingest(PINGS))
    url = f"/download/export/{os.path.basename(path)}"
    whole = _read(path)
    status, data, _ = locked.get(url)
    assert status == 403 and b"token" in data and data != whole
    assert locked.get(url, {"Cookie": f"apppaccap_token={token}"})[1] == whole
    assert locked.get(url, {"X-AppPacCap-Token": token})[1] == whole
    status, data, _ = locked.get(f"{url}?token={token}")
    assert status == 403 and b"never in a link" in data
    status, data, _ = locked.get(f"{url}?token={token}", {"Cookie": f"apppaccap_token={token}"})
    assert status == 403
    assert locked.get(url, {"Cookie": "apppaccap_token=stale"})[0] == 403
    time.sleep(0.3)
    assert token not in locked.server.log_text()


def test_cross_site_requests_refused(box):
    path = box.export_of(box.ingest(PINGS))
    url = f"/download/export/{os.path.basename(path)}"
    port = box.server.port
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": f"http://127.0.0.1:{port + 1}"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Host": "evil.example"}):
        status, data, _ = box.get(url, headers)
        assert status == 403 and data[:4] != b"\x0a\x0d\x0d\x0a", headers
    for headers in ({"Origin": f"http://127.0.0.1:{port}"}, {"Sec-Fetch-Site": "same-origin"},
                    {"Sec-Fetch-Site": "none"}):
        assert box.get(url, headers)[0] == 200, headers


def test_nothing_outside_the_export_directory(box, tmp_path):
    secret = box.outside / "secret.pcapng"
    secret.write_bytes(b"secret bytes")
    (box.export / ".hidden").write_bytes(b"secret bytes")
    (box.export / ".x.0123456789abcdef.part").write_bytes(b"secret bytes")
    (box.export / "sub").mkdir()
    (box.export / "sub" / "f.pcapng").write_bytes(b"secret bytes")
    os.symlink(secret, box.export / "link.pcapng")
    os.symlink(box.export / ".hidden", box.export / "inner.pcapng")
    os.mkfifo(box.export / "fifo.pcapng")
    names = ["..", "%2e%2e", "..%2fsecret.pcapng", "%2e%2e%2foutside%2fsecret.pcapng",
             "..%2f..%2foutside%2fsecret.pcapng", "%2fetc%2fpasswd", "/etc/passwd",
             "//etc/passwd", "sub/f.pcapng", "sub%2ff.pcapng", "..\\outside\\secret.pcapng",
             ".hidden", ".x.0123456789abcdef.part", "link.pcapng", "inner.pcapng",
             "fifo.pcapng", "sub", "missing.pcapng", "a%00b", "x" * 300, ""]
    for name in names:
        started = time.monotonic()
        status, data, _ = box.get(f"/download/export/{name}", timeout=5)
        assert status in (403, 404), (name, status)
        assert b"secret" not in data and b"root:" not in data, name
        assert time.monotonic() - started < 5, name
    raw = box.server.raw(b"GET /download/export/../../outside/secret.pcapng HTTP/1.1\r\n"
                         b"Host: 127.0.0.1\r\n\r\n")
    assert b"secret bytes" not in raw
    assert box.server.alive()


def test_export_directory_that_is_the_data_directory(tmp_path):
    """Then the catalog is beside the exports: only .pcapng names are served."""
    server = DoorServer(tmp_path)  # --export-dir = --data-dir
    try:
        port = server.port
        names = sorted(os.listdir(server.data_dir))
        assert "catalog.db" in names or any(n.endswith(".db") for n in names), names
        for name in [n for n in names if not n.endswith(".pcapng")] + ["catalog.db"]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", f"/download/export/{urllib.parse.quote(name)}")
            resp = conn.getresponse()
            assert resp.status == 404 and b"SQLite" not in resp.read(), name
            conn.close()
    finally:
        server.stop()


@pytest.mark.parametrize("name, header", [
    ("capture-1.pcapng", 'attachment; filename="capture-1.pcapng"'),
    ("a b.txt", 'attachment; filename="a b.txt"; filename*=UTF-8\'\'a%20b.txt'),
    ("x\r\ny.txt", 'attachment; filename="x__y.txt"; filename*=UTF-8\'\'x%0D%0Ay.txt'),
    ("日本.txt", 'attachment; filename="__.txt"; filename*=UTF-8\'\'%E6%97%A5%E6%9C%AC.txt'),
    ("..", 'attachment; filename="download"'),
    ("dir/../a.txt", 'attachment; filename="a.txt"'),
])
def test_content_disposition_is_safe(name, header):
    assert content_disposition(name) == header
