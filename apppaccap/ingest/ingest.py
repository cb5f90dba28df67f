"""PCAP/PCAPNG file → a FILE capture, built exactly like a live one (Recorder).

Processes come back from pcapng files that carry them: the ptcpdump comment
convention ("PID: …\\nCmd: …\\nArgs: …") or the epb_processid_threadid option.
Damage stops reading but keeps every packet before it (COMPLETED with a note);
a file that yields nothing because of damage is FAILED with the reader's reason.
"""

from __future__ import annotations

import gc
import os
import threading
from contextlib import contextmanager

from apppaccap.attribution.labels import Label
from apppaccap.capture.applabels import AppLabeller
from apppaccap.capture.recorder import Recorder
from apppaccap.dissect.decode import decode
from apppaccap.errors import IOFailure
from apppaccap.errors import Malformed
from apppaccap.extract.service import attach
from apppaccap.filetime import now_ns
from apppaccap.ingest import scanner
from apppaccap.pcap.pcapng_writer import DIRECTION_OF_EPB_FLAGS
from apppaccap.pcap.reader import CaptureReader
from apppaccap.pcap.reader import NotACaptureError
from apppaccap.safefs.reading import open_regular
from apppaccap.store import capturedb
from apppaccap.store import captures as capture_table
from apppaccap.store.bulkwriter import BulkWriter
from apppaccap.store.capturedb import CaptureDb
from apppaccap.store.ips import add_traffic
from apppaccap.wire import CaptureState
from apppaccap.wire import CaptureType


def open_reader(path: str, roots=None) -> CaptureReader:
    """Open a capture file, mapping problems to API errors.

    With `roots` the file must lie below one of them (INVALID_PERMISSIONS otherwise, the
    same message for every file outside); it is opened without blocking and must be a
    regular file (open_regular). Messages never quote the file's bytes."""
    fd = open_regular(path, roots=roots, kind="ingest")
    try:
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    try:
        return CaptureReader(path, fileobj=fh)
    except NotACaptureError as exc:
        raise Malformed(f"path: {_public_reason(str(exc))}") from None
    except OSError as exc:
        raise IOFailure(f"path: cannot read the file ({exc.strerror or exc})") from None


# What the reader says about a file that is not a capture, reduced to words that quote none
# of its bytes ("unknown magic 0x726f6f74" would spell the first four bytes of /etc/shadow).
_REASONS = (
    ("unknown magic", "not a pcap or pcapng file"),
    ("pcapng: unknown SHB version", "a pcapng file with an unsupported section header version"),
    ("pcap: major version", "a pcap file with an unsupported major version"),
    ("bad byte-order magic", "a pcapng file with a damaged section header"),
)


def _public_reason(message: str) -> str:
    for fragment, words in _REASONS:
        if fragment in message:
            gzip = "gzip-compressed" in message
            return words + (" (gzip-compressed: decompress it first)" if gzip else "")
    if "bytes" in message or "empty" in message:  # a size, not content
        return message
    return "not a pcap or pcapng file"


def _fold_ips(ctx, db) -> None:
    """Add the file's IP list to the system-wide one (ip_query, capture_query_ip 0), as a
    live capture's batches do: an address seen only in an ingested file is still known."""
    rows = db.read("SELECT ip, packets, bytes, first_time, last_time FROM ips")
    traffic = {r["ip"]: (r["packets"] or 0, r["bytes"] or 0, r["first_time"], r["last_time"])
               for r in rows}
    ctx.catalog.write(lambda conn: add_traffic(conn, traffic))


def create_capture(ctx, source: str) -> int:
    name = os.path.basename(source)
    return capture_table.create(ctx.catalog, {"type": CaptureType.FILE,
                                              "state": CaptureState.ACTIVE, "name": name,
                                              "source_file": source, "start_time": now_ns()})


def parse_comment(comment: str | None) -> dict | None:
    """The ptcpdump convention → {pid, cmd, args, tid}; None if the comment is not one."""
    if not comment or not comment.startswith("PID: "):
        return None
    out, rest = {}, []
    for line in comment.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in ("PID", "Cmd", "Args", "ThreadId", "ThreadName", "ParentPID",
                           "ParentCmd", "ParentArgs", "UserId") and key not in out:
            out[key] = value
        else:
            rest.append(line)  # anything else is the packet's own note
    try:
        pid = int(out["PID"])
    except (KeyError, ValueError):
        return None
    tid = out.get("ThreadId", "")
    return {"pid": pid, "cmd": out.get("Cmd", ""), "args": out.get("Args", ""),
            "tid": int(tid) if tid.isdigit() else 0, "notes": "\n".join(rest) or None}


class _Labels:
    """Process labels of one ingested file; identities are per capture (no start time)."""

    def __init__(self, ctx, capture_id):
        self.ctx, self.capture_id = ctx, capture_id
        self.cache: dict = {}

    def get(self, pid, tid, cmd, args) -> Label:
        key = (pid, tid, cmd)
        lab = self.cache.get(key)
        if lab is None:
            rec = {"pid": pid, "ppid": 0, "name": os.path.basename(cmd)[:15] if cmd else "",
                   "path": cmd, "cmdline": args, "user": "",
                   # ingested processes have no start time: key them to this capture
                   "start_time": -self.capture_id}
            process_id = self.ctx.processes.identify([rec])[0]
            lab = self.cache[key] = Label(process_id, pid, tid, rec, None)
        return lab


def _add_interfaces(db, reader, known: int) -> int:
    """Store the interfaces the reader found since `known`; returns how many there are."""
    if len(reader.interfaces) > known:
        # a hostile if_tsresol (10^-19 s per tick and finer) does not fit SQLite's int64;
        # only "finer than µs" matters to readers (export's timestamp resolution)
        new = [(i, f.name, f.linktype, min(f.ticks_per_second, 2**63 - 1)) for i, f in
               enumerate(reader.interfaces[known:], start=known)]
        db.write(lambda c: capturedb.add_interfaces(c, new))
    return len(reader.interfaces)


def _record(rec, labels: _Labels, record):
    """One record into the recorder, its process read back from the pcapng comment
    convention or the pid/tid option; returns (decoded, connection)."""
    ts, _caplen, origlen, linktype, iface, data, comment, pid, tid, flags = record
    d = decode(linktype, data)
    conn = rec.conn_for(d, ts)
    if comment is None and pid is None and flags is None:
        rec.add(ts, iface, data, origlen, d, conn)  # the common case: plain pcap
        return d, conn
    label = None
    info = parse_comment(comment)
    notes = comment
    if info is not None:
        label = labels.get(info["pid"], info["tid"], info["cmd"], info["args"])
        notes = info["notes"]  # the rest of the comment is the packet's note
    elif pid:
        label = labels.get(pid, tid or 0, "", "")
    direction = DIRECTION_OF_EPB_FLAGS.get((flags or 0) & 3)
    rec.add(ts, iface, data, origlen, d, conn, label, notes, direction)
    return d, conn


_gc_lock = threading.Lock()
_gc_users = 0
_gc_saved = None


@contextmanager
def _fewer_collections():
    """While ingests run, the cycle collector starts a pass every 50,000 allocations, not
    700: its passes over ~10^5 flows held took ~1.3-2 s of ~5.3 s of parsing CPU for 1M
    packets of short flows (0.4 s so). And what is alive once a batch is handed to the
    writer is frozen (gc.freeze: flows and connections, which hold no cycles, are no
    longer walked by each pass; 0.33-0.46 s -> ~0.02 s) until the last ingest ends
    (gc.unfreeze). Process-wide, so counted across ingests."""
    global _gc_users, _gc_saved
    with _gc_lock:
        if _gc_users == 0:
            _gc_saved = gc.get_threshold()
            gc.set_threshold(max(_gc_saved[0], 50_000), *_gc_saved[1:])
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0:
                gc.set_threshold(*_gc_saved)
                gc.unfreeze()  # back to the oldest generation: a later full pass sees them


def ingest(ctx, reader: CaptureReader, capture_id: int, progress=None) -> dict:
    """Read every record into the capture's database; returns a summary dict."""
    with _fewer_collections():
        return _ingest(ctx, reader, capture_id, progress)


def _ingest(ctx, reader: CaptureReader, capture_id: int, progress=None) -> dict:
    db = CaptureDb(ctx.config.data_dir, capture_id, page_size=capturedb.BULK_PAGE_SIZE)
    rec = Recorder(db)
    extract = None
    if ctx.settings.get_bool("extract_enabled"):
        extract = attach(ctx, rec, db, capture_id)
    else:
        # The extractor writes its rows through `db`; without it, every write of the
        # ingest is a packet batch and can go to a writer process (store/bulkwriter.py).
        rec.bulk = BulkWriter(db.path)
    labels = _Labels(ctx, capture_id)
    if ctx.settings.get_bool("app_labels_enabled"):  # nDPI (None when it is missing)
        rec.labeller = AppLabeller.open()
    state, message = CaptureState.COMPLETED, ""
    try:
        db.write(capturedb.drop_conn_index)  # built once at the end (bulk load)
        fast = rec.bulk is not None and scanner.usable(reader, rec)
        # a pcap's interface is in its header: stored even if no packet follows
        known_ifaces = _add_interfaces(db, reader, 0)
        for batch in (() if fast else reader.iter_batches(1024, tuples=True)):
            known_ifaces = _add_interfaces(db, reader, known_ifaces)
            for record in batch:
                _record(rec, labels, record)
            if progress is not None and reader.size:
                progress(100.0 * reader.bytes_done / reader.size)
        if fast:
            # blocks are stored as the EPBs export writes (export.py copies them verbatim)
            db.write(capturedb.mark_epb_framing)

            def interfaces():
                nonlocal known_ifaces
                if rec.epb_divs is not None and len(rec.epb_divs) == len(reader.interfaces):
                    return
                known_ifaces = _add_interfaces(db, reader, known_ifaces)
                rec.epb_divs = [1 if f.ticks_per_second > 1_000_000 else 1000
                                for f in reader.interfaces]

            interfaces()
            scanner.ingest(reader, rec, lambda r: _record(rec, labels, r), interfaces,
                           progress, gc.freeze)
        # interfaces declared after the last packet (or in a file without packets)
        known_ifaces = _add_interfaces(db, reader, known_ifaces)
        rec.finish_labels()
        if reader.error:
            if rec.packets:
                message = f"stopped early, {rec.packets} packets kept: {reader.error}"
            else:
                state, message = CaptureState.FAILED, reader.error
        elif reader.warnings:
            message = "; ".join(reader.warnings[:5])
        if rec.bulk is not None:
            rec.flush()
            rec.forget_flows()
        rec.flush(wait=True)
        if rec.bulk is not None:
            # built by the writer process while the IPs (committed) go to the catalog
            rec.bulk.build_indexes()
            _fold_ips(ctx, db)
            rec.bulk.drain()
        else:
            db.write(capturedb.build_conn_index)
            _fold_ips(ctx, db)
    except BaseException as exc:
        state, message = CaptureState.FAILED, f"ingest stopped: {exc}"
        raise
    finally:
        try:
            if extract is not None:
                extract.close()
            rec.flush(wait=True)
        finally:
            if rec.labeller is not None:  # stopped by an error: free nDPI's memory
                rec.labeller.close()
            if rec.bulk is not None:
                rec.bulk.close()
            db.close()
            reader.close()
            capture_table.finish(ctx.catalog, capture_id, state=state, end_time=now_ns(),
                                 message=message[:1000],
                                 counts=(rec.packets, rec.bytes, rec.next_conn - 1))
    return {"CaptureId": capture_id, "Packets": rec.packets, "State": state, "Message": message}
