"""Writing a file a request names: atomically, below the roots, never through a link.

A temporary `.<name>.<random>.part` is created with O_CREAT|O_EXCL|O_NOFOLLOW (mode 0600)
in the target directory, written, fsynced, then renamed into place. Only a regular file
is ever replaced, and only when the caller asked to overwrite; a symlink, device node,
FIFO or directory target is refused, never replaced. The temporary file is named in the
journal (journal.py) while it exists.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import threading
from dataclasses import dataclass

from apppaccap.errors import InvalidPermissions
from apppaccap.errors import IOFailure
from apppaccap.errors import Malformed
from apppaccap.safefs.journal import add_entry
from apppaccap.safefs.journal import remove_entry
from apppaccap.safefs.roots import DIR_FLAGS
from apppaccap.safefs.roots import OUTSIDE
from apppaccap.safefs.roots import TEMP_FLAGS
from apppaccap.safefs.roots import check_absolute
from apppaccap.safefs.roots import confine
from apppaccap.safefs.roots import is_below
from apppaccap.safefs.roots import open_dir_beneath

# names handed out for blank-path exports that are not written yet (see unique_name)
_handed_out: set[str] = set()
_handed_out_lock = threading.Lock()


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
    if not is_below(real_dir, data):
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
        marker = add_entry(target.journal, os.path.join(real_dir, tmp))
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
        remove_entry(marker)
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


