"""Authentication: login, use, logout, timeout, throttling, token in pages."""

import json

import pytest

from apppaccap.errors import InvalidCredentials
from apppaccap.errors import Malformed
from apppaccap.web.app import create_app
from tests.helpers.app import Ajax
from tests.helpers.app import make_ctx


@pytest.fixture
def authed(tmp_path):
    ctx = make_ctx(tmp_path, auth=True)
    ctx.users.add("alice", "s3cret-passw0rd")
    clock = [1000.0]
    ctx.logins.clock = lambda: clock[0]
    yield ctx, Ajax(create_app(ctx).test_client()), clock
    ctx.catalog.close()


def test_flow(authed):
    ctx, ajax, clock = authed
    assert ajax("settings_get_all")["ErrorCode"] == 2          # NO_TOKEN
    assert ajax.ok("apppaccap")["AuthEnabled"] is True          # public
    bad = ajax("login", username="alice", password="wrong")
    assert bad["ErrorCode"] == 9
    clock[0] += 1                                               # the wait after a failure
    token = ajax.ok("login", username="alice", password="s3cret-passw0rd")
    assert len(token) >= 32
    assert ajax("settings_get_all", token=token + "x")["ErrorCode"] == 2
    ajax.token = token
    assert ajax("settings_get_all")["ErrorCode"] == 0
    clock[0] += 1799                                            # idle, but not too long
    assert ajax("settings_get_all")["ErrorCode"] == 0
    clock[0] += 1801
    assert ajax("settings_get_all")["ErrorCode"] == 5           # SESSION_TIMEOUT
    ajax.token = ajax.ok("login", username="alice", password="s3cret-passw0rd")
    ajax.ok("logout")
    assert ajax("settings_get_all")["ErrorCode"] == 2


def test_timeout_follows_setting(authed):
    ctx, ajax, clock = authed
    ajax.token = ajax.ok("login", username="alice", password="s3cret-passw0rd")
    ajax.ok("settings_set", key_name="token_timeout", value="60")
    clock[0] += 61
    assert ajax("settings_get_all")["ErrorCode"] == 5


def test_failed_logins_wait_per_user_and_per_address(authed):
    ctx, ajax, clock = authed
    assert ajax("login", username="alice", password="nope")["ErrorCode"] == 9
    early = ajax("login", username="alice", password="s3cret-passw0rd")  # even the right one
    assert early["ErrorCode"] == 7 and "try again in" in early["ReturnValue"]
    for _ in range(4):
        clock[0] += 10
        assert ajax("login", username="alice", password="nope")["ErrorCode"] == 9
    assert ctx.logins.throttle.delays == [0.25, 0.5, 1.0, 2.0, 4.0]
    clock[0] += 10
    # Same address, another name: the address is still counting.
    assert ajax("login", username="mallory", password="nope")["ErrorCode"] == 9
    assert ctx.logins.throttle.delays[-1] == 8.0
    # Same name from another address: the name is still counting.
    clock[0] += 10
    with pytest.raises(InvalidCredentials):
        ctx.logins.login("mallory", "nope", "192.0.2.77")
    assert ctx.logins.throttle.delays[-1] == 0.5     # mallory's second failure
    clock[0] += 10
    ajax.ok("login", username="alice", password="s3cret-passw0rd")  # success resets
    clock[0] += 10
    ajax("login", username="alice", password="nope")
    assert ctx.logins.throttle.delays[-1] == 0.25


def test_default_page_never_holds_a_token(authed):
    # The default theme has no token placeholder: the token stays out of pages and URLs.
    # (Themes that use the placeholders: tests/test_pages_security.py.)
    ctx, ajax, _ = authed
    token = ajax.ok("login", username="alice", password="s3cret-passw0rd")
    page = ajax.client.get(f"/default/index.html?token={token}").data.decode()
    assert token not in page
    stale = ajax.client.get("/default/index.html?token=forged").data.decode()
    assert "forged" not in stale


def test_passwords_stored_salted(authed):
    ctx, _, _ = authed
    ctx.users.add("bob", "s3cret-passw0rd")
    rows = ctx.catalog.read("SELECT name, salt, hash FROM users ORDER BY name")
    assert rows[0]["hash"] != rows[1]["hash"] and rows[0]["salt"] != rows[1]["salt"]
    assert b"s3cret" not in rows[0]["hash"]


def test_auth_default_by_bind_address():
    from apppaccap.cli.main import _is_loopback
    assert _is_loopback("127.0.0.1") and _is_loopback("::1")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.0.2.1")


def test_names_and_passwords_that_are_not_text_are_refused_at_the_door(authed):
    """A lone surrogate never reaches scrypt or the catalog: the registry refuses it as
    MALFORMED_REQUEST naming the parameter (never a server error)."""
    ctx, ajax, clock = authed
    for fields in ({"username": "\ud800", "password": "whatever-long"},
                   {"username": "alice", "password": "\udfff-not-text"}):
        clock[0] += 10
        resp = ajax.client.post("/ajax", data=json.dumps(dict(fields, action="login")),
                                content_type="application/json")
        body = resp.get_json()
        assert body["ErrorCode"] == 4, fields
        bad = next(k for k, v in fields.items() if not v.isprintable())
        assert body["ReturnValue"].startswith(bad + ":"), body
    with pytest.raises(Malformed, match="password: not valid Unicode"):
        ctx.users.add("bob", "\ud800" * 12)
