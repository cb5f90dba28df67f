"""File extraction wired into the product: capture → Extractor → EXTRACTSTREAM rows.

Storage (the decision behind the extract_* actions):

* While the setting ``extract_enabled`` is "1" when a live capture or an ingest
  *starts*, :func:`attach` hooks an :class:`~apppaccap.extract.engine.Extractor`
  to its Recorder (``recorder.on_tcp``).  Changing the flag does not touch captures
  that are already running.
* Every finished file (a FileEvent) becomes one row of the capture database's
  ``extract_streams`` table (its id is the StreamId), and its decoded body stays
  in the spool file the engine wrote, under ``<data-dir>/extract-spool/<capture_id>/``.
  The spool is the capture's own data: it lives until the capture is deleted
  (:func:`forget_capture`, called by ``delete_capture_files``).
* ``extract_file_write`` copies a spooled body to ``<data-dir>/extracted/<capture_id>/``
  under a sanitised, unique name and records it in the catalog table
  ``extracted_files`` (FileId).  Deleting the capture removes its extracted files
  too (capture ids can be reused by SQLite; stale files must not be inherited).

Connections are closed in the engine when both FINs or a RST have been seen, and
after ``IDLE_NS`` without a packet (so a long capture does not keep state for
connections that vanished); beyond ``MAX_CONNECTIONS`` the least recently active one is
closed for each new one; everything left is flushed when the capture ends.
What one capture may spool in all and hold out of order across its connections is
bounded in the engine (``SpoolBudget``, ``MAX_HELD_BYTES``; docs/SECURITY.md): bodies
past the spool budget are recorded cut (Truncated), what was spooled before stays.
An error inside the engine (for example a full disk) switches extraction off for
that capture only — the packet capture itself never fails because of it.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import OrderedDict

from apppaccap.extract.engine import MAX_CAPTURE_BYTES
from apppaccap.extract.engine import Extractor
from apppaccap.extract.engine import FileEvent
from apppaccap.store import extracted
from apppaccap.store.capturedb import add_extract_streams

log = logging.getLogger(__name__)

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
IDLE_NS = 600 * 1_000_000_000       # a connection silent this long is closed in the engine
SWEEP_NS = 30 * 1_000_000_000       # how often (capture time) idle connections are looked for
MAX_STREAM_BUFFER = 1 << 20         # out-of-order bytes buffered per direction
# Connections followed at once: more than a busy host has open together (the recorder
# keeps 100,000 flows, ended ones included) at ~2.5 KB of parser state each (~125 MB);
# spoofed SYNs from many addresses used to add state until IDLE_NS had passed.
MAX_CONNECTIONS = 50_000
_CLOSED_MEMORY = 65536              # closed connection ids remembered (late ACKs ignored)
_ROWS_AT = 256                      # EXTRACTSTREAM rows written per transaction at most
_NAME_MAX = 4096                    # characters of the raw file name kept



def spool_dir(data_dir: str, capture_id: int) -> str:
    return os.path.join(data_dir, "extract-spool", str(int(capture_id)))


def extracted_dir(data_dir: str, capture_id: int) -> str:
    return os.path.join(data_dir, "extracted", str(int(capture_id)))


def attach(ctx, recorder, db, capture_id: int) -> ExtractHandle:
    """Feed ``recorder``'s TCP packets to a new Extractor; call ``close()`` at the end."""
    handle = ExtractHandle(db, spool_dir(ctx.config.data_dir, capture_id),
                           max_file_bytes=ctx.settings.get_int("extract_max_file_bytes"),
                           max_capture_bytes=ctx.settings.get_int("extract_max_capture_bytes"))
    recorder.on_tcp = handle.on_tcp
    handle.recorder = recorder
    chained = recorder.on_flush

    def on_flush(*batch):
        # Found files' rows go out with the packet batch that completed them, so
        # extract_query sees a live capture's files as soon as its packets.
        handle.write_rows()
        if chained is not None:
            chained(*batch)
    recorder.on_flush = on_flush
    return handle


def _text(value, limit: int = _NAME_MAX):
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    # lone surrogates cannot be stored as UTF-8 text
    return str(value)[:limit].encode("utf-8", "replace").decode("utf-8")


class ExtractHandle:
    """One capture's extraction: the engine, its sink and the EXTRACTSTREAM writer.

    All methods but ``close`` run on the thread that feeds the Recorder; ``close``
    is called once that thread is done (after ``LiveCapture.stop`` / at ingest end).
    """

    def __init__(self, db, spool: str, *, max_file_bytes: int = 64 << 20,
                 max_stream_buffer: int = MAX_STREAM_BUFFER,
                 max_connections: int = MAX_CONNECTIONS,
                 max_capture_bytes: int = MAX_CAPTURE_BYTES):
        self.db = db
        self.spool = spool
        self.recorder = None
        self.extractor = Extractor(self, max_file_bytes=max(int(max_file_bytes), 0),
                                   max_stream_buffer=max_stream_buffer,
                                   max_capture_bytes=max_capture_bytes, spool_dir=spool)
        self.max_connections = max(int(max_connections), 1)
        self.files = 0
        self.evicted = 0            # connections closed early for MAX_CONNECTIONS
        self.error = ""
        self._rows: list = []
        self._pending = None
        self._fins: dict[int, set] = {}
        self._closed: OrderedDict = OrderedDict()
        # least recently active connection first: an OrderedDict, whose oldest entry is
        # found at once (a dict's first live key is found by scanning the slots its
        # removals left: 38 us an eviction under a flood of new connections)
        self._last: OrderedDict = OrderedDict()
        self._swept = None
        self._dead = False
        self._full_said = False

    # -- feed ------------------------------------------------------------------
    def on_tcp(self, conn_id: int, ts: int, d, data) -> None:
        """Recorder hook: one TCP packet of connection ``conn_id``."""
        if self._dead or d.l4_off < 0:
            return              # extraction failed earlier / fragment without a TCP header
        flags = d.tcp_flags
        if conn_id in self._closed:
            if not d.payload_len and not flags & SYN:
                return          # the last ACKs of a closed connection
            del self._closed[conn_id]   # new data or a new connection on the same addresses
        off = d.payload_off
        payload = data[off:off + d.payload_len]
        if type(payload) is not bytes:
            payload = bytes(payload)    # do not pin a larger buffer in the reassembler
        try:
            self.extractor.tcp(conn_id, ts, d.src, d.sport, d.dst, d.dport, d.tcp_seq,
                               d.tcp_ack, flags, payload)
            if flags & (FIN | RST) and self._ended(conn_id, flags, (d.src, d.sport)):
                self._close(conn_id)
            else:
                last = self._last
                if conn_id in last:
                    last.move_to_end(conn_id)
                elif len(last) >= self.max_connections:
                    self._evict(next(iter(last)))
                last[conn_id] = ts
            if self._swept is None:
                self._swept = ts
            elif ts - self._swept >= SWEEP_NS:
                self._sweep(ts)
        except Exception as exc:  # noqa: BLE001 - never break the capture for extraction
            self._fail(exc)

    def _ended(self, conn_id, flags, sender) -> bool:
        """A RST, or the FIN that completes FINs from both sides."""
        if flags & RST:
            return True
        fins = self._fins.setdefault(conn_id, set())
        fins.add(sender)
        return len(fins) >= 2

    def _close(self, conn_id) -> None:
        self._fins.pop(conn_id, None)
        self._last.pop(conn_id, None)
        self._closed[conn_id] = True
        if len(self._closed) > _CLOSED_MEMORY:
            self._closed.popitem(last=False)
        self.extractor.close_conn(conn_id)

    def _sweep(self, now: int) -> None:
        self._swept = now
        for cid in [cid for cid, t in self._last.items() if now - t >= IDLE_NS]:
            self._expire(cid)

    def _evict(self, conn_id) -> None:
        self.evicted += 1
        self._expire(conn_id)

    def _expire(self, conn_id) -> None:
        self._fins.pop(conn_id, None)
        self._last.pop(conn_id, None)
        self.extractor.close_conn(conn_id)   # not remembered as closed: it may resume

    # -- sink ------------------------------------------------------------------
    def file(self, ev: FileEvent) -> None:
        """Extractor sink: one finished file → one EXTRACTSTREAM row (written in batches)."""
        self.files += 1
        if ev.truncated and not self._full_said and self.extractor.budget.exhausted:
            self._full_said = True
            log.warning("extract: %s reached its spool budget (%d bytes); later bodies are "
                        "recorded cut (Truncated)", self.spool, self.extractor.budget.used)
        self._rows.append((
            ev.conn_id, ev.protocol, ev.direction, _text(ev.file_name) or "",
            _text(ev.mime_type, 256), _text(ev.sniffed_mime, 256), ev.size, int(ev.complete),
            int(ev.truncated), ev.missing_bytes, ev.sha256, ev.ts_ns, _text(ev.uri),
            _text(ev.host, 1024), _text(ev.method, 64), ev.status, ev.declared_size,
            _text(ev.content_encoding, 256), ev.depth, os.path.basename(ev.spool_path)))
        if len(self._rows) >= _ROWS_AT:
            self.write_rows()

    def write_rows(self) -> None:
        """Submit the buffered EXTRACTSTREAM rows (one transaction, not waited for)."""
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        self._pending = self.db.submit(lambda c: add_extract_streams(c, rows))
        self._pending.add_done_callback(self._written)

    def _written(self, fut) -> None:
        exc = fut.exception()
        if exc is not None:
            log.warning("extract: writing EXTRACTSTREAM rows failed: %s", exc)
            self.error = self.error or f"writing extracted streams failed: {exc}"

    def _fail(self, exc: Exception) -> None:
        log.exception("extract: extraction stopped for %s", self.spool)
        self.error = f"extraction stopped: {exc}"
        self._dead = True
        if self.recorder is not None and self.recorder.on_tcp == self.on_tcp:
            self.recorder.on_tcp = None

    # -- end -------------------------------------------------------------------
    def close(self) -> None:
        """End of capture: finish every open connection and write the remaining rows."""
        if self.recorder is not None and self.recorder.on_tcp == self.on_tcp:
            self.recorder.on_tcp = None
        if not self._dead:
            try:
                self.extractor.flush()
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)
        self.write_rows()
        if self._pending is not None:
            try:
                self._pending.exception(60)  # the writer runs in order: all rows are in
            except Exception:  # noqa: BLE001 - timeout: reported, never raised
                self.error = self.error or "writing extracted streams timed out"
            self._pending = None

    def stats(self) -> dict:
        return {**self.extractor.stats(), "evicted": self.evicted, "error": self.error}


def forget_capture(ctx, capture_id: int) -> None:
    """A capture is deleted: remove its spooled bodies, extracted files and their records."""
    shutil.rmtree(spool_dir(ctx.config.data_dir, capture_id), ignore_errors=True)
    shutil.rmtree(extracted_dir(ctx.config.data_dir, capture_id), ignore_errors=True)
    extracted.forget_capture(ctx.catalog, capture_id)
