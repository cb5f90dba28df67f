"""catalog.db: captures, processes, threads, IPs, settings, users and the rest.

Its schema is store/migrations.py (CATALOG); each table's rows have one owner module in
store/ (captures.py, processes.py, ips.py, stats.py, commands.py, searches.py,
triggers.py, extracted.py, users.py, settings.py, usage.py).
"""

from __future__ import annotations

import logging
import os

from apppaccap.store import recovery
from apppaccap.store.database import Database
from apppaccap.store.migrations import CATALOG
from apppaccap.store.migrations import raise_sequence

log = logging.getLogger(__name__)


class Catalog(Database):
    """The catalog database plus the small helpers every module needs.

    Opening checks it first (recovery.py): a damaged catalog, or an empty one while
    capture databases exist, is set aside and the captures are registered again."""

    def __init__(self, data_dir: str):
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        path = os.path.join(data_dir, "catalog.db")
        damage = recovery.examine(path, data_dir)
        if damage:
            aside = recovery.set_aside(path, damage)
        super().__init__(path, CATALOG)
        if damage:
            found = recovery.reregister(self, data_dir)
            log.error("catalog %s was %s: set aside as %s; a new catalog holds the %d "
                      "capture(s) found under captures/ (users, settings, triggers and "
                      "searches of the old catalog are not recovered)",
                      path, damage, os.path.basename(aside), found)
        # A catalog restored from a backup must not hand out an id a capture database
        # file already carries.
        high = recovery.highest_capture_file(data_dir)
        if high:
            self.write(lambda c: raise_sequence(c, "captures", high))
