"""Short procfs reads made without letting the interpreter lock go (Linux, ctypes.PyDLL).

Python lets the lock go around every system call, and a thread that lets it go waits to
get it back behind every thread that wants it (up to a switch interval, 5 ms). The
resolver reads, per new flow, the fd link that says a process still holds the socket: a
few microseconds whatever the process (one fd looked up, no sleeping lock, no I/O), so it
is read here with the lock held, as is the leader thread's stat file (one task, constant
time) that says a pid is still the same process. Without libc the os module's calls give
the same answers.

Not for anything whose cost another user can raise: a netlink request waits for a mutex
other users share; /proc/<pid>/stat sums every thread of the process (~1.4 ms at 25,000).
"""

from __future__ import annotations

import ctypes
import os


def _libc():
    try:
        libc = ctypes.PyDLL(None, use_errno=True)   # PyDLL: the lock is kept across calls
        for name, args, res in (
                ("readlink", [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t],
                 ctypes.c_ssize_t),
                ("open", [ctypes.c_char_p, ctypes.c_int], ctypes.c_int),
                ("read", [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_ssize_t),
                ("close", [ctypes.c_int], ctypes.c_int)):
            fn = getattr(libc, name)
            fn.argtypes, fn.restype = args, res
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


STAT_BYTES = 4096   # a task's stat line: ~300 bytes, 52 numbers of at most 20 digits


def read_stat(path: str) -> str:
    """A task's stat file (/proc/<pid>/task/<tid>/stat: one task, constant time) as text,
    "" when unreadable. Not a process's /proc/<pid>/stat, which sums all its threads."""
    if _LIBC is None:
        try:
            with open(path, "rb", buffering=0) as f:
                return f.read(STAT_BYTES).decode("utf-8", "replace")
        except OSError:
            return ""
    fd = _LIBC.open(path.encode(), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    if fd < 0:
        return ""
    try:
        buf = ctypes.create_string_buffer(STAT_BYTES)
        n = _LIBC.read(fd, buf, STAT_BYTES)
    finally:
        _LIBC.close(fd)
    return buf.raw[:n].decode("utf-8", "replace") if n > 0 else ""

