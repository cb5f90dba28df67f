"""The catalog's `captures` rows and their `capture_processes` links: the only writer.

Live captures (capture/manager.py, capture/session.py), file ingest (ingest.py), the
API (api/captures.py, api/flush.py) and catalog recovery (store/recovery.py) all change
captures through these functions. Functions taking `conn` run inside the caller's write
transaction; those taking `catalog` write it themselves.
"""

from __future__ import annotations

from apppaccap.store.database import tables

# -- reading ----------------------------------------------------------------------------

def get(catalog, capture_id: int):
    """The row, or None."""
    return catalog.one("SELECT * FROM captures WHERE id = ?", (capture_id,))


def ids_in_state(catalog, state: int) -> list[int]:
    return [r[0] for r in catalog.read("SELECT id FROM captures WHERE state = ? ORDER BY id",
                                       (state,))]


def ids_not_in_state(catalog, state: int) -> list[int]:
    return [r[0] for r in catalog.read("SELECT id FROM captures WHERE state != ? ORDER BY id",
                                       (state,))]


# -- writing ----------------------------------------------------------------------------

def create(catalog, row: dict, process_id: int | None = None) -> int:
    """A new capture (columns of `row`), linked to `process_id` when given; its id."""
    def insert(conn):
        capture_id = tables(conn)["captures"].insert(row).last_pk
        if process_id is not None:
            link_process(conn, capture_id, process_id)
        return capture_id
    return catalog.write(insert)


def register(conn, row: dict) -> None:
    """A capture found again under its own id (store/recovery.py); keys that are not
    columns of the table are left out."""
    table = tables(conn)["captures"]
    columns = table.columns_dict
    table.insert({k: v for k, v in row.items() if k in columns})


def link_process(conn, capture_id: int, process_id: int) -> None:
    conn.execute("INSERT OR IGNORE INTO capture_processes(capture_id, process_id) "
                 "VALUES (?, ?)", (capture_id, process_id))


def add_process(catalog, capture_id: int, process_id: int) -> None:
    catalog.write(lambda c: link_process(c, capture_id, process_id))


def update_counters(catalog, capture_id: int, packets: int, size: int, dropped: int,
                    connections: int):
    """A running capture's counters; asynchronous (returns the writer's future)."""
    values = (packets, size, dropped, connections, capture_id)
    return catalog.submit(lambda c: c.execute(
        "UPDATE captures SET packet_count=?, byte_count=?, dropped_count=?, "
        "connection_count=? WHERE id=?", values))


def finish(catalog, capture_id: int, *, state: int, end_time: int, message: str,
           counts: tuple | None = None) -> None:
    """The capture ended: state, end time, message, and its final (packets, bytes,
    connections) when given."""
    if counts is None:
        catalog.execute("UPDATE captures SET state=?, end_time=?, message=? WHERE id=?",
                        (state, end_time, message, capture_id))
    else:
        catalog.execute("UPDATE captures SET state=?, end_time=?, packet_count=?, "
                        "byte_count=?, connection_count=?, message=? WHERE id=?",
                        (state, end_time, *counts, message, capture_id))


def interrupt(catalog, capture_id: int, *, state: int, counts: tuple, end_time: int,
              message: str) -> None:
    """A capture cut off by a crash: its committed (packets, bytes, connections); an end
    time it already has is kept."""
    catalog.execute(
        "UPDATE captures SET state=?, packet_count=?, byte_count=?, connection_count=?, "
        "end_time=coalesce(end_time, ?), message=? WHERE id=?",
        (state, *counts, end_time, message, capture_id))


def set_notes(catalog, capture_id: int, notes: str) -> None:
    catalog.execute("UPDATE captures SET notes=? WHERE id=?", (notes, capture_id))


def delete(catalog, capture_id: int) -> None:
    """The row and its process links (its files are the caller's: api/captures.py)."""
    def run(conn):
        conn.execute("DELETE FROM capture_processes WHERE capture_id=?", (capture_id,))
        conn.execute("DELETE FROM captures WHERE id=?", (capture_id,))
    catalog.write(run)


def clear(conn, keep_state: int) -> None:
    """apc_flush: every capture but those in `keep_state` (active), and every link."""
    conn.execute("DELETE FROM capture_processes")
    conn.execute("DELETE FROM captures WHERE state != ?", (keep_state,))
