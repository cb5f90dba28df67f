"""The catalog's `alerts`, `alert_events` and `alert_known` rows: the only writer.

analytics/alerts.py evaluates the alerts and records their events; api/alerts.py checks
what a caller asks and builds the API objects. `alert_known` is what the alert engine has
seen so far (programs that used the network, program → destination pairs), so "new"
means new since the first evaluation, across restarts.
"""

from __future__ import annotations

from apppaccap.filetime import now_ns
from apppaccap.store.database import tables

CHANGES = ("name", "group_by", "metric", "direction", "threshold", "win", "win_seconds",
           "process_path", "action_id", "every", "enabled", "label")
EVENT_COLUMNS = ("alert_id", "time", "pid", "process_name", "process_path", "remote_ip",
                 "remote_port", "value", "group_key", "message")


# -- alerts ---------------------------------------------------------------------------------

def get(catalog, alert_id: int):
    return catalog.one("SELECT * FROM alerts WHERE id = ?", (alert_id,))


def all_alerts(catalog):
    return catalog.read("SELECT * FROM alerts ORDER BY id")


def add(catalog, fields: dict) -> int:
    row = {**fields, "created": now_ns()}
    return catalog.write(lambda c: tables(c)["alerts"].insert(row).last_pk)


def update(catalog, alert_id: int, fields: dict) -> None:
    unknown = set(fields) - set(CHANGES)
    if unknown:
        raise ValueError(f"cannot change {sorted(unknown)}")
    if fields:
        cols = ", ".join(f"{k} = ?" for k in fields)
        catalog.execute(f"UPDATE alerts SET {cols} WHERE id = ?", (*fields.values(), alert_id))


def remove(catalog, alert_id: int) -> None:
    """The alert and its history."""
    def run(conn):
        conn.execute("DELETE FROM alert_events WHERE alert_id = ?", (alert_id,))
        conn.execute("DELETE FROM alerts WHERE id = ?", (alert_id,))
    catalog.write(run)


# -- events ---------------------------------------------------------------------------------

def add_events(catalog, events: list[dict]) -> list[int]:
    """Store events (dicts of EVENT_COLUMNS) and count them on their alerts; their ids."""
    def run(conn):
        ids = []
        for e in events:
            cur = conn.execute(
                f"INSERT INTO alert_events({','.join(EVENT_COLUMNS)}) VALUES "
                f"({','.join('?' * len(EVENT_COLUMNS))})", [e[k] for k in EVENT_COLUMNS])
            ids.append(cur.lastrowid)
            conn.execute("UPDATE alerts SET fire_count = fire_count + 1, last_fired = ? "
                         "WHERE id = ?", (e["time"], e["alert_id"]))
        return ids
    return catalog.write(run) if events else []


def events(catalog, alert_id: int, last_id: int, limit: int):
    """Events with id > last_id (of one alert, or all when alert_id is 0), oldest first."""
    if alert_id:
        return catalog.read("SELECT * FROM alert_events WHERE alert_id = ? AND id > ? "
                            "ORDER BY id LIMIT ?", (alert_id, last_id, limit))
    return catalog.read("SELECT * FROM alert_events WHERE id > ? ORDER BY id LIMIT ?",
                        (last_id, limit))


def group_keys(catalog, alert_id: int) -> set:
    """The GroupKeys an alert has fired for (a LABEL alert's: the connections)."""
    return {r[0] for r in catalog.read("SELECT group_key FROM alert_events WHERE alert_id = ?",
                                       (alert_id,))}


def last_event_id(catalog) -> int:
    row = catalog.one("SELECT max(id) FROM alert_events")
    return row[0] or 0 if row else 0


# -- what has been seen ---------------------------------------------------------------------

def known(catalog, kind: str) -> set:
    return {r[0] for r in catalog.read("SELECT key FROM alert_known WHERE kind = ?", (kind,))}


def add_known(catalog, kind: str, keys, when: int) -> None:
    keys = list(keys)
    if keys:
        catalog.write(lambda c: c.executemany(
            "INSERT OR IGNORE INTO alert_known VALUES (?, ?, ?)",
            [(kind, k, when) for k in keys]))
