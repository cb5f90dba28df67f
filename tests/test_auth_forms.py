"""Authorization: Basic and Bearer on /ajax, downloads and /metrics, with curl against a
real server (authentication on, and off on loopback)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import urllib.request

import pytest

from tests.helpers.server import Server
from tests.helpers.server import add_user

PASSWORD = "correct horse battery"


def curl(*args) -> tuple[int, str]:
    done = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", *args],
                          capture_output=True, text=True, timeout=30)
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def ajax(srv, *args, action="adapter_list") -> dict:
    status, body = curl(*args, "--data", f"action={action}", f"{srv.url}/ajax")
    assert status == 200, body
    return json.loads(body)


@pytest.fixture
def authed(tmp_path):
    srv = Server(tmp_path / "data", None, "--auth", "on", log_dir=tmp_path)
    add_user(srv.data_dir, "alice", PASSWORD)
    yield srv
    srv.stop()


def test_basic_and_bearer_on_ajax(authed):
    assert ajax(authed)["ErrorCode"] == 2  # NO_TOKEN, as before
    assert ajax(authed, "-u", f"alice:{PASSWORD}")["ErrorCode"] == 0
    token = authed.ok("login", username="alice", password=PASSWORD)
    assert ajax(authed, "-H", f"Authorization: Bearer {token}")["ErrorCode"] == 0
    # a bearer token logs itself out; afterwards it is refused
    assert ajax(authed, "-H", f"Authorization: Bearer {token}", action="logout")["ErrorCode"] == 0
    assert ajax(authed, "-H", f"Authorization: Bearer {token}")["ErrorCode"] == 2
    assert ajax(authed, "-H", "Authorization: Digest abc")["ErrorCode"] == 4  # MALFORMED
    assert ajax(authed, "-H", "Authorization: Basic %%%")["ErrorCode"] == 9


def _wait_of(body: dict) -> float:
    assert body["ErrorCode"] == 7, body  # BUSY: "... try again in 0.2 s"
    return float(re.search(r"try again in ([0-9.]+) s", body["ReturnValue"])[1])


def basic(srv, user: str, password: str) -> dict:
    """One /ajax call with Basic credentials, in-process (no curl start-up: timing)."""
    cred = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(f"{srv.url}/ajax", data=b"action=adapter_list",
                                 headers={"Authorization": f"Basic {cred}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_wrong_basic_password_counts_toward_the_login_delay(authed):
    body = ajax(authed, "-u", "alice:wrong password")  # curl -u
    assert body["ErrorCode"] == 9 and "invalid credentials" in body["ReturnValue"]
    time.sleep(0.3)
    # Basic and login share one record: two failures in a row, then a doubled wait
    assert authed.call("login", username="alice", password="wrong again!")["ErrorCode"] == 9
    assert _wait_of(basic(authed, "alice", PASSWORD)) > 0.25  # 0.5 s after the 2nd failure
    assert _wait_of(authed.call("login", username="alice", password=PASSWORD)) > 0
    time.sleep(0.6)
    assert basic(authed, "alice", PASSWORD)["ErrorCode"] == 0
    assert basic(authed, "alice", "wrong third")["ErrorCode"] == 9
    assert 0 < _wait_of(basic(authed, "alice", PASSWORD)) <= 0.25  # a success reset it


def test_downloads_and_metrics_take_basic_and_bearer(authed):
    with open(f"{authed.export_dir}/t.pcapng", "wb") as fh:
        fh.write(b"pcapng bytes")
    url = f"{authed.url}/download/export/t.pcapng"
    assert curl(url)[0] == 403
    assert curl("-u", f"alice:{PASSWORD}", url) == (200, "pcapng bytes")
    token = authed.ok("login", username="alice", password=PASSWORD)
    assert curl("-H", f"Authorization: Bearer {token}", url) == (200, "pcapng bytes")
    assert curl(f"{url}?token={token}")[0] == 403  # never in a link
    assert curl(f"{authed.url}/metrics")[0] == 403
    status, text = curl("-u", f"alice:{PASSWORD}", f"{authed.url}/metrics")
    assert status == 200 and "apppaccap_active_captures" in text
    assert curl("-H", f"Authorization: Bearer {token}", f"{authed.url}/metrics")[0] == 200
    assert curl("-u", "alice:wrong password", f"{authed.url}/metrics")[0] == 403


def test_auth_off_on_loopback_changes_nothing(tmp_path):
    srv = Server(tmp_path / "data", None, log_dir=tmp_path)  # root caller, auth off
    try:
        # no credentials needed, and a wrong password is not even looked at
        assert ajax(srv)["ErrorCode"] == 0
        assert ajax(srv, "-u", "nobody:wrong password")["ErrorCode"] == 0
        assert ajax(srv, "-H", "Authorization: Bearer stale")["ErrorCode"] == 0
        assert curl(f"{srv.url}/metrics")[0] == 200
    finally:
        srv.stop()
