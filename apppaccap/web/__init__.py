"""The web door: the Flask app (app.py) with POST /ajax, theme pages (pages.py) and
/constants.js; the request handler that learns the caller's uid (server.py, callers.py);
Host/Origin checks (guard.py); bounded request bodies (body.py)."""
