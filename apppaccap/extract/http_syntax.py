"""HTTP/1.x syntax the stream parser (http.py) works with: methods, start lines, limits,
parser states, and how a message's body is framed.

Body framing follows RFC 9112: no body for HEAD responses, 1xx/204/304, then chunked,
then Content-Length, else (responses only) read until the server closes.
Content-Encoding gzip/x-gzip/deflate (zlib-wrapped or raw) is decoded incrementally.
"""

from __future__ import annotations

import re

_METHODS = frozenset(
    b"GET POST PUT HEAD DELETE OPTIONS PATCH TRACE CONNECT PROPFIND PROPPATCH MKCOL COPY "
    b"MOVE LOCK UNLOCK SEARCH REPORT MKACTIVITY CHECKOUT MERGE ACL BIND UNBIND LINK UNLINK "
    b"MKCALENDAR UPDATE LABEL VERSION-CONTROL BASELINE-CONTROL SUBSCRIBE UNSUBSCRIBE "
    b"NOTIFY PURGE".split())
REQUEST_LINE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) +(\S+)(?: +HTTP/(\d)\.(\d))? *$")
STATUS_LINE = re.compile(r"HTTP/(\d)\.(\d) +(\d{3})\b")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")

MAX_HEADER = 64 << 10   # larger header blocks are not HTTP we can use
MAX_LINE = 4096         # chunk-size and trailer lines
MAX_QUEUED = 256        # unanswered pipelined requests kept for pairing
SNIFF_CHUNKS = 4        # segments examined before a connection is declared non-HTTP

SYNC, HDR, LEN, CSIZE, CDATA, CCRLF, TRAILER, CLOSE, DEAD = range(9)
REQ, RESP = 1, 2


def body_framing(hdrs: dict, response: bool) -> tuple[int, int]:
    """(state, Content-Length) for a message body."""
    te = hdrs.get("transfer-encoding", "").lower()
    if te:
        if te.rsplit(",", 1)[-1].strip() == "chunked":
            return CSIZE, 0
        return (CLOSE, 0) if response else (HDR, 0)
    cl = hdrs.get("content-length")
    if cl is not None:
        try:
            n = int(cl.split(",")[0].strip())
        except ValueError:
            n = -1
        if n > 0:
            return LEN, n
        if n == 0:
            return HDR, 0
    return (CLOSE, 0) if response else (HDR, 0)


def chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (extensions after ';' ignored), -1 if malformed."""
    token = line.split(b";", 1)[0].strip()
    return int(token, 16) if _HEX.fullmatch(token) else -1


def message_role(buf) -> int:
    """RESP if `buf` starts like a response, REQ like a request (a known method), else 0."""
    head = bytes(buf[:24])
    if head.startswith(b"HTTP/1."):
        return RESP
    sp = head.find(b" ")
    return REQ if sp > 2 and head[:sp] in _METHODS else 0
