"""A capture's side file (`captures/<id>.bytes`): the ingested packet bytes, written and
copied out whole without going through the page cache where the file system allows.

Our machines are virtual machines whose balloon hands free memory back to the host, and
a page the guest touches again after that costs ~2.7 us: 400 MB of new page cache cost
the ingest 0.5-1.1 s of kernel CPU once the memory freed shortly before was used up
(docs/DECISIONS.md: The side file bypasses the page cache). So the bulk writer writes the
side file with O_DIRECT, each region padded with zeros to DIRECT_ALIGN (`span`; a region
is told by its own size, its padding is never read), and export reads it back the same
way, a thread reading ahead into reused buffers. Packets read one at a time
(store/blocks.py: BlockReader) go through the page cache as before. Where O_DIRECT is
refused (a file system without it, Windows), the file is written and copied buffered, in
WRITE_SLICE writes: large writes are cached in large folios, the kind of memory the host
took back.
"""

from __future__ import annotations

import errno
import mmap
import os
import queue
import threading

from apppaccap.store.blocks import O_BINARY
from apppaccap.store.blocks import side_path

try:
    import fcntl
except ImportError:  # Windows: no O_DIRECT either
    fcntl = None

try:
    from apppaccap.store._packedrows import write_slices
except ImportError:  # built without the extension (or on Windows): os.write per slice
    write_slices = None

O_DIRECT = getattr(os, "O_DIRECT", 0)
# direct I/O starts, ends and sits in memory on this boundary (the page size: any block
# device's logical block size divides it)
DIRECT_ALIGN = 4096
# bytes per buffered write(2) (the output of an export, a side file written buffered)
WRITE_SLICE = 64 << 10
# bytes per direct read of an export
READ_CHUNK = 1 << 20


def write_all(fd: int, data, slice_: int = WRITE_SLICE) -> None:
    """Write all of `data` to `fd`, at most `slice_` bytes per call; the compiled loop lets
    the GIL go once for all of it (os.write takes it back for each slice: from a scanning
    parser, 13-20 ms for 8 MB)."""
    if write_slices is not None:
        write_slices(fd, data, slice_)
        return
    with memoryview(data) as view:
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:done + slice_])


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for `fd`; False when the file system refuses it."""
    if not O_DIRECT or fcntl is None:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | O_DIRECT if on else flags & ~O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    return True


class SideFile:
    """Appends blocks to a capture's side file. The bytes are written before the row
    that points at them is submitted, so a committed row never points past the file."""

    def __init__(self, db_path: str):
        self.fd = os.open(side_path(db_path),
                          os.O_WRONLY | os.O_CREAT | os.O_APPEND | O_BINARY, 0o600)
        self._buf: mmap.mmap | None = None  # page-aligned, as direct writes need
        # fixed once open: BulkWriter counts regions ahead of their writes
        self.pad = 1
        if self.end() % DIRECT_ALIGN == 0 and _set_direct(self.fd, True):
            self.pad = DIRECT_ALIGN
        self.direct = self.pad > 1

    def end(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_END)

    def span(self, size: int) -> int:
        """The bytes a region of `size` takes in the file, its padding included."""
        return -(-size // self.pad) * self.pad

    def write_all(self, blob) -> None:
        """Append `blob` (padded to `span`) whose region was told ahead (BulkWriter: the
        file's end, counted)."""
        if not blob:
            return
        if self.pad == 1:
            write_all(self.fd, blob)
            return
        size = self.span(len(blob))
        if self._buf is None or len(self._buf) < size:
            if self._buf is not None:
                self._buf.close()
            self._buf = mmap.mmap(-1, size)
        if self.direct:
            try:
                # in one call: no page cache, so no folio to keep small
                self._stage_write(blob, size, size)
                return
            except OSError as exc:  # a file system that took the flag, not the write
                if exc.errno != errno.EINVAL or self.end() % DIRECT_ALIGN:
                    raise
                self.direct = not _set_direct(self.fd, False)
                if self.direct:
                    raise
        self._stage_write(blob, size, WRITE_SLICE)  # padded still: the regions were counted so

    def _stage_write(self, blob, size: int, slice_: int) -> None:
        """`blob` padded with zeros to `size`, written from the page-aligned buffer; the
        copy is made without the GIL where the extension is built."""
        if write_slices is not None:
            write_slices(self.fd, blob, slice_, self._buf, size)
            return
        self._buf[:len(blob)] = blob
        self._buf[len(blob):size] = bytes(size - len(blob))
        with memoryview(self._buf) as whole, whole[:size] as region:
            write_all(self.fd, region, slice_)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._buf is not None:
            self._buf.close()
            self._buf = None


class SideCopier:
    """Copies regions of a side file to the end of another file (export). A region that
    starts on DIRECT_ALIGN is read direct, a thread reading the next chunk while this one
    is written; others are copied by the kernel (copy_file_range)."""

    def __init__(self, db_path: str):
        path = side_path(db_path)
        self.fd = os.open(path, os.O_RDONLY | O_BINARY)
        self.direct_fd = -1
        if O_DIRECT:
            try:
                self.direct_fd = os.open(path, os.O_RDONLY | O_BINARY | O_DIRECT)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    os.close(self.fd)
                    raise
        self._bufs: list[mmap.mmap] = []

    def copy(self, dst: int, offset: int, size: int) -> None:
        if self.direct_fd >= 0 and offset % DIRECT_ALIGN == 0:
            if self._copy_direct(dst, offset, size):
                return
            os.close(self.direct_fd)  # refused before a byte was written: not again
            self.direct_fd = -1
        _copy_range(self.fd, dst, offset, size)

    def _copy_direct(self, dst: int, offset: int, size: int) -> bool:
        """False when the first direct read is refused (EINVAL): nothing written yet."""
        if not self._bufs:
            self._bufs = [mmap.mmap(-1, READ_CHUNK) for _ in range(3)]
        full: queue.Queue = queue.Queue()
        free: queue.Queue = queue.Queue()
        for buf in self._bufs:
            free.put(buf)
        reader = threading.Thread(target=self._read, args=(offset, size, free, full),
                                  name="side-read", daemon=True)
        reader.start()
        try:
            left = size
            while left > 0:
                buf, n = full.get()
                if buf is None:  # the reader's error
                    if left == size and n.errno == errno.EINVAL:
                        return False
                    raise n
                with memoryview(buf) as view, view[:n] as part:
                    write_all(dst, part)
                free.put(buf)
                left -= n
            return True
        finally:
            free.put(None)
            reader.join()

    def _read(self, offset: int, size: int, free: queue.Queue, full: queue.Queue) -> None:
        try:
            while size > 0:
                buf = free.get()
                if buf is None:
                    return
                want = min(size, READ_CHUNK)
                with memoryview(buf) as view, \
                        view[:-(-want // DIRECT_ALIGN) * DIRECT_ALIGN] as part:
                    n = os.preadv(self.direct_fd, [part], offset)
                if n <= 0:
                    raise OSError(errno.EIO, f"side file ended {size} bytes early")
                n = min(n, want)
                full.put((buf, n))
                offset += n
                size -= n
        except OSError as exc:
            full.put((None, exc))

    def close(self) -> None:
        for fd in (self.fd, self.direct_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.direct_fd = -1
        for buf in self._bufs:
            buf.close()
        self._bufs = []


def _copy_range(src: int, dst: int, offset: int, size: int) -> None:
    """Kernel-side copy of a region of src to the end of dst."""
    while size > 0:
        try:
            n = os.copy_file_range(src, dst, size, offset)
        except (AttributeError, OSError):  # not Linux, or a file system that cannot
            os.lseek(src, offset, os.SEEK_SET)
            n = os.write(dst, os.read(src, min(size, 8 << 20)))
        if n <= 0:
            raise OSError(f"side file ended {size} bytes early")
        offset += n
        size -= n
