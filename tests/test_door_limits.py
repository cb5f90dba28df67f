"""What one request may cost before and after authentication: body sizes, uploads, JSON
depth, encodings - measured on a real server process (/proc/<pid>/status)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tests.helpers import corpus
from tests.helpers.door import DoorServer
from tests.helpers.door import envelope_of
from tests.helpers.door import read_all
from tests.helpers.live import wait_for

PASSWORD = "limits-passw0rd"
BIG = 200 << 20
FEW_MB = 8 << 10  # KiB
WARM = 64 << 20   # bytes of the body sent before measuring


@pytest.fixture
def authed(tmp_path):
    s = DoorServer(tmp_path, "--auth", "on", users=[("opal", PASSWORD)])
    yield s
    s.stop()


@pytest.fixture
def server(tmp_path):
    s = DoorServer(tmp_path)
    yield s
    s.stop()


def _stream(port: int, head: bytes, total: int, chunked: bool) -> bytes:
    """Send `head` then `total` bytes of body (as fast as the server takes them) while
    reading the answer; returns the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    answer = []
    reader = threading.Thread(target=lambda: answer.append(read_all(sock)))
    reader.start()
    piece = b" " * (1 << 20)
    try:
        sock.sendall(head)
        sent = 0
        while sent < total:
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the server answered and closed: what it answered is what counts
    reader.join(120)
    sock.close()
    return answer[0] if answer else b""


def _head(port, ctype, length=None, extra=""):
    size = f"Content-Length: {length}\r\n" if length is not None else \
        "Transfer-Encoding: chunked\r\n"
    return (f"POST /ajax HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {ctype}\r\n"
            f"{size}{extra}\r\n").encode()


@pytest.mark.parametrize("ctype,chunked,expect", [
    ("application/json", False, (4, "max_unauthenticated_bytes")),
    ("application/json", True, (4, "max_unauthenticated_bytes")),
    ("application/x-www-form-urlencoded", False, (4, "max_unauthenticated_bytes")),
    ("multipart/form-data; boundary=b", False, (2, "X-AppPacCap-Token")),
    ("multipart/form-data; boundary=b", True, (2, "X-AppPacCap-Token")),
])
def test_pre_auth_200_mb_body_costs_no_memory(authed, ctype, chunked, expect):
    for _ in range(3):
        authed.call("settings_get_all")  # warm up the code paths before measuring
    # Usage accounting counts this test's own loopback traffic: its start (eBPF load, pcap
    # rings) and the first fill of its rings are its memory, not the body's. Measure after
    # both: the recorder is up, and one smaller body went through first.
    token = authed.ok("login", username="opal", password=PASSWORD)
    wait_for(lambda: authed.ok("usage_now", token=token)["Enabled"], 20, what="usage accounting")
    time.sleep(1.5)
    _stream(authed.port, _head(authed.port, ctype, None if chunked else WARM), WARM, chunked)
    before = authed.memory()
    started = time.monotonic()
    answer = _stream(authed.port, _head(authed.port, ctype, None if chunked else BIG), BIG,
                     chunked)
    elapsed = time.monotonic() - started
    after = authed.memory()
    assert after["VmHWM"] - before["VmHWM"] < FEW_MB, (before, after)
    assert after["VmRSS"] - before["VmRSS"] < FEW_MB, (before, after)
    body = envelope_of(answer)
    assert (body["ErrorCode"], expect[1] in body["ReturnValue"]) == (expect[0], True), body
    assert elapsed < 30
    assert authed.alive()


def test_body_limit_after_login(authed):
    token = authed.ok("login", username="opal", password=PASSWORD)
    hdr = {"X-AppPacCap-Token": token}
    authed.ok("settings_set", key_name="max_request_bytes", value=str(100_000), token=token)
    padding = "x" * 120_000
    _, over, _ = authed.post({"action": "settings_get_all", "pad": padding}, headers=hdr)
    assert over["ErrorCode"] == 4 and "larger than max_request_bytes" in over["ReturnValue"]
    chunked = _stream(authed.port, _head(authed.port, "application/json", extra=(
        f"X-AppPacCap-Token: {token}\r\n")), 3 << 20, chunked=True)
    assert "larger than max_request_bytes" in envelope_of(chunked)["ReturnValue"]
    _, fine, _ = authed.post({"action": "settings_get_all", "pad": padding[:90_000]},
                             headers=hdr)
    assert fine["ErrorCode"] == 0
    # With the token only in the body, a big body is refused before it is read.
    _, early, _ = authed.post({"action": "settings_get_all", "pad": padding[:90_000],
                               "token": token})
    assert early["ErrorCode"] == 4 and "max_unauthenticated_bytes" in early["ReturnValue"]
    assert authed.call("settings_get_all", token=token)["ErrorCode"] == 0


def test_upload_authorised_before_its_body(authed):
    token = authed.ok("login", username="opal", password=PASSWORD)
    with open(corpus.path("wellformed/icmp_5_pings.pcap"), "rb") as fh:
        pcap = fh.read()

    def upload(headers, body_token=None):
        b = b"--bnd\r\n"
        parts = b'Content-Disposition: form-data; name="action"\r\n\r\npcap_ingest_post\r\n'
        if body_token:
            parts += b + (f'Content-Disposition: form-data; name="token"\r\n\r\n{body_token}'
                          "\r\n").encode()
        data = (b + parts + b + b'Content-Disposition: form-data; name="file"; '
                b'filename="pings.pcap"\r\nContent-Type: application/octet-stream\r\n\r\n'
                + pcap + b"\r\n--bnd--\r\n")
        headers = dict(headers, **{"Content-Type": "multipart/form-data; boundary=bnd"})
        return authed.post(body=data, headers=headers)[1]

    assert upload({}, body_token=token)["ErrorCode"] == 2       # the body is not read
    assert upload({"X-AppPacCap-Token": "forged"})["ErrorCode"] == 2
    by_header = upload({"X-AppPacCap-Token": token})
    assert by_header["ErrorCode"] == 0 and "CommandUid" in by_header["ReturnValue"]
    by_cookie = upload({"Cookie": f"apppaccap_token={token}"})
    assert by_cookie["ErrorCode"] == 0
    authed.ok("settings_set", key_name="upload_max_bytes", value="1000", token=token)
    started = time.monotonic()
    answer = _stream(authed.port, _head(authed.port, "multipart/form-data; boundary=bnd",
                                        BIG, f"X-AppPacCap-Token: {token}\r\n"), BIG, False)
    body = envelope_of(answer)
    assert body["ErrorCode"] == 4 and "upload limit" in body["ReturnValue"]
    assert time.monotonic() - started < 30


def test_deep_json_is_malformed_not_a_crash(server):
    def send(nested: bytes):
        data = b'{"action": "apppaccap", "x": ' + nested + b"}"
        return server.post(body=data, headers={"Content-Type": "application/json"})
    for depth in (33, 1000, 100_000):
        status, body, _ = send(b"[" * depth + b"]" * depth)
        assert status == 200 and body["ErrorCode"] == 4, (depth, body)
        assert "nested deeper than 32" in body["ReturnValue"]
    status, body, _ = send(b'{"a": ' * 20 + b"1" + b"}" * 20)
    assert body["ErrorCode"] == 0, body
    # Brackets inside strings do not count, and escaped quotes do not end a string.
    status, body, _ = send(json.dumps("[" * 5000 + '\\"' * 5000 + "{" * 5000).encode())
    assert body["ErrorCode"] == 0, body
    # A body of escaped quotes used to be quadratic for a naive string pattern.
    started = time.monotonic()
    status, body, _ = send(b'"' + b'\\"' * 200_000 + b"[" * 40)
    assert body["ErrorCode"] == 4 and time.monotonic() - started < 5
    assert server.alive()


def test_bodies_that_are_not_utf8_are_malformed(server):
    cases = [
        (b'{"action": "apppaccap", "x": "\xff"}', "application/json"),
        (b'{"action": "apppaccap", "x": "\xed\xa0\x80"}', "application/json"),  # surrogate
        (b"action=apppaccap&x=%ff", "application/x-www-form-urlencoded"),
        (b"action=apppaccap&x=\xc3", "application/x-www-form-urlencoded"),
    ]
    for data, ctype in cases:
        status, body, _ = server.post(body=data, headers={"Content-Type": ctype})
        assert status == 200 and body["ErrorCode"] == 4, (data, body)
        assert "UTF-8" in body["ReturnValue"]
    assert server.alive()
