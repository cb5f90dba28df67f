"""GET /ws: a WebSocket (flask-sock / simple-websocket) pushing flows, packets, capture
counters, usage and alert events.

Who may connect is decided before the upgrade, by the same rules as /ajax: Host and
Origin (app.py's before_request, guard.py: a browser always sends Origin with a WebSocket,
so a page of another site is refused), the caller-uid rule (callers.py), and credentials
from headers (credentials.py: Basic, Bearer, X-AppPacCap-Token, the login cookie). A
caller that must log in and carries none may send the token as its first message,
`{"token": "..."}`, within AUTH_SECONDS; a `token` in the URL is never read. A token is
checked again every RECHECK_SECONDS (a logout or a timed-out session ends the stream); so
are Basic credentials (a new password or a removed user ends the stream).

Limits, as web/server.py's for HTTP: the socket itself counts toward
max_connections_per_caller; each account (root excepted) may hold max_streams_per_caller
sockets; a socket holds at most MAX_SUBSCRIPTIONS subscriptions; a client message is at
most MAX_MESSAGE bytes; the server pings every PING_SECONDS and closes a socket whose
client does not answer.

Backpressure: messages wait in a per-socket queue of at most QUEUE_BYTES / QUEUE_MESSAGES.
The feeds (feeds.py) only read the capture's database and never wait for the consumer;
what does not fit is not queued and counted, and the next message of that subscription is
preceded by `{"type": "dropped", "subscription": n, "dropped": items}`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import sys
import threading
import time

from flask import Response
from flask import g
from flask import request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from apppaccap.errors import AppError
from apppaccap.errors import Busy
from apppaccap.errors import InvalidCredentials
from apppaccap.errors import InvalidPermissions
from apppaccap.errors import Malformed
from apppaccap.errors import NoToken
from apppaccap.errors import Unsupported
from apppaccap.store.faults import io_failure
from apppaccap.web import callers
from apppaccap.web import credentials
from apppaccap.web.feeds import FEEDS
from apppaccap.web.feeds import PacketFeed
from apppaccap.web.wsbuffers import Outbox
from apppaccap.web.wsbuffers import SendAll

log = logging.getLogger(__name__)

AUTH_SECONDS = 10
RECHECK_SECONDS = 5
MAX_SUBSCRIPTIONS = 8
MAX_MESSAGE = 64 << 10
PING_SECONDS = 10
TICK = 0.05
CLOSE_SECONDS = 2  # how long the end of a stream waits for the library's close answer to go out


class _Quota:
    """Open sockets per account (web/server.py counts connections the same way)."""

    def __init__(self):
        self.open: dict = {}
        self.lock = threading.Lock()

    def take(self, key, cap: int) -> bool:
        if key is None:
            return True
        with self.lock:
            if self.open.get(key, 0) >= cap:
                return False
            self.open[key] = self.open.get(key, 0) + 1
            return True

    def give(self, key) -> None:
        if key is None:
            return
        with self.lock:
            left = self.open.get(key, 0) - 1
            if left > 0:
                self.open[key] = left
            else:
                self.open.pop(key, None)


def _text(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


def _error(err: AppError, **extra) -> dict:
    return {"type": "error", "ErrorCode": int(err.code), "message": err.message, **extra}


def _fault(what: str) -> AppError:
    """An unexpected exception (being handled): logged with an id the caller is given."""
    failure = io_failure(sys.exc_info()[1], what)
    if failure is not None:
        return failure
    log_id = secrets.token_hex(4)
    log.exception("/ws %s failed [log id %s]", what, log_id)
    return AppError(f"internal error (log id {log_id}); see the server log")


def register(app, ctx) -> None:
    """Add GET /ws to the app."""
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": PING_SECONDS,
                                         "max_message_size": MAX_MESSAGE}
    sock = Sock(app)
    quota = _Quota()

    @app.before_request
    def ws_door():
        """Refused before the upgrade, with a plain HTTP answer (Host/Origin came first)."""
        if request.path != "/ws":
            return None
        if (request.headers.get("Upgrade") or "").lower() != "websocket":
            return Response("/ws: a WebSocket upgrade is expected\n", 400,
                            mimetype="text/plain")
        uid = request.environ.get(callers.PEER_UID)
        g.ws_uid = uid
        g.ws_user = g.ws_token = None
        g.ws_needs_login = callers.login_required(ctx.config, ctx.config.local_group, uid)
        try:
            site = (request.headers.get("Sec-Fetch-Site") or "").strip().lower()
            if site and site not in ("same-origin", "none"):
                raise InvalidPermissions(f"Sec-Fetch-Site: a {site[:20]} stream is refused")
            if g.ws_needs_login:
                got = credentials.carried(ctx, request.headers, request.cookies, uid,
                                          request.remote_addr or "")
                if got.user is not None:
                    g.ws_user = got.user
                elif got.token:
                    g.ws_user = ctx.logins.check(got.token, uid)
                    g.ws_token = got.token
        except AppError as err:
            return Response(err.message + "\n", 403, mimetype="text/plain")
        key = None if uid in (0, os.geteuid()) else (uid if uid is not None else "unidentified")
        cap = max(1, ctx.settings.get_int("max_streams_per_caller"))
        if not quota.take(key, cap):
            return Response(f"connection: this account already has {cap} streams open "
                            "(setting max_streams_per_caller)\n", 503, mimetype="text/plain")
        g.ws_quota = [key]
        return None

    @app.teardown_request
    def ws_release(_exc):
        """The quota goes back however the request ended (a failed handshake included)."""
        held = g.pop("ws_quota", None)
        if held:
            quota.give(held.pop())

    @sock.route("/ws")
    def ws_route(ws):
        ws.sock = SendAll(ws.sock, ws)
        try:
            Session(ctx, ws, g.ws_uid, g.ws_needs_login, g.ws_user, g.ws_token).run()
        except ConnectionClosed:
            pass  # the client went away: the normal end of a stream
        except Exception:  # noqa: BLE001 - never let Flask write an HTTP 500 into the socket
            log.exception("/ws session failed")
        finally:
            _finish(ws)


def _finish(ws) -> None:
    """Close the stream and shut the socket: flask-sock then hands the WSGI server an empty
    200 response, which it would write after our close frame (browsers report "Invalid
    frame header"); on a shut socket that write fails quietly as a dropped connection."""
    try:
        ws.close()
    except Exception:  # noqa: BLE001 - already closed by the client
        # simple-websocket marks the socket closed before its reader thread writes the
        # answering close frame: let that write happen before the socket is shut
        ws.thread.join(CLOSE_SECONDS)
    try:
        ws.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class Session:
    """One socket: the receive loop (this thread), the feeds' ticks, a sender thread."""

    def __init__(self, ctx, ws, uid, needs_login: bool, user, token):
        self.ctx, self.ws, self.uid = ctx, ws, uid
        self.needs_login = needs_login
        self.authed = not needs_login or user is not None
        self.token = token
        # Basic credentials on the upgrade: no token to check again, so the user's stamp
        # (auth.Users.stamp) is compared instead: a new password or a removed user ends it
        self.user = user if needs_login and user is not None and token is None else None
        self.stamp = ctx.logins.users.stamp(user) if self.user is not None else None
        self.feeds: dict = {}
        self.next_sid = 1
        self.outbox = Outbox()
        self.checked = time.monotonic()

    def run(self) -> None:
        sender = threading.Thread(target=self._send_loop, name="ws-send", daemon=True)
        sender.start()
        try:
            self._loop()
        finally:
            self.outbox.close()
            sender.join(5)

    def _loop(self) -> None:
        opened = time.monotonic()
        while self.ws.connected and not self.outbox.closed:
            text = self.ws.receive(timeout=TICK)
            if text is not None:
                self._handle(text)
            if not self.authed:
                if time.monotonic() - opened > AUTH_SECONDS:
                    self._control(_error(NoToken("token: required; send {\"token\": ...} as "
                                                 "the first message, or log in")))
                    return
                continue
            if (self.token or self.user) and time.monotonic() - self.checked > RECHECK_SECONDS:
                self.checked = time.monotonic()
                try:
                    if self.token:
                        self.ctx.logins.check(self.token, self.uid)
                    elif self.ctx.logins.users.stamp(self.user) != self.stamp:
                        raise InvalidCredentials("username/password: the user's password "
                                                 "changed or the user was removed; open the "
                                                 "stream again")
                except AppError as err:
                    self._control(_error(err))
                    return
            self._tick()

    def _send_loop(self) -> None:
        while True:
            text = self.outbox.get()
            if text is None:
                return
            try:
                self.ws.send(text)
            except Exception:  # noqa: BLE001 - the client is gone or stalled past the timeout
                self.outbox.close()
                return

    def _control(self, obj: dict) -> None:
        if not self.outbox.put([_text(obj)], control=True):
            self.outbox.close()  # not even answers are read: the client is gone

    def _handle(self, text) -> None:
        try:
            msg = json.loads(text)
            if not isinstance(msg, dict):
                raise ValueError
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than json's
            return self._control(_error(Malformed("message: a JSON object expected")))
        try:
            if not self.authed or "token" in msg:  # a page sends it whether or not its
                token = msg.get("token")           # cookie already let the socket in
                if not isinstance(token, str) or not token:
                    raise NoToken("token: required; send {\"token\": ...} first")
                if self.needs_login:
                    self.ctx.logins.check(token, self.uid)
                    self.token = token  # checked again every RECHECK_SECONDS
                self.authed = True
                return self._control({"type": "authenticated"})
            if "ping" in msg:
                return self._control({"type": "pong", "ping": msg["ping"]})
            if "unsubscribe" in msg:
                sid = msg["unsubscribe"]
                if not isinstance(sid, int) or self.feeds.pop(sid, None) is None:
                    raise Malformed(f"unsubscribe: no subscription {sid!s:.20}")
                return self._control({"type": "unsubscribed", "subscription": sid})
            if "subscribe" in msg:
                return self._subscribe(msg)
            raise Malformed("message: expected subscribe, unsubscribe, ping or token")
        except AppError as err:
            self._control(_error(err))
        except Exception:  # noqa: BLE001 - a fault: a log id for the caller, the log the rest
            self._control(_error(_fault("message")))

    def _subscribe(self, msg: dict) -> None:
        kind = msg["subscribe"]
        if not isinstance(kind, str):
            raise Malformed(f"subscribe: one of {', '.join(FEEDS)}")
        if kind not in FEEDS:
            raise Malformed(f"subscribe: one of {', '.join(FEEDS)}")
        if len(self.feeds) >= MAX_SUBSCRIPTIONS:
            raise Busy(f"subscribe: at most {MAX_SUBSCRIPTIONS} subscriptions per socket")
        if kind not in ("usage", "alerts") and self.ctx.captures is None:
            raise Unsupported("capture: the capture engine is not running in this process")
        sid = self.next_sid
        feed = FEEDS[kind](sid, msg, self.ctx)
        self.next_sid += 1
        self.feeds[sid] = feed
        self._control({"type": "subscribed", "subscription": sid, "subscribe": kind,
                       "interval_ms": int(feed.interval * 1000)})

    def _tick(self) -> None:
        now = time.monotonic()
        for sid, feed in list(self.feeds.items()):
            if feed.due > now:
                continue
            feed.due = now + feed.interval
            try:
                messages = feed.poll(self.ctx)
            except Exception as exc:  # noqa: BLE001 - the capture was deleted, a disk fault
                self.feeds.pop(sid, None)
                err = exc if isinstance(exc, AppError) else _fault(f"subscription {sid}")
                self._control(_error(err, subscription=sid))
                continue
            for m in messages:
                self._offer(feed, m)
            if feed.behind:
                feed.due = now  # the rest of its backlog at the next tick
            if isinstance(feed, PacketFeed) and feed.dropped:
                feed.dropped += feed.skip()  # behind: the rest is a gap too, never a backlog
            if feed.ended:
                self.feeds.pop(sid, None)

    def _offer(self, feed, msg: dict) -> None:
        texts = [_text(msg)]
        if feed.dropped:
            texts.insert(0, _text({"type": "dropped", "subscription": feed.sid,
                                   "dropped": feed.dropped}))
        if self.outbox.put(texts, control=msg["type"] == "end"):
            feed.dropped = 0
        else:
            feed.dropped += feed.lost(msg)
