"""An attacker's review of the door (issue 11): weaknesses found after the security work,
each shown on a real server process with real sockets and a real unprivileged client."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.helpers.door import NOBODY
from tests.helpers.door import DoorServer
from tests.helpers.live import wait_for

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
    # the baseline once the service's own background threads (usage accounting) are up
    wait_for(lambda: server.ok("usage_now")["Enabled"], 15, what="usage accounting")
    time.sleep(2.5)
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


# Run as nobody: wrong logins under random names from random 127.x.y.z addresses, with 8
# threads, for the given seconds; prints how many the server checked (INVALID_CREDENTIALS).
SPRAYER = r"""
import http.client, json, random, sys, threading, time, urllib.parse
port, seconds = int(sys.argv[1]), float(sys.argv[2])
deadline, checked = time.monotonic() + seconds, []
def login():
    src = "127.%d.%d.%d" % tuple(random.randint(1, 254) for _ in range(3))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(src, 0))
    body = urllib.parse.urlencode({"action": "login", "username": "u%d" % random.randint(0, 10**9),
                                   "password": "wrong-password"})
    conn.request("POST", "/ajax", body=body,
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    answer = json.loads(conn.getresponse().read())
    conn.close()
    return answer
def loop():
    while time.monotonic() < deadline:
        if login()["ErrorCode"] == 9:
            checked.append(1)
threads = [threading.Thread(target=loop) for _ in range(8)]
[t.start() for t in threads]
[t.join(120) for t in threads]
print(json.dumps({"checked": len(checked)}), flush=True)
"""


def test_a_local_account_cannot_lock_everybody_out_of_login(tmp_path):
    """Finding 2: failed logins are capped server-wide (5 a second) and throttled per
    address, but a local account has all of 127.0.0.0/8: spraying random names from random
    loopback addresses kept the server-wide ceiling full, and every correct login of the
    real user answered BUSY (0 of 44 in 10 s). A local caller is now throttled as its
    account (the kernel names it), which it cannot rotate."""
    server = DoorServer(tmp_path, "--auth", "on", users=[("opal", PASSWORD)])
    try:
        sprayer = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             "/usr/bin/python3", "-c", SPRAYER, str(server.port), "8"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        time.sleep(1.5)  # the spray is under way
        answers = []
        for _ in range(12):
            answers.append(server.call("login", username="opal", password=PASSWORD))
            time.sleep(0.3)
        out, err = sprayer.communicate(timeout=120)
        assert sprayer.returncode == 0, err
        ok = [a for a in answers if a["ErrorCode"] == 0]
        assert len(ok) >= len(answers) // 2, answers
        # and the sprayer still got only a few guesses checked (its account waits)
        assert json.loads(out.splitlines()[-1])["checked"] <= 8, out
    finally:
        server.stop()


def _cookie_thief():
    """Another local service on 127.0.0.1 (any account may run one): records the Cookie
    header of every request. Browsers scope cookies by host, not by port."""
    import http.server
    import threading

    seen = []

    class Thief(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Cookie") or "")
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html><body>hello</body></html>")

        def log_message(self, *args):
            pass

    thief = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Thief)
    threading.Thread(target=thief.serve_forever, daemon=True).start()
    return thief, seen


@pytest.mark.browser
def test_a_token_cookie_carried_to_another_local_port_is_useless_to_its_account(tmp_path):
    """Finding 3: `login` sets the token as a cookie for 127.0.0.1, and a browser sends
    it to every port of 127.0.0.1: an admin who opens any page another local account
    serves there (a dev server, a notebook) hands that account the token, which it then
    replayed in the X-AppPacCap-Token header and got root. (So does a token on a command
    line, `curl -H "X-AppPacCap-Token: ..."`, which every account can read in /proc.) A
    session now belongs to the local account that logged in: nobody else's socket can
    use its token."""
    from playwright.sync_api import sync_playwright

    from tests.helpers import browser as bh

    server = DoorServer(tmp_path, "--auth", "on", users=[("opal", PASSWORD)])
    thief, seen = _cookie_thief()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=bh.CHROMIUM, args=bh.CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(f"{server.url}/default/index.html")
                code = page.evaluate("""(pw) => fetch('/ajax', {method: 'POST',
                    headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                    body: 'action=login&username=opal&password=' + encodeURIComponent(pw)})
                    .then(r => r.json()).then(b => b.ErrorCode)""", PASSWORD)
                assert code == 0
                page.goto(f"http://127.0.0.1:{thief.server_address[1]}/")
            finally:
                browser.close()
        stolen = [c.split("apppaccap_token=", 1)[1].split(";")[0]
                  for c in seen if "apppaccap_token=" in c]
        assert stolen, seen  # the browser did carry it to the other port
        answer = server.as_user([{"fields": {"action": "settings_get_all"},
                                  "headers": {"X-AppPacCap-Token": stolen[0]}},
                                 {"fields": {"action": "settings_get_all",
                                             "token": stolen[0]}}])
        assert [a["body"]["ErrorCode"] for a in answer] == [2, 2], answer  # NO_TOKEN
        # the browser's own account (root here) still uses its session
        assert server.call("settings_get_all", headers={"X-AppPacCap-Token": stolen[0]}
                           )["ErrorCode"] == 0
    finally:
        thief.shutdown()
        thief.server_close()
        server.stop()


def test_a_token_on_a_command_line_is_useless_to_other_accounts(tmp_path):
    """Finding 3 without a browser: root logs in (`curl -d action=login`), then uses the
    token on a command line, where every account reads it (/proc/<pid>/cmdline)."""
    server = DoorServer(tmp_path, "--auth", "on", users=[("opal", PASSWORD)])
    try:
        token = server.ok("login", username="opal", password=PASSWORD)
        answer = server.as_user([{"fields": {"action": "capture_list_active"},
                                  "headers": {"X-AppPacCap-Token": token}},
                                 {"fields": {"action": "capture_list_active", "token": token}},
                                 {"fields": {"action": "capture_list_active"},
                                  "headers": {"Cookie": f"apppaccap_token={token}"}}])
        assert [a["body"]["ErrorCode"] for a in answer] == [2, 2, 2], answer
        assert server.call("capture_list_active", token=token)["ErrorCode"] == 0
        # an account's own login works for it, and its token is not root's
        mine = server.as_user([{"fields": {"action": "login", "username": "opal",
                                           "password": PASSWORD}}])[0]["body"]["ReturnValue"]
        assert server.as_user([{"fields": {"action": "capture_list_active", "token": mine}}]
                              )[0]["body"]["ErrorCode"] == 0
        assert server.call("capture_list_active", token=mine)["ErrorCode"] == 2
    finally:
        server.stop()


# Run as nobody: wrong passwords for one user name, as often as the server checks them,
# for the given seconds.
NAME_LOCKER = r"""
import http.client, json, sys, time, urllib.parse
port, name, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/ajax", body=urllib.parse.urlencode(
        {"action": "login", "username": name, "password": "wrong-password"}),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    conn.getresponse().read()
    conn.close()
    time.sleep(0.02)
"""


def test_a_local_account_cannot_lock_one_user_out(tmp_path):
    """Finding 4: failed logins slow down their user name for everybody, so one wrong
    password for "opal" every 8 s from any local account kept opal out for good (0 of 49
    correct logins in 10 s). A caller the kernel names (a local account) with no failed
    login of its own is not held back by the failures of others; the name's wait still
    applies to callers from other hosts and to accounts that have failed themselves."""
    server = DoorServer(tmp_path, "--auth", "on", users=[("opal", PASSWORD)])
    try:
        locker = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             "/usr/bin/python3", "-c", NAME_LOCKER, str(server.port), "opal", "13"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        time.sleep(8.0)  # the waits have grown to their longest (8 s) by now
        answers = []
        for _ in range(8):
            answers.append(server.call("login", username="opal", password=PASSWORD))
            time.sleep(0.4)
        _, err = locker.communicate(timeout=60)
        assert locker.returncode == 0, err
        ok = [a for a in answers if a["ErrorCode"] == 0]
        assert len(ok) >= len(answers) // 2, answers
    finally:
        server.stop()
