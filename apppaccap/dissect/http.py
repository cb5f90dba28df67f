"""HTTP/1.x request and response heads, read from one TCP segment (no reassembly).

What Wireshark 4 calls a request (known method, then URI and version) or a response
("HTTP/x.y code phrase"), and the header lines that follow in the same segment. Pure
functions that never raise on hostile input.
"""

from __future__ import annotations

# Wireshark's list of request methods (packet-http.c is_http_request_or_reply), HTTP and
# the WebDAV/UPnP extensions it knows.
METHODS = frozenset(
    b"GET POST HEAD PUT DELETE OPTIONS TRACE CONNECT PATCH PROPFIND PROPPATCH MKCOL COPY MOVE "
    b"LOCK UNLOCK SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE M-SEARCH POLL BMOVE BCOPY BDELETE "
    b"BPROPFIND BPROPPATCH MKACTIVITY MKWORKSPACE CHECKIN CHECKOUT UNCHECKOUT REPORT LABEL "
    b"MERGE ORDERPATCH VERSION-CONTROL BASELINE-CONTROL UPDATE ACL RPC_IN_DATA RPC_OUT_DATA "
    b"SSTP_DUPLEX_POST".split())
# TCP ports Wireshark 4 hands to HTTP by default (http.tcp.port); on other ports only a
# segment that starts with a request or response line is HTTP (its heuristic).
TCP_PORTS = frozenset((80, 3128, 3132, 5985, 8080, 8088, 11371, 1900, 2869, 2710))
MAX_HEAD = 65536  # bytes of a segment looked at for the head


class Head:
    """The first line and headers of a request or response in one segment."""

    __slots__ = ("method", "uri", "version", "code", "phrase", "headers")

    def __init__(self):
        self.method = self.uri = self.version = self.phrase = None
        self.code = None
        self.headers: list[tuple[str, str]] = []

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def header(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive)."""
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def first_line(self) -> str:
        if self.is_request:
            return f"{self.method} {self.uri} {self.version}"
        return f"{self.version} {self.code} {self.phrase}".rstrip()


def _text(b: bytes) -> str:
    return b.decode("latin-1")


def first_line(payload) -> Head | None:
    """The request or response line at the start of `payload`, or None."""
    head = bytes(payload[:MAX_HEAD])
    end = head.find(b"\n")
    line = head if end < 0 else head[:end]
    line = line.rstrip(b"\r")
    if line.startswith(b"HTTP/"):
        parts = line.split(b" ", 2)
        if len(parts) < 2 or len(parts[0]) < 8 or not parts[1].isdigit() or len(parts[1]) != 3:
            return None
        h = Head()
        h.version, h.code = _text(parts[0]), int(parts[1])
        h.phrase = _text(parts[2]) if len(parts) > 2 else ""
        return h
    sp = line.find(b" ")
    if sp <= 0 or line[:sp] not in METHODS:
        return None
    rest = line[sp + 1:]
    sp2 = rest.rfind(b" ")
    if sp2 < 0 or not rest[sp2 + 1:].startswith(b"HTTP/"):
        return None
    h = Head()
    h.method, h.uri, h.version = _text(line[:sp]), _text(rest[:sp2]), _text(rest[sp2 + 1:])
    return h


def parse(payload) -> Head | None:
    """First line and the header lines after it (up to a blank line or the segment's end)."""
    h = first_line(payload)
    if h is None:
        return None
    head = bytes(payload[:MAX_HEAD])
    lines = head.split(b"\n")
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if not line:
            break
        name, colon, value = line.partition(b":")
        if colon and name and b" " not in name:
            h.headers.append((_text(name).lower(), _text(value).strip()))
    return h


def is_http(sport: int, dport: int, payload) -> bool:
    """tshark's `http` on a TCP segment with data: a registered port, or a head at its start."""
    if not payload:
        return False
    return sport in TCP_PORTS or dport in TCP_PORTS or first_line(payload) is not None


def info(payload) -> str:
    """Wireshark's Info for a head: "GET /path HTTP/1.1" or "HTTP/1.1 200 OK"; "" if none."""
    h = first_line(payload)
    return h.first_line() if h is not None else ""
