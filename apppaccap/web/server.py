"""The HTTP server in front of the Flask app: who is on the other end, bounded draining,
access-log lines without tokens.

werkzeug's server answers one request per connection (it always sends Connection: close),
so what is learnt about a connection here is learnt per request: nothing outlives the
socket it was learnt from.
"""

from __future__ import annotations

import logging
import re

from werkzeug.serving import WSGIRequestHandler
from werkzeug.serving import make_server

from apppaccap.web.callers import PEER_UID
from apppaccap.web.callers import PeerLookup

# After the app has answered, werkzeug reads whatever body is left "so the client sees the
# answer instead of a reset", 10 MB per read and up to 10 GB. A refused 200 MB upload
# would cost 10 MB of memory per read and minutes of reading: read it in small pieces and
# give up (closing the connection) after DRAIN_BYTES.
DRAIN_CHUNK = 64 << 10
DRAIN_BYTES = 16 << 20

_TOKEN_IN_TEXT = re.compile(r"(?i)((?:\b|_)token(?:=|%3D))[^&\s\"'#;]+")


def redact(text: str) -> str:
    """'GET /x?token=abc&y=1' -> 'GET /x?token=[redacted]&y=1'."""
    return _TOKEN_IN_TEXT.sub(r"\1[redacted]", text)


class RedactTokens(logging.Filter):
    """Tokens never reach a log: scrubbed from werkzeug's access and error lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


class _BoundedDrain:
    """Stands in for the request's input once the app has it: werkzeug's post-answer drain
    then reads at most DRAIN_CHUNK bytes at a time and DRAIN_BYTES in all."""

    def __init__(self, raw):
        self._raw = raw
        self._left = DRAIN_BYTES

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = DRAIN_CHUNK if size is None or size < 0 else min(size, DRAIN_CHUNK)
        data = self._raw.read1(min(want, self._left))
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._raw.close()

    def __getattr__(self, name):
        return getattr(self._raw, name)


class DoorRequestHandler(WSGIRequestHandler):
    """werkzeug's handler plus the kernel's answer to "which account is calling"."""

    def make_environ(self):
        environ = super().make_environ()  # keeps the real input as wsgi.input
        environ[PEER_UID] = self.server.peers.uid(self.connection)
        self.rfile = _BoundedDrain(self.rfile)
        return environ


def make_door_server(host: str, port: int, app):
    """A threaded werkzeug server with the door's request handler and redacted logs."""
    logging.getLogger("werkzeug").addFilter(RedactTokens())
    server = make_server(host, port, app, threaded=True, request_handler=DoorRequestHandler)
    server.peers = PeerLookup()
    return server
