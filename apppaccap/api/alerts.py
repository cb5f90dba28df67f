"""alert_add, alert_list, alert_mod, alert_remove, alert_events — alerts on usage
accounting, evaluated on the scheduler (analytics/alerts.py), stored in the catalog.

Kinds (ALERT_TYPE_*): THRESHOLD, a stats_group_by row of usage accounting over a window
above a value (e.g. a program sending more than 50 MB in 5 minutes); NEW_PROGRAM, a
program uses the network for the first time; NEW_DESTINATION, a program reaches a remote
address/port/protocol it never used before (a remote port in the kernel's client-port
range, ip_local_port_range, is an inbound connection's client and never counts). "First
time" counts from when alerts began watching: what usage accounting had counted before is
known. LABEL, a connection of a live capture that began after the alert was added and that
nDPI labelled with the alert's label (AppProtocol, App or Category, any case; docs/LABELS.md):
one event per connection, never repeated, across restarts too.
"""

from __future__ import annotations

import os
from typing import Annotated

from apppaccap.analytics.alertlimits import MAX_INTERVAL
from apppaccap.analytics.alertlimits import MAX_WINDOW
from apppaccap.analytics.alertlimits import MIN_THRESHOLD_INTERVAL
from apppaccap.analytics.alertlimits import interval_of
from apppaccap.analytics.groupby import check_group
from apppaccap.analytics.groupby import check_metric
from apppaccap.api.labels import label_filter
from apppaccap.api.registry import Bounds
from apppaccap.api.registry import endpoint
from apppaccap.api.timerange import relative_range
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.filetime import from_ns
from apppaccap.store import alerts as alert_table
from apppaccap.store import triggers as trigger_table
from apppaccap.triggers.store import check_name
from apppaccap.wire import ActionType
from apppaccap.wire import AlertType
from apppaccap.wire import DataType

SECOND = 1_000_000_000
INTERVAL = Bounds(1, MAX_INTERVAL, f"an interval is 1 to {MAX_INTERVAL} seconds")
THRESHOLD = Bounds(0, (1 << 63) - 1, "a threshold is 0 or more")


def alert_object(row, ctx=None) -> dict:
    """The ALERT object; with `ctx`, LastError from the running engine: why its last check
    did not run (a THRESHOLD window holding more usage rows than a check may read)."""
    engine = getattr(ctx, "alerts", None)
    return {"Version": 1, "AlertId": row["id"], "Name": row["name"], "AlertType": row["type"],
            "GroupBy": row["group_by"], "Metric": row["metric"], "Direction": row["direction"],
            "Threshold": row["threshold"], "Window": row["win"],
            "ProcessPath": row["process_path"], "ActionId": row["action_id"],
            "Label": row["label"], "Interval": row["every"], "Enabled": bool(row["enabled"]),
            "FireCount": row["fire_count"], "LastFired": from_ns(row["last_fired"]),
            "Created": from_ns(row["created"]),
            "LastError": engine.errors.get(row["id"], "") if engine is not None else ""}


def event_object(row) -> dict:
    return {"Version": 1, "AlertEventId": row["id"], "AlertId": row["alert_id"],
            "Time": from_ns(row["time"]), "Pid": row["pid"], "ProcessName": row["process_name"],
            "ProcessPath": row["process_path"], "RemoteIp": row["remote_ip"],
            "RemotePort": row["remote_port"], "Value": row["value"], "GroupKey": row["group_key"],
            "Message": row["message"]}


def _alert_type(text: str) -> AlertType:
    t = text.strip().upper().removeprefix("ALERT_TYPE_")
    if t.isdigit() and len(t) < 4 and int(t) in set(AlertType):
        return AlertType(int(t))
    if t in AlertType.__members__:
        return AlertType[t]
    names = ", ".join(f"{m.name} ({m.value})" for m in AlertType)
    raise Malformed(f"alert_type: one of {names}; got {text[:40]!r}")


def _window(text: str) -> int:
    """The window's length in seconds (the relative_time forms: 30s, 5m, 2h, 7d)."""
    if not text.strip():
        raise Malformed("window: required for a THRESHOLD alert (30s, 5m, 2h, 1d)")
    try:
        start, end = relative_range(text)
    except Malformed as err:
        raise Malformed("window: " + err.message.split(": ", 1)[1]) from None
    seconds = (end - start) // SECOND
    if seconds < 1:
        raise Malformed("window: at least 1 second")
    if seconds > MAX_WINDOW:
        raise Malformed(f"window: at most {MAX_WINDOW // 86400}d (a THRESHOLD alert sums its "
                        f"whole window again at every check); got {text.strip()[:40]}")
    return seconds


def _path(path: str) -> str:
    path = path.strip()
    if path and ("\x00" in path or not os.path.isabs(path)):
        raise Malformed("process_path: an absolute path of an executable or a directory")
    return path


def _action(ctx, action_id: int) -> int:
    if action_id:
        row = trigger_table.get_action(ctx.catalog, action_id)
        if row is None:
            raise NotFound(f"action_id: no action {action_id}")
        if row["type"] != ActionType.EXECUTE:
            raise Malformed("action_id: an alert runs EXECUTE actions only (an EXPORT "
                            "exports a capture, and an alert has none)")
    return action_id


def _changed(ctx) -> None:
    engine = getattr(ctx, "alerts", None)
    if engine is not None:
        engine.reload()


def _row(ctx, alert_id: int):
    row = alert_table.get(ctx.catalog, alert_id)
    if row is None:
        raise NotFound(f"alert_id: no alert {alert_id}")
    return row


@endpoint(DataType.JSON)
def alert_add(ctx, *, name: str, alert_type: str, group_by: str = "", metric: str = "bytes",
              direction: str = "both", threshold: Annotated[int, THRESHOLD] = 0,
              window: str = "5m", label: str = "", process_path: str = "",
              action_id: int = 0, interval: Annotated[int, INTERVAL] = 5) -> dict:
    """Add an alert; returns the new ALERT (AlertId, Name, AlertType, GroupBy, Metric,
    Direction, Threshold, Window, ProcessPath, ActionId, Label, Interval, Enabled,
    FireCount, LastFired, Created, LastError).

    It is evaluated every `interval` seconds on usage accounting (setting usage_enabled),
    or for LABEL on the live captures' connections; each firing is an ALERTEVENT
    (alert_events). THRESHOLD raises one event per group row whose metric over the last
    `window` exceeds `threshold`, once until the row falls back below it. LABEL raises one
    event per connection that began after the alert was added and carries `label` (its
    GroupKey is "capture:connection"; Pid, ProcessName, ProcessPath, RemoteIp and
    RemotePort are the connection's). An EXECUTE action (action_id) runs as a COMMAND for
    each event, with the trigger placeholders plus {alert_name}, {process_path},
    {remote_ip}, {remote_port}, {value} (capture_id is 0, export_file empty). At most one
    of an alert's actions is queued or running at once, and all alerts' together at most a
    quarter of max_queued_commands (events come as fast as programs reach new places):
    an event that comes meanwhile is stored all the same, its Message ending with
    "; action not run: " and why.
    A THRESHOLD check sums its whole window again, so its window is at most 7d and its
    interval at least 5 seconds (MALFORMED_REQUEST otherwise; one stored before these
    limits runs within them); a check whose window holds more usage rows than a check may
    read (half a stats_group_by answer's work) is skipped: its LastError (alert_list) says
    so until a check runs, and the log at most hourly.
    - name: the alert's name (1-256 printable characters)
    - alert_type: THRESHOLD (1), NEW_PROGRAM (2), NEW_DESTINATION (3) or LABEL (4), by
      name or number
    - group_by: THRESHOLD: process, program, remote_ip, port, protocol, country, hostname,
      app, app_proto or category (usage accounting's nDPI labels, docs/LABELS.md)
    - metric: THRESHOLD: bytes, packets or connections
    - direction: THRESHOLD: in, out or both
    - threshold: THRESHOLD: fire above this value
    - window: THRESHOLD: the span measured, 30s, 5m, 2h, 1d (s m h d w), at most 7d; default 5m
    - label: LABEL: an AppProtocol, App or Category (label_list), e.g. BitTorrent, VPN
    - process_path: only this executable, or programs below this directory; blank = all
    - action_id: an EXECUTE action to run for each event; 0 = none
    - interval: evaluate every so many seconds, 1..86400 (default 5); THRESHOLD: 5 or more
    """
    fields = _fields(ctx, _alert_type(alert_type), group_by, metric, direction, threshold,
                     window, process_path, action_id, interval, label)
    fields["name"] = check_name(name)
    alert_id = alert_table.add(ctx.catalog, fields)
    _changed(ctx)
    return alert_object(_row(ctx, alert_id), ctx)


def _fields(ctx, kind: AlertType, group_by, metric, direction, threshold, window,
            process_path, action_id, interval, label) -> dict:
    fields = {"type": int(kind), "process_path": _path(process_path),
              "action_id": _action(ctx, action_id), "every": interval}
    if kind == AlertType.LABEL:
        if not label.strip():
            raise Malformed("label: a LABEL alert needs one (an AppProtocol, App or Category)")
        label_filter(label)  # MALFORMED for an overlong or unprintable one
        fields["label"] = label.strip()
    if kind == AlertType.THRESHOLD:
        if not group_by:
            raise Malformed("group_by: a THRESHOLD alert needs one")
        check_group(group_by, "usage")
        check_metric(metric, direction)
        problems = []
        try:
            seconds = _window(window)
        except Malformed as err:
            problems.append(err.message)
        if interval < MIN_THRESHOLD_INTERVAL:
            problems.append(f"interval: a THRESHOLD alert is checked every "
                            f"{MIN_THRESHOLD_INTERVAL} seconds or more (each check sums its "
                            f"whole window again); got {interval}")
        if problems:
            raise Malformed("; ".join(problems))
        fields.update(group_by=group_by, metric=metric, direction=direction,
                      threshold=threshold, win=window.strip(), win_seconds=seconds)
    return fields


@endpoint(DataType.JSON)
def alert_list(ctx) -> list:
    """Every alert (ALERT list, oldest first). LastError: why its last check did not run
    (a THRESHOLD window holding more usage rows than a check may read), else empty."""
    return [alert_object(r, ctx) for r in alert_table.all_alerts(ctx.catalog)]


@endpoint(DataType.JSON)
def alert_mod(ctx, *, alert_id: int, name: str | None = None, group_by: str | None = None,
              metric: str | None = None, direction: str | None = None,
              threshold: Annotated[int, THRESHOLD] | None = None, window: str | None = None,
              label: str | None = None, process_path: str | None = None,
              action_id: int | None = None,
              interval: Annotated[int, INTERVAL] | None = None,
              enabled: bool | None = None) -> dict:
    """Change an alert (parameters left out keep their value); returns the ALERT.

    - alert_id: the alert
    - name: new name
    - group_by: THRESHOLD: new group key
    - metric: THRESHOLD: bytes, packets or connections
    - direction: THRESHOLD: in, out or both
    - threshold: THRESHOLD: new value
    - window: THRESHOLD: new window (30s, 5m, 2h, 1d), at most 7d
    - label: LABEL: new label (connections from then on)
    - process_path: new narrowing; blank = every program
    - action_id: an EXECUTE action; 0 = none
    - interval: evaluate every so many seconds, 1..86400; THRESHOLD: 5 or more
    - enabled: 0 = stop evaluating it (its history stays), 1 = evaluate again
    """
    row = _row(ctx, alert_id)
    kind = AlertType(row["type"])
    # an alert stored before the limits takes them on at its first change (as it runs)
    stored_win = row["win"] if (row["win_seconds"] or 0) <= MAX_WINDOW else \
        f"{MAX_WINDOW // 86400}d"
    fields = _fields(
        ctx, kind, row["group_by"] if group_by is None else group_by,
        row["metric"] if metric is None else metric,
        row["direction"] if direction is None else direction,
        row["threshold"] if threshold is None else threshold,
        stored_win if window is None else window,
        row["process_path"] if process_path is None else process_path,
        row["action_id"] if action_id is None else action_id,
        interval_of(row) if interval is None else interval,
        row["label"] if label is None else label)
    fields.pop("type")
    if name is not None:
        fields["name"] = check_name(name)
    if enabled is not None:
        fields["enabled"] = int(enabled)
    alert_table.update(ctx.catalog, alert_id, fields)
    _changed(ctx)
    return alert_object(_row(ctx, alert_id), ctx)


@endpoint(DataType.INT)
def alert_remove(ctx, *, alert_id: int) -> int:
    """Remove an alert and its history.

    - alert_id: the alert
    """
    _row(ctx, alert_id)
    alert_table.remove(ctx.catalog, alert_id)
    _changed(ctx)
    return 0


@endpoint(DataType.JSON)
def alert_events(ctx, *, alert_id: int = 0, last_id: int = 0, limit: int = 1000) -> list:
    """Alert history, oldest first: ALERTEVENTs (AlertEventId, AlertId, Time, Pid,
    ProcessName, ProcessPath, RemoteIp, RemotePort, Value, GroupKey, Message) with an
    AlertEventId above last_id; a page shorter than `limit` is the last.
    - alert_id: one alert's events; 0 = every alert's
    - last_id: events after this AlertEventId (0 = from the first)
    - limit: page size, 1-10000
    """
    if alert_id:
        _row(ctx, alert_id)
    return [event_object(r) for r in alert_table.events(ctx.catalog, alert_id, last_id, limit)]
