"""The on-disk spool: batches waiting for ClickHouse, oldest first, bounded in bytes.

A batch is one file `<seq>-<table>-<rows>.json` written atomically (temporary file, then
rename), so a crash leaves whole batches or none. When the spool would exceed its bound the
oldest batches go first; what they held is counted (`gap_rows`, kept in `gap.json` across
restarts) and logged, never silently lost.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading

log = logging.getLogger(__name__)

_NAME = re.compile(r"(\d{16})-([a-z_]+)-(\d+)\.json")


class Spool:
    def __init__(self, directory: str, limit_bytes):
        self.dir = directory
        self.limit = limit_bytes  # a callable: the setting is read at every append
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._files = sorted(n for n in os.listdir(directory) if _NAME.fullmatch(n))
        self._sizes = {n: os.path.getsize(os.path.join(directory, n)) for n in self._files}
        self._seq = int(_NAME.fullmatch(self._files[-1]).group(1)) if self._files else 0
        self.gap_rows, self.gap_batches = self._read_gap()

    # -- size --------------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    @property
    def batches(self) -> int:
        with self._lock:
            return len(self._files)

    # -- in and out --------------------------------------------------------------------
    def append(self, table: str, rows: list) -> None:
        data = json.dumps(rows, separators=(",", ":")).encode()
        with self._lock:
            self._seq += 1
            name = f"{self._seq:016d}-{table}-{len(rows)}.json"
            path = os.path.join(self.dir, name)
            with open(path + ".tmp", "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(path + ".tmp", path)
            self._files.append(name)
            self._sizes[name] = len(data)
            self._bound()

    def oldest(self):
        """(name, table, rows) of the oldest batch, or None."""
        with self._lock:
            if not self._files:
                return None
            name = self._files[0]
        table = _NAME.fullmatch(name).group(2)
        with open(os.path.join(self.dir, name), "rb") as fh:
            return name, table, json.loads(fh.read())

    def done(self, name: str) -> None:
        """The batch reached ClickHouse: forget it."""
        with self._lock:
            if name in self._sizes:
                self._files.remove(name)
                del self._sizes[name]
                os.unlink(os.path.join(self.dir, name))

    # -- the bound ---------------------------------------------------------------------
    def _bound(self) -> None:
        limit = self.limit()
        dropped_rows = dropped = 0
        # the newest batch always stays, even alone above the bound
        while len(self._files) > 1 and sum(self._sizes.values()) > limit:
            name = self._files.pop(0)
            del self._sizes[name]
            dropped_rows += int(_NAME.fullmatch(name).group(3))
            dropped += 1
            os.unlink(os.path.join(self.dir, name))
        if dropped:
            self.gap_rows += dropped_rows
            self.gap_batches += dropped
            self._write_gap()
            log.warning("fleet spool full (%d bytes at most): dropped the %d oldest batches "
                        "(%d rows; %d rows lost to the fleet since this sensor started "
                        "shipping)", limit, dropped, dropped_rows, self.gap_rows)

    def _read_gap(self) -> tuple:
        try:
            with open(os.path.join(self.dir, "gap.json"), "rb") as fh:
                gap = json.loads(fh.read())
            return int(gap["rows"]), int(gap["batches"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0, 0

    def _write_gap(self) -> None:
        path = os.path.join(self.dir, "gap.json")
        with open(path + ".tmp", "w") as fh:
            json.dump({"rows": self.gap_rows, "batches": self.gap_batches}, fh)
        os.replace(path + ".tmp", path)
