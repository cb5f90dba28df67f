"""Helpers for the door tests: a real server with its log in a file, raw HTTP requests,
clients running as another account, the server's memory."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid

from tests.conftest import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOBODY = 65534
# A client for other accounts: the system Python (readable by every account), stdlib only.
# It reads [{"fields"|"json"|"body", "headers"}...] as JSON on stdin and prints one
# {"status", "body", "cookie"} per request.
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
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/ajax", body=data, headers=headers)
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


class DoorServer:
    """`python -m apppaccap serve` on a free port, its log in a file (never a full pipe)."""

    def __init__(self, tmp_path, *extra, users=()):
        self.data = str(tmp_path / f"data-{uuid.uuid4().hex[:6]}")
        for name, password in users:
            subprocess.run([sys.executable, "-m", "apppaccap", "user", "add", name,
                            "--data-dir", self.data], input=password + "\n", text=True,
                           check=True, cwd=ROOT, capture_output=True, timeout=60)
        for _ in range(3):
            # A free port can be handed to someone else's connection before the server
            # binds it (binding 0.0.0.0 clashes with any local socket on that port): retry.
            if self._start(tmp_path, extra):
                return
        raise RuntimeError("server did not start:\n" + self.log_text())

    def _start(self, tmp_path, extra) -> bool:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = str(tmp_path / f"server-{self.port}.log")
        self.log = open(self.log_path, "wb")
        args = [sys.executable, "-m", "apppaccap", "serve", "--port", str(self.port),
                "--data-dir", self.data, "--export-dir", self.data, *extra]
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.post(fields={"action": "apppaccap"})[1]["ErrorCode"] == 0:
                    return True
            except OSError:
                time.sleep(0.1)
        self.stop()
        if "Address already in use" in self.log_text():
            return False
        raise RuntimeError("server did not start:\n" + self.log_text())

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

    def ok(self, action, **params):
        body = self.call(action, **params)
        assert body["ErrorCode"] == 0, body
        return body["ReturnValue"]

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

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")

    def alive(self) -> bool:
        return self.proc.poll() is None and self.call("apppaccap")["ErrorCode"] == 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)
        self.log.close()


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
