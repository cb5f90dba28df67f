"""Kept-alive connections at the door (web/server.py): every request on one connection is
checked on its own (token, origin), the body's end is where the next request starts, and
framing the door cannot follow closes the connection. Real server, real sockets; the
token test's client runs as another account (root needs no token)."""

from __future__ import annotations

import json
import re
import socket
import subprocess

import pytest

from tests.helpers.door import NOBODY
from tests.helpers.door import DoorServer

PASSWORD = "keepalive-passw0rd"

# One http.client connection as another account: each answer with the client's local port
# (the same port = the same connection; http.client would reconnect silently otherwise).
CLIENT = r"""
import http.client, json, sys, urllib.parse
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
out = []
for fields, headers in json.load(sys.stdin):
    if fields.get("token") == "FROM_LOGIN":
        fields["token"] = out[0]["body"]["ReturnValue"]
    conn.request("POST", "/ajax", body=urllib.parse.urlencode(fields).encode(),
                 headers=dict(headers, **{"Content-Type": "application/x-www-form-urlencoded"}))
    resp = conn.getresponse()
    body = json.loads(resp.read())
    out.append({"port": conn.sock.getsockname()[1] if conn.sock else None, "body": body,
                "connection": resp.getheader("Connection")})
print(json.dumps(out))
"""


@pytest.fixture
def server(tmp_path):
    s = DoorServer(tmp_path, "--auth", "on", users=[("opal", PASSWORD)])
    yield s
    s.stop()


def test_each_request_on_a_kept_connection_is_checked(server):
    origin = {"Origin": "http://evil.example"}
    calls = [
        ({"action": "login", "username": "opal", "password": PASSWORD}, {}),
        ({"action": "settings_get_all", "token": "FROM_LOGIN"}, {}),
        ({"action": "settings_get_all"}, {}),                        # no token: refused
        ({"action": "settings_get_all", "token": "FROM_LOGIN"}, origin),  # foreign page
        ({"action": "settings_get_all", "token": "FROM_LOGIN"}, {}),
    ]
    out = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                          "--clear-groups", "/usr/bin/python3", "-c", CLIENT,
                          str(server.port)], input=json.dumps(calls), capture_output=True,
                         text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    answers = json.loads(out.stdout)
    assert [a["body"]["ErrorCode"] for a in answers] == [0, 0, 2, 8, 0], answers
    assert "theme" in answers[1]["body"]["ReturnValue"]
    # one connection throughout: the refusals did not close it either
    assert len({a["port"] for a in answers}) == 1, answers
    assert all(a["connection"] is None for a in answers), answers


def _answers(data: bytes, port: int) -> list[bytes]:
    """Send `data` at once; read answers until the server closes (or 5 s of silence)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except socket.timeout:
            got += b"<still open>"
    return got


def _envelopes(got: bytes) -> list[dict]:
    """The answers in a stream of HTTP responses (each framed by its Content-Length)."""
    out = []
    while got.startswith(b"HTTP/1.1 "):
        head, _, rest = got.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        out.append(json.loads(rest[:length]))
        got = rest[length:]
    return out


def _post(fields: str, extra: str = "") -> bytes:
    return (f"POST /ajax HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(fields)}\r\n\r\n{fields}").encode()


def test_pipelined_requests_each_answered_and_not_eaten(server):
    # sent at once: the drain after the first answer must stop at the end of its body
    login = f"action=login&username=opal&password={PASSWORD}"
    last = _post("action=settings_get_all", "Connection: close\r\n")
    got = _answers(_post("action=apppaccap") + _post(login) + last, server.port)
    answers = _envelopes(got.removesuffix(b"<still open>"))
    assert [a["ErrorCode"] for a in answers] == [0, 0, 2], got[:2000]  # the last: no token
    assert "AuthEnabled" in answers[0]["ReturnValue"] and len(answers[1]["ReturnValue"]) >= 32
    assert not got.endswith(b"<still open>")  # the client's close was honoured


@pytest.mark.parametrize("framing", [
    "Transfer-Encoding: chunked\r\n",
    "Content-Length: 16\r\nContent-Length: 16\r\n",
])
def test_framing_the_door_cannot_follow_closes(server, framing):
    body = "action=apppaccap"
    if framing.startswith("Transfer"):
        payload = f"{len(body):x}\r\n{body}\r\n0\r\n\r\n"
    else:
        payload = body
    request = (f"POST /ajax HTTP/1.1\r\nHost: 127.0.0.1\r\n{framing}"
               f"Content-Type: application/x-www-form-urlencoded\r\n\r\n{payload}").encode()
    # a request smuggled behind it is never answered: the connection ends first
    got = _answers(request + _post("action=settings_get_all"), server.port)
    assert got.count(b"HTTP/1.1 ") == 1, got[:2000]
    assert b"Connection: close" in got and not got.endswith(b"<still open>"), got[:2000]


def test_a_body_left_unread_closes(server):
    # refused before its body is read (too large before a login): what is left of the
    # body must not be taken for a request
    size = 1 << 40  # over any max_request_bytes
    head = (f"POST /ajax HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head + _post("action=settings_get_all"))
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    assert got.count(b"HTTP/1.1 ") == 1, got[:2000]
    assert b"Connection: close" in got, got[:2000]
