"""Run the real `apppaccap serve` as a subprocess for end-to-end tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from tests.conftest import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apppaccap", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, check=check, timeout=120)


class Server:
    def __init__(self, data_dir, export_dir=None, *extra):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "apppaccap", "serve", "--port", str(self.port),
                "--data-dir", str(data_dir), "--export-dir", str(export_dir or data_dir), *extra]
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.call("apppaccap")
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(self.proc.stderr.read().decode()[-2000:])
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def call(self, action, **params) -> dict:
        data = urllib.parse.urlencode(dict(params, action=action), doseq=True).encode()
        with urllib.request.urlopen(self.url + "/ajax", data=data, timeout=30) as resp:
            return json.loads(resp.read())

    def ok(self, action, **params):
        body = self.call(action, **params)
        assert body["ErrorCode"] == 0, body
        return body["ReturnValue"]

    def kill(self, sig=9):
        self.proc.send_signal(sig)
        self.proc.wait(20)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
