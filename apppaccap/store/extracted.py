"""The catalog's `extracted_files` rows (files extract_file_write wrote): the only writer.

api/extract.py writes and lists them, extract/service.py forgets a deleted capture's,
apc_flush clears them.
"""

from __future__ import annotations

from apppaccap.store.database import tables


def get(catalog, file_id: int):
    return catalog.one("SELECT * FROM extracted_files WHERE id = ?", (file_id,))


def of_capture(catalog, capture_id: int, stream_id: int | None = None):
    if stream_id is None:
        return catalog.read("SELECT * FROM extracted_files WHERE capture_id = ? ORDER BY id",
                            (capture_id,))
    return catalog.read("SELECT * FROM extracted_files WHERE capture_id = ? AND "
                        "stream_id = ? ORDER BY id", (capture_id, stream_id))


def add(catalog, row: dict) -> int:
    """A written file (capture_id, stream_id, file_name, path, size, mime_type, sha256,
    created); its FileId."""
    return catalog.write(lambda c: tables(c)["extracted_files"].insert(row).last_pk)


def delete(catalog, file_ids) -> None:
    ids = [(i,) for i in file_ids]
    if ids:
        catalog.write(lambda c: c.executemany("DELETE FROM extracted_files WHERE id = ?", ids))


def forget_capture(catalog, capture_id: int) -> None:
    catalog.execute("DELETE FROM extracted_files WHERE capture_id = ?", (capture_id,))


def clear(conn) -> None:
    conn.execute("DELETE FROM extracted_files")
