"""LABEL alerts: connections of live captures that nDPI labelled with a given application,
protocol or category (capture/applabels.py), one event per connection.

Only live captures are watched, and only connections that began after the alert was added
(their FirstTime): an ingested file's connections are history, not something happening, and
a capture already running when the alert is added does not flood it with its past.

A connection is labelled a few packets (or its end) after its row is first written, so each
(alert, capture) keeps a cursor: every connection at or below it has its label. Each run
reads the connections above the cursor that carry the label, then moves the cursor up to
just below the first still-unlabelled one. Connections past the cursor may be read again:
the alert's fired connections (its events' GroupKey "capture:connection", loaded from the
catalog on first use, so a restart never fires one twice) keep each to one event.
"""

from __future__ import annotations

from apppaccap.store import alerts as alert_table

PAGE = 1000   # matching connections one run turns into events at most (the rest: next run)
CONN_SQL = (
    "SELECT c.id, c.pid, c.remote_ip, c.remote_port, c.proto, c.first_time, c.app_proto, "
    "c.app, c.category, p.name AS pname, p.path AS ppath FROM connections c "
    "LEFT JOIN processes p ON p.process_id = c.process_id "
    "WHERE c.id > ? AND c.id <= ? AND c.first_time >= ? AND (c.app_proto = ? COLLATE NOCASE "
    "OR c.app = ? COLLATE NOCASE OR c.category = ? COLLATE NOCASE) ORDER BY c.id LIMIT ?")


def key(capture_id: int, conn_id: int) -> str:
    return f"{capture_id}:{conn_id}"


class LabelWatch:
    """The cursors and fired connections of every LABEL alert."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.cursors: dict = {}   # (alert id, capture id) → every connection <= is labelled
        self.fired: dict = {}     # alert id → set of key(capture, connection)

    def forget(self, alert_id: int) -> None:
        self.fired.pop(alert_id, None)
        for k in [k for k in self.cursors if k[0] == alert_id]:
            del self.cursors[k]

    def facts(self, row) -> list[dict]:
        """New labelled connections for the alert `row`: one fact dict each (time, pid,
        process_name, process_path, remote_ip, remote_port, proto, labels, key)."""
        mgr = getattr(self.ctx, "captures", None)
        if mgr is None or not row["label"]:
            return []
        fired = self.fired.get(row["id"])
        if fired is None:
            fired = self.fired[row["id"]] = alert_table.group_keys(self.ctx.catalog, row["id"])
        out = []
        for capture_id, live in list(mgr.live.items()):
            out += self._capture(row, capture_id, live.db, fired)
        return out

    def _capture(self, row, capture_id: int, db, fired: set) -> list[dict]:
        cursor = self.cursors.get((row["id"], capture_id), 0)
        top = db.one("SELECT max(id) FROM connections")[0] or 0
        if top <= cursor:
            return []
        pending = db.one("SELECT min(id) FROM connections WHERE id > ? AND id <= ? AND "
                         "app_proto IS NULL", (cursor, top))[0]
        label = row["label"]
        rows = db.read(CONN_SQL, (cursor, top, row["created"], label, label, label, PAGE))
        # a full page leaves the rest for the next run: the cursor stays below it
        last = rows[-1]["id"] if len(rows) == PAGE else top
        self.cursors[(row["id"], capture_id)] = min(last, pending - 1 if pending else top)
        out = []
        for r in rows:
            k = key(capture_id, r["id"])
            if k in fired:
                continue
            fired.add(k)
            out.append({"time": r["first_time"], "pid": r["pid"], "process_name": r["pname"],
                        "process_path": r["ppath"], "remote_ip": r["remote_ip"],
                        "remote_port": r["remote_port"], "proto": r["proto"], "key": k,
                        "labels": (r["app_proto"], r["app"], r["category"]),
                        "capture_id": capture_id, "conn_id": r["id"]})
        return out
