"""A /ws socket's buffers, both ways (web/stream.py): what the feeds queue for a client that
reads slowly (Outbox, bounded: what does not fit is counted as dropped, never waited for),
and what a client sends faster than its session handles (SendAll.recv stops reading)."""

from __future__ import annotations

import threading
import time
from collections import deque

QUEUE_BYTES = 1 << 20
QUEUE_MESSAGES = 256
# Client messages received and not yet handled, at most (each at most MAX_MESSAGE: 4 MiB a
# socket). simple-websocket's reader thread appends every message it reads to a list without
# a bound, while the session's thread may be busy in a slow tick: past this many the reader
# stops reading, and a client sending faster waits in TCP's buffers (backpressure).
MAX_UNREAD = 64
UNREAD_WAIT = 0.01  # seconds between looks at the list while it is full


class SendAll:
    """simple-websocket writes frames with one socket.send(); on a socket with a timeout
    (web/server.py sets request_idle_seconds) that may write part of a frame. Every write
    goes out whole, one frame at a time (the library's ping thread writes too). Its reader
    thread reads through recv(), which waits while `ws` holds MAX_UNREAD unhandled messages."""

    def __init__(self, sock, ws=None):
        self._sock = sock
        self._lock = threading.Lock()
        self._ws = ws

    def recv(self, n: int) -> bytes:
        ws = self._ws
        while ws is not None and ws.connected and len(ws.input_buffer) >= MAX_UNREAD:
            time.sleep(UNREAD_WAIT)
        return self._sock.recv(n)

    def send(self, data: bytes) -> int:
        with self._lock:
            self._sock.sendall(data)
        return len(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


class Outbox:
    """The bounded queue between the feeds and the socket's sender thread."""

    def __init__(self):
        self.items: deque = deque()
        self.size = 0
        self.cond = threading.Condition()
        self.closed = False

    def put(self, texts: list[str], control: bool = False) -> bool:
        """Queue all of `texts` or none. Control answers may use one extra QUEUE_BYTES."""
        need = sum(len(t) for t in texts)
        limit = QUEUE_BYTES * (2 if control else 1)
        with self.cond:
            if self.items and (self.size + need > limit or
                               len(self.items) + len(texts) > QUEUE_MESSAGES * (2 if control
                                                                                 else 1)):
                return False
            self.items.extend(texts)
            self.size += need
            self.cond.notify()
            return True

    def get(self) -> str | None:
        with self.cond:
            while not self.items and not self.closed:
                self.cond.wait(1.0)
            if not self.items:
                return None
            text = self.items.popleft()
            self.size -= len(text)
            return text

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
