"""An attacker's review of the door (issue 11): weaknesses found after the security work,
each shown on a real server process with real sockets and a real unprivileged client."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.door_helpers import NOBODY
from tests.door_helpers import DoorServer

PASSWORD = "review-passw0rd"

# Run as nobody: open N connections, each sending half a request line (or half a body),
# say "ready", wait, then report how many the server has closed meanwhile.
STALLER = r"""
import json, socket, sys, time
port, count, hold, mode = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
head = b"POST /ajax HTTP/1.1\r\n"
if mode == "body":
    head += (b"Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
             b"Content-Length: 1000\r\n\r\n{")
socks = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(head)
    except OSError:
        pass
    socks.append(s)
print("ready", flush=True)
time.sleep(hold)
closed = 0
for s in socks:
    s.setblocking(False)
    try:
        s.recv(65536)  # b"" (closed) or an answer: the server is done with it
        closed += 1
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print(json.dumps({"closed": closed}), flush=True)
"""


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line")


def _stall_as_nobody(port: int, count: int, hold: float, mode: str = "head"):
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         "/usr/bin/python3", "-c", STALLER, str(port), str(count), str(hold), mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


@pytest.fixture
def server(tmp_path):
    s = DoorServer(tmp_path)
    yield s
    s.stop()


@pytest.mark.parametrize("mode", ["head", "body"])
def test_stalled_connections_of_a_local_user_are_capped_and_time_out(server, mode):
    """Finding 1: every connection got a thread that waited for ever. A local account
    (no login needed to connect) held 4000 threads and could exhaust the root service's
    file descriptors. Now each caller has a bounded number of connections, and a
    connection that sends nothing for request_idle_seconds is closed."""
    server.ok("settings_set", key_name="max_connections_per_caller", value="20")
    server.ok("settings_set", key_name="request_idle_seconds", value="2")
    before = _threads(server.proc.pid)
    staller = _stall_as_nobody(server.port, 120, hold=6, mode=mode)
    try:
        time.sleep(1.0)
        held = _threads(server.proc.pid) - before
        assert held <= 20 + 5, f"{held} server threads held by one local account"
        started = time.monotonic()
        assert server.call("apppaccap")["ErrorCode"] == 0  # root is still served
        assert time.monotonic() - started < 5
        out, err = staller.communicate(timeout=60)
    finally:
        if staller.poll() is None:
            staller.kill()
    assert json.loads(out.splitlines()[-1])["closed"] == 120, err
    assert server.alive()
