"""Confinement: the root directories a request's path must lie below, and how a path
below a root is opened (one component at a time, never following a symlink)."""

from __future__ import annotations

import contextlib
import errno
import os

from apppaccap.errors import InvalidPermissions
from apppaccap.errors import Malformed

READ_FLAGS = (os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# Said the same way whether the file exists, is readable or not: no oracle.
OUTSIDE = {
    "ingest": "path: not allowed; files are read only below the server's ingest roots "
              "(apppaccap serve --ingest-root DIR, default <data-dir>/import)",
    "export": "path: not allowed; files are written only below the server's export roots "
              "(apppaccap serve --export-root DIR, default the export directory)",
    "extract": "stream_id: extracted files are written only below <data-dir>/extracted",
}


# -- roots -----------------------------------------------------------------------------------
def ingest_roots(config) -> list[str]:
    """<data-dir>/import plus the --ingest-root directories."""
    return [os.path.join(config.data_dir, "import"), *config.ingest_roots]


def export_roots(config) -> list[str]:
    """The export directory plus the --export-root directories."""
    return [config.export_dir, *config.export_roots]


def real_roots(roots) -> list[str]:
    return [os.path.realpath(r) for r in roots if r]


def is_below(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip("/") + "/")


def _components(real: str, root: str) -> list[str]:
    rest = real[len(root):].strip("/")
    return rest.split("/") if rest else []


def confine(path: str, roots, kind: str) -> tuple[str, list[str]]:
    """(root, components below it) of realpath(path), or INVALID_PERMISSIONS."""
    real = os.path.realpath(path)
    for root in real_roots(roots):
        if is_below(real, root):
            return root, _components(real, root)
    raise InvalidPermissions(OUTSIDE[kind])


def check_absolute(path: str, name: str = "path") -> str:
    """A normalised absolute path, or MALFORMED_REQUEST."""
    if not path or "\x00" in path or not os.path.isabs(path):
        raise Malformed(f"{name}: must be an absolute file path")
    return os.path.normpath(path)


def open_dir_beneath(root: str, parts, *, create: bool = False) -> int:
    """A directory fd for root/parts..., every component opened with O_NOFOLLOW relative
    to the one before (a symlink anywhere below the root fails with ELOOP/ENOTDIR).
    `root` must be a real path (no symlink in it); `create` makes missing components
    (mode 0700)."""
    fd = os.open(root, DIR_FLAGS)
    try:
        for part in parts:
            if part in ("", ".", ".."):
                raise OSError(errno.EINVAL, "unexpected path component")
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
            nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd
