"""Run the real `apppaccap serve` as a subprocess for end-to-end tests, and the `apppaccap`
command itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from tests.helpers.ports import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli(*args, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apppaccap", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, check=check, timeout=120)


def add_user(data_dir, name: str, password: str) -> None:
    cli("user", "add", name, "--data-dir", str(data_dir), stdin=password + "\n")


class Server:
    """`python -m apppaccap serve` on a free port, answering once `start()` returns.

    Its stderr goes to a pipe (`proc.stderr`: read it, or drain it in long tests -
    tests/helpers/httpjson.py) or, with `log_dir`, its stdout and stderr go to
    `log_dir/server-PORT.log` (`log_text()`), never a pipe that fills."""

    def __init__(self, data_dir, export_dir=None, *extra, log_dir=None):
        self.data_dir = str(data_dir)
        self.export_dir = str(export_dir or data_dir)
        self.extra = [str(a) for a in extra]
        self.log_dir = log_dir
        self.log = None
        for _ in range(3):
            # A free port can be handed to someone else's connection before the server
            # binds it (binding 0.0.0.0 clashes with any local socket on that port): retry.
            if self._start():
                return
        raise RuntimeError("server did not start:\n" + self._output())

    def _start(self) -> bool:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "apppaccap", "serve", "--port", str(self.port),
                "--data-dir", self.data_dir, "--export-dir", self.export_dir, *self.extra]
        if self.log_dir is None:
            self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
        else:
            self.log_path = os.path.join(str(self.log_dir), f"server-{self.port}.log")
            self.log = open(self.log_path, "wb")
            self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self.log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                self.call("apppaccap")
                return True
            except OSError:
                time.sleep(0.1)
        self.stop()
        if "Address already in use" in self._output():
            return False
        raise RuntimeError("server did not start:\n" + self._output())

    def _output(self) -> str:
        """What the server wrote, once it has ended (the pipe) or so far (the log)."""
        if self.log is not None:
            return self.log_text()[-2000:]
        return self.proc.stderr.read().decode("utf-8", "replace")[-2000:]

    def call(self, action, **params) -> dict:
        data = urllib.parse.urlencode(dict(params, action=action), doseq=True).encode()
        with urllib.request.urlopen(self.url + "/ajax", data=data, timeout=30) as resp:
            return json.loads(resp.read())

    def ok(self, action, **params):
        body = self.call(action, **params)
        assert body["ErrorCode"] == 0, body
        return body["ReturnValue"]

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")

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
                self.proc.wait(20)
        if self.log is not None:
            self.log.close()


def wait_command(ok, cmd: dict, timeout: float = 60) -> dict:
    """Poll a COMMAND with `ok("command_query", ...)` until it has ended; the last COMMAND."""
    deadline = time.monotonic() + timeout
    while cmd["State"] < 3:
        assert time.monotonic() < deadline, cmd
        time.sleep(0.05)
        cmd = ok("command_query", command_uid=cmd["CommandUid"])
    return cmd


def with_ingested(tmp_path, corpus_file: str) -> tuple[Server, int]:
    """A server whose ingest root holds a copy of `corpus_file` (a path), and the id of
    the capture it ingested from it."""
    import shutil

    inn = os.path.join(str(tmp_path), "in")
    os.makedirs(inn, exist_ok=True)
    os.makedirs(os.path.join(str(tmp_path), "export"), exist_ok=True)
    src = os.path.join(inn, os.path.basename(corpus_file))
    shutil.copy(corpus_file, src)
    server = Server(os.path.join(str(tmp_path), "data"), os.path.join(str(tmp_path), "export"),
                    "--ingest-root", inn, log_dir=tmp_path)
    try:
        cmd = wait_command(server.ok, server.ok("pcap_ingest_file", path=src))
        assert cmd["State"] == 3, cmd
        return server, int(cmd["Result"])
    except BaseException:
        server.stop()
        raise
