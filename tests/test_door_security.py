"""The /ajax door against a real server: who may call without a login (the kernel names the
caller's account), the browser boundary (Origin/Referer), the token cookie and header,
tokens kept out of the log, and requests that must not answer HTTP 500.

Clients run as other accounts with setpriv; the server runs as root, as installed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from apppaccap.web.callers import PeerLookup
from tests.helpers import corpus
from tests.helpers.door import NOBODY
from tests.helpers.door import DoorServer
from tests.helpers.door import envelope_of
from tests.helpers.door import unique

PASSWORD = "door-test-passw0rd"


@pytest.fixture
def server(tmp_path):
    s = DoorServer(tmp_path, users=[("opal", PASSWORD)])
    yield s
    s.stop()


def test_test_runs_as_root():
    assert os.geteuid() == 0, "these tests need root (setpriv, a root server)"


# -- who may call ----------------------------------------------------------------------------

def _dangerous(token=None):
    """The calls issue 11 used to get root, plus a plain read."""
    pcap = corpus.path("wellformed/icmp_5_pings.pcap")
    calls = [
        {"action": "action_add", "name": "pwn", "action_type": 1, "path": "/usr/bin/id"},
        {"action": "capture_export", "capture_id": 1, "path": "/etc/cron.d/pwn"},
        {"action": "pcap_ingest_file", "path": pcap},
        {"action": "settings_get_all"},
    ]
    extra = {"token": token} if token else {}
    return [{"fields": dict(c, **extra)} for c in calls]


def test_other_local_account_must_log_in(server):
    before = server.ok("action_list")
    answers = server.as_user(_dangerous())
    assert [a["body"]["ErrorCode"] for a in answers] == [2, 2, 2, 2], answers
    assert server.ok("action_list") == before             # nothing was added
    info, login = server.as_user([
        {"fields": {"action": "apppaccap"}},
        {"fields": {"action": "login", "username": "opal", "password": PASSWORD}}])
    assert info["body"]["ReturnValue"]["AuthEnabled"] is True
    token = login["body"]["ReturnValue"]
    assert login["body"]["ErrorCode"] == 0 and len(token) >= 32
    added, export, ingest, read = server.as_user(_dangerous(token))
    assert added["body"]["ErrorCode"] == 0                # a logged-in user is an admin
    assert export["body"]["ErrorCode"] not in (2, 5)      # past the door (no capture 1)
    assert ingest["body"]["ErrorCode"] not in (2, 5)
    assert read["body"]["ErrorCode"] == 0 and "theme" in read["body"]["ReturnValue"]
    server.ok("action_remove", action_id=added["body"]["ReturnValue"]["ActionId"])


def test_root_needs_no_token(server):
    assert server.call("settings_get_all")["ErrorCode"] == 0
    assert server.ok("apppaccap")["AuthEnabled"] is False
    added = server.ok("action_add", name="ok", action_type=1, path="/usr/bin/true")
    server.ok("action_remove", action_id=added["ActionId"])


@pytest.fixture
def member():
    """A temporary group and a temporary account in it (removed afterwards)."""
    group, user = unique("apcg"), unique("apcu")
    subprocess.run(["groupadd", group], check=True, timeout=60)
    try:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "--no-user-group", "--gid", "nogroup", "--groups", group, user],
                       check=True, timeout=60)
        try:
            out = subprocess.run(["id", "-u", user], capture_output=True, text=True, check=True)
            yield group, int(out.stdout)
        finally:
            subprocess.run(["userdel", user], check=False, timeout=60)
    finally:
        subprocess.run(["groupdel", group], check=False, timeout=60)


def test_member_of_local_group_needs_no_token(server, member, tmp_path):
    group, uid = member
    read = [{"fields": {"action": "settings_get_by_key", "key_name": "theme"}}]
    assert server.as_user(read, uid=uid, gid=NOBODY)[0]["body"]["ErrorCode"] == 2
    # The group is a start-up option: no request can widen who calls without a token.
    refused = server.call("settings_set", key_name="local_group", value=group)
    assert refused["ErrorCode"] == 8 and "--local-group" in refused["ReturnValue"], refused
    grouped = DoorServer(tmp_path, "--local-group", group)
    try:
        # Membership is the account's (supplementary here), whatever groups the process holds.
        answer = grouped.as_user(read, uid=uid, gid=NOBODY)[0]["body"]
        assert answer == {"Version": 1, "ErrorCode": 0, "DataType": 1, "ReturnValue": "default"}
        assert grouped.as_user(read)[0]["body"]["ErrorCode"] == 2     # nobody still is not
    finally:
        grouped.stop()


def test_peer_lookup_names_the_owner_and_never_a_closed_socket():
    """A client that closes its socket before the server looks must not read as root."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    script = ("import socket, sys, time\n"
              f"s = socket.create_connection(('127.0.0.1', {port}))\n"
              "s.sendall(b'x'); sys.stdout.write('sent\\n'); sys.stdout.flush()\n"
              "sys.stdin.readline(); s.close()\n")
    client = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                               "--clear-groups", "/usr/bin/python3", "-c", script],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    peers = PeerLookup()
    try:
        assert client.stdout.readline() == "sent\n"
        conn, _ = listener.accept()
        assert peers.uid(conn) == NOBODY
        client.stdin.write("close\n")
        client.stdin.flush()
        client.wait(20)
        assert peers.uid(conn) is None        # orphaned: the kernel would report uid 0
        conn.close()
    finally:
        peers.close()
        listener.close()
        if client.poll() is None:
            client.kill()


# -- browser boundary ------------------------------------------------------------------------

def _probe(server, value):
    return {"action": "settings_set", "key_name": "door_probe", "value": value}


def _multipart(fields: dict) -> tuple[bytes, str]:
    boundary = "xXdoorXx"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             for k, v in fields.items()]
    return ("".join(parts) + f"--{boundary}--\r\n").encode(), \
        f"multipart/form-data; boundary={boundary}"


def _send(server, fields, kind, headers):
    """POST `fields` as a form, text/plain JSON (what a cross-site form can send) or
    multipart."""
    headers = dict(headers)
    if kind == "form":
        return server.post(fields, headers=headers)
    if kind == "text-json":
        headers["Content-Type"] = "text/plain"
        return server.post(body=json.dumps(fields).encode(), headers=headers)
    body, ctype = _multipart(fields)
    headers["Content-Type"] = ctype
    return server.post(body=body, headers=headers)


def _refusals(port):
    return [
        {"Origin": "null"},
        {"Origin": f"https://127.0.0.1:{port}"},
        {"Origin": "http://127.0.0.1:1"},
        {"Origin": "http://evil.example"},
        {"Origin": f"http://127.0.0.1:{port}.evil.example"},
        {"Origin": f"http://user@127.0.0.1:{port}"},
        {"Origin": f"http://127.0.0.1:{port}/x"},
        {"Origin": "http://[::1"},
        {"Origin": "http://127.0.0.1:abc"},
        {"Origin": ""},
        {"Referer": "http://evil.example/page.html"},
        {"Referer": f"https://127.0.0.1:{port}/default/index.html"},
        {"Referer": f"http://127.0.0.1:{port}@evil.example/"},
        {"Referer": "not a url"},
        {"Sec-Fetch-Site": "cross-site", "Referer": f"http://127.0.0.1:{port}/"},
        {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/60.0"},
    ]


@pytest.mark.parametrize("kind", ["form", "text-json", "multipart"])
def test_cross_site_requests_refused_without_state_change(server, kind):
    server.ok("settings_set", key_name="door_probe", value="old")
    for headers in _refusals(server.port):
        status, body, _ = _send(server, _probe(server, "changed"), kind, headers)
        assert status == 200, (headers, status, body)
        assert body["ErrorCode"] == 8, (headers, body)
        assert server.ok("settings_get_by_key", key_name="door_probe") == "old", headers


def test_same_origin_requests_accepted(server):
    port = server.port
    accepted = [
        {"Origin": f"http://127.0.0.1:{port}"},
        {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"},
        {"Referer": f"http://127.0.0.1:{port}/default/index.html?x=1"},
        {"Sec-Fetch-Site": "same-origin", "Origin": f"http://127.0.0.1:{port}"},
        {"User-Agent": "curl/8.0"},
        {},
    ]
    for n, headers in enumerate(accepted):
        status, body, _ = server.post(_probe(server, f"v{n}"), headers=headers)
        assert body["ErrorCode"] == 0, (headers, body)
        assert server.ok("settings_get_by_key", key_name="door_probe") == f"v{n}"


def test_browser_without_origin_or_referer_needs_a_token(tmp_path):
    s = DoorServer(tmp_path, "--auth", "on", users=[("opal", PASSWORD)])
    try:
        token = s.ok("login", username="opal", password=PASSWORD)
        ua = {"User-Agent": "Mozilla/5.0 (Windows NT 10.0) Trident/7.0"}
        assert s.call("settings_get_all", headers=ua)["ErrorCode"] == 8
        assert s.call("settings_get_all", headers=dict(ua, Cookie=f"apppaccap_token={token}")
                      )["ErrorCode"] == 8            # a cookie is sent by any page: not enough
        assert s.call("settings_get_all", headers=ua, token=token)["ErrorCode"] == 0
        assert s.call("settings_get_all", headers=dict(ua, **{"X-AppPacCap-Token": token})
                      )["ErrorCode"] == 0
    finally:
        s.stop()


# -- the token: body, header, cookie; never the URL; never the log ----------------------------

def test_token_cookie_header_and_not_the_url(tmp_path):
    s = DoorServer(tmp_path, "--auth", "on", users=[("opal", PASSWORD)])
    try:
        status, body, resp = s.post({"action": "login", "username": "opal",
                                     "password": PASSWORD})
        token = body["ReturnValue"]
        cookie = resp.getheader("Set-Cookie")
        assert cookie.startswith(f"apppaccap_token={token};")
        attrs = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= attrs, cookie
        jar = {"Cookie": f"apppaccap_token={token}"}
        assert s.call("settings_get_all", headers=jar)["ErrorCode"] == 0
        assert s.call("settings_get_all",
                      headers={"X-AppPacCap-Token": token})["ErrorCode"] == 0
        _, in_url, _ = s.post({"action": "settings_get_all"}, path=f"/ajax?token={token}")
        assert in_url["ErrorCode"] == 2
        # A stale cookie does not spoil a good token in the body.
        stale = {"Cookie": "apppaccap_token=stale"}
        assert s.call("settings_get_all", headers=stale, token=token)["ErrorCode"] == 0
        _, out, resp = s.post({"action": "logout"}, headers=jar)
        assert out["ErrorCode"] == 0
        cleared = resp.getheader("Set-Cookie")
        assert cleared.startswith("apppaccap_token=;") and "Max-Age=0" in cleared, cleared
        assert s.call("settings_get_all", headers=jar)["ErrorCode"] == 2
        s.raw(f"GET /default/index.html?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
              .encode())
        s.raw(f"GET /?a=1&token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        time.sleep(0.3)
        log = s.log_text()
        assert "token=[redacted]" in log and "/default/index.html" in log
        assert token not in log and PASSWORD not in log
    finally:
        s.stop()


# -- requests that used to answer HTTP 500 -----------------------------------------------------

def test_odd_requests_answer_cleanly(server):
    port = server.port
    host = f"Host: 127.0.0.1:{port}\r\n"
    cases = [
        f"POST /ajax HTTP/1.1\r\n{host}Origin: http://[::1\r\nContent-Length: 0\r\n\r\n",
        f"POST /ajax HTTP/1.1\r\n{host}Origin: http://127.0.0.1:99999999\r\n"
        "Content-Length: 0\r\n\r\n",
        f"POST /ajax HTTP/1.1\r\n{host}Referer: http://[zz\r\nContent-Length: 0\r\n\r\n",
        f"POST /ajax HTTP/1.1\r\n{host}Content-Length: abc\r\n\r\n",
        f"POST /ajax HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        f"POST /ajax HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
        "Content-Length: 10\r\n\r\n{\"a\"",
    ]
    for raw in cases:
        reply = server.raw(raw.encode("latin-1"), timeout=15)
        body = envelope_of(reply)
        assert body["ErrorCode"] in (4, 8), (raw, body)
    for method in ("PUT", "DELETE", "PATCH", "BREW", "OPTIONS"):
        reply = server.raw(f"{method} /ajax HTTP/1.1\r\n{host}Content-Length: 0\r\n\r\n"
                           .encode())
        assert not reply.startswith(b"HTTP/1.1 5"), (method, reply[:200])
    assert "Traceback" not in server.log_text()
    assert server.alive()


# -- the same, from a real browser ---------------------------------------------------------------

ATTACK_PAGE = """<!doctype html><html><body>
<iframe sandbox="allow-forms allow-scripts" srcdoc="
  <form method=post action='{url}/ajax'>
    <input name=action value=settings_set><input name=key_name value=door_probe>
    <input name=value value=pwned-form></form><script>document.forms[0].submit()</script>">
</iframe>
<iframe sandbox="allow-forms allow-scripts" srcdoc="
  <form method=post enctype=text/plain action='{url}/ajax'>
    <input name='{{&quot;action&quot;: &quot;settings_set&quot;, &quot;key_name&quot;: &quot;door_probe&quot;, &quot;value&quot;: &quot;pwned-json&quot;, &quot;x&quot;: &quot;'
           value='&quot;}}'></form><script>document.forms[0].submit()</script>">
</iframe>
<iframe sandbox="allow-forms allow-scripts" srcdoc="
  <form method=post enctype=multipart/form-data action='{url}/ajax'>
    <input name=action value=settings_set><input name=key_name value=door_probe>
    <input name=value value=pwned-multipart></form><script>document.forms[0].submit()</script>">
</iframe>
<script>
fetch('{url}/ajax', {{method: 'POST', mode: 'no-cors',
  headers: {{'Content-Type': 'application/x-www-form-urlencoded'}},
  body: 'action=settings_set&key_name=door_probe&value=pwned-fetch'}});
</script>
</body></html>"""


@pytest.mark.browser
def test_a_foreign_page_in_a_real_browser_cannot_drive_the_door(server, browser):
    import http.server
    import threading

    page_html = ATTACK_PAGE.format(url=server.url).encode()

    class Attacker(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page_html)

        def log_message(self, *args):
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    server.ok("settings_set", key_name="door_probe", value="old")
    posts = server.log_text().count('"POST /ajax')
    page = browser.new_page()
    try:
        page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        deadline = time.monotonic() + 15
        while server.log_text().count('"POST /ajax') < posts + 4 and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.log_text().count('"POST /ajax') >= posts + 4  # all four arrived
        assert server.ok("settings_get_by_key", key_name="door_probe") == "old"
        # The same request from one of the server's own pages goes through.
        page.goto(f"{server.url}/default/index.html")
        status = page.evaluate("""() => fetch('/ajax', {method: 'POST',
            headers: {'Content-Type': 'application/x-www-form-urlencoded'},
            body: 'action=settings_set&key_name=door_probe&value=mine'})
            .then(r => r.json()).then(b => b.ErrorCode)""")
        assert status == 0
        assert server.ok("settings_get_by_key", key_name="door_probe") == "mine"
    finally:
        page.close()
        evil.shutdown()
        evil.server_close()
