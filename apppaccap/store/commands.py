"""The catalog's `commands` rows (asynchronous COMMANDs, jobs.py): the only writer."""

from __future__ import annotations

import json

from apppaccap.store.database import tables

# Columns a command's progress may change (jobs.py: Jobs._update).
CHANGING = ("state", "progress", "message", "result", "started", "finished")


def get(catalog, uid: str):
    return catalog.one("SELECT * FROM commands WHERE uid = ?", (uid,))


def all_rows(catalog):
    return catalog.read("SELECT * FROM commands ORDER BY created")


def add(catalog, uid: str, ctype: str, state: int, params: dict, created: int) -> None:
    catalog.write(lambda c: tables(c)["commands"].insert(
        {"uid": uid, "type": ctype, "state": state, "params": json.dumps(params),
         "created": created}))


def update(catalog, uid: str, **fields) -> None:
    unknown = set(fields) - set(CHANGING)
    if unknown:
        raise ValueError(f"commands: cannot change {sorted(unknown)}")
    cols = ", ".join(f"{k} = ?" for k in fields)
    catalog.execute(f"UPDATE commands SET {cols} WHERE uid = ?", (*fields.values(), uid))


def interrupt_unfinished(catalog, *, state: int, unfinished: tuple, finished: int) -> int:
    """At start-up: commands left queued or running by a stop get `state`; how many."""
    marks = ",".join("?" * len(unfinished))
    return catalog.write(lambda c: c.execute(
        f"UPDATE commands SET state=?, message='interrupted: the service stopped', "
        f"finished=? WHERE state IN ({marks})", (state, finished, *unfinished)).rowcount)


def delete(catalog, uid: str) -> None:
    catalog.execute("DELETE FROM commands WHERE uid = ?", (uid,))


def forget_pointing(conn, finished: tuple, export_paths: list[str]) -> None:
    """apc_flush: finished commands whose capture or search is gone, or whose exported
    file was just deleted (`export_paths`)."""
    marks = ",".join("?" * len(finished))
    conn.execute(
        f"DELETE FROM commands WHERE state IN ({marks}) AND ("
        "(json_extract(params, '$.capture_id') IS NOT NULL AND "
        " json_extract(params, '$.capture_id') NOT IN (SELECT id FROM captures)) OR "
        "(json_extract(params, '$.search_id') IS NOT NULL AND "
        " json_extract(params, '$.search_id') NOT IN (SELECT id FROM searches)) OR "
        "json_extract(params, '$.path') IN (SELECT value FROM json_each(?)))",
        (*finished, json.dumps(export_paths)))
