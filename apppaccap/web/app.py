"""Flask app factory: POST /ajax (the single API door), theme pages and /constants.js."""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import secrets
import socket

from flask import Flask
from flask import Response
from flask import redirect
from flask import request
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import RequestEntityTooLarge

from apppaccap.api import encoded
from apppaccap.api import endpoints  # noqa: F401 - importing registers every action
from apppaccap.api.envelope import envelope
from apppaccap.api.envelope import error_envelope
from apppaccap.api.registry import REGISTRY
from apppaccap.attribution.localaddr import interface_addresses
from apppaccap.errors import AppError
from apppaccap.errors import InvalidPermissions
from apppaccap.errors import Malformed
from apppaccap.errors import NoToken
from apppaccap.store.faults import io_failure
from apppaccap.web import body
from apppaccap.web import callers
from apppaccap.web import credentials
from apppaccap.web import downloads
from apppaccap.web import guard
from apppaccap.web import metrics
from apppaccap.web import pages
from apppaccap.web import stream
from apppaccap.wire import CONSTANTS
from apppaccap.wire import DataType
from apppaccap.wire import ErrorCode

log = logging.getLogger(__name__)

LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}

# The Content-Security-Policy of every response. Scripts and styles only from this server's
# files: no inline script, no inline style attribute (the default theme styles through CSS
# classes and the CSSOM — jQuery .css(), element.style — which CSP does not govern), no
# plugins, no <base>, forms post only here, and no other site may frame a page.
CSP = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self'",
    "connect-src": "'self'",
    "font-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",       # a URL (and anything in it) never leaves the page
    "X-Frame-Options": "DENY",              # frame-ancestors for browsers without CSP 2
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def csp_header(script_nonce: str | None = None) -> str:
    policy = dict(CSP)
    if script_nonce:  # a theme's own inline scripts, marked by pages.add_script_nonce
        policy["script-src"] += f" 'nonce-{script_nonce}'"
    return "; ".join(f"{name} {value}" for name, value in policy.items())
# Where the door takes a token from (first found wins): the body field `token`, this
# header, this cookie. Never the URL: URLs end up in logs, history and Referer headers.
TOKEN_HEADER = callers.TOKEN_HEADER
TOKEN_COOKIE = callers.TOKEN_COOKIE

# Floors under the size settings: a mistyped setting must not lock the door for good.
MIN_REQUEST_BYTES = 64 << 10
MIN_UNAUTHENTICATED_BYTES = 4 << 10
MULTIPART_SLACK = 1 << 20       # boundaries and small fields around an uploaded file
MULTIPART_FIELDS_BYTES = 1 << 20  # non-file multipart fields kept in memory


def dispatch(ctx, name: str, raw: dict) -> dict:
    """Validate, authorise and run one action; always returns an envelope."""
    warnings = None
    try:
        act = REGISTRY.get(name)
        if ctx.login_required and not act.public and ctx.user is None:
            # ctx.user is set only by a checked Basic password (credentials.py)
            ctx = ctx.for_request(user=ctx.logins.check(ctx.token, ctx.caller_uid))
        warnings = REGISTRY.warnings(act, raw)
        kwargs = act.bind(raw)
        value = act.func(ctx, **kwargs)
        return envelope(ErrorCode.SUCCESS, act.returns, 0 if value is None else value, warnings)
    except AppError as err:
        return error_envelope(err, warnings)
    except Exception as exc:  # a fault: the caller gets a log id, the log the traceback
        failure = io_failure(exc, name)
        if failure is not None:  # the disk, not the code: IO_ERROR, one log line
            log.warning("action %r: %s", name, failure.message)
            return error_envelope(failure)
        log_id = secrets.token_hex(4)
        log.exception("action %r failed [log id %s]", name, log_id)
        return envelope(ErrorCode.GENERIC_ERROR, DataType.STRING,
                        f"internal error (log id {log_id}); see the server log")


def _allowed_hosts(ctx) -> set[str]:
    host = ctx.config.host
    names = set(LOCAL_NAMES) | {host, f"[{host}]"}
    if host in ("0.0.0.0", "::"):
        names.add(socket.gethostname())
        names.add(socket.getfqdn())
        # Bound to every address: the machine's own addresses are fine too.
        for ip in interface_addresses():
            names.update({ip, f"[{ip}]"})
    return names


def create_app(ctx) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = None  # the door applies its own limits (body.py)
    allowed = _allowed_hosts(ctx)
    names = guard.host_names(allowed)

    @app.before_request
    def browser_safety():
        """Refuse DNS rebinding (foreign Host) and cross-site requests (guard.py)."""
        host = (request.host or "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in allowed:
            return _refuse(f"Host: {guard.quote(host)} is not this server")
        why = guard.refusal(request.method, request.headers, names, ctx.config.port)
        return _refuse(why) if why else None

    def _refuse(message):
        body = error_envelope(InvalidPermissions(message))
        if request.path == "/ajax":
            return Response(json.dumps(body), 200, mimetype="application/json")
        return Response(message + "\n", 403, mimetype="text/plain")

    @app.post("/ajax")
    def ajax():
        name = None
        try:
            call, name, raw = _door_request(ctx)
            body = dispatch(call, name, raw)
        except AppError as err:  # refused before any action ran
            body = error_envelope(err)
        # encoded.dumps: pages whose JSON SQLite built are copied in as they are
        resp = Response(encoded.dumps(body), 200, mimetype="application/json")
        _token_cookie(resp, name, body)
        return resp

    @app.get("/ajax")
    def ajax_get():
        # Tokens and actions do not belong in URLs (logs, history): the door is POST only.
        body = error_envelope(Malformed("method: use POST for /ajax"))
        return Response(json.dumps(body), 200, mimetype="application/json")

    @app.errorhandler(413)
    @app.errorhandler(400)
    def bad_request(_err):
        body = error_envelope(Malformed("body: the request could not be read"))
        return Response(json.dumps(body), 200, mimetype="application/json")

    downloads.register(app, ctx)
    stream.register(app, ctx)
    metrics.register(app, ctx)

    @app.get("/constants.js")
    def constants_js():
        text = "".join(f"var {k} = {v};\n" for k, v in CONSTANTS.items())
        return Response(text, mimetype="application/javascript")

    @app.after_request
    def security_headers(resp):
        """Every answer of the app, pages, /ajax and errors alike, gets the same headers."""
        for name, value in SECURITY_HEADERS.items():
            resp.headers.setdefault(name, value)
        resp.headers.setdefault("Content-Security-Policy", csp_header())
        return resp

    @app.get("/")
    def root():
        # Only the name of an installed theme goes into Location (never a token, never a
        # stored value that could point a browser at another site).
        theme = pages.safe_theme(ctx.config.themes_dir, ctx.settings.get("theme"))
        return redirect(f"/{theme}/index.html")

    @app.get("/<theme>/")
    def theme_root(theme):
        if not pages.is_theme_name(theme):
            return _not_found()
        return redirect(f"/{theme}/index.html")

    @app.get("/<theme>/<path:path>")
    def page(theme, path):
        root_dir = ctx.config.themes_dir
        if not pages.is_theme_name(theme) or pages.confined(root_dir, theme) is None:
            return _not_found()
        full = pages.confined(os.path.join(root_dir, theme), *path.split("/"))
        if full is None or not os.path.isfile(full):
            return _not_found()
        mime = mimetypes.guess_type(full)[0] or "application/octet-stream"
        with open(full, "rb") as fh:
            data = fh.read()
        if not full.lower().endswith((".html", ".htm")):
            return Response(data, 200, mimetype=mime)
        return _html_page(data.decode("utf-8", "replace"), mime)

    def _html_page(text: str, mime: str) -> Response:
        """A theme page: its inline scripts get a nonce, then the placeholders are filled."""
        nonce = secrets.token_urlsafe(18) if pages.has_inline_script(text) else None
        if nonce:
            text = pages.add_script_nonce(text, nonce)
        params = {k: v for k, v in request.args.items() if k != "token"}
        text = pages.fill_placeholders(text, _live_token(request.args.get("token")), params)
        resp = Response(text.encode(), 200, mimetype=mime)
        resp.headers["Content-Security-Policy"] = csp_header(nonce)
        resp.headers["Cache-Control"] = "no-store"  # it may hold a token: keep it out of caches
        return resp

    def _live_token(token: str | None) -> str | None:
        """The ?token= of a page request if it is a live login's token, else None.

        Only themes using the reference placeholders need it; whatever else is in the
        query string (a stale token, markup) is never echoed into the page.
        """
        if not pages.is_token_shaped(token):
            return None
        try:
            ctx.logins.check(token, request.environ.get(callers.PEER_UID))
        except AppError:
            return None
        return token

    return app


def _not_found() -> Response:
    return Response("not found\n", 404, mimetype="text/plain")


def _door_request(ctx):
    """Who is calling, what they sent: (per-request Context, action name, wire values).

    Order matters: the caller is identified and any header/cookie token checked before
    the body is read, so an unauthenticated caller can only ever make the server read
    max_unauthenticated_bytes, and never an upload.
    """
    uid = request.environ.get(callers.PEER_UID)
    needs_login = callers.login_required(ctx.config, ctx.config.local_group,
                                         uid)
    # Basic / Bearer / header / cookie (credentials.py); read only from callers that must
    # log in, so with authentication off on loopback nothing changes
    got = credentials.carried(ctx, request.headers, request.cookies, uid,
                              request.remote_addr or "") if needs_login \
        else credentials.plain(request.headers, request.cookies)
    header = got.token if got.bearer else None  # sent by the caller itself, not a cookie
    carried = got.token
    known = needs_login and (got.user is not None or ctx.logins.valid(carried, uid))
    raw, files = _read_body(ctx, needs_login and not known, carried, uid)
    name = raw.pop("action", None)
    sent = raw.pop("token", None)
    if isinstance(sent, list):
        sent = sent[0] if sent else None
    sent = sent if isinstance(sent, str) and sent else None
    if guard.looks_like_browser(request.headers) and \
            not ctx.logins.valid(sent or header, uid):
        # A browser that sent neither Origin nor Referer cannot show where it comes from;
        # a token it was given (not a cookie, which it would attach anywhere) can.
        raise InvalidPermissions("Origin: a browser request without Origin or Referer needs "
                                 f"the token in the body or the {TOKEN_HEADER} header")
    if not isinstance(name, str) or not name:
        raise Malformed("action: required")
    call = ctx.for_request(token=sent or carried, remote=request.remote_addr or "",
                           files=files, caller_uid=uid, login_required=needs_login,
                           user=got.user if not sent else None)
    raw.update(files)
    return call, name, raw


def _limit(ctx, key: str, floor: int) -> int:
    return max(floor, ctx.settings.get_int(key))


def _read_body(ctx, unauthenticated: bool, carried, uid):
    """The body as (dict of wire values, dict of uploads), within the size limits."""
    length = body.declared_length(request.headers.get("Content-Length"))
    mimetype = (request.mimetype or "").lower()
    if mimetype == "multipart/form-data":
        return _read_multipart(ctx, unauthenticated, carried, length, uid)
    if unauthenticated:
        key, limit = "max_unauthenticated_bytes", _limit(ctx, "max_unauthenticated_bytes",
                                                          MIN_UNAUTHENTICATED_BYTES)
    else:
        key, limit = "max_request_bytes", _limit(ctx, "max_request_bytes", MIN_REQUEST_BYTES)
    if length is not None and length > limit:
        raise _too_large(key, limit, unauthenticated)
    try:
        data = body.read_limited(request.stream, limit, key)
    except Malformed:
        raise _too_large(key, limit, unauthenticated) from None
    except (HTTPException, OSError, ValueError):
        raise Malformed("body: the request body could not be read (cut short?)") from None
    if mimetype == "application/x-www-form-urlencoded":
        return body.parse_form(data), {}
    if body.looks_like_json(mimetype, data):
        return body.parse_json(data), {}
    return {}, {}


def _too_large(key: str, limit: int, unauthenticated: bool) -> Malformed:
    err = body.too_large(limit, key)
    if unauthenticated:
        err.message += (f"; log in and send the token in the {TOKEN_HEADER} header or the "
                        f"{TOKEN_COOKIE} cookie for larger bodies")
    return err


def _read_multipart(ctx, unauthenticated: bool, carried, length, uid):
    """An upload is authorised before a byte of it is read, then spooled to disk by
    werkzeug (parts over 500 KB go to a temporary file) up to upload_max_bytes."""
    if unauthenticated:
        if carried:
            ctx.logins.check(carried, uid)  # raises: unknown or timed-out token
        raise NoToken(f"token: required; an upload must send it in the {TOKEN_HEADER} header "
                      f"or the {TOKEN_COOKIE} cookie (its body is not read before the "
                      "caller is known)")
    upload = ctx.settings.get_int("upload_max_bytes")
    limit = upload + MULTIPART_SLACK
    message = f"body: larger than the upload limit of {upload} bytes (setting upload_max_bytes)"
    if length is not None and length > limit:
        raise Malformed(message)
    request.max_content_length = limit
    request.max_form_memory_size = MULTIPART_FIELDS_BYTES
    try:
        form, files = request.form, request.files
    except RequestEntityTooLarge:  # also: over 1000 parts or 1 MiB of non-file fields
        raise Malformed(message + ", or too many form fields") from None
    except (HTTPException, OSError, ValueError):
        raise Malformed("body: the multipart body could not be parsed") from None
    raw = body.form_dict((key, value) for key in form for value in form.getlist(key))
    return raw, dict(files.items())


def _token_cookie(resp: Response, name, body: dict) -> None:
    """`login` leaves its token in an HttpOnly cookie (the theme's pages and requests use
    it, no script can read it, no other site can send it); `logout` clears it."""
    if name == "login" and body["ErrorCode"] == ErrorCode.SUCCESS:
        resp.set_cookie(TOKEN_COOKIE, body["ReturnValue"], path="/", httponly=True,
                        samesite="Strict")
    elif name == "logout":
        resp.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="Strict")
