"""The catalog's `triggers`, `actions` and `trigger_actions` rows: the only writer.

triggers/store.py validates and builds the API objects, the watcher reads and counts
firings; the rows change here, each change one transaction.

An action with no links is system-wide (it runs for every trigger). Removing a trigger
therefore also removes the actions that belonged to that trigger alone: left behind
without links they would silently turn system-wide and start running (programs!) for
every other trigger. Clearing a trigger's actions removes the links only, as the
reference does (the caller asked for exactly that; the docs say what follows).
"""

from __future__ import annotations

from apppaccap.filetime import now_ns
from apppaccap.store.database import tables

# Columns trigger_set / action_set may change.
TRIGGER_CHANGES = ("name", "path", "filter", "flags")
ACTION_CHANGES = ("name", "type", "path", "params")


# -- reading ----------------------------------------------------------------------------

def get_trigger(catalog, trigger_id: int):
    return catalog.one("SELECT * FROM triggers WHERE id = ?", (trigger_id,))


def get_action(catalog, action_id: int):
    return catalog.one("SELECT * FROM actions WHERE id = ?", (action_id,))


def all_triggers(catalog):
    return catalog.read("SELECT * FROM triggers ORDER BY id")


def all_actions(catalog, trigger_id: int | None = None):
    """Every action, or those linked to one trigger."""
    if trigger_id is None:
        return catalog.read("SELECT * FROM actions ORDER BY id")
    return catalog.read("SELECT a.* FROM actions a JOIN trigger_actions l ON "
                        "l.action_id = a.id WHERE l.trigger_id = ? ORDER BY a.id",
                        (trigger_id,))


def action_ids(catalog, trigger_id: int) -> list[int]:
    return [r[0] for r in catalog.read(
        "SELECT action_id FROM trigger_actions WHERE trigger_id = ? ORDER BY action_id",
        (trigger_id,))]


def trigger_ids(catalog, action_id: int) -> list[int]:
    return [r[0] for r in catalog.read(
        "SELECT trigger_id FROM trigger_actions WHERE action_id = ? ORDER BY trigger_id",
        (action_id,))]


def actions_to_run(catalog, trigger_id: int) -> list:
    """Rows of the actions a firing of `trigger_id` runs: its own plus the system-wide ones."""
    return catalog.read(
        "SELECT * FROM actions a WHERE a.id IN (SELECT action_id FROM trigger_actions "
        "WHERE trigger_id = ?) OR NOT EXISTS (SELECT 1 FROM trigger_actions l "
        "WHERE l.action_id = a.id) ORDER BY a.id", (trigger_id,))


# -- changes ----------------------------------------------------------------------------

def add_trigger(catalog, name, trigger_type, path, bpf, flags) -> int:
    row = {"name": name, "type": trigger_type, "path": path, "filter": bpf, "flags": flags,
           "created": now_ns()}
    return catalog.write(lambda c: tables(c)["triggers"].insert(row).last_pk)


def _set(fields: dict, allowed: tuple) -> tuple[str, tuple]:
    unknown = set(fields) - set(allowed)
    if unknown:
        raise ValueError(f"cannot change {sorted(unknown)}")
    return ", ".join(f"{k} = ?" for k in fields), tuple(fields.values())


def update_trigger(catalog, trigger_id: int, fields: dict) -> None:
    if fields:
        cols, values = _set(fields, TRIGGER_CHANGES)
        catalog.execute(f"UPDATE triggers SET {cols} WHERE id = ?", (*values, trigger_id))


def update_action(catalog, action_id: int, fields: dict) -> None:
    if fields:
        cols, values = _set(fields, ACTION_CHANGES)
        catalog.execute(f"UPDATE actions SET {cols} WHERE id = ?", (*values, action_id))


def _orphans_removed(conn, trigger_id: int) -> None:
    """Drop the trigger's links, and the actions that had no other trigger (see module doc)."""
    conn.execute(
        "DELETE FROM actions WHERE id IN (SELECT action_id FROM trigger_actions "
        "WHERE trigger_id = ?) AND id NOT IN (SELECT action_id FROM trigger_actions "
        "WHERE trigger_id != ?)", (trigger_id, trigger_id))
    conn.execute("DELETE FROM trigger_actions WHERE trigger_id = ?", (trigger_id,))


def remove_trigger(catalog, trigger_id: int) -> None:
    def run(conn):
        _orphans_removed(conn, trigger_id)
        conn.execute("DELETE FROM triggers WHERE id = ?", (trigger_id,))
    catalog.write(run)


def clear_trigger_actions(catalog, trigger_id: int) -> None:
    catalog.execute("DELETE FROM trigger_actions WHERE trigger_id = ?", (trigger_id,))


def link(catalog, trigger_id: int, action_id: int) -> None:
    catalog.execute("INSERT OR IGNORE INTO trigger_actions VALUES (?, ?)",
                    (trigger_id, action_id))


def clear_action_triggers(catalog, action_id: int) -> None:
    catalog.execute("DELETE FROM trigger_actions WHERE action_id = ?", (action_id,))


def add_action(catalog, name, action_type, path, params, trigger_id: int) -> int:
    """The new action's id; linked to `trigger_id` unless it is 0 (system-wide)."""
    row = {"name": name, "type": action_type, "path": path, "params": params,
           "created": now_ns()}

    def run(conn):
        action_id = tables(conn)["actions"].insert(row).last_pk
        if trigger_id:
            conn.execute("INSERT INTO trigger_actions VALUES (?, ?)", (trigger_id, action_id))
        return action_id
    return catalog.write(run)


def remove_action(catalog, action_id: int) -> None:
    def run(conn):
        conn.execute("DELETE FROM trigger_actions WHERE action_id = ?", (action_id,))
        conn.execute("DELETE FROM actions WHERE id = ?", (action_id,))
    catalog.write(run)


def record_firing(catalog, trigger_id: int, capture_id: int | None, error: str = ""):
    """Count a firing (or remember why it failed); asynchronous: called while a program
    is held paused, so it must not wait for the writer (returns its future)."""
    if capture_id:
        sql, args = ("UPDATE triggers SET fire_count = fire_count + 1, last_fired = ?, "
                     "last_capture_id = ?, last_error = '' WHERE id = ?",
                     (now_ns(), capture_id, trigger_id))
    else:
        sql, args = "UPDATE triggers SET last_error = ? WHERE id = ?", (error[:500], trigger_id)
    return catalog.submit(lambda conn: conn.execute(sql, args))
