"""Reading a file a request names: never blocking, never anything but a regular file."""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from apppaccap.errors import InvalidPermissions
from apppaccap.errors import IOFailure
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.safefs.roots import OUTSIDE
from apppaccap.safefs.roots import READ_FLAGS
from apppaccap.safefs.roots import check_absolute
from apppaccap.safefs.roots import confine
from apppaccap.safefs.roots import open_dir_beneath


def _open_regular_at(dir_fd: int | None, name: str) -> int:
    """Open name for reading, only if it is a regular file: checked without opening
    (a device's open can have effects), then opened non-blocking and checked again."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "not a regular file") if stat.S_ISDIR(
            st.st_mode) else _NotRegular()
    fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    try:
        st2 = os.fstat(fd)
        if not stat.S_ISREG(st2.st_mode) or (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
            raise _NotRegular()
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)  # ordinary reads from here
    except BaseException:
        os.close(fd)
        raise
    return fd


class _NotRegular(OSError):
    def __init__(self):
        super().__init__(errno.EINVAL, "not a regular file")


def open_regular(path: str, *, roots=None, kind: str = "ingest", name: str = "path") -> int:
    """A read-only fd of the regular file `path` (never blocks, never a FIFO or device).

    With `roots`, the file must lie below one of them (after resolving symlinks) and is
    opened by walking from that root; outside: INVALID_PERMISSIONS, the same message for
    every file. Inside the roots the errors are precise (NOT_FOUND, MALFORMED_REQUEST)
    but never quote the file's contents.
    """
    path = check_absolute(path, name)
    checked = kind if roots is not None else None
    if roots is None:
        folder, base = os.path.split(os.path.realpath(path))
        parts, root = [], folder or "/"
    else:
        root, parts = confine(path, roots, kind)
        if not parts:
            raise Malformed(f"{name}: a directory, not a file")
        base, parts = parts[-1], parts[:-1]
    if not base:
        raise Malformed(f"{name}: a directory, not a file")
    try:
        dir_fd = open_dir_beneath(root, parts)
    except OSError as exc:
        raise _read_error(exc, name, checked) from None
    try:
        return _open_regular_at(dir_fd, base)
    except OSError as exc:
        raise _read_error(exc, name, checked) from None
    finally:
        os.close(dir_fd)


def _read_error(exc: OSError, name: str, kind: str | None):
    if isinstance(exc, _NotRegular):
        return Malformed(f"{name}: not a regular file (FIFOs, devices and sockets are refused)")
    if isinstance(exc, IsADirectoryError):
        return Malformed(f"{name}: a directory, not a file")
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return NotFound(f"{name}: no such file")
    if exc.errno == errno.ELOOP and kind is not None:
        # a symlink appeared below the root after the path was resolved: a swap
        return InvalidPermissions(OUTSIDE[kind])
    if isinstance(exc, PermissionError):
        return InvalidPermissions(f"{name}: permission denied")
    return IOFailure(f"{name}: cannot open: {exc.strerror or exc}")


def open_entry(folder: str, entry: str, name: str = "name") -> int:
    """A read-only fd of `entry`, a regular file directly in the trusted directory `folder`.

    The entry is never followed if it is a symlink (refused like a FIFO, device, socket or
    directory), and the open never blocks. `entry` must be a plain name (no directory part).
    """
    if not entry or entry in (".", "..") or "/" in entry or "\x00" in entry:
        raise Malformed(f"{name}: must be a plain file name")
    try:
        dir_fd = open_dir_beneath(os.path.realpath(folder), [])
    except OSError as exc:
        raise _read_error(exc, name, None) from None
    try:
        return _open_regular_at(dir_fd, entry)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Malformed(f"{name}: not a regular file (symlinks are refused)") from None
        raise _read_error(exc, name, None) from None
    finally:
        os.close(dir_fd)
