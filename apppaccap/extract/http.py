"""HTTP/1.x message framing on reassembled TCP streams.

Each connection has two :class:`_Half` parsers, one per direction.  A half
learns its role from its first bytes (``HTTP/1.`` = responses, a known method
= requests), so connections picked up mid-stream or with the wrong side taken
for the client still work.  Requests are queued and paired with responses in
order (keep-alive and pipelining); interim 1xx responses are skipped.

Body framing: see http_syntax.py.  Content-Encoding gzip/deflate is decoded
incrementally; the decoded bytes are what gets hashed and spooled.

A body produces a file event when at least one byte of its body section was on
the wire (for chunked bodies that includes the final ``0`` chunk), which is
also when ``tshark --export-objects http`` exports one.  After a gap or a
framing error a half resynchronises at the next segment that starts like an
HTTP message; if whole responses were lost, the server's ACK number tells
which queued request the next response answers.
"""

from __future__ import annotations

from collections import deque

from apppaccap.extract.http_syntax import CCRLF
from apppaccap.extract.http_syntax import CDATA
from apppaccap.extract.http_syntax import CLOSE
from apppaccap.extract.http_syntax import CSIZE
from apppaccap.extract.http_syntax import DEAD
from apppaccap.extract.http_syntax import HDR
from apppaccap.extract.http_syntax import LEN
from apppaccap.extract.http_syntax import MAX_HEADER
from apppaccap.extract.http_syntax import MAX_LINE
from apppaccap.extract.http_syntax import MAX_QUEUED
from apppaccap.extract.http_syntax import REQUEST_LINE
from apppaccap.extract.http_syntax import RESP
from apppaccap.extract.http_syntax import SNIFF_CHUNKS
from apppaccap.extract.http_syntax import STATUS_LINE
from apppaccap.extract.http_syntax import SYNC
from apppaccap.extract.http_syntax import TRAILER
from apppaccap.extract.http_syntax import body_framing
from apppaccap.extract.http_syntax import chunk_size
from apppaccap.extract.http_syntax import message_role
from apppaccap.extract.mime import Decoder
from apppaccap.extract.mime import content_coding
from apppaccap.extract.mime import disposition_filename
from apppaccap.extract.mime import uri_file_name


class HttpConn:
    """HTTP parsing state of one TCP connection (both directions)."""

    def __init__(self, ctx, conn_id: int, client: tuple, on_give_up):
        self.ctx = ctx
        self.conn_id = conn_id
        self.server_addr = f"{client[2]}:{client[3]}"
        self.requests: deque = deque()
        self.identified = False
        self.sniff_left = SNIFF_CHUNKS
        self.on_give_up = on_give_up
        self.client_sink = _Half(self)
        self.server_sink = _Half(self)

    def bind(self, c2s, s2c) -> None:
        """Give each half its reassembler (for stream offsets and ACKs)."""
        self.client_sink.reasm = c2s
        self.server_sink.reasm = s2c

    def give_up(self) -> None:
        """Stop parsing this connection for good."""
        for half in (self.client_sink, self.server_sink):
            half.state = DEAD
            if half.body is not None:
                half.finish_body(False)
        self.on_give_up()

    def close(self) -> None:
        """Both directions have ended; nothing is left open."""
        self.requests.clear()


class _Half:
    """Parser for the messages sent in one direction."""

    __slots__ = ("conn", "role", "state", "hb", "lb", "rem", "body", "dec", "meta",
                 "count", "ts", "reasm", "lost")

    def __init__(self, conn: HttpConn):
        self.conn = conn
        self.role = 0
        self.state = HDR
        self.hb = bytearray()   # partial header block
        self.lb = bytearray()   # partial chunk-size / trailer line
        self.rem = 0            # bytes left in the Content-Length body or chunk
        self.body = None
        self.dec = None
        self.meta = None        # FileEvent fields of the body being framed
        self.count = 0
        self.ts = 0
        self.reasm = None       # the Reassembler feeding this half
        self.lost = False       # framing was lost to a gap since the last message

    # -- reassembler sink interface ---------------------------------------

    def data(self, buf: bytes, ts: int) -> None:
        """Consume in-order stream bytes."""
        st = self.state
        if st == LEN and len(buf) < self.rem:
            self.rem -= len(buf)                  # hot path: middle of a body
            self._raw(buf, ts)
            return
        n = len(buf)
        pos = 0
        while pos < n:
            st = self.state
            if st == LEN or st == CDATA:
                take = min(n - pos, self.rem)
                self._raw(buf if take == n else buf[pos:pos + take], ts)
                self.rem -= take
                pos += take
                if not self.rem:
                    if st == LEN:
                        self._done(True)
                    else:
                        self.state = CCRLF
            elif st == HDR:
                pos = self._headers(buf, pos, ts)
            elif st == CLOSE:
                self._raw(buf[pos:] if pos else buf, ts)
                return
            elif st == SYNC:
                if pos == 0 and self._sniff(buf):
                    self.state = HDR
                    continue
                return
            elif st == DEAD:
                return
            else:
                pos = self._chunk_line(buf, pos, ts)

    def gap(self, n: int) -> None:
        """``n`` bytes of this direction were lost."""
        st = self.state
        if st in (LEN, CDATA):
            g = min(n, self.rem)
            self._lost(g)
            self.rem -= g
            n -= g
            if st == LEN and not self.rem:
                self._done(False)
            elif st == CDATA and not self.rem:
                self.state = CCRLF
            if not n:
                return          # the hole was inside the body: framing intact
            if self.body is not None:
                self._done(False)
        elif st == CLOSE:
            self._lost(n)
            return
        elif st == TRAILER:
            self._done(True)    # all body bytes were seen; only trailers were lost
        elif st in (CSIZE, CCRLF):
            self._done(False)
        if self.state != DEAD:
            self.hb.clear()
            self.state = SYNC
            self.lost = True

    def end(self, fin: bool = False) -> None:
        """The direction is over (FIN reached, or the connection was closed)."""
        st = self.state
        if st == CLOSE:
            self._done(fin)
        elif st == LEN:
            self._done(False, missing=self.rem)
        elif st == TRAILER:
            self._done(True)
        elif st in (CSIZE, CDATA, CCRLF):
            self._done(False, missing=self.rem if st == CDATA else 0)
        self.state = DEAD

    # -- message start and headers ----------------------------------------

    def _sniff(self, buf: bytes) -> bool:
        """Does ``buf`` start like a message of this half's role?"""
        role = message_role(buf)
        conn = self.conn
        if role and (not self.role or role == self.role):
            self.role = role
            conn.identified = True
            return True
        if not conn.identified:
            conn.sniff_left -= 1
            if conn.sniff_left <= 0:
                conn.give_up()
        return False

    def _headers(self, buf: bytes, pos: int, ts: int) -> int:
        hb = self.hb
        if not hb:
            # Tolerate stray CRLFs between messages.
            while pos < len(buf) and buf[pos] in (13, 10):
                pos += 1
            if pos == len(buf):
                return pos
            self.ts = ts
        old = len(hb)
        hb += buf[pos:] if pos else buf
        if not self.role:
            if len(hb) < 8 and b"\n" not in hb:
                return len(buf)         # too little to tell a request from a response
            if not self._sniff(hb):
                hb.clear()
                self.state = SYNC
                return len(buf)
        lo = old - 3 if old > 3 else 0
        i = hb.find(b"\n\r\n", lo)
        j = hb.find(b"\n\n", lo)
        if i < 0 and j < 0:
            if len(hb) > MAX_HEADER:
                hb.clear()
                self.state = SYNC
            return len(buf)
        end = i + 3 if (i >= 0 and (j < 0 or i < j)) else j + 2
        block = bytes(hb[:end])
        hb.clear()
        pos += end - old
        # Stream offset just past the header block (reasm.offset already counts buf).
        end_off = self.reasm.offset - len(buf) + pos if self.reasm else 0
        self._message(block.decode("latin-1"), end_off)
        return pos

    def _message(self, block: str, end_off: int) -> None:
        lines = block.split("\n")
        first = lines[0].rstrip("\r")
        hdrs: dict[str, str] = {}
        last = None
        for line in lines[1:]:
            line = line.rstrip("\r")
            if not line:
                continue
            if line[0] in " \t" and last:
                hdrs[last] += " " + line.strip()   # obsolete line folding
                continue
            name, sep, value = line.partition(":")
            if sep:
                last = name.strip().lower()
                hdrs.setdefault(last, value.strip())
        if self.role == RESP:
            self._response(first, hdrs)
        else:
            self._request(first, hdrs, end_off)

    def _request(self, first: str, hdrs: dict, end_off: int) -> None:
        m = REQUEST_LINE.match(first)
        if not m or m.group(3) is None:
            self.state = SYNC
            return
        method, uri = m.group(1), m.group(2)
        host = hdrs.get("host") or self.conn.server_addr
        q = self.conn.requests
        if len(q) >= MAX_QUEUED:
            q.popleft()
        q.append((method, uri, host, end_off))
        self.count += 1
        framing = body_framing(hdrs, response=False)
        self._start_body(framing, hdrs, "upload", method, uri, host, None)

    def _response(self, first: str, hdrs: dict) -> None:
        m = STATUS_LINE.match(first)
        if not m:
            self.state = SYNC
            return
        status = int(m.group(3))
        conn = self.conn
        if 100 <= status < 200:
            if status == 101:       # protocol switch: no more HTTP on this connection
                conn.give_up()
            return                  # interim response; the request stays queued
        if self.lost:
            self._skip_lost_requests()
        method, uri, host, _ = conn.requests.popleft() if conn.requests else (None,) * 4
        self.count += 1
        if method == "CONNECT" and 200 <= status < 300:
            conn.give_up()          # a tunnel follows
            return
        if method == "HEAD" or status in (204, 304):
            framing = (HDR, 0)
        else:
            framing = body_framing(hdrs, response=True)
        self._start_body(framing, hdrs, "download", method, uri, host, status)

    def _skip_lost_requests(self) -> None:
        """After a gap swallowed whole responses, drop the requests they answered.

        The server's ACK in the segment carrying this response tells how much
        of the request stream it had received: the response answers the last
        request that ends at or before that point (exact unless pipelined).
        """
        self.lost = False
        conn = self.conn
        q = conn.requests
        peer = conn.client_sink if self is conn.server_sink else conn.server_sink
        pr = peer.reasm
        if len(q) < 2 or pr is None or not pr.started or self.reasm is None:
            return
        acked = pr.offset_of(self.reasm.ack)
        while len(q) > 1 and q[1][3] <= acked:
            q.popleft()

    def _start_body(self, framing, hdrs, direction, method, uri, host, status) -> None:
        state, length = framing
        self.state = state
        self.rem = length
        if state == HDR:
            return
        ctype = hdrs.get("content-type", "").split(";")[0].strip().lower() or None
        enc = content_coding(hdrs.get("content-encoding", ""))
        name = disposition_filename(hdrs.get("content-disposition", ""))
        self.meta = dict(
            conn_id=self.conn.conn_id, protocol="http", direction=direction,
            file_name=name or uri_file_name(uri), mime_type=ctype, ts_ns=self.ts, uri=uri,
            host=host, depth=self.count, method=method, status=status,
            declared_size=length if state == LEN else None, content_encoding=enc)
        self.dec = Decoder(enc) if enc in ("gzip", "x-gzip", "deflate") else None

    # -- bodies -------------------------------------------------------------

    def _open(self, ts: int):
        self.meta["ts_ns"] = ts
        self.body = self.conn.ctx.open_body(**self.meta)
        return self.body

    def _raw(self, data, ts: int) -> None:
        body = self.body or self._open(ts)
        if self.dec is None:
            body.write(data)
        else:
            self.dec.feed(data, body)

    def _lost(self, n: int) -> None:
        body = self.body or self._open(self.ts)
        if self.dec is not None:
            self.dec.broken = True
        body.gap(n)

    def _done(self, complete: bool, missing: int = 0) -> None:
        self.finish_body(complete, missing)
        self.state = HDR

    def finish_body(self, complete: bool, missing: int = 0) -> None:
        """Emit the current body (if any byte of it was seen) and reset."""
        body = self.body
        if body is not None:
            if self.dec is not None:
                complete = self.dec.finish(body) and complete
            body.finish(complete, missing)
        self.body = self.dec = self.meta = None

    def _chunk_line(self, buf: bytes, pos: int, ts: int) -> int:
        """Read one chunk-size, chunk-CRLF or trailer line."""
        if self.body is None:
            self._open(ts)      # framing bytes count as body bytes (tshark does too)
        nl = buf.find(b"\n", pos)
        if nl < 0:
            self.lb += buf[pos:]
            if len(self.lb) > MAX_LINE:
                self._framing_error()
            return len(buf)
        lb = self.lb
        lb += buf[pos:nl]
        line = bytes(lb).strip()
        lb.clear()
        st = self.state
        if st == CSIZE:
            if not line:
                return nl + 1   # tolerate blank lines before a chunk size
            size = chunk_size(line)
            if size < 0:
                self._framing_error()
            elif size == 0:
                self.state = TRAILER
            else:
                self.rem = size
                self.state = CDATA
        elif st == CCRLF:
            if line:
                self._framing_error()
            else:
                self.state = CSIZE
        elif not line:          # TRAILER: an empty line ends the message
            self._done(True)
        return nl + 1

    def _framing_error(self) -> None:
        self.lb.clear()
        self.finish_body(False)
        self.state = SYNC
