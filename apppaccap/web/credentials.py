"""What a request carries to prove who it is, in headers: HTTP Basic, a Bearer token, the
X-AppPacCap-Token header or the login cookie (docs/SECURITY.md, "Authentication forms").

Shared by /ajax (app.py), /ws (stream.py), /download/... (downloads.py) and /metrics
(metrics.py). Never the URL: a `token` query parameter is not read here.

* `Authorization: Basic` is checked against the same users as `login`, through the same
  pool and throttle (auth.Logins.verify), so a failure counts toward the same doubling
  delay; it makes no token (nothing to leak, nothing left behind). The server never sends
  `WWW-Authenticate`, so a browser never asks for, caches or replays Basic credentials —
  they remain a script's way in and cannot become an ambient credential like a cookie.
* `Authorization: Bearer <token>` is a token from `login`, owned by the caller's account
  exactly as a token in the body is (auth.py).
* With authentication not required for this caller (loopback, auth off, root or the local
  group) none of it is looked at: nothing changes for those callers.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from apppaccap.errors import InvalidCredentials
from apppaccap.errors import InvalidPermissions
from apppaccap.errors import Malformed
from apppaccap.web import callers

TOKEN_HEADER = callers.TOKEN_HEADER
TOKEN_COOKIE = callers.TOKEN_COOKIE
MAX_AUTHORIZATION = 1024  # a user name (64) and a password fit many times over


@dataclass
class Carried:
    """Credentials from the headers: a token (Bearer, header, cookie; first found), or a
    user whose Basic password was checked, or neither."""

    token: str | None = None
    user: str | None = None
    bearer: bool = False  # the token came from Authorization (not an ambient cookie)


def throttle_source(uid, remote: str) -> str:
    """Whom a failed password slows down: as api/login.py (a local account, else the
    address), so Basic and `login` failures share one record."""
    return f"uid {uid}" if uid is not None else remote


def authorization(headers) -> tuple[str, str] | None:
    """(scheme in lower case, credentials) of an Authorization header, or None."""
    value = headers.get("Authorization")
    if value is None:
        return None
    if len(value) > MAX_AUTHORIZATION:
        raise Malformed("Authorization: header too long")
    scheme, _, rest = value.strip().partition(" ")
    return scheme.lower(), rest.strip()


def basic_pair(credentials: str) -> tuple[str, str]:
    """user, password of Basic credentials (RFC 7617: base64 of user:password, UTF-8)."""
    try:
        text = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidCredentials("Authorization: Basic credentials are not base64 of "
                                 "user:password") from None
    name, sep, password = text.partition(":")
    if not sep or not name:
        raise InvalidCredentials("Authorization: Basic credentials must be user:password")
    return name, password


def carried(ctx, headers, cookies, uid, remote: str) -> Carried:
    """The credentials of a request's headers; Basic is checked here (raises
    INVALID_CREDENTIALS, or BUSY while a delay runs). Call only for callers that must log
    in: for the others nothing is read."""
    auth = authorization(headers)
    if auth is not None and auth[0] == "basic":
        name, password = basic_pair(auth[1])
        return Carried(user=ctx.logins.verify(name, password, throttle_source(uid, remote),
                                              uid))
    if auth is not None and auth[0] == "bearer" and auth[1]:
        return Carried(token=auth[1], bearer=True)
    if auth is not None:
        raise Malformed("Authorization: use Basic or Bearer")
    return plain(headers, cookies)


def plain(headers, cookies) -> Carried:
    """The token of the X-AppPacCap-Token header or else the login cookie; no Basic check
    (for callers that need no login, whose Authorization header is not looked at)."""
    token = headers.get(TOKEN_HEADER) or None
    return Carried(token=token or cookies.get(TOKEN_COOKIE) or None, bearer=bool(token))


def check_get(ctx, request, *, url_token_refused: bool = True) -> str | None:
    """The /ajax rules for a GET door (downloads, /metrics, /ws): no cross-site
    Sec-Fetch-Site, never a token in the URL, and the caller-uid rule; returns the user
    (None when this caller needs no login). Raises NO_TOKEN, SESSION_TIMEOUT,
    INVALID_CREDENTIALS or INVALID_PERMISSIONS."""
    site = (request.headers.get("Sec-Fetch-Site") or "").strip().lower()
    if site and site not in ("same-origin", "none"):
        raise InvalidPermissions(f"Sec-Fetch-Site: a {site[:20]} request is refused")
    if url_token_refused and "token" in request.args:
        raise InvalidPermissions("token: never in a link (it would end up in logs and "
                                 "history); send Authorization: Bearer, the "
                                 f"{TOKEN_HEADER} header or the {TOKEN_COOKIE} cookie")
    uid = request.environ.get(callers.PEER_UID)
    if not callers.login_required(ctx.config, ctx.config.local_group, uid):
        return None
    got = carried(ctx, request.headers, request.cookies, uid, request.remote_addr or "")
    if got.user is not None:
        return got.user
    return ctx.logins.check(got.token, uid)  # raises NO_TOKEN / SESSION_TIMEOUT
