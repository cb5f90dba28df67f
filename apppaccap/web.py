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

    @app.get("/")
    def root():
        theme = ctx.settings.get("theme") or "default"
        token = request.args.get("token")
        return redirect(f"/{theme}/index.html" + (f"?token={token}" if token else ""))

    @app.get("/<theme>/")
    def theme_root(theme):
        return redirect(f"/{theme}/index.html")

    @app.get("/<theme>/<path:path>")
    def page(theme, path):
        root_dir = ctx.config.themes_dir
        if theme.startswith(".") or themes.confined(root_dir, theme) is None:
            return Response("not found\n", 404, mimetype="text/plain")
        full = themes.confined(os.path.join(root_dir, theme), *path.split("/"))
        if full is None or not os.path.isfile(full):
            return Response("not found\n", 404, mimetype="text/plain")
        mime = mimetypes.guess_type(full)[0] or "application/octet-stream"
        with open(full, "rb") as fh:
            data = fh.read()
        if full.lower().endswith((".html", ".htm")):
            token = request.args.get("token")
            if token and ctx.config.auth:
                try:
                    ctx.sessions.check(token)
                except ApiError:
                    token = None  # a stale token is not echoed back into the page
            params = {k: v for k, v in request.args.items() if k != "token"}
            data = themes.fill_placeholders(data.decode("utf-8", "replace"), token,
                                            params).encode()
        resp = Response(data, 200, mimetype=mime)
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        return resp

    return app


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
