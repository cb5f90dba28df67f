"""Room kept on the data directory's file system for stopping cleanly when it fills up.

When the disk fills, the capture whose write failed must still record why it stopped
(State INTERRUPTED, Message "disk full: ...") and its final counters in the catalog,
which lives on the same file system. A reserve file of `disk_reserve_bytes` is kept in the
data directory; a disk-full failure deletes it, which gives the stop the room it needs,
and the next capture start puts it back (or refuses with IO_ERROR while there is no room).
"""

from __future__ import annotations

import errno
import logging
import os

from apppaccap.errors import IOFailure

log = logging.getLogger(__name__)

NAME = ".space-reserve"
MIN_FREE = 256 << 10  # below this, starting something that writes would fail at once


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on `path`'s file system."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _allocate(fd: int, size: int) -> None:
    """Real blocks, not a sparse file: fallocate, or zeros where it is not supported."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        os.lseek(fd, 0, os.SEEK_SET)
        zeros = b"\0" * (64 << 10)
        left = size
        while left > 0:
            left -= os.write(fd, zeros[:left])


class SpaceReserve:
    """`size`: bytes to hold, or a callable giving them (a setting read when needed)."""

    def __init__(self, data_dir: str, size):
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, NAME)
        self._size = size

    @property
    def size(self) -> int:
        size = self._size() if callable(self._size) else self._size
        return max(0, size)

    def held(self) -> int:
        try:
            return os.stat(self.path).st_size
        except OSError:
            return 0

    def ensure(self) -> bool:
        """Hold the reserve (allocating it if needed); False when there is no room."""
        size, held = self.size, self.held()
        if held > size:  # the setting was lowered
            os.truncate(self.path, size)
        if size == 0 or held >= size:
            return True
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            log.warning("cannot create the space reserve %s: %s", self.path, exc.strerror)
            return False
        try:
            _allocate(fd, size)
            return True
        except OSError:
            os.ftruncate(fd, 0)  # a partial reserve only hides how full the disk is
            return False
        finally:
            os.close(fd)

    def release(self) -> None:
        """Give the reserve back to the file system (a write failed for lack of space)."""
        try:
            os.unlink(self.path)
            log.warning("released the space reserve in %s so the capture can stop cleanly",
                        self.data_dir)
        except FileNotFoundError:
            pass

    def check(self, doing: str) -> None:
        """Before something new starts writing: IOFailure when the disk is (nearly) full."""
        held = self.ensure()
        free = free_bytes(self.data_dir)
        if not held or free < MIN_FREE:
            need = MIN_FREE + (0 if held else self.size - self.held())
            raise IOFailure(f"disk full: {doing} needs at least {need} free bytes on the data "
                            f"directory's file system ({self.data_dir}), {free} are left")
