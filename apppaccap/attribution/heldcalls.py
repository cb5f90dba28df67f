"""A short procfs read made without letting the interpreter lock go (Linux, ctypes.PyDLL).

Python lets the lock go around every system call, and a thread that lets it go waits to
get it back behind every thread that wants it (up to a switch interval, 5 ms). The
resolver reads, per new flow, the fd link that says a process still holds the socket: a
few microseconds whatever the process (one fd looked up, no sleeping lock, no I/O), so it
is read here with the lock held. Without libc the os module's call gives the same answer.

Not for anything whose cost another user can raise: a netlink request waits for a mutex
other users share; /proc/<pid>/stat sums every thread of the process (~1.4 ms at 25,000).
"""

from __future__ import annotations

import ctypes
import os


def _libc():
    try:
        libc = ctypes.PyDLL(None, use_errno=True)   # PyDLL: the lock is kept across calls
        libc.readlink.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
        libc.readlink.restype = ctypes.c_ssize_t
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc() if os.name == "posix" else None


def readlink(path: str) -> str | None:
    """os.readlink, None when it fails."""
    if _LIBC is None:
        try:
            return os.readlink(path)
        except OSError:
            return None
    buf = ctypes.create_string_buffer(256)
    n = _LIBC.readlink(path.encode(), buf, 256)
    return buf.raw[:n].decode(errors="replace") if 0 <= n < 256 else None
