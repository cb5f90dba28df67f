"""Alerts: evaluated on the scheduler, from usage accounting (usage/recorder.py).

Usage accounting counts every program's traffic all the time (setting usage_enabled), so
alerts watch it rather than a capture:
- an observer job (every second) reads the seconds the recorder's ring gained since its
  last look and notes, in the catalog's `alert_known`, each program (executable path)
  and each program → remote address/port/protocol seen for the first time; the first
  such note of a kind is news for every alert of that kind. The first observation ever
  learns what usage accounting had already counted (its minute rows and ring) without
  news, so "new" means new since alerts began watching, across restarts;
- each alert has its own job every `every` seconds (default 5): NEW_PROGRAM and
  NEW_DESTINATION turn the news since their last run into events (narrowed by
  process_path; a remote port in the kernel's client-port range is an inbound
  connection's client, not a destination: see ephemeral_ports); THRESHOLD runs the
  group-by (analytics/groupby.py) over its window and raises an event for each row above
  the threshold, once until the row falls below; LABEL reads the live captures'
  connections labelled with its label (analytics/labelalerts.py), one event each.

An event is stored (store/alerts.py) and, when the alert names an EXECUTE action, runs it
as a COMMAND through the trigger machinery (triggers/runner.py) with the placeholders
{alert_name}, {pid}, {process_name}, {process_path}, {remote_ip}, {remote_port}, {value};
at most one of an alert's actions is queued or running at once (analytics/alertactions.py:
the Message of an event whose action was skipped says so).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from apscheduler.executors.pool import ThreadPoolExecutor

from apppaccap.analytics.alertactions import AlertActions
from apppaccap.analytics.alertlimits import CHECK_SECONDS
from apppaccap.analytics.alertlimits import CHECK_WORK
from apppaccap.analytics.alertlimits import MAX_WINDOW
from apppaccap.analytics.alertlimits import SKIPPED_LOG_EVERY
from apppaccap.analytics.alertlimits import interval_of
from apppaccap.analytics.groupby import SECOND
from apppaccap.analytics.groupby import Budget
from apppaccap.analytics.groupby import group
from apppaccap.analytics.groupby import program_names
from apppaccap.analytics.groupby import usage_flows
from apppaccap.analytics.labelalerts import LabelWatch
from apppaccap.errors import AppError
from apppaccap.errors import Busy
from apppaccap.filetime import now_ns
from apppaccap.store import alerts as alert_table
from apppaccap.triggers.runner import ActionRunner
from apppaccap.wire import AlertType

log = logging.getLogger(__name__)

EXECUTOR = "alerts"
OBSERVER = "alerts-observe"  # the observer's own thread: no slow alert check delays it
MAX_NEWS = 10_000
PROGRAM, DESTINATION, SEEDED = "program", "destination", "seeded"
NAME, NAME_ONLY = "name", "name_only"  # comm-length names: all seen, seen without a path
KINDS = (PROGRAM, NAME, NAME_ONLY, DESTINATION)
PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6"}


def short_name(name: str, path: str) -> str:
    """The program's name as the kernel's comm holds it (15 characters of the executable's
    file name): the one form every sighting has, with or without a path."""
    return (os.path.basename(path) if path else name)[:15]


def destination_key(short: str, ip: str, port: int, proto: int) -> str:
    return f"{short}|{proto}|{ip}|{port}"


class AlertEngine:
    """The observer, one job per enabled alert, the news between them."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.lock = threading.Lock()
        self.news: list = []     # (seq, kind, fact dict)
        self.seq = 0
        self.cursors: dict = {}  # alert id → last news seq it consumed
        self.above: dict = {}    # THRESHOLD alert id → keys above the threshold last time
        self.skipped: dict = {}  # THRESHOLD alert id → when its skipped check was last logged
        self.errors: dict = {}   # alert id → why its last check did not run (LastError)
        self.last_second = -1    # the ring's last second the observer read
        self.known = {kind: set() for kind in KINDS}
        self.jobs: list[str] = []
        self.runner = ActionRunner(ctx)
        self.actions = AlertActions(ctx, self.runner)  # within its bound: alertactions.py
        self.ephemeral = ephemeral_ports()
        self.labels = LabelWatch(ctx)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        scheduler = self.ctx.jobs.scheduler
        for alias, threads in ((EXECUTOR, 2), (OBSERVER, 1)):
            try:
                scheduler.add_executor(ThreadPoolExecutor(threads), alias=alias)
            except ValueError:
                pass  # a restarted engine on the same scheduler
        for kind in KINDS:
            self.known[kind] = alert_table.known(self.ctx.catalog, kind)
        self._add_job(self.observe, "alerts:observe", 1, executor=OBSERVER)
        self.reload()

    def stop(self) -> None:
        self.runner.stopping.set()
        for job_id in self.jobs:
            try:
                self.ctx.jobs.scheduler.remove_job(job_id)
            except Exception:  # noqa: BLE001 - already gone (scheduler shut down)
                pass
        self.jobs = []

    def reload(self) -> None:
        """(Re)schedule one job per enabled alert after a change."""
        with self.lock:
            for job_id in [j for j in self.jobs if j.startswith("alert:")]:
                try:
                    self.ctx.jobs.scheduler.remove_job(job_id)
                except Exception:  # noqa: BLE001 - it may have gone already
                    pass
                self.jobs.remove(job_id)
            rows = alert_table.all_alerts(self.ctx.catalog)
            for alert_id in {k[0] for k in self.labels.cursors} - {r["id"] for r in rows}:
                self.labels.forget(alert_id)  # removed
            for row in rows:
                self.cursors.setdefault(row["id"], self.seq)  # news from now on
            for row in rows:
                if row["enabled"]:
                    self._add_job(self.evaluate, f"alert:{row['id']}", interval_of(row),
                                  args=(row["id"],))

    def _add_job(self, fn, job_id: str, seconds: int, args=(), executor=EXECUTOR) -> None:
        self.ctx.jobs.scheduler.add_job(fn, "interval", seconds=seconds, id=job_id, args=args,
                                        executor=executor, replace_existing=True,
                                        max_instances=1, coalesce=True)
        self.jobs.append(job_id)

    # -- observing usage accounting ----------------------------------------------------------
    def _recorder(self):
        service = getattr(self.ctx, "usage", None)
        return service.recorder if service is not None else None

    def observe(self) -> None:
        """Note programs and destinations seen for the first time (see the module doc)."""
        try:
            self._observe()
        except AppError as err:  # a full disk, a closed catalog: said in a line, retried
            log.warning("alerts: observation failed: %s", err.message)
        except Exception:  # noqa: BLE001 - an observation fails alone, the next one runs
            log.exception("alerts: observation failed")

    def _observe(self) -> None:
        rec = self._recorder()
        if rec is None or not rec.ring:
            return
        last = rec.ring[-1][0]
        if last <= self.last_second:
            return
        seconds = rec.seconds(self.last_second + 1, last)
        self.last_second = last
        seen: dict = {}
        for second, by_key, _flows in seconds:
            for (pid, ip, port, proto, _d), (_p, _b) in by_key.items():
                if pid:
                    seen.setdefault((pid, ip, port, proto), second)
        if not seen:
            return
        names = program_names(self.ctx.catalog, rec, {k[0] for k in seen})
        seeding = alert_table.known(self.ctx.catalog, SEEDED) == set()
        if seeding:
            self._seed(names)
        lo, hi = self.ephemeral
        # earliest first; within a second a real destination before a client-range port,
        # so a new program's event names where it went
        order = sorted(seen.items(), key=lambda kv: (kv[1], lo <= kv[0][2] <= hi))
        learned = {kind: set() for kind in KINDS}
        news = []
        for (pid_id, ip, port, proto), second in order:
            pid, name, path = names.get(pid_id, (0, "", ""))
            short = short_name(name, path)
            if not short:
                continue
            fact = {"pid": pid, "process_name": name, "process_path": path, "remote_ip": ip,
                    "remote_port": port, "proto": proto, "time": second * SECOND}
            if self._is_new(short, path, learned):
                news.append((PROGRAM, fact))
            self._learn(short, path, learned)
            if proto in (6, 17) and lo <= port <= hi:
                continue  # a client's port: the program answered, it did not go there
            dest = destination_key(short, ip, port, proto)
            if dest not in self.known[DESTINATION] and dest not in learned[DESTINATION]:
                learned[DESTINATION].add(dest)
                news.append((DESTINATION, fact))
        when = now_ns()
        for kind, keys in learned.items():
            keys -= self.known[kind]
            alert_table.add_known(self.ctx.catalog, kind, keys, when)
            self.known[kind] |= keys
        if seeding:
            alert_table.add_known(self.ctx.catalog, SEEDED, [""], when)
            return  # the first look learns what is there: no news
        with self.lock:
            for kind, fact in news:
                self.seq += 1
                self.news.append((self.seq, kind, fact))
            if len(self.news) > MAX_NEWS:
                del self.news[:len(self.news) - MAX_NEWS]

    def _is_new(self, short: str, path: str, learned: dict) -> bool:
        """A program is known by its executable's path; when usage accounting could not
        learn the path (a process gone before its lookup has only its 15-character comm
        name), by that name. A path is new unless a name-only sighting of the same name
        came first; a name is new unless any sighting (path or not) had that name."""
        def has(kind, key):
            return key in self.known[kind] or key in learned[kind]
        if path:
            return not has(PROGRAM, path) and not has(NAME_ONLY, short)
        return not has(NAME, short)

    @staticmethod
    def _learn(short: str, path: str, learned: dict) -> None:
        learned[NAME].add(short)
        if path:
            learned[PROGRAM].add(path)
        else:
            learned[NAME_ONLY].add(short)

    def _seed(self, names_now: dict) -> None:
        """Everything usage accounting counted before alerts watched is known."""
        rows = self.ctx.catalog.read("SELECT DISTINCT process_id, remote_ip, remote_port, proto "
                                     "FROM usage_minute WHERE process_id != 0")
        names = program_names(self.ctx.catalog, self._recorder(), {r[0] for r in rows})
        names.update(names_now)
        learned = {kind: set() for kind in KINDS}
        lo, hi = self.ephemeral
        for pid_id, ip, port, proto in rows:
            _pid, name, path = names.get(pid_id, (0, "", ""))
            short = short_name(name, path)
            if short:
                self._learn(short, path, learned)
                if not (proto in (6, 17) and lo <= port <= hi):
                    learned[DESTINATION].add(destination_key(short, ip, port, proto))
        when = now_ns()
        for kind, keys in learned.items():
            alert_table.add_known(self.ctx.catalog, kind, keys, when)
            self.known[kind] |= keys

    # -- evaluating one alert ------------------------------------------------------------------
    def evaluate(self, alert_id: int) -> None:
        try:
            row = alert_table.get(self.ctx.catalog, alert_id)
            if row is None or not row["enabled"]:
                return
            if row["type"] == AlertType.THRESHOLD:
                events = self._threshold(row)
            elif row["type"] == AlertType.LABEL:
                events = self._labelled(row)
            else:
                events = self._news(row)
            if events:
                runs = self.actions.plan(row, events)  # a skipped action is said on its event
                try:
                    alert_table.add_events(self.ctx.catalog, events)
                except BaseException:
                    self.actions.drop(runs)
                    raise
                self.actions.start(row, runs)
            self.errors.pop(alert_id, None)
        except Busy as err:  # a window with more rows than a check may read: said hourly
            self.errors[alert_id] = f"check skipped: {err.message}"  # alert_list shows it
            if time.monotonic() - self.skipped.get(alert_id, -SKIPPED_LOG_EVERY) \
                    >= SKIPPED_LOG_EVERY:
                self.skipped[alert_id] = time.monotonic()
                log.warning("alert %s: check skipped: %s", alert_id, err.message)
        except AppError as err:  # a full disk, a closed catalog: said in a line, retried
            log.warning("alert %s: evaluation failed: %s", alert_id, err.message)
        except Exception:  # noqa: BLE001 - one alert's failure never stops the others
            log.exception("alert %s: evaluation failed", alert_id)

    def _news(self, row) -> list:
        kind = PROGRAM if row["type"] == AlertType.NEW_PROGRAM else DESTINATION
        with self.lock:
            since = self.cursors.get(row["id"], self.seq)
            items = [(s, f) for s, k, f in self.news if s > since and k == kind]
            self.cursors[row["id"]] = self.seq
        out = []
        for _seq, f in items:
            if not _narrowed(row["process_path"], f["process_path"]):
                continue
            who = f["process_path"] or f["process_name"]
            proto = PROTOCOLS.get(f["proto"], str(f["proto"]))
            if kind == PROGRAM:
                msg = (f"{who} (pid {f['pid']}) uses the network for the first time: "
                       f"{proto} to {f['remote_ip']} port {f['remote_port']}")
            else:
                msg = (f"{who} (pid {f['pid']}) reaches {proto} {f['remote_ip']} port "
                       f"{f['remote_port']} for the first time")
            out.append(_event(row, f["time"], f, 0, destination_key(
                who, f["remote_ip"], f["remote_port"], f["proto"]) if kind == DESTINATION
                else who, msg))
        return out

    def _labelled(self, row) -> list:
        out = []
        for f in self.labels.facts(row):
            if not _narrowed(row["process_path"], f["process_path"] or ""):
                continue
            who = f["process_path"] or f["process_name"] or "an unknown program"
            named = " / ".join(x for x in dict.fromkeys(f["labels"]) if x)
            msg = (f"{who} (pid {f['pid']}): a {PROTOCOLS.get(f['proto'], f['proto'])} "
                   f"connection to {f['remote_ip']} port {f['remote_port']} labelled "
                   f"{row['label']} ({named}) in capture {f['capture_id']}, connection "
                   f"{f['conn_id']}")
            out.append(_event(row, f["time"], f, 0, f["key"], msg))
        return out

    def _threshold(self, row) -> list:
        end = now_ns()
        seconds = min(max(row["win_seconds"], 1), MAX_WINDOW)  # one stored before the limit
        win = row["win"] if seconds == row["win_seconds"] else f"{MAX_WINDOW // 86400}d"
        start = end - seconds * SECOND
        budget = Budget("usage rows", "the alert's window", CHECK_WORK, CHECK_SECONDS)
        flows, _unit = usage_flows(self.ctx.catalog, self._recorder(), start, end, budget)
        path = row["process_path"]
        pred = (lambda f: _narrowed(path, f.path)) if path else None
        answer = group(flows, row["group_by"], row["metric"], row["direction"], 1000, pred,
                       budget, keep="best")
        col = {"bytes": "Bytes", "packets": "Packets", "connections": "Connections"}
        over = {r["Key"]: r for r in answer["Rows"] if r[col[row["metric"]]] > row["threshold"]}
        before = self.above.get(row["id"], set())
        self.above[row["id"]] = set(over)
        out = []
        for key, r in over.items():
            if key in before:
                continue  # still above: fired when it crossed
            members = answer["members"][key]
            top = max(members, key=lambda f: f.bytes_in + f.bytes_out)
            value = r[col[row["metric"]]]
            fact = {"pid": top.pid, "process_name": top.name, "process_path": top.path,
                    "remote_ip": top.remote_ip if row["group_by"] != "process" else "",
                    "remote_port": top.remote_port or 0}
            msg = (f"{row['group_by']} {r['Name'] or key}: {value} {row['metric']} "
                   f"({row['direction']}) in the last {win}, above {row['threshold']}")
            out.append(_event(row, end, fact, value, str(key), msg))
        return out


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of client ports (ip_local_port_range; Linux's default elsewhere).

    Usage accounting's remote end of a server's accepted connection is the client, on a
    port from this range: such a flow is an inbound connection, not a destination the
    program chose, and counting each as new would flood NEW_DESTINATION (and alert_known)
    on every server. So destinations on these ports are not tracked."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
            lo, hi = (int(x) for x in fh.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def _narrowed(want: str, path: str) -> bool:
    """process_path narrowing: an exact executable, or anything below a directory."""
    if not want:
        return True
    return path == want or path.startswith(want.rstrip("/") + "/")


def _event(row, when: int, fact: dict, value: int, key: str, message: str) -> dict:
    return {"alert_id": row["id"], "time": when, "pid": fact["pid"] or 0,
            "process_name": fact["process_name"] or "",
            "process_path": fact["process_path"] or "",
            "remote_ip": fact["remote_ip"] or "", "remote_port": fact["remote_port"] or 0,
            "value": value, "group_key": key, "message": message}
