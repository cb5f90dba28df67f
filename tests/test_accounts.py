"""Accounts against a real server: logins bounded in memory and in guesses per second
(per user, per address, server-wide), the minimum password length, and `--auth off` on a
network address."""

from __future__ import annotations

import http.client
import json
import random
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

from apppaccap.errors import Malformed
from tests.helpers.app import make_ctx
from tests.helpers.door import DoorServer
from tests.helpers.ports import free_port
from tests.helpers.server import ROOT

PASSWORD = "accounts-passw0rd"


@pytest.fixture
def authed(tmp_path):
    s = DoorServer(tmp_path, "--auth", "on", users=[("opal", PASSWORD)])
    yield s
    s.stop()


def _login(port: int, user: str, password: str, source: str = "127.0.0.1") -> dict:
    """One login over its own connection from `source` (any 127.x.y.z is ours)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60,
                                      source_address=(source, 0))
    try:
        body = urllib.parse.urlencode({"action": "login", "username": user,
                                       "password": password})
        conn.request("POST", "/ajax", body=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _rotating_source() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"


def test_150_concurrent_wrong_logins_stay_small(authed):
    before = authed.memory()
    start = threading.Barrier(150)
    answers = []

    def attempt(n):
        start.wait()
        answers.append(_login(authed.port, f"user{n}", "wrong-password", _rotating_source()))

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(150)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    after = authed.memory()
    assert after["VmHWM"] - before["VmHWM"] < 100 << 10, (before, after)  # KiB
    assert len(answers) == 150
    codes = [a["ErrorCode"] for a in answers]
    assert set(codes) <= {7, 9}, answers                   # BUSY or INVALID_CREDENTIALS
    assert codes.count(9) <= 8                               # the rest never reached scrypt
    busy = " ".join(a["ReturnValue"] for a in answers if a["ErrorCode"] == 7)
    assert "try again" in busy
    assert _login(authed.port, "opal", PASSWORD, "127.9.9.9")["ErrorCode"] in (0, 7)
    assert authed.alive()


def _guess_for(port: int, seconds: float, user_of) -> int:
    """Guess wrong passwords from rotating addresses with 8 threads; count the guesses
    the server actually checked (INVALID_CREDENTIALS)."""
    deadline = time.monotonic() + seconds
    checked = []

    def loop():
        while time.monotonic() < deadline:
            answer = _login(port, user_of(), "wrong-password", _rotating_source())
            if answer["ErrorCode"] == 9:
                checked.append(1)
            else:
                assert answer["ErrorCode"] == 7, answer

    threads = [threading.Thread(target=loop) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return len(checked)


def test_rotating_addresses_and_names_get_a_few_guesses_per_second(authed):
    seconds = 4.0
    guesses = _guess_for(authed.port, seconds, lambda: f"u{random.randint(0, 10**9)}")
    assert guesses <= 5 * seconds + 5, guesses       # the server-wide ceiling: 5 per second
    assert guesses >= 1


def test_one_name_from_rotating_addresses_is_throttled(authed):
    guesses = _guess_for(authed.port, 3.0, lambda: "opal")
    # 0.25 + 0.5 + 1 + 2 s of waiting between the first five failures
    assert guesses <= 5, guesses
    time.sleep(8.5)                                  # the longest wait has passed
    assert _login(authed.port, "opal", PASSWORD, "127.3.3.3")["ErrorCode"] == 0


def test_minimum_password_length(tmp_path):
    ctx = make_ctx(tmp_path)
    try:
        with pytest.raises(Malformed, match="at least 10 characters"):
            ctx.users.add("short", "123456789")
        ctx.users.add("long", "1234567890")
        assert ctx.users.check("long", "1234567890")
    finally:
        ctx.catalog.close()


def test_auth_off_on_a_network_address_needs_the_flag(tmp_path):
    port = free_port()
    refused = subprocess.run([sys.executable, "-m", "apppaccap", "serve", "--host", "0.0.0.0",
                              "--port", str(port), "--auth", "off",
                              "--data-dir", str(tmp_path / "d")],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "--i-know-this-is-open" in refused.stderr
    s = DoorServer(tmp_path, "--host", "0.0.0.0", "--auth", "off", "--i-know-this-is-open")
    try:
        assert "AUTHENTICATION IS OFF on 0.0.0.0" in s.log_text()
        answer = s.as_user([{"fields": {"action": "settings_get_all"}}])[0]["body"]
        assert answer["ErrorCode"] == 0                # open, as the admin said
    finally:
        s.stop()
