"""FTP: follow the control connection, extract files from data connections.

The control connection (port 21) announces where the next data connection
will go: the server's ``227`` (PASV) or ``229`` (EPSV) reply, or the client's
``PORT`` / ``EPRT`` command.  Each announcement becomes a
:class:`DataChannel` registered in the :class:`FtpTracker`; the next TCP
connection to that (address, port) is then treated as FTP data, and the
transfer command that follows the announcement (``RETR`` = download,
``STOR``/``STOU``/``APPE`` = upload) names the file.  Directory listings
(``LIST``/``NLST``/``MLSD``) are not files and are dropped, as tshark does.

Matching is on the port plus either the announced address or one of the
control connection's addresses, because NAT often rewrites the address inside
a ``227`` reply but not the packets.
"""

from __future__ import annotations

import ipaddress
import re
from collections import deque

_HOST_PORT = re.compile(rb"(\d{1,3})" + rb",\s*(\d{1,3})" * 5)     # h1,h2,h3,h4,p1,p2
_EXT_PORT = re.compile(rb"\(([\x21-\x7e])\1\1(\d{1,5})\1\)")
_BYTES = re.compile(rb"\((\d+) bytes\)")
_TRANSFER = {b"RETR": "download", b"STOR": "upload", b"STOU": "upload", b"APPE": "upload"}
_LISTING = {b"LIST", b"NLST", b"MLSD"}
MAX_LINE = 8192
MAX_EXPECTED = 1024      # announced-but-unused data channels remembered


def _norm(ip) -> str:
    """Canonical text form of an address, so '::1' and '0::1' compare equal."""
    if isinstance(ip, bytes):
        ip = ip.decode("ascii", "replace")
    try:
        return ipaddress.ip_address(ip).compressed
    except ValueError:
        return str(ip)


class DataChannel:
    """One announced data connection and what the control channel said about it."""

    __slots__ = ("control_id", "ip", "port", "client_ip", "server_ip", "command", "arg",
                 "declared")

    def __init__(self, control_id, ip, port, client_ip, server_ip):
        self.control_id = control_id
        self.ip = _norm(ip)
        self.port = port
        self.client_ip = client_ip      # control connection endpoints (normalised)
        self.server_ip = server_ip
        self.command = None             # b"RETR", b"STOR", b"LIST", ...
        self.arg = None
        self.declared = None            # size announced by a 150 reply


class FtpTracker:
    """Registry of announced data channels, shared by all connections."""

    def __init__(self):
        self._by_port: dict[int, list[DataChannel]] = {}
        self._order: deque = deque()

    def expect(self, ch: DataChannel) -> None:
        """Remember that a data connection to ``ch.ip:ch.port`` is coming."""
        self._by_port.setdefault(ch.port, []).append(ch)
        self._order.append(ch)
        while len(self._order) > MAX_EXPECTED:
            self._remove(self._order.popleft())

    def match(self, cip: str, cport: int, sip: str, sport: int) -> DataChannel | None:
        """The channel a new connection belongs to, if any (consumed)."""
        for ip, port in ((sip, sport), (cip, cport)):
            chans = self._by_port.get(port)
            if not chans:
                continue
            ip = _norm(ip)
            for ch in reversed(chans):
                if ip in (ch.ip, ch.client_ip, ch.server_ip):
                    self._remove(ch)
                    return ch
        return None

    def _remove(self, ch: DataChannel) -> None:
        chans = self._by_port.get(ch.port)
        if chans and ch in chans:
            chans.remove(ch)
            if not chans:
                del self._by_port[ch.port]
        try:
            self._order.remove(ch)
        except ValueError:
            pass


class _Lines:
    """Reassembler sink that splits a stream into lines."""

    __slots__ = ("cb", "buf")

    def __init__(self, cb):
        self.cb = cb
        self.buf = bytearray()

    def data(self, data: bytes, ts: int) -> None:
        buf = self.buf
        buf += data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            self.cb(bytes(buf[start:nl]).rstrip(b"\r"))
            start = nl + 1
        del buf[:start]
        if len(buf) > MAX_LINE:
            buf.clear()

    def gap(self, n: int) -> None:
        self.buf.clear()

    def end(self, fin: bool = False) -> None:
        self.buf.clear()


class FtpControl:
    """Parses commands and replies of one FTP control connection."""

    def __init__(self, ctx, conn_id: int, client: tuple):
        cip, cport, sip, sport = client
        if cport == 21 and sport != 21:
            cip, sip = sip, cip         # picked up mid-stream from the server side
            self.client_sink, self.server_sink = _Lines(self._reply), _Lines(self._command)
        else:
            self.client_sink, self.server_sink = _Lines(self._command), _Lines(self._reply)
        self.ctx = ctx
        self.conn_id = conn_id
        self.cip = _norm(cip)
        self.sip = _norm(sip)
        self.last: DataChannel | None = None       # most recently announced channel
        self.size_of: dict[str, int] = {}           # SIZE replies, by file name
        self._size_arg = None

    def close(self) -> None:
        """Control connection over."""
        self.last = None

    def _announce(self, ip, port: int) -> None:
        ch = DataChannel(self.conn_id, ip, port, self.cip, self.sip)
        self.ctx.ftp.expect(ch)
        self.last = ch

    def _command(self, line: bytes) -> None:
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        if verb == b"PORT":
            m = _HOST_PORT.search(arg)
            if m:
                h = [int(x) for x in m.groups()]
                self._announce(".".join(map(str, h[:4])), h[4] * 256 + h[5])
        elif verb == b"EPRT":
            parts = arg.strip().split(arg.strip()[:1] or b"|")
            if len(parts) >= 4 and parts[3].isdigit():
                self._announce(parts[2], int(parts[3]))
        elif verb == b"SIZE":
            self._size_arg = arg.decode("utf-8", "replace")
        elif verb in _TRANSFER or verb in _LISTING:
            ch = self.last
            if ch is not None and ch.command is None:
                ch.command = verb
                ch.arg = arg.decode("utf-8", "replace")
                if verb == b"RETR":
                    ch.declared = self.size_of.get(ch.arg)

    def _reply(self, line: bytes) -> None:
        code = line[:3]
        if code == b"227":
            m = _HOST_PORT.search(line, 4)
            if m:
                h = [int(x) for x in m.groups()]
                self._announce(".".join(map(str, h[:4])), h[4] * 256 + h[5])
        elif code == b"229":
            m = _EXT_PORT.search(line)
            if m:
                self._announce(self.sip, int(m.group(2)))
        elif code == b"213" and self._size_arg is not None:
            size = line[4:].strip()
            if size.isdigit() and len(self.size_of) < 1024:
                self.size_of[self._size_arg] = int(size)
            self._size_arg = None
        elif code in (b"150", b"125"):
            m = _BYTES.search(line)
            if m and self.last is not None and self.last.command is not None:
                self.last.declared = int(m.group(1))


class _DataSide:
    """Bytes sent in one direction of an FTP data connection."""

    __slots__ = ("owner", "src_ip", "body")

    def __init__(self, owner, src_ip: str):
        self.owner = owner
        self.src_ip = src_ip
        self.body = None

    def _open(self, ts: int):
        ch = self.owner.ch
        self.body = self.owner.ctx.open_body(
            conn_id=self.owner.conn_id, protocol="ftp-data", direction="download",
            file_name="object", mime_type=None, ts_ns=ts, host=ch.server_ip)
        return self.body

    def data(self, data: bytes, ts: int) -> None:
        (self.body or self._open(ts)).write(data)

    def gap(self, n: int) -> None:
        (self.body or self._open(0)).gap(n)

    def end(self, fin: bool = False) -> None:
        body, self.body = self.body, None
        if body is None:
            return
        ch = self.owner.ch
        if ch.command in _LISTING:
            body.discard()
            return
        direction = _TRANSFER.get(ch.command)
        if direction is None:           # no command seen: judge by who sent the bytes
            direction = "download" if _norm(self.src_ip) == ch.server_ip else "upload"
        complete, missing = fin, 0
        if ch.declared is not None:
            short = ch.declared - body.size - body.missing
            if short > 0:
                complete, missing = False, short
        body.finish(complete, missing, direction=direction, file_name=ch.arg or "object",
                    uri=ch.arg, declared_size=ch.declared)


class FtpData:
    """Handler of a data connection announced on a control connection."""

    def __init__(self, ctx, conn_id: int, ch: DataChannel, client: tuple):
        self.ctx = ctx
        self.conn_id = conn_id
        self.ch = ch
        self.client_sink = _DataSide(self, client[0])
        self.server_sink = _DataSide(self, client[2])

    def close(self) -> None:
        """Both directions have ended (their bodies are already finished)."""
