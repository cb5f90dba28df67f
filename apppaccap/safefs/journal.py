"""The journal of temporary files, and the start-up clean-up it makes possible.

While an atomic write (writing.py) has its temporary file, a marker in the journal
directory names it; start-up removes what the markers name (and any stray temporary file
directly in an export root), so an export cut off by a crash or kill -9 leaves nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat

from apppaccap.errors import InvalidPermissions
from apppaccap.safefs.roots import TEMP_FLAGS
from apppaccap.safefs.roots import confine
from apppaccap.safefs.roots import export_roots
from apppaccap.safefs.roots import open_dir_beneath
from apppaccap.safefs.roots import real_roots

log = logging.getLogger(__name__)

# the temporary files this module creates: .<name>.<16 hex>.part
PART_RE = re.compile(r"^\..+\.[0-9a-f]{16}\.part$")
JOURNAL_DIR = "partial-writes"  # below the data directory


def add_entry(journal: str | None, tmp_path: str) -> str | None:
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


def remove_entry(marker: str | None) -> None:
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
    for root in real_roots(roots):
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
