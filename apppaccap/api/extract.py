"""File extraction: extract_enable/disable, extract_query and the extract_file_* actions.

How it is stored is described in apppaccap/extract/service.py: the engine finds
files while a capture or an ingest runs (when extraction was enabled at its start),
each one is an EXTRACTSTREAM row of the capture database with its decoded body
spooled on disk; `extract_file_write` publishes a body below
`<data-dir>/extracted/<capture_id>/` and records it as an EXTRACTFILE.
"""

from __future__ import annotations

import hashlib
import os
import threading

from apppaccap.api.captures import captures
from apppaccap.api.registry import endpoint
from apppaccap.errors import AppError
from apppaccap.errors import IOFailure
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.extract.engine import safe_name
from apppaccap.extract.service import extracted_dir
from apppaccap.extract.service import spool_dir
from apppaccap.filetime import from_ns
from apppaccap.filetime import now_ns
from apppaccap.safefs.journal import JOURNAL_DIR
from apppaccap.safefs.reading import open_regular
from apppaccap.safefs.roots import open_dir_beneath
from apppaccap.safefs.writing import WriteTarget
from apppaccap.safefs.writing import atomic_write
from apppaccap.store import captures as capture_table
from apppaccap.store import extracted
from apppaccap.store.capturedb import capture_path
from apppaccap.wire import DataType

_write_lock = threading.Lock()   # one extract_file_write at a time: unique names, no races


def _page(limit: int) -> int:
    if not 1 <= limit <= 10000:
        raise Malformed("limit: must be 1-10000")
    return limit


def _capture(ctx, capture_id: int):
    row = capture_table.get(ctx.catalog, capture_id)
    if row is None:
        raise NotFound(f"capture_id: no capture {capture_id}")
    return row


def _db(ctx, capture_id: int):
    """The capture's database, or None when the capture has no packet data at all."""
    _capture(ctx, capture_id)
    if capture_id not in getattr(ctx.captures, "live", {}) and \
            not os.path.exists(capture_path(ctx.config.data_dir, capture_id)):
        return None
    return captures(ctx).db(capture_id)


def stream_object(capture_id: int, r) -> dict:
    return {
        "Version": 1, "StreamId": r["id"], "CaptureId": capture_id, "ConnectionId": r["conn_id"],
        "Protocol": r["protocol"], "FileName": safe_name(r["file_name"]),
        "MimeType": r["mime_type"] or "", "Size": r["size"], "Complete": bool(r["complete"]),
        "Time": from_ns(r["ts"]),
        # beyond the reference
        "OriginalName": r["file_name"], "Direction": r["direction"], "Uri": r["uri"] or "",
        "Host": r["host"] or "", "Method": r["method"] or "", "Status": r["status"] or 0,
        "Truncated": bool(r["truncated"]), "MissingBytes": r["missing_bytes"],
        "DeclaredSize": r["declared_size"] if r["declared_size"] is not None else -1,
        "ContentEncoding": r["content_encoding"] or "", "SniffedMimeType": r["sniffed_mime"] or "",
        "Sha256": r["sha256"],
    }


def file_object(r) -> dict:
    return {"Version": 1, "FileId": r["id"], "CaptureId": r["capture_id"],
            "StreamId": r["stream_id"], "FileName": r["file_name"], "Path": r["path"],
            "Size": r["size"], "MimeType": r["mime_type"], "Sha256": r["sha256"],
            "Created": from_ns(r["created"])}


@endpoint(DataType.INT)
def extract_enable(ctx) -> int:
    """Turn file extraction on (global, persisted; off by default).

    Captures and ingests started from now on find the files in their TCP streams
    (HTTP/1.x bodies, decoded; FTP transfers); captures already running are not
    changed. Extraction costs CPU and keeps every found body on disk
    (below `<data-dir>/extract-spool/`) until its capture is deleted; bodies larger
    than the setting extract_max_file_bytes are cut there and marked incomplete. A
    capture spools at most extract_max_capture_bytes in all (4 GiB), and past one full
    body at most 64 bytes per TCP payload byte it saw (a gzip bomb decodes to ~1000x):
    later bodies are cut (Truncated); once it is spent, they are recorded without a file.
    """
    ctx.settings.set("extract_enabled", "1")
    return 0


@endpoint(DataType.INT)
def extract_disable(ctx) -> int:
    """Turn file extraction off for captures and ingests started from now on."""
    ctx.settings.set("extract_enabled", "0")
    return 0


@endpoint(DataType.JSON)
def extract_query(ctx, *, capture_id: int, last_id: int = 0, limit: int = 1000) -> dict:
    """The files found in a capture (EXTRACTSTREAM), in the order they were completed.

    Works while the capture is active too. `FileName` is the sanitised name
    `extract_file_write` would use (`OriginalName` is the raw one), `Complete` is
    false when bytes were lost, the body ended short, could not be decoded to its
    end or was cut at extract_max_file_bytes or the capture's spool budget
    (`Truncated`; see extract_enable). `Size` and `Sha256` are
    those of the decoded body.
    - capture_id: the capture
    - last_id: return streams with a StreamId greater than this
    - limit: page size, 1-10000
    """
    limit = _page(limit)
    db = _db(ctx, capture_id)
    rows = [] if db is None else db.read(
        "SELECT * FROM extract_streams WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    return {"Version": 1, "CaptureId": capture_id,
            "LastId": rows[-1]["id"] if rows else max(last_id, 0), "More": more,
            "Streams": [stream_object(capture_id, r) for r in rows]}


@endpoint(DataType.JSON)
def extract_file_write(ctx, *, capture_id: int, stream_id: int) -> dict:
    """Write a found file's decoded body to disk and return it (EXTRACTFILE).

    The file goes below `<data-dir>/extracted/<capture_id>/` under the sanitised
    name (a number is added when it is taken); `Sha256` is that of the written bytes,
    checked against the one computed during the capture. Writing the same stream
    again returns the file already written while it exists.
    - capture_id: the capture
    - stream_id: a StreamId from extract_query
    """
    db = _db(ctx, capture_id)
    stream = None if db is None else db.one("SELECT * FROM extract_streams WHERE id = ?",
                                            (stream_id,))
    if stream is None:
        raise NotFound(f"stream_id: capture {capture_id} has no extracted stream {stream_id}")
    with _write_lock:
        for old in extracted.of_capture(ctx.catalog, capture_id, stream_id):
            if os.path.isfile(old["path"]) and os.path.getsize(old["path"]) == old["size"]:
                return file_object(old)
            extracted.delete(ctx.catalog, [old["id"]])
        folder = extracted_dir(ctx.config.data_dir, capture_id)
        src = _open_spool(ctx, capture_id, stream)
        name = safe_name(stream["file_name"])
        with src:
            path, size, sha = _publish(ctx, folder, name, src, stream)
        file_id = extracted.add(ctx.catalog, {
            "capture_id": capture_id, "stream_id": stream_id,
            "file_name": os.path.basename(path), "path": path, "size": size,
            "mime_type": stream["mime_type"] or "", "sha256": sha, "created": now_ns()})
        return file_object(extracted.get(ctx.catalog, file_id))


def _open_spool(ctx, capture_id: int, stream):
    """The spooled body of a stream, opened without following links or blocking."""
    if not stream["spool"]:
        raise NotFound(f"stream_id: stream {stream['id']} kept no body (its capture's "
                       "extraction budget was spent: setting extract_max_capture_bytes)")
    spool = os.path.join(spool_dir(ctx.config.data_dir, capture_id),
                         os.path.basename(stream["spool"]))
    try:
        fd = open_regular(spool, name="stream_id")
    except NotFound:
        raise IOFailure(f"stream_id: the body of stream {stream['id']} is no longer on disk "
                        "(spool removed)") from None
    except AppError as err:
        raise IOFailure(f"stream_id: cannot read the body of stream {stream['id']}: "
                        f"{err.message}") from None
    return os.fdopen(fd, "rb")


def _publish(ctx, folder: str, name: str, src, stream) -> tuple[str, int, str]:
    """Copy the body to folder/name (name-2, name-3... when taken) with the safe-write
    rules of safefs: confined below <data-dir>/extracted, never through a symlink, a
    temporary file renamed into place, mode 0600. (path, size, sha256)."""
    base = os.path.join(ctx.config.data_dir, "extracted")
    try:
        # made without following links: a planted symlink makes this fail, never escape
        os.close(open_dir_beneath(os.path.realpath(ctx.config.data_dir), [
            "extracted", os.path.basename(folder)], create=True))
    except OSError as exc:
        raise IOFailure(f"stream_id: cannot make the directory for extracted files: "
                        f"{exc.strerror or exc}") from None
    target = WriteTarget(
        os.path.join(folder, name), roots=[base], kind="extract", generated=True,
        param="stream_id", journal=os.path.join(ctx.config.data_dir, JOURNAL_DIR))
    digest, size = hashlib.sha256(), 0
    with atomic_write(target) as out:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
        sha = digest.hexdigest()
        if sha != stream["sha256"] or size != stream["size"]:
            raise IOFailure(f"stream_id: the spooled body of stream {stream['id']} is damaged "
                            f"(sha256 {sha[:12]}… ≠ {stream['sha256'][:12]}…)")
    return target.path, size, sha


def _unlink(path: str) -> bool:
    try:
        os.remove(path)
        return True
    except FileNotFoundError:
        return False


@endpoint(DataType.JSON, paged=("FileId", "Files"))
def extract_file_list(ctx, *, capture_id: int) -> list:
    """The files written by extract_file_write for a capture that are still on disk (EXTRACTFILE).

    - capture_id: the capture
    """
    _capture(ctx, capture_id)
    rows = extracted.of_capture(ctx.catalog, capture_id)
    gone = [r["id"] for r in rows if not os.path.isfile(r["path"])]
    extracted.delete(ctx.catalog, gone)
    return [file_object(r) for r in rows if r["id"] not in gone]


def _delete(ctx, capture_id: int, file_id: int = 0) -> int:
    _capture(ctx, capture_id)
    if file_id < 0:
        raise Malformed("file_id: must be a FileId (or 0 for all files)")
    if file_id:
        rows = [r for r in [extracted.get(ctx.catalog, file_id)]
                if r is not None and r["capture_id"] == capture_id]
        if not rows:
            raise NotFound(f"file_id: capture {capture_id} has no extracted file {file_id}")
    else:
        rows = extracted.of_capture(ctx.catalog, capture_id)
    removed = 0
    for r in rows:
        try:
            removed += _unlink(r["path"])
        except OSError as exc:
            raise IOFailure(f"file_id: cannot delete {r['path']}: {exc.strerror}") from None
    extracted.delete(ctx.catalog, [r["id"] for r in rows])
    return removed


@endpoint(DataType.INT)
def extract_file_clear(ctx, *, capture_id: int) -> int:
    """Delete every file extract_file_write wrote for a capture; returns how many were deleted.

    The found streams stay (extract_query), so they can be written again.
    - capture_id: the capture
    """
    return _delete(ctx, capture_id)


@endpoint(DataType.INT)
def extract_file_delete(ctx, *, capture_id: int, file_id: int = 0) -> int:
    """Delete one written file (or all of a capture's); returns how many were deleted.

    - capture_id: the capture
    - file_id: the FileId to delete; missing or 0 = every file of the capture
    """
    return _delete(ctx, capture_id, file_id)
