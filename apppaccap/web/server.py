"""The HTTP server in front of the Flask app: who is on the other end, bounded draining,
access-log lines without tokens.

werkzeug's server answers one request per connection (it always sends Connection: close),
so what is learnt about a connection here is learnt per request: nothing outlives the
socket it was learnt from.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading

from werkzeug.serving import ThreadedWSGIServer
from werkzeug.serving import WSGIRequestHandler

from apppaccap.api.envelope import error_envelope
from apppaccap.errors import Busy
from apppaccap.settings import DEFAULTS
from apppaccap.web.callers import PEER_UID
from apppaccap.web.callers import PeerLookup

log = logging.getLogger(__name__)

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

    def setup(self):
        # Without a timeout a connection that sends nothing (or half a request) holds its
        # thread for ever; every read now waits at most request_idle_seconds.
        self.timeout = self.server.limit("request_idle_seconds")
        super().setup()

    def make_environ(self):
        environ = super().make_environ()  # keeps the real input as wsgi.input
        environ[PEER_UID] = self.server.peer_uid(self.connection)
        self.rfile = _BoundedDrain(self.rfile)
        return environ


class DoorServer(ThreadedWSGIServer):
    """werkzeug's threaded server with a bound on the connections of each caller.

    Connecting needs no login, and each connection is a thread: one local account opening
    thousands of connections (and sending nothing) used to hold thousands of threads and
    file descriptors of the root service. Now each account (the kernel names it, as for
    the door) holds at most max_connections_per_caller connections at once, callers the
    kernel cannot name share one such quota, and root is never refused. A refused
    connection gets a BUSY envelope and is closed at once, on the accepting thread.
    """

    def __init__(self, host: str, port: int, app, settings=None):
        super().__init__(host, port, app, DoorRequestHandler)
        self.peers = PeerLookup()
        self.settings = settings
        self._open: dict[object, int] = {}
        self._open_lock = threading.Lock()
        self._uids: dict[object, int | None] = {}  # accepted socket -> its caller's uid

    def limit(self, key: str) -> int:
        default = int(DEFAULTS[key])
        if self.settings is None:
            return default
        try:
            return max(1, self.settings.get_int(key))
        except Exception:  # noqa: BLE001 - a catalog fault must not stop the accept loop
            return default

    def peer_uid(self, request) -> int | None:
        """The caller's uid, asked of the kernel once per connection (at accept)."""
        try:
            return self._uids[request]
        except KeyError:
            return self.peers.uid(request)

    def _caller(self, request) -> object | None:
        """The quota a connection counts against; None: not counted (root)."""
        uid = self._uids[request] = self.peers.uid(request)
        if uid is not None and uid in (0, os.geteuid()):
            return None
        return uid if uid is not None else "unidentified"

    def process_request(self, request, client_address):
        caller = self._caller(request)
        if caller is not None:
            cap = self.limit("max_connections_per_caller")
            with self._open_lock:
                if self._open.get(caller, 0) >= cap:
                    self._uids.pop(request, None)
                    return self._refuse(request, cap)
                self._open[caller] = self._open.get(caller, 0) + 1
        thread = threading.Thread(target=self._serve, args=(request, client_address, caller),
                                  daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread can be started: refuse this one, keep accepting
            self._uids.pop(request, None)
            self._release(caller)
            self.shutdown_request(request)

    def _serve(self, request, client_address, caller) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._uids.pop(request, None)
            self._release(caller)

    def _release(self, caller) -> None:
        if caller is None:
            return
        with self._open_lock:
            left = self._open.get(caller, 0) - 1
            if left > 0:
                self._open[caller] = left
            else:
                self._open.pop(caller, None)

    def _refuse(self, request, cap: int) -> None:
        body = json.dumps(error_envelope(Busy(
            f"connection: this account already has {cap} connections open (setting "
            "max_connections_per_caller); close some and try again"))).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            request.setblocking(False)  # never wait on this client in the accept loop
            request.send(head + body)
        except OSError:
            pass
        self.shutdown_request(request)


def make_door_server(host: str, port: int, app, settings=None):
    """A threaded werkzeug server with the door's request handler and redacted logs;
    `settings` (the service's) gives the connection limits, read as they change."""
    logging.getLogger("werkzeug").addFilter(RedactTokens())
    return DoorServer(host, port, app, settings)
