"""Helpers for the browser test: a real server subprocess, traffic makers, a big pcap."""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")
PYTHON = VENV_PY if os.path.exists(VENV_PY) else sys.executable
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


# Reports every Content-Security-Policy violation of a document as a console error. The
# page's CSP does not apply to it: Playwright injects init scripts through DevTools.
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", function (e) {
  console.error("CSP violation: " + e.violatedDirective + " blocked " + (e.blockedURI || "inline")
                + " at " + e.sourceFile + ":" + e.lineNumber);
});
"""


class Console:
    """Every console error, uncaught page error and CSP violation of a page."""

    def __init__(self, page):
        self.errors = []
        page.add_init_script(CSP_LISTENER)
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def assert_clean(self):
        assert not self.errors, "\n".join(self.errors)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


class Server:
    """`python -m apppaccap serve` as a subprocess on a free port."""

    def __init__(self, data_dir: str, export_dir: str, auth: bool = False, extra=()):
        self.port = free_port()
        self.data_dir = data_dir
        self.log_path = os.path.join(os.path.dirname(data_dir), f"server-{self.port}.log")
        cmd = [PYTHON, "-m", "apppaccap", "serve", "--port", str(self.port),
               "--data-dir", data_dir, "--export-dir", export_dir, *extra]
        if auth:
            cmd += ["--auth", "on"]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port)
        except AssertionError:
            self.stop()
            raise AssertionError("server did not start:\n" + self.log_text())
        self.url = f"http://127.0.0.1:{self.port}"

    def call(self, action: str, **params):
        data = json.dumps(dict(action=action, **params)).encode()
        req = urllib.request.Request(self.url + "/ajax", data=data,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)

    def log_text(self) -> str:
        self.log.flush()
        with open(self.log_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def add_user(data_dir: str, name: str, password: str) -> None:
    subprocess.run([PYTHON, "-m", "apppaccap", "user", "add", name, "--data-dir", data_dir],
                   input=password + "\n", text=True, check=True, cwd=ROOT, capture_output=True)


CLIENT = """
import sys, time, urllib.request
url = sys.argv[1]
while True:
    try:
        urllib.request.urlopen(url, timeout=2).read()
    except Exception:
        pass
    time.sleep(0.2)
"""


def start_traffic(www_dir: str):
    """A local http.server and a client that fetches from it every 200 ms → (port, [procs])."""
    os.makedirs(www_dir, exist_ok=True)
    with open(os.path.join(www_dir, "hello.txt"), "w") as fh:
        fh.write("hello from the browser test\n" * 20)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", www_dir],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    client = subprocess.Popen([sys.executable, "-c", CLIENT, f"http://127.0.0.1:{port}/hello.txt"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return port, [client, server]


def stop_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def write_big_pcap(path: str, count: int) -> None:
    """A classic pcap of `count` Ethernet/IPv4 packets, TCP/UDP/ICMP mixed, 10 ms apart."""
    rnd = random.Random(7)
    t0 = 1_700_000_000.0
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(count):
        proto = (6, 6, 6, 17, 17, 1)[i % 6]
        src = bytes([10, 0, rnd.randrange(4), rnd.randrange(1, 250)])
        dst = bytes([93, 184, 216, rnd.randrange(1, 40)])
        payload = (b"GET /item/%d HTTP/1.1\r\nHost: example.com\r\n\r\n" % i)[: rnd.randrange(0, 60)]
        if proto == 6:
            l4 = struct.pack("!HHIIBBHHH", 40000 + i % 2000, (80, 443, 8080)[i % 3], i, 0,
                             0x50, 0x18, 502, 0, 0) + payload
        elif proto == 17:
            l4 = struct.pack("!HHHH", 50000 + i % 100, (53, 123, 5353)[i % 3],
                             8 + len(payload), 0) + payload
        else:
            l4 = struct.pack("!BBHHH", 8, 0, 0, 1, i & 0xFFFF) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), i & 0xFFFF, 0, 64, proto, 0,
                         src, dst)
        ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
        frame = b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + ip + l4
        ts = t0 + i * 0.01
        out.append(struct.pack("<IIII", int(ts), int(round((ts % 1) * 1e6)) % 1_000_000,
                               len(frame), len(frame)) + frame)
    with open(path, "wb") as fh:
        fh.write(b"".join(out))
