"""The extraction engine: per-connection dispatch, spooled bodies, events.

The capture pipeline calls :meth:`Extractor.tcp` for every TCP packet of a
capture (live or ingested), :meth:`Extractor.close_conn` when a connection is
over and :meth:`Extractor.flush` at the end.  Each connection gets two
:class:`~apppaccap.extract.reassembly.Reassembler` objects (one per direction)
feeding a protocol handler:

* FTP data connections announced on a control connection (PASV/EPSV/PORT/EPRT),
* FTP control connections (port 21),
* HTTP/1.x, recognised from the first bytes of either direction,
* anything else is dropped after a few segments at a cost of one dict lookup
  per packet.

Each detected file is written incrementally to its own spool file (never held
in memory) and announced to ``sink.file(FileEvent)`` when it is finished.  The
spool file then belongs to the sink (move it into the store, or delete it).

Two totals bound what hostile traffic can make one Extractor hold (docs/SECURITY.md):
its spool (:class:`SpoolBudget`) and the bytes waiting behind holes across all its
connections (``max_held_bytes``).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass

from apppaccap.extract.ftp import FtpControl
from apppaccap.extract.ftp import FtpData
from apppaccap.extract.ftp import FtpTracker
from apppaccap.extract.http import HttpConn
from apppaccap.extract.mime import SNIFF_BYTES
from apppaccap.extract.mime import sniff
from apppaccap.extract.reassembly import Reassembler
from apppaccap.extract.spoolbudget import MAX_CAPTURE_BYTES
from apppaccap.extract.spoolbudget import SPOOL_FILE_COST
from apppaccap.extract.spoolbudget import SpoolBudget

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
_FLUSH_AT = 64 << 10       # spool write / hash granularity (bounds memory per open body)
# Out-of-order bytes of all connections together (counted as per direction): 32 full
# directions; spoofed connections each held ~1 MiB behind a 1-byte hole (1 GB for 1000).
MAX_HELD_BYTES = 32 << 20


@dataclass
class FileEvent:
    """One extracted file (an HTTP message body or an FTP data transfer).

    ``spool_path`` holds exactly ``size`` bytes whose SHA-256 is ``sha256``;
    from the moment the event reaches the sink the file belongs to the sink.
    ``complete`` is False when bytes were lost to gaps, the body ended short
    of its Content-Length (or FTP announced size), a read-until-close body
    ended without a FIN, an encoded body did not decode to its end, or the
    body was cut at ``max_file_bytes`` (``truncated``).
    """

    conn_id: int
    protocol: str            # "http" | "ftp-data"
    direction: str           # "download" (server -> client) | "upload"
    file_name: str           # raw, unsanitised (see safe_name)
    mime_type: str | None    # declared Content-Type, else the sniffed type
    sniffed_mime: str | None
    size: int                # decoded body bytes in the spool file
    complete: bool
    missing_bytes: int       # bytes lost to gaps / short bodies (encoded bytes if encoded)
    spool_path: str
    sha256: str              # of the spool file's content
    ts_ns: int               # time of the first body byte
    uri: str | None = None
    host: str | None = None
    truncated: bool = False  # cut at max_file_bytes
    depth: int = 0           # n-th message of this kind on the connection (1-based)
    method: str | None = None
    status: int | None = None
    declared_size: int | None = None   # Content-Length, or size announced by FTP 150
    content_encoding: str | None = None


class Body:
    """Incrementally spools, hashes and sniffs one file body.

    Data is buffered up to 64 KiB before being hashed and written, which keeps
    per-segment cost low.  Gaps are *not* filled: the spool file holds the
    captured bytes only, and the lost byte count goes into ``missing``.  Bytes
    beyond ``max_bytes`` or beyond the Extractor's ``budget`` are dropped and the
    body is marked ``truncated``.
    """

    __slots__ = ("_emit", "_dir", "max_bytes", "budget", "meta", "size", "missing",
                 "truncated", "_buf", "_head", "_hash", "_path", "_done")

    def __init__(self, emit, spool_dir: str, max_bytes: int, meta: dict,
                 budget: SpoolBudget | None = None):
        self._emit = emit
        self._dir = spool_dir
        self.max_bytes = max_bytes
        self.budget = budget = budget or SpoolBudget()
        budget.used += SPOOL_FILE_COST
        self.meta = meta
        self.size = 0
        self.missing = 0
        self.truncated = False
        self._buf = bytearray()
        self._head = b""
        self._hash = hashlib.sha256()
        self._path = ""
        self._done = False

    def room(self) -> int:
        """Bytes that may still be written before truncation (never negative)."""
        return min(self.max_bytes - self.size, self.budget.room())

    def write(self, data) -> None:
        """Append decoded body bytes (truncating at ``max_bytes`` or the budget)."""
        n = len(data)
        if not n or self.truncated:
            return
        budget = self.budget
        room = self.max_bytes - self.size
        left = budget.room()
        if n > room or n > left:
            if left < room:
                budget.exhausted = True
            data = data[:min(room, left)]
            n = len(data)
            self.truncated = True
        budget.used += n
        if self.size < SNIFF_BYTES:
            self._head += bytes(data[:SNIFF_BYTES - self.size])
        self.size += n
        buf = self._buf
        buf += data
        if len(buf) >= _FLUSH_AT:
            self._spill()

    def gap(self, nbytes: int) -> None:
        """Record ``nbytes`` lost bytes (nothing is written for them)."""
        self.missing += nbytes

    def _spill(self) -> None:
        # The file is reopened for every 64 KiB spill rather than kept open, so
        # thousands of concurrent transfers cannot exhaust file descriptors.
        buf = self._buf
        if not self._path:
            fd, self._path = tempfile.mkstemp(prefix="extract-", dir=self._dir)
        else:
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
        try:
            self._hash.update(buf)
            done = 0
            with memoryview(buf) as view:
                while done < len(buf):
                    done += os.write(fd, view[done:])
        finally:
            os.close(fd)
        buf.clear()

    def finish(self, complete: bool = True, missing: int = 0, **extra) -> FileEvent | None:
        """Close the spool file and announce the finished file to the sink."""
        if self._done:
            return None
        self._done = True
        self.missing += missing
        if self.size or self._path or self.budget.room():
            self._spill()       # also creates the file for empty bodies
        else:  # the spool is spent: a row without a file (60,000 pipelined 1-byte
            self.budget.unspooled += 1  # responses made 60,000 files)
        meta = self.meta
        meta.update(extra)
        sniffed = sniff(self._head)
        ev = FileEvent(
            size=self.size, missing_bytes=self.missing, spool_path=self._path,
            sha256=self._hash.hexdigest(), sniffed_mime=sniffed,
            complete=bool(complete) and not self.missing and not self.truncated,
            truncated=self.truncated, **meta)
        if not ev.mime_type:
            ev.mime_type = sniffed
        self._emit(ev)
        return ev

    def discard(self) -> None:
        """Drop the body without an event (and remove its spool file)."""
        if self._done:
            return
        self._done = True
        if self._path:
            os.unlink(self._path)


class _Conn:
    __slots__ = ("cip", "cport", "c2s", "s2c", "handler", "ignored", "held")

    def __init__(self, cip, cport):
        self.cip = cip
        self.cport = cport
        self.c2s = self.s2c = self.handler = None
        self.ignored = False
        self.held = 0           # its out-of-order bytes counted in Extractor.held


class Extractor:
    """Finds files in TCP traffic and reports them to ``sink.file(ev)``.

    Memory per connection is bounded: at most ``max_stream_buffer`` bytes of
    out-of-order data per direction, plus small parser buffers (HTTP header
    block at most 64 KiB, FTP lines 8 KiB) and a 64 KiB spool buffer per open
    body; all connections together at most ``max_held_bytes`` out of order
    (:meth:`_release_largest`).  Bodies are truncated, marked incomplete, at
    ``max_file_bytes`` or the spool budget (:class:`SpoolBudget`).
    There is no idle timeout here: a connection's state lives
    until :meth:`close_conn` (or :meth:`flush`), so the caller should close
    connections it expires.  Not thread-safe: feed it from one thread.

    The client side of a connection is the sender of the SYN (or the receiver
    of the SYN+ACK), else the sender of the first packet seen; HTTP roles are
    re-derived from the bytes, so a wrong guess there does not matter.
    """

    def __init__(self, sink, *, max_file_bytes: int = 64 << 20,
                 max_stream_buffer: int = 1 << 20, max_held_bytes: int = MAX_HELD_BYTES,
                 max_capture_bytes: int = MAX_CAPTURE_BYTES, spool_dir: str):
        self.sink = sink
        self.max_file_bytes = int(max_file_bytes)
        self.max_stream_buffer = int(max_stream_buffer)
        self.max_held_bytes = int(max_held_bytes)
        self.spool_dir = spool_dir
        os.makedirs(spool_dir, exist_ok=True)
        full = self.max_file_bytes + SPOOL_FILE_COST
        self.budget = SpoolBudget(cap=max(int(max_capture_bytes), full), free=full)
        self._conns: dict[int, _Conn] = {}
        self.ftp = FtpTracker()
        self.files = 0              # FileEvents emitted
        self.missing_bytes = 0      # stream bytes skipped as gaps (closed connections)
        self.held = 0               # out-of-order bytes buffered, all connections
        self.released = 0           # directions made to give up their holes (held bound)

    # -- services for the protocol handlers --------------------------------

    def open_body(self, **meta) -> Body:
        """Start a new spooled body; ``meta`` becomes FileEvent fields."""
        return Body(self._emit, self.spool_dir, self.max_file_bytes, meta, self.budget)

    def _emit(self, ev: FileEvent) -> None:
        self.files += 1
        self.sink.file(ev)

    # -- pipeline interface ------------------------------------------------

    def tcp(self, conn_id: int, ts_ns: int, src: str, sport: int, dst: str, dport: int,
            seq: int, ack: int, flags: int, payload: bytes) -> None:
        """Feed one TCP packet (``payload`` is the TCP payload, maybe empty)."""
        self.budget.seen += len(payload)
        c = self._conns.get(conn_id)
        if c is None:
            c = self._conns[conn_id] = self._new_conn(conn_id, src, sport, dst, dport, flags)
        if c.ignored:
            return
        if flags & RST:
            return              # not stream data (its payload is a diagnostic, if any)
        r = c.c2s if (sport == c.cport and src == c.cip) else c.s2c
        r.segment(seq, payload, ts_ns, flags & SYN, flags & FIN, ack)
        if r.pend_bytes or c.held:      # in-order traffic skips the bookkeeping
            self._account(c)
            if self.held > self.max_held_bytes:
                self._release_largest()

    def close_conn(self, conn_id: int) -> None:
        """Connection over: finish (possibly incomplete) files and forget it."""
        c = self._conns.pop(conn_id, None)
        if c is None or c.ignored:
            return
        # Local references: finishing may make the handler give up on ``c``.
        c2s, s2c, handler = c.c2s, c.s2c, c.handler
        self.held -= c.held
        c.held = 0
        c2s.finish()
        s2c.finish()
        self.missing_bytes += c2s.missing + s2c.missing
        handler.close()

    def stats(self) -> dict:
        """Counters for monitoring (``released``: directions made to skip their holes by
        ``max_held_bytes``; ``spool_full``: the spool budget cut a body)."""
        return {"connections": len(self._conns), "files": self.files,
                "missing_bytes": self.missing_bytes, "held_bytes": self.held,
                "released": self.released, "spool_bytes": self.budget.used,
                "spool_full": self.budget.exhausted, "unspooled": self.budget.unspooled}

    def flush(self) -> None:
        """End of capture: finish every open connection."""
        for conn_id in list(self._conns):
            self.close_conn(conn_id)

    # -- internals ---------------------------------------------------------

    def _account(self, c: _Conn) -> None:
        """Bring ``held`` up to date with what ``c`` buffers now (nothing once ignored)."""
        now = 0 if c.ignored else c.c2s.pend_bytes + c.s2c.pend_bytes
        self.held += now - c.held
        c.held = now

    def _release_largest(self) -> None:
        """Over ``max_held_bytes``: the directions holding the most stop waiting for
        their holes (gaps, as at the per-direction bound) until 3/4 of it is left;
        one sort of the holders pays for a quarter of the bound."""
        low = self.max_held_bytes * 3 // 4
        holders = [(r.pend_bytes, c, r) for c in self._conns.values() if c.held
                   for r in (c.c2s, c.s2c) if r.pend_bytes]
        holders.sort(key=lambda h: h[0], reverse=True)
        for _n, c, r in holders:
            if self.held <= low:
                break
            if not c.ignored:   # an earlier release may have made the handler give up
                r.release()
                self.released += 1
                self._account(c)

    def _new_conn(self, conn_id, src, sport, dst, dport, flags) -> _Conn:
        if flags & SYN and flags & ACK:
            client = (dst, dport, src, sport)    # SYN+ACK comes from the server
        else:
            client = (src, sport, dst, dport)    # SYN, or first packet seen
        c = _Conn(client[0], client[1])
        ch = self.ftp.match(*client)
        if ch is not None:
            h = FtpData(self, conn_id, ch, client)
        elif client[3] == 21 or client[1] == 21:
            h = FtpControl(self, conn_id, client)
        else:
            h = HttpConn(self, conn_id, client, on_give_up=lambda: self._ignore(c))
        c.handler = h
        limit = self.max_stream_buffer
        c.c2s = Reassembler(h.client_sink, limit)
        c.s2c = Reassembler(h.server_sink, limit)
        if isinstance(h, HttpConn):
            h.bind(c.c2s, c.s2c)
        return c

    @staticmethod
    def _ignore(c: _Conn) -> None:
        # Not a protocol we extract from: drop the reassembly state for good.
        c.ignored = True
        c.c2s = c.s2c = c.handler = None


_UNSAFE = re.compile(r'[/\\:*?"<>|]')
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
             *(f"lpt{i}" for i in range(1, 10))}


def safe_name(name, max_bytes: int = 128) -> str:
    """Turn a raw, attacker-controlled file name into one safe path component.

    The result has no path separators, no ``..``, no control or invisible
    format characters (such as right-to-left overrides), no leading dots,
    dashes or tildes, no trailing dots or spaces, is not a Windows device
    name, is at most ``max_bytes`` bytes of UTF-8 (keeping a short extension
    when shortening) and is never empty (``"object"`` is the fallback).
    """
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    # NFKC first, so look-alikes such as U+FF0F (fullwidth solidus) become "/".
    name = unicodedata.normalize("NFKC", str(name or ""))
    name = re.split(r"[/\\]", name)[-1]        # last component, whichever separator
    name = "".join("_" if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")
                   else ch for ch in name)
    name = _UNSAFE.sub("_", name).lstrip(" .-~").rstrip(" .").replace("..", "_")
    if name.split(".")[0].strip().lower() in _RESERVED:
        name = "_" + name
    max_bytes = max(int(max_bytes), 16)
    if len(name.encode("utf-8")) > max_bytes:
        stem, dot, ext = name.rpartition(".")
        if not (dot and stem and len(ext.encode("utf-8")) <= 16):
            stem, ext = name, ""
        room = max_bytes - (len(ext.encode("utf-8")) + 1 if ext else 0)
        stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip(" .")
        name = (f"{stem}.{ext}" if ext else stem).lstrip(" .-~")
    return name or "object"
