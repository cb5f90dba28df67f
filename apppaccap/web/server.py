"""The HTTP server in front of the Flask app: who is on the other end, bounded draining,
access-log lines without tokens.

werkzeug's server sends Connection: close on every answer (its post-answer drain reads
whatever the socket holds, which would eat a kept-alive client's next request). The door
keeps a connection open when the request's body is delimited by one plain Content-Length
(or there is none): the body is read through `_Body`, which never reads past it, so the
drain stops at the next request. Everything else (chunked or doubtful framing, a body left
unread, an answer that failed half-way, a client asking to close) closes as before. Each
request on a kept connection goes through the whole app (token, origin, CSRF, size
limits); what is learnt about the connection (the caller's uid, its place in the
per-caller bound) lives as long as the socket it was learnt from.
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


FAILED = "apppaccap.answer_failed"  # environ key: the app raised (the answer may be cut)


class _Body:
    """A request's body on a kept-alive connection: the socket's stream, never read past
    the declared Content-Length (what follows is the next request)."""

    def __init__(self, raw, length: int):
        self._raw = raw
        self.left = length

    def _take(self, how, size) -> bytes:
        """One call of the stream's `how` (read, read1, readline), capped at what is left."""
        if self.left <= 0:
            return b""
        want = self.left if size is None or size < 0 else min(size, self.left)
        data = how(want)
        self.left -= len(data)
        return data

    def read(self, size: int = -1) -> bytes:
        return self._take(self._raw.read, size)

    def read1(self, size: int = -1) -> bytes:
        return self._take(self._raw.read1, size)

    def readline(self, size: int = -1) -> bytes:
        return self._take(self._raw.readline, size)

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)


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

    # TCP_NODELAY: werkzeug sends an answer's head and body in two writes; with Nagle's
    # algorithm the body waited for the client's (delayed, ~40 ms) ACK of the head, so on
    # a kept-alive connection every small answer took ~45 ms (measured: 1.2 ms without)
    disable_nagle_algorithm = True

    def setup(self):
        # Without a timeout a connection that sends nothing (or half a request) holds its
        # thread for ever; every read now waits at most request_idle_seconds.
        self.timeout = self.server.limit("request_idle_seconds")
        self._access: list = []  # (code, size) of access lines not written yet
        super().setup()

    def make_environ(self):
        environ = super().make_environ()  # keeps the real input as wsgi.input
        environ[PEER_UID] = self.server.peer_uid(self.connection)
        self._body = None
        length = _plain_length(self.headers)
        if length is not None and not self.close_connection:
            self._body = environ["wsgi.input"] = _Body(self.rfile, length)
            self.rfile = _BoundedDrain(self._body)
        else:
            self.close_connection = True
            self.rfile = _BoundedDrain(self.rfile)
        return environ

    def handle_one_request(self):
        raw = self.rfile  # the socket's stream: the next request line is read from it
        try:
            super().handle_one_request()
        finally:
            self.rfile = raw
            self._write_access()

    def log_request(self, code="-", size="-"):
        # werkzeug logs from send_response, before the answer's head is sent: under load
        # (api_load.py) the logging handler's lock and write were ~10 % of the service's
        # lock samples, in the path of every answer. The line is written once the answer
        # has gone (a WebSocket's 101 at once: its request lasts as long as the stream).
        if str(code) == "101":
            super().log_request(code, size)
        else:
            self._access.append((code, size))

    def finish(self):
        self._write_access()  # none left in practice: handle_one_request wrote them
        super().finish()

    def _write_access(self) -> None:
        lines, self._access = self._access, []
        for code, size in lines:
            super().log_request(code, size)

    def run_wsgi(self):
        super().run_wsgi()
        body = getattr(self, "_body", None)
        if body is None or body.left > 0 or self.environ.get(FAILED):
            # a body not read to its end, or an answer cut by a failure: the stream's
            # place is unknown, so no request may follow on it
            self.close_connection = True

    def send_header(self, keyword, value):
        # werkzeug says close on every answer; a kept connection drops that header
        body = getattr(self, "_body", None)
        if (keyword.lower() == "connection" and value.lower() == "close"
                and body is not None and not self.close_connection
                and _finish(body)):
            return
        super().send_header(keyword, value)


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
        super().__init__(host, port, _watched(app), DoorRequestHandler)
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


def _finish(body: _Body) -> bool:
    """Read what is left of a small body the app did not read (a request refused before
    its body: bad origin, no token), so the connection can carry the next request; a
    larger rest is left to the bounded drain, and the connection closes."""
    if body.left > DRAIN_CHUNK:
        return False
    try:
        while body.left > 0 and body.read(body.left):
            pass
    except OSError:
        return False
    return body.left == 0


def _plain_length(headers) -> int | None:
    """The body's length when one plain Content-Length delimits it (0 without a body);
    None when the framing is anything else (chunked, several lengths, not a number)."""
    if headers.get_all("Transfer-Encoding"):
        return None
    lengths = headers.get_all("Content-Length") or []
    if not lengths:
        return 0
    if len(lengths) > 1 or not lengths[0].strip().isdigit():
        return None
    return int(lengths[0].strip())


def _watched(app):
    """The app, with a failure it raises marked in the request's environ (FAILED)."""
    def call(environ, start_response):
        try:
            answer = app(environ, start_response)
        except BaseException:
            environ[FAILED] = True
            raise
        return _WatchedAnswer(answer, environ)
    return call


class _WatchedAnswer:
    def __init__(self, answer, environ):
        self._answer, self._environ = answer, environ

    def __iter__(self):
        try:
            yield from self._answer
        except BaseException:
            self._environ[FAILED] = True
            raise

    def close(self):
        close = getattr(self._answer, "close", None)
        if close is not None:
            close()


def make_door_server(host: str, port: int, app, settings=None):
    """A threaded werkzeug server with the door's request handler and redacted logs;
    `settings` (the service's) gives the connection limits, read as they change."""
    logging.getLogger("werkzeug").addFilter(RedactTokens())
    return DoorServer(host, port, app, settings)
