"""Safe file operations at the filesystem boundary: the paths callers name.

The service runs as root, so every path a request names is checked and opened here:

- Confinement: a path must lie below one of a list of root directories (the export or
  ingest roots of the server's command line). Symlinks are resolved first (realpath),
  then the file is opened by walking from the root one component at a time with
  O_NOFOLLOW, so what is opened is what was checked: a symlink swapped in after the
  check makes the open fail instead of escaping. Outside the roots the answer is one
  uniform INVALID_PERMISSIONS that says nothing about the file (exists or not, readable
  or not).
- Reading: opens never block and refuse anything but a regular file (FIFOs, devices,
  directories, sockets) before a byte is read.
- Writing: a temporary `.<name>.<random>.part` created with O_CREAT|O_EXCL|O_NOFOLLOW
  (mode 0600) in the target directory, written, fsynced, then renamed into place. Only
  a regular file is ever replaced, and only when the caller asked to overwrite; a
  symlink, device node, FIFO or directory target is refused, never replaced. Each
  temporary file is recorded in a journal directory while it exists, so start-up can
  remove the leftovers of an export interrupted by a crash or kill -9.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import stat
import threading
from dataclasses import dataclass

from apppaccap.errors import InvalidPermissions
from apppaccap.errors import IOFailure
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound

log = logging.getLogger(__name__)

READ_FLAGS = (os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# the temporary files this module creates: .<name>.<16 hex>.part
PART_RE = re.compile(r"^\..+\.[0-9a-f]{16}\.part$")
JOURNAL_DIR = "partial-writes"  # below the data directory

# Said the same way whether the file exists, is readable or not: no oracle.
OUTSIDE = {
    "ingest": "path: not allowed; files are read only below the server's ingest roots "
              "(apppaccap serve --ingest-root DIR, default <data-dir>/import)",
    "export": "path: not allowed; files are written only below the server's export roots "
              "(apppaccap serve --export-root DIR, default the export directory)",
    "extract": "stream_id: extracted files are written only below <data-dir>/extracted",
}

# names handed out for blank-path exports that are not written yet (see unique_name)
_handed_out: set[str] = set()
_handed_out_lock = threading.Lock()


# -- roots -----------------------------------------------------------------------------------
def ingest_roots(config) -> list[str]:
    """<data-dir>/import plus the --ingest-root directories."""
    return [os.path.join(config.data_dir, "import"), *config.ingest_roots]


def export_roots(config) -> list[str]:
    """The export directory plus the --export-root directories."""
    return [config.export_dir, *config.export_roots]


def _real_roots(roots) -> list[str]:
    return [os.path.realpath(r) for r in roots if r]


def _below(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip("/") + "/")


def _components(real: str, root: str) -> list[str]:
    rest = real[len(root):].strip("/")
    return rest.split("/") if rest else []


def confine(path: str, roots, kind: str) -> tuple[str, list[str]]:
    """(root, components below it) of realpath(path), or INVALID_PERMISSIONS."""
    real = os.path.realpath(path)
    for root in _real_roots(roots):
        if _below(real, root):
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


# -- reading ---------------------------------------------------------------------------------
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


# -- writing ---------------------------------------------------------------------------------
@dataclass
class WriteTarget:
    """Where a file is to be written and under which rules.

    `path` is updated to the name actually written (a generated name may take a free
    suffix when another writer took it first)."""

    path: str
    roots: list | None = None        # confinement (None: the caller's own directory)
    kind: str = "export"
    overwrite: bool = False          # replace an existing regular file
    generated: bool = False          # the name was made up: take name-2, name-3... if taken
    mode: int = 0o600
    group_from_root: bool = False    # chown to the root directory's group (mode then 0640)
    journal: str | None = None       # directory recording temporary files while they exist
    param: str = "path"              # the request parameter named in error messages
    reserved_as: str | None = None   # the name unique_name handed out, freed at the end
    # (data directory, export directory): the service's own files are never a target
    service_dirs: tuple[str, str] | None = None


def as_target(path) -> WriteTarget:
    """A plain path is the program's own choice (tests, internal callers): an existing
    regular file there is replaced, anything else refused, no roots."""
    return path if isinstance(path, WriteTarget) else WriteTarget(str(path), overwrite=True)


def _suffixed(name: str, n: int) -> str:
    """name-n before the extension: out.pcapng → out-2.pcapng."""
    stem, dot, ext = name.rpartition(".")
    if not stem:
        return f"{name}-{n}"
    return f"{stem}-{n}{dot}{ext}"


def unique_name(folder: str, name: str) -> str:
    """A path in folder not existing and not handed out to another unfinished write;
    it stays reserved until the write of a WriteTarget with that path ends."""
    with _handed_out_lock:
        for n in range(1, 100000):
            candidate = os.path.join(folder, name if n == 1 else _suffixed(name, n))
            if candidate not in _handed_out and not os.path.lexists(candidate):
                _handed_out.add(candidate)
                return candidate
    raise IOFailure(f"path: no free file name for {name[:80]!r} in the export directory")


def release(path: str) -> None:
    with _handed_out_lock:
        _handed_out.discard(path)


def check_target(target: WriteTarget) -> WriteTarget:
    """Check a write target now, so the request answers at once (the write checks again):
    confinement, an existing directory, and what is already at the name."""
    dir_fd, name, _gid, _real = _open_target_dir(target)
    try:
        _replaceable(dir_fd, name, target)
    finally:
        os.close(dir_fd)
    return target


def _open_target_dir(target: WriteTarget) -> tuple[int, str, int, str]:
    """(directory fd, file name, group of the root, real directory path) of a target."""
    p = target.param
    path = check_absolute(target.path, p)
    folder, name = os.path.split(path)
    if not name or name in (".", ".."):
        raise Malformed(f"{p}: give a file name, not a directory")
    try:
        if target.roots is None:
            fd = os.open(folder, DIR_FLAGS & ~os.O_NOFOLLOW)
            return fd, name, os.fstat(fd).st_gid, os.path.realpath(folder)
        # only the directory is resolved: the name itself is never followed
        root, parts = confine(folder, target.roots, target.kind)
        _refuse_service_files(os.path.join(root, *parts), name, target)
        fd = open_dir_beneath(root, parts)
        return fd, name, os.stat(root).st_gid, os.path.join(root, *parts)
    except (FileNotFoundError, NotADirectoryError):
        raise Malformed(f"{p}: its directory does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and target.roots is not None:
            raise InvalidPermissions(OUTSIDE[target.kind]) from None
        raise IOFailure(f"{p}: cannot open its directory: {exc.strerror or exc}") from None


def _refuse_service_files(real_dir: str, name: str, target: WriteTarget) -> None:
    """An export root may contain the data directory (or be it): the catalog, capture
    databases and side files must never be replaced by an export. Inside the data
    directory only the export directory takes writes, and when the export directory is
    the data directory itself, only names ending in .pcapng (none of the service's own)."""
    if target.service_dirs is None:
        return
    data, export = (os.path.realpath(d) for d in target.service_dirs)
    if not _below(real_dir, data):
        return
    if real_dir == export and (export != data or name.lower().endswith(".pcapng")):
        return
    raise InvalidPermissions(f"{target.param}: not allowed; the data directory holds the "
                             "service's own files (export to the export directory)")


def _replaceable(dir_fd: int, name: str, target: WriteTarget) -> bool:
    """False when nothing is at name; True for something the write may go past: a regular
    file to replace (overwrite), or anything at all when the name was generated (the
    commit takes the next free name). Otherwise MALFORMED_REQUEST."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    p = target.param
    if target.generated:
        return True
    if stat.S_ISDIR(st.st_mode):
        raise Malformed(f"{p}: is a directory; give a file name")
    if not stat.S_ISREG(st.st_mode):
        raise Malformed(f"{p}: exists and is not a regular file (a symlink, device, FIFO or "
                        "socket is never replaced)")
    if not target.overwrite:
        raise Malformed(f"{p}: exists; pass overwrite=1 to replace it")
    return True


@contextlib.contextmanager
def atomic_write(target):
    """Yield a binary file object; on success its bytes appear at target.path at once
    (a reader never sees half a file), on failure nothing is left behind."""
    target = as_target(target)
    try:
        dir_fd, name, root_gid, real_dir = _open_target_dir(target)
    except BaseException:
        release_target(target)
        raise
    short = name.encode("utf-8", "surrogateescape")[:200].decode("utf-8", "ignore")
    tmp = f".{short}.{secrets.token_hex(8)}.part"  # within NAME_MAX whatever the name
    marker = None
    fh = None
    try:
        _replaceable(dir_fd, name, target)  # fail before writing gigabytes
        fd = os.open(tmp, TEMP_FLAGS, 0o600, dir_fd=dir_fd)
        fh = os.fdopen(fd, "wb")
        marker = _journal_add(target.journal, os.path.join(real_dir, tmp))
        try:
            yield fh
        except OSError as exc:
            raise IOFailure(f"{target.param}: writing failed: {exc.strerror or exc}") from None
        fh.flush()
        os.fsync(fh.fileno())
        _set_mode(fh.fileno(), target, root_gid)
        fh.close()
        final = _commit(dir_fd, tmp, name, target)
        tmp = None
        target.path = os.path.join(os.path.dirname(target.path), final)
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)  # the rename itself survives a crash
    except OSError as exc:
        raise IOFailure(f"{target.param}: writing failed: {exc.strerror or exc}") from None
    finally:
        if fh is not None and not fh.closed:
            with contextlib.suppress(OSError):
                fh.close()
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
        os.close(dir_fd)
        _journal_remove(marker)
        release_target(target)


def release_target(target: WriteTarget) -> None:
    """Free a generated name that will not be written (or has been)."""
    if target.reserved_as:
        release(target.reserved_as)


def _set_mode(fd: int, target: WriteTarget, root_gid: int) -> None:
    mode = target.mode
    if target.group_from_root and root_gid >= 0:
        os.fchown(fd, -1, root_gid)
        mode |= 0o040  # group-readable by the root directory's group
    os.fchmod(fd, mode)


def _commit(dir_fd: int, tmp: str, name: str, target: WriteTarget) -> str:
    """Put the temporary file in place; returns the name it got."""
    if target.overwrite:
        _replaceable(dir_fd, name, target)  # still a regular file (or nothing)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return name
    for n in range(1, 100000 if target.generated else 2):
        candidate = name if n == 1 else _suffixed(name, n)
        try:
            # link() never replaces: an existing name (a file, a symlink, anything) fails
            os.link(tmp, candidate, src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
                    follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise
            # a file system without hard links: check, then rename (a tiny race, and
            # rename never writes through a symlink or into a device)
            if _exists(dir_fd, candidate):
                continue
            os.rename(tmp, candidate, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return candidate
        os.unlink(tmp, dir_fd=dir_fd)
        return candidate
    if target.generated:
        raise IOFailure(f"{target.param}: no free file name for {name[:80]!r}")
    raise Malformed(f"{target.param}: exists; pass overwrite=1 to replace it")


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


# -- the journal of temporary files, and start-up clean-up ------------------------------------
def _journal_add(journal: str | None, tmp_path: str) -> str | None:
    if not journal:
        return None
    try:
        os.makedirs(journal, mode=0o700, exist_ok=True)
        marker = os.path.join(journal, secrets.token_hex(8))
        fd = os.open(marker, TEMP_FLAGS, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(tmp_path)
        return marker
    except OSError as exc:  # the write itself is still safe; only the clean-up hint is lost
        log.warning("cannot record temporary file %s: %s", tmp_path, exc.strerror or exc)
        return None


def _journal_remove(marker: str | None) -> None:
    if marker:
        with contextlib.suppress(OSError):
            os.unlink(marker)


def remove_leftovers(ctx) -> int:
    """At start-up, before anything writes: remove the temporary files of writes cut off
    by a crash (those the journal names, and any `.<name>.<16 hex>.part` directly in an
    export root); returns how many."""
    roots = [*export_roots(ctx.config), os.path.join(ctx.config.data_dir, "extracted")]
    return _remove_leftovers(os.path.join(ctx.config.data_dir, JOURNAL_DIR), roots)


def _remove_leftovers(journal: str, roots) -> int:
    removed = 0
    names = []
    with contextlib.suppress(FileNotFoundError):
        names = os.listdir(journal)
    for entry in names:
        marker = os.path.join(journal, entry)
        try:
            with open(marker, encoding="utf-8") as fh:
                removed += _remove_part(fh.read(), roots)
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("journal entry %s unreadable: %s", marker, exc)
        with contextlib.suppress(OSError):
            os.unlink(marker)
    for root in _real_roots(roots):
        with contextlib.suppress(OSError):
            for name in os.listdir(root):
                if PART_RE.match(name):
                    removed += _remove_part(os.path.join(root, name), roots)
    if removed:
        log.info("removed %d temporary file(s) of interrupted exports", removed)
    return removed


def _remove_part(path: str, roots) -> int:
    """Unlink one temporary file if it still is one of ours: a regular file with our name
    pattern, in a directory below the roots reached without symlinks."""
    folder, name = os.path.split(path)
    if not PART_RE.match(name) or not os.path.isabs(folder):
        return 0
    try:
        root, parts = confine(folder, roots, "export")
        if os.path.realpath(folder) != os.path.normpath(folder):
            return 0  # the directory became a symlink since: not ours to touch
        dir_fd = open_dir_beneath(root, parts)
    except (InvalidPermissions, OSError):
        return 0
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return 0
        os.unlink(name, dir_fd=dir_fd)
        return 1
    except OSError:
        return 0
    finally:
        os.close(dir_fd)
