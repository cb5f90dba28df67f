"""WebSocket clients for tests of GET /ws: simple-websocket's client (reads all the time on
its own thread) and a raw one whose reading the test controls (wsproto on a socket)."""

from __future__ import annotations

import json
import socket
import time

import simple_websocket
from wsproto import ConnectionType
from wsproto import WSConnection
from wsproto.events import AcceptConnection
from wsproto.events import CloseConnection
from wsproto.events import Ping
from wsproto.events import RejectConnection
from wsproto.events import RejectData
from wsproto.events import Request
from wsproto.events import TextMessage


class Ws:
    """A JSON WebSocket client: send(dict), next(kind) → the next message of that type."""

    def __init__(self, url: str, headers: dict | None = None):
        self.client = simple_websocket.Client.connect(url, headers=headers or {})
        self.seen: list[dict] = []

    def send(self, obj: dict) -> None:
        self.client.send(json.dumps(obj))

    def recv(self, timeout: float = 10.0) -> dict | None:
        text = self.client.receive(timeout=timeout)
        if text is None:
            return None
        msg = json.loads(text)
        self.seen.append(msg)
        return msg

    def next(self, kind: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg is not None and msg.get("type") == kind:
                return msg
        raise AssertionError(f"no {kind} message; got {self.seen[-5:]}")

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - already closed by the server
            pass


def upgrade(port: int, path: str = "/ws", headers: dict | None = None,
            rcvbuf: int | None = None):
    """A raw socket through the handshake: (socket, WSConnection) or (status, body) when
    the server refused the upgrade."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    ws = WSConnection(ConnectionType.CLIENT)
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    sock.sendall(ws.send(Request(host=f"127.0.0.1:{port}", target=path, extra_headers=extra)))
    body = b""
    status = None
    while True:
        data = sock.recv(65536)
        ws.receive_data(data or None)
        for ev in ws.events():
            if isinstance(ev, AcceptConnection):
                return sock, ws
            if isinstance(ev, RejectConnection):
                status = ev.status_code
            if isinstance(ev, RejectData):
                body += ev.data
                if ev.body_finished:
                    sock.close()
                    return status, body.decode("utf-8", "replace")
        if not data:
            sock.close()
            return status, body.decode("utf-8", "replace")


def raw_send(sock, ws, obj: dict) -> None:
    sock.sendall(ws.send(TextMessage(data=json.dumps(obj))))


def raw_read(sock, ws, seconds: float) -> list[dict]:
    """Every message that arrives within `seconds` (answering pings)."""
    out, parts = [], []
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            continue
        if not data:
            break
        ws.receive_data(data)
        for ev in ws.events():
            if isinstance(ev, TextMessage):
                parts.append(ev.data)
                if ev.message_finished:
                    out.append(json.loads("".join(parts)))
                    parts = []
            elif isinstance(ev, Ping):
                sock.sendall(ws.send(ev.response()))
            elif isinstance(ev, CloseConnection):
                return out
    return out
