"""Disk and I/O faults, recognised in one place and answered as IO_ERROR.

A full disk shows up as OSError ENOSPC from our own writes and as SQLITE_FULL ("database
or disk is full") or SQLITE_IOERR from SQLite; a read-only or failing disk as EROFS/EIO or
SQLITE_READONLY/SQLITE_IOERR. Every layer that reports a failed write (the database writer
threads, the bulk writer process, the recorder, the command runner and the /ajax door)
asks `io_failure()` and hands the caller an IOFailure (ErrorCode 11) whose message starts
with what went wrong in words ("disk full: ...").
"""

from __future__ import annotations

import errno
import sqlite3

from apppaccap.errors import IOFailure

OS_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EIO: "I/O error",
    errno.EROFS: "read-only file system",
}
# primary result codes (the low byte of an extended code)
SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL = 8, 10, 13
SQLITE_REASONS = {SQLITE_FULL: "disk full", SQLITE_IOERR: "I/O error",
                  SQLITE_READONLY: "read-only file system"}
# older sqlite3 modules carry no error code: the message is all there is
SQLITE_MESSAGES = {"database or disk is full": "disk full", "disk i/o error": "I/O error"}


def reason(exc: BaseException) -> str | None:
    """'disk full', 'I/O error', ... when `exc` is a disk fault; None otherwise."""
    if isinstance(exc, IOFailure):  # already described ("disk full: ...")
        return exc.message.partition(":")[0]
    if isinstance(exc, OSError):
        return OS_REASONS.get(exc.errno)
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return SQLITE_REASONS.get(code & 0xFF)
        return SQLITE_MESSAGES.get(str(exc).lower())
    return None


def io_failure(exc: BaseException, doing: str = "") -> IOFailure | None:
    """An IOFailure describing `exc` (or one of its causes) when it is a disk fault.

    The result is a fresh exception with no link to `exc`: re-raising it never grows a
    chain of tracebacks, and the original is logged once by whoever caught it.
    """
    seen = 0
    while exc is not None and seen < 5:  # a fault wrapped by another error still counts
        if isinstance(exc, IOFailure):
            return IOFailure(exc.message)
        why = reason(exc)
        if why is not None:
            detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            what = f"{doing} failed ({detail})" if doing else detail
            return IOFailure(f"{why}: {what}")
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None
