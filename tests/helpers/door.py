"""Helpers for the door tests: a real server with its log in a file, raw HTTP requests,
clients running as another account, the server's memory."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import urllib.parse
import uuid

from tests.helpers.server import Server
from tests.helpers.server import add_user

NOBODY = 65534
# A client for other accounts: the system Python (readable by every account), stdlib only.
# It reads [{"fields"|"json", "headers", "method", "path"}...] (POST /ajax unless told) as
# JSON on stdin and prints one {"status", "body", "cookie"} per request.
CLIENT = r"""
import http.client, json, sys, urllib.parse
port = int(sys.argv[1])
out = []
for req in json.load(sys.stdin):
    headers = dict(req.get("headers", {}))
    if "json" in req:
        data = json.dumps(req["json"]).encode()
        headers.setdefault("Content-Type", "application/json")
    else:
        data = urllib.parse.urlencode(req["fields"], doseq=True).encode()
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    method = req.get("method", "POST")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, req.get("path", "/ajax"), body=data if method == "POST" else None,
                 headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode("latin-1")
    out.append({"status": resp.status, "body": body, "cookie": resp.getheader("Set-Cookie")})
    conn.close()
print(json.dumps(out))
"""


class DoorServer(Server):
    """The real server on a free port with its log in a file, a fresh data directory under
    `tmp_path` holding `users`; raw requests, and clients running as another account."""

    def __init__(self, tmp_path, *extra, users=()):
        data = str(tmp_path / f"data-{uuid.uuid4().hex[:6]}")
        for name, password in users:
            add_user(data, name, password)
        super().__init__(data, data, *extra, log_dir=tmp_path)

    # -- requests -----------------------------------------------------------------------

    def post(self, fields=None, *, json_body=None, body=None, headers=None, path="/ajax",
             method="POST", timeout=30):
        """One request; returns (HTTP status, envelope or text, response headers)."""
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        elif fields is not None:
            body = urllib.parse.urlencode(fields, doseq=True).encode()
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode("latin-1")
        return resp.status, parsed, resp

    def call(self, action, headers=None, **params):
        status, body, _ = self.post(dict(params, action=action), headers=headers)
        assert status == 200, (status, body)
        return body

    def raw(self, data: bytes, timeout=30) -> bytes:
        """Send bytes as they are; return everything the server answers."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)  # a body cut short ends here, not at a timeout
            return read_all(s)

    # -- as another account ---------------------------------------------------------------

    def as_user(self, requests: list[dict], uid=NOBODY, gid=NOBODY, init_groups=False):
        """Run CLIENT as uid:gid (no supplementary groups, or the account's own)."""
        groups = ["--init-groups"] if init_groups else ["--clear-groups"]
        out = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", *groups,
                              "/usr/bin/python3", "-c", CLIENT, str(self.port)],
                             input=json.dumps(requests), capture_output=True, text=True,
                             timeout=120, cwd="/")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    # -- the process ------------------------------------------------------------------------

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM of the server process, in KiB."""
        values = {}
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0])
        return values

    def alive(self) -> bool:
        return self.proc.poll() is None and self.call("apppaccap")["ErrorCode"] == 0


def read_all(sock) -> bytes:
    out = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            out += data
    except OSError:
        pass  # reset after the answer: what was read is what counts
    return out


def envelope_of(response: bytes) -> dict:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), response[:300]
    return json.loads(body)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"
