"""Programs the service runs as root (EXECUTE actions): only ones no other account can
change. If another account owns the file, or can write to it or to any directory on the
way to it, that account could replace the program and have root run its own: the same
rule OpenSSH applies to authorized_keys (StrictModes) and sudo to its files. A directory
with the sticky bit (/tmp) is accepted on the way: others cannot rename or remove what
they do not own in it."""

from __future__ import annotations

import os
import stat

_WRITABLE = stat.S_IWGRP | stat.S_IWOTH


def untrusted(path: str) -> str | None:
    """Why root should not run the program at `path`, or None. Both the path as given and
    the file it resolves to (through symlinks) are checked, every directory up to /."""
    me = os.geteuid()
    for start in dict.fromkeys((os.path.abspath(path), os.path.realpath(path))):
        at, first = start, True
        while True:
            try:
                st = os.lstat(at)
            except OSError as exc:
                return f"{at} cannot be examined ({exc.strerror or exc})"
            sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
            if st.st_uid not in (0, me):
                return f"{at} belongs to another account (uid {st.st_uid})"
            # (group root's members can become root anyway: its write bit is no risk -
            # unless an ACL stands behind the group bits: they show its mask then)
            acl = not stat.S_ISLNK(st.st_mode) and _has_acl(at)
            writable = st.st_mode & (stat.S_IWOTH if st.st_gid == 0 and not acl else _WRITABLE)
            if not stat.S_ISLNK(st.st_mode) and writable and not (sticky_dir and not first):
                return f"{at} can be written by other accounts (mode {st.st_mode & 0o7777:o})"
            parent = os.path.dirname(at)
            if parent == at:
                break
            at, first = parent, False
    return None


def _has_acl(path: str) -> bool:
    """An access ACL on `path` (then the group bits are its mask: `setfacl -m u:nobody:rwx`
    shows as group write). No extended attributes here (Windows, some file systems): none."""
    try:
        os.getxattr(path, "system.posix_acl_access", follow_symlinks=False)
    except (OSError, AttributeError):
        return False
    return True
