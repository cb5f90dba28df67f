"""Packet bytes: a capture's `blocks` rows, each holding many packets' bytes.

A block is stored inline (`data`, live captures: small batches, one SQLite writer) or,
for file ingest, in the capture's side file `<id>.bytes` next to its database
(`file_off`, `size`; `data` left empty). Copying ingested bytes through SQLite's WAL
writes them twice and ran at a third of the disk's speed (251 against 752 MB/s
measured), so bulk loads append them to the side file and the row points there.
Packets address bytes the same way in both cases: (blk, off, caplen) within the block.
"""

from __future__ import annotations

import os
import sqlite3

O_BINARY = getattr(os, "O_BINARY", 0)  # Windows would translate newlines without it


def _read_at(fh, size: int, offset: int) -> bytes:
    fh.seek(offset)
    return fh.read(size)


def side_path(db_path: str) -> str:
    """The side file of a capture database: captures/12.db → captures/12.bytes."""
    stem = db_path[:-3] if db_path.endswith(".db") else db_path
    return stem + ".bytes"


def add_block(conn, blob) -> int:
    """Insert one block (in the caller's transaction); returns its id. `blob` is the bytes,
    or (offset, size) of a region of the side file already written (store/sidefile.py)."""
    if isinstance(blob, tuple):
        return conn.execute("INSERT INTO blocks(data, file_off, size) VALUES (x'', ?, ?)",
                            blob).lastrowid
    return conn.execute("INSERT INTO blocks(data) VALUES (?)", (blob,)).lastrowid


class BlockReader:
    """Reads blocks of one capture database through `conn` (any sqlite3 connection to it),
    keeping the last block read: packets come in block order."""

    def __init__(self, conn, db_path: str | None = None):
        self.conn = conn
        self.path = db_path
        self.blk, self.data = None, b""
        self._fh = None

    def _side(self):
        if self._fh is None:
            path = self.path
            if path is None:
                path = next(r[2] for r in self.conn.execute("PRAGMA database_list")
                            if r[1] == "main")
            self._fh = open(side_path(path), "rb")
        return self._fh

    def _row(self, blk: int):
        try:
            return self.conn.execute("SELECT data, file_off, size FROM blocks WHERE id = ?",
                                     (blk,)).fetchone()
        except sqlite3.OperationalError:   # a database not migrated yet: inline only
            row = self.conn.execute("SELECT data FROM blocks WHERE id = ?", (blk,)).fetchone()
            return (row[0], None, None) if row else None

    def get(self, blk: int) -> bytes:
        """The whole block (b"" when it does not exist)."""
        if blk != self.blk:
            row = self._row(blk)
            if row is None:
                data = b""
            elif row[1] is None:
                data = bytes(row[0]) if row[0] is not None else b""
            else:
                data = _read_at(self._side(), row[2], row[1])
            self.blk, self.data = blk, data
        return self.data

    def packet(self, blk: int, off: int, caplen: int) -> bytes:
        """One packet's bytes without reading its whole block."""
        if blk == self.blk:
            return self.data[off:off + caplen]
        row = self._row(blk)
        if row is None:
            return b""
        if row[1] is None:
            return bytes(row[0][off:off + caplen]) if row[0] is not None else b""
        return _read_at(self._side(), max(0, min(caplen, row[2] - off)), row[1] + off)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
