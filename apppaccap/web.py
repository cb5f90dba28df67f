"""Flask app factory: POST /ajax (the single API door), theme pages and /constants.js."""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import secrets

from flask import Flask
from flask import Response
from flask import redirect
from flask import request

from apppaccap import themes
from apppaccap.api import actions  # noqa: F401 - importing registers every action
from apppaccap.api.envelope import CONSTANTS
from apppaccap.api.envelope import ApiError
from apppaccap.api.envelope import InvalidPermissions
from apppaccap.api.envelope import Malformed
from apppaccap.api.envelope import envelope
from apppaccap.api.envelope import error_envelope
from apppaccap.api.registry import REGISTRY
from apppaccap.store.faults import io_failure

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
    if script_nonce:  # a theme's own inline scripts, marked by themes.add_script_nonce
        policy["script-src"] += f" 'nonce-{script_nonce}'"
    return "; ".join(f"{name} {value}" for name, value in policy.items())


def dispatch(ctx, name: str, raw: dict) -> dict:
    """Validate, authorise and run one action; always returns an envelope."""
    try:
        act = REGISTRY.get(name)
        if ctx.config.auth and not act.public:
            ctx = ctx.for_request(user=ctx.sessions.check(ctx.token))
        kwargs = act.bind(raw)
        value = act.func(ctx, **kwargs)
        return envelope(0, act.returns, 0 if value is None else value)
    except ApiError as err:
        return error_envelope(err)
    except Exception as exc:  # a fault: the caller gets a log id, the log the traceback
        failure = io_failure(exc, name)
        if failure is not None:  # the disk, not the code: IO_ERROR, one log line
            log.warning("action %r: %s", name, failure.message)
            return error_envelope(failure)
        log_id = secrets.token_hex(4)
        log.exception("action %r failed [log id %s]", name, log_id)
        return envelope(1, 1, f"internal error (log id {log_id}); see the server log")


def _allowed_hosts(ctx) -> set[str]:
    host = ctx.config.host
    names = set(LOCAL_NAMES) | {host, f"[{host}]"}
    if host in ("0.0.0.0", "::"):
        import socket
        names.add(socket.gethostname())
        names.add(socket.getfqdn())
        # Bound to every address: the machine's own addresses are fine too.
        from apppaccap.capture.localaddr import interface_addresses
        for ip in interface_addresses():
            names.update({ip, f"[{ip}]"})
    return names


def create_app(ctx) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = None  # uploads are checked against the setting instead
    allowed = _allowed_hosts(ctx)

    @app.before_request
    def browser_safety():
        """Refuse DNS-rebinding (foreign Host) and cross-site requests (foreign Origin)."""
        host = (request.host or "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in allowed:
            return _refuse(f"Host: {host[:80]!r} is not this server")
        origin = request.headers.get("Origin")
        if origin and origin != "null":
            from urllib.parse import urlsplit
            o = urlsplit(origin)
            if (o.hostname or "") not in {a.strip("[]") for a in allowed} or \
                    (o.port or (443 if o.scheme == "https" else 80)) != ctx.config.port:
                return _refuse(f"Origin: cross-site request from {origin[:80]!r} refused")
        return None

    def _refuse(message):
        body = error_envelope(InvalidPermissions(message))
        if request.path == "/ajax":
            return Response(json.dumps(body), 200, mimetype="application/json")
        return Response(message + "\n", 403, mimetype="text/plain")

    @app.post("/ajax")
    def ajax():
        raw, files = _parse_body()
        if isinstance(raw, ApiError):
            body = error_envelope(raw)
        else:
            name = raw.pop("action", None)
            token = raw.pop("token", None) or request.args.get("token")
            if isinstance(token, list):
                token = token[0] if token else None
            if not isinstance(name, str) or not name:
                body = error_envelope(Malformed("action: required"))
            else:
                call = ctx.for_request(token=token if isinstance(token, str) else None,
                                       remote=request.remote_addr or "", files=files)
                raw.update(files)
                body = dispatch(call, name, raw)
        return Response(json.dumps(body, default=str), 200, mimetype="application/json")

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
        theme = themes.safe_theme(ctx.config.themes_dir, ctx.settings.get("theme"))
        return redirect(f"/{theme}/index.html")

    @app.get("/<theme>/")
    def theme_root(theme):
        if not themes.is_theme_name(theme):
            return _not_found()
        return redirect(f"/{theme}/index.html")

    @app.get("/<theme>/<path:path>")
    def page(theme, path):
        root_dir = ctx.config.themes_dir
        if not themes.is_theme_name(theme) or themes.confined(root_dir, theme) is None:
            return _not_found()
        full = themes.confined(os.path.join(root_dir, theme), *path.split("/"))
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
        nonce = secrets.token_urlsafe(18) if themes.has_inline_script(text) else None
        if nonce:
            text = themes.add_script_nonce(text, nonce)
        params = {k: v for k, v in request.args.items() if k != "token"}
        text = themes.fill_placeholders(text, _live_token(request.args.get("token")), params)
        resp = Response(text.encode(), 200, mimetype=mime)
        resp.headers["Content-Security-Policy"] = csp_header(nonce)
        resp.headers["Cache-Control"] = "no-store"  # it may hold a token: keep it out of caches
        return resp

    def _live_token(token: str | None) -> str | None:
        """The ?token= of a page request if it is a live session's token, else None.

        Only themes using the reference placeholders need it; whatever else is in the
        query string (a stale token, markup) is never echoed into the page.
        """
        if not themes.is_token_shaped(token):
            return None
        try:
            ctx.sessions.check(token)
        except ApiError:
            return None
        return token

    return app


def _not_found() -> Response:
    return Response("not found\n", 404, mimetype="text/plain")


def _parse_body():
    """Form (urlencoded or multipart) or JSON body → (dict of wire values, dict of uploads)."""
    files = {k: v for k, v in request.files.items()}
    ctype = (request.mimetype or "").lower()
    try:
        if ctype == "application/json" or (not request.form and request.data[:1] in (b"{",)):
            data = json.loads(request.get_data(cache=False) or b"{}")
            if not isinstance(data, dict):
                return Malformed("body: JSON body must be an object"), {}
            return data, files
        raw = {}
        for key in request.form:
            values = request.form.getlist(key)
            raw[key[:-2] if key.endswith("[]") else key] = values if len(values) > 1 or \
                key.endswith("[]") else values[0]
        return raw, files
    except (ValueError, UnicodeDecodeError) as exc:
        return Malformed(f"body: cannot parse request body ({str(exc)[:80]})"), {}
