"""The catalog's `searches` rows and their `search_results`: the only writer.

search/engine.py runs the searches and calls these; apc_flush clears them. Functions
taking `conn` run inside the caller's write transaction; those taking `catalog` write it
themselves.
"""

from __future__ import annotations

import json

from apppaccap.store.database import tables


class Gone(Exception):
    """The search row was deleted while it ran (search_delete, apc_flush)."""


def get(catalog, search_id: int):
    return catalog.one("SELECT * FROM searches WHERE id = ?", (search_id,))


def all_rows(catalog):
    return catalog.read("SELECT * FROM searches ORDER BY id")


def add(catalog, *, text: str, capture_id: int | None, start, end, state: int,
        capture_ids: list[int], created: int) -> int:
    return catalog.write(lambda c: tables(c)["searches"].insert(
        {"filter": text, "capture_id": capture_id, "start_ns": start, "end_ns": end,
         "state": state, "captures": json.dumps(capture_ids), "created": created}).last_pk)


def interrupt_unfinished(catalog, *, state: int, unfinished: tuple, finished: int) -> int:
    """At start-up: searches left queued or running get `state` (results kept); how many."""
    marks = ",".join("?" * len(unfinished))
    return catalog.write(lambda c: c.execute(
        f"UPDATE searches SET state = ?, message = 'interrupted: the service stopped', "
        f"finished = ? WHERE state IN ({marks})", (state, finished, *unfinished)).rowcount)


def cancel_queued(catalog, search_id: int, *, state: int, queued: int, finished: int) -> None:
    """A search not started yet is marked cancelled now (its worker checks a flag)."""
    catalog.execute("UPDATE searches SET state = ?, message = 'cancelled', finished = ? "
                    "WHERE id = ? AND state = ?", (state, finished, search_id, queued))


def started(catalog, search_id: int, *, state: int, when: int) -> None:
    catalog.execute("UPDATE searches SET state = ?, started = ? WHERE id = ?",
                    (state, when, search_id))


def finish(catalog, search_id: int, *, state: int, message: str, finished: int,
           completed: int) -> None:
    """The final state; Progress becomes 100 when `state` is `completed`."""
    catalog.execute(
        "UPDATE searches SET state = ?, message = ?, finished = ?, "
        "progress = CASE WHEN ? = ? THEN 100 ELSE progress END WHERE id = ?",
        (state, message, finished, state, completed, search_id))


def add_results(conn, search_id: int, rows: list, *, progress: int, scanned: int, total: int,
                found: int) -> None:
    """Progress and a chunk of results (search_id, item_id, capture_id, packet_id, ts);
    Gone when the search was deleted meanwhile."""
    cur = conn.execute("UPDATE searches SET progress = ?, scanned_packets = ?, "
                       "total_packets = ?, result_count = ? WHERE id = ?",
                       (progress, scanned, total, found, search_id))
    if cur.rowcount == 0:
        raise Gone()
    if rows:
        conn.executemany("INSERT INTO search_results(search_id, item_id, capture_id, "
                         "packet_id, ts) VALUES (?,?,?,?,?)", rows)


def delete(catalog, search_id: int) -> None:
    def run(conn):
        conn.execute("DELETE FROM search_results WHERE search_id = ?", (search_id,))
        conn.execute("DELETE FROM searches WHERE id = ?", (search_id,))
    catalog.write(run)


def clear(conn) -> None:
    conn.execute("DELETE FROM search_results")
    conn.execute("DELETE FROM searches")


def forget_missing_captures(conn) -> None:
    """apc_flush: the searches of a capture that is gone, or with results in one."""
    gone = ("SELECT id FROM searches WHERE (capture_id IS NOT NULL AND capture_id NOT IN "
            "(SELECT id FROM captures)) OR id IN (SELECT search_id FROM search_results "
            "WHERE capture_id NOT IN (SELECT id FROM captures))")
    ids = [r[0] for r in conn.execute(gone).fetchall()]
    conn.executemany("DELETE FROM search_results WHERE search_id = ?", [(i,) for i in ids])
    conn.executemany("DELETE FROM searches WHERE id = ?", [(i,) for i in ids])
