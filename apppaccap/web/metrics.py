"""GET /metrics: Prometheus text format (prometheus_client), read from live state at each
scrape by a custom collector (no counters kept on the hot paths).

Same callers as /ajax (credentials.check_get: Host/Origin, Sec-Fetch-Site, the caller-uid
rule, Basic / Bearer / header / cookie, never a token in the URL). Setting
`metrics_enabled` (default 1): 0 answers 404.

Per-program counters come from the usage recorder's per-second ring (the one usage_now
reads): at each scrape the seconds not yet counted are added, so the counters only grow
(the ring holds 10 minutes: scrapes further apart than that miss the seconds in between).
Cardinality is bounded: the first TOP_PROGRAMS program names seen by their bytes keep
their own series for the life of the process (so every series stays monotonic); all
others are added to program="other".
"""

from __future__ import annotations

import threading

from flask import Response
from flask import request
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import CollectorRegistry
from prometheus_client import ProcessCollector
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.core import GaugeMetricFamily

from apppaccap.errors import AppError
from apppaccap.web import credentials
from apppaccap.wire import CommandState

TOP_PROGRAMS = 20
OTHER = "other"
_STATES = {s.value: s.name.lower() for s in CommandState}


class ProgramTotals:
    """Monotonic bytes per program name and direction, fed from the usage ring."""

    def __init__(self):
        self.last_second = None
        self.totals: dict = {}   # (program, "in"/"out") → bytes
        self.named: set = set()
        self.lock = threading.Lock()

    def update(self, rec) -> None:
        with self.lock:
            if rec is None or not rec.ring:
                return
            newest = rec.ring[-1][0]
            first = rec.ring[0][0] if self.last_second is None else self.last_second + 1
            names = dict(rec.programs)
            per: dict = {}
            for _second, by_key, _flows in rec.seconds(first, newest):
                for (pid, _ip, _port, _proto, d), (_p, b) in by_key.items():
                    name = names.get(pid, (0, "", ""))[1] or "<unknown>" if pid else "<unknown>"
                    key = (name, "out" if d == 1 else "in")
                    per[key] = per.get(key, 0) + b
            for (name, d), b in sorted(per.items(), key=lambda kv: -kv[1]):
                if name not in self.named and len(self.named) < TOP_PROGRAMS:
                    self.named.add(name)
                label = name if name in self.named else OTHER
                self.totals[(label, d)] = self.totals.get((label, d), 0) + b
            self.last_second = newest

    def items(self):
        with self.lock:
            return sorted(self.totals.items())


class AppCollector:
    def __init__(self, ctx):
        self.ctx = ctx
        self.programs = ProgramTotals()

    def collect(self):
        ctx = self.ctx
        fams = {name: CounterMetricFamily(f"apppaccap_capture_{name}", text, labels=["capture_id"])
                for name, text in (
                    ("packets", "Packets stored by a live capture"),
                    ("bytes", "Bytes stored by a live capture"),
                    ("dropped", "Packets a live capture lost (libpcap, the sniffer "
                                "process's buffer overflow, failed writes)"),
                    ("attributed", "Packets of a live capture attributed to a process"),
                    ("unknown", "Packets of a live capture no process owned"))}
        queue = GaugeMetricFamily("apppaccap_capture_queue_packets", "Packets waiting "
                                  "between a live capture's sniffers and its pipeline",
                                  labels=["capture_id"])
        writer = GaugeMetricFamily("apppaccap_capture_writer_queue", "Batches waiting for "
                                   "a live capture's database writer", labels=["capture_id"])
        live = dict(ctx.captures.live) if ctx.captures is not None else {}
        for cid, cap in sorted(live.items()):
            label = [str(cid)]
            fams["packets"].add_metric(label, cap.recorder.packets)
            fams["bytes"].add_metric(label, cap.recorder.bytes)
            fams["dropped"].add_metric(label, cap.dropped)
            fams["attributed"].add_metric(label, cap.attributed)
            fams["unknown"].add_metric(label, cap.unknown)
            queue.add_metric(label, cap.queued)
            writer.add_metric(label, cap.db.queued())
        yield from fams.values()
        yield queue
        yield writer
        yield GaugeMetricFamily("apppaccap_active_captures", "Live captures", value=len(live))
        rec = ctx.usage.recorder if getattr(ctx, "usage", None) is not None else None
        yield GaugeMetricFamily("apppaccap_usage_enabled", "Usage accounting is running",
                                value=1 if rec is not None else 0)
        self.programs.update(rec)
        prog = CounterMetricFamily("apppaccap_program_bytes", "Bytes per program (usage "
                                   f"accounting; top {TOP_PROGRAMS} names, the rest as "
                                   "other)", labels=["program", "direction"])
        for (name, d), b in self.programs.items():
            prog.add_metric([name, d], b)
        yield prog
        for table, what in (("commands", "COMMANDs"), ("searches", "Searches")):
            fam = GaugeMetricFamily(f"apppaccap_{table}", f"{what} in the catalog by state",
                                    labels=["state"])
            counts = {r[0]: r[1] for r in ctx.catalog.read(
                f"SELECT state, count(*) FROM {table} GROUP BY state")}
            for value, name in _STATES.items():
                fam.add_metric([name], counts.get(value, 0))
            yield fam


def register(app, ctx) -> None:
    """Add GET /metrics to the app."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AppCollector(ctx))
    ProcessCollector(registry=registry)  # process_resident_memory_bytes and friends

    @app.get("/metrics")
    def metrics():
        if not ctx.settings.get_bool("metrics_enabled"):
            return Response("metrics are off (setting metrics_enabled)\n", 404,
                            mimetype="text/plain")
        try:
            credentials.check_get(ctx, request)
        except AppError as err:
            return Response(err.message + "\n", 403, mimetype="text/plain")
        return Response(generate_latest(registry), 200,
                        headers={"Content-Type": CONTENT_TYPE_LATEST,
                                 "Cache-Control": "no-store"})
