"""Live captures: start, stop, recover; the one place that knows every running capture."""

from __future__ import annotations

import logging
import os
import threading

from apppaccap.attribution.kernelowners import EbpfOwners
from apppaccap.attribution.kernelowners import backend_status
from apppaccap.attribution.kernelowners import choose_backend
from apppaccap.attribution.kernelowners import relabel
from apppaccap.attribution.localaddr import LocalAddresses
from apppaccap.attribution.localaddr import interface_addresses
from apppaccap.attribution.owners import LinuxOwners
from apppaccap.attribution.resolver import Attribution
from apppaccap.capture.adapters import default_capture_adapters
from apppaccap.capture.geo import IpResolver
from apppaccap.capture.geo import open_geo_db
from apppaccap.capture.live import LiveCapture
from apppaccap.capture.live import Target
from apppaccap.capture.sniffer import SnifferProcess
from apppaccap.errors import Busy
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.extract.service import attach
from apppaccap.filetime import now_ns
from apppaccap.store import captures as capture_table
from apppaccap.store import processes as process_table
from apppaccap.store import stats as stats_table
from apppaccap.store.capturedb import AGG_ALL
from apppaccap.store.capturedb import AGG_IP
from apppaccap.store.capturedb import AGG_PORT
from apppaccap.store.capturedb import CaptureDb
from apppaccap.store.capturedb import capture_path
from apppaccap.store.faults import reason
from apppaccap.store.ips import add_traffic
from apppaccap.store.reserve import SpaceReserve
from apppaccap.wire import CaptureFlag
from apppaccap.wire import CaptureState

log = logging.getLogger(__name__)



def local_addresses() -> frozenset:
    """This host's addresses now (a capture's Recorder decides directions with them)."""
    return frozenset(interface_addresses())


class CaptureManager:
    def __init__(self, ctx, owners=None):
        self.ctx = ctx
        self.catalog = ctx.catalog
        self.live: dict[int, LiveCapture] = {}
        self._owners = owners
        self._attribution = None
        self._backend_setting = None
        self._ip_resolver = None
        self._lock = threading.Lock()
        self._dbs: dict[int, CaptureDb] = {}  # completed captures opened for reading
        self._starting = 0  # starts between the cap check and their registration
        self.extracts: dict = {}  # capture_id → extract.service.ExtractHandle (extraction on)
        self.reserve = SpaceReserve(ctx.config.data_dir,
                                    lambda: ctx.settings.get_int("disk_reserve_bytes"))
        if not self.reserve.ensure():
            log.warning("no room for the %d-byte space reserve in %s: the disk is nearly full",
                        self.reserve.size, ctx.config.data_dir)

    @property
    def ip_resolver(self):
        if self._ip_resolver is None:
            self._ip_resolver = IpResolver(self.catalog,
                                           open_geo_db(self.ctx.settings.get("geoip_db")))
        return self._ip_resolver

    @property
    def attribution(self):
        setting = self.ctx.settings.get("attribution_backend") or "auto"
        old = self._attribution
        if old is not None and old.users == 0 and setting != self._backend_setting \
                and self._owners is None:
            old.close()   # the setting changed while no capture used the engine
            self._attribution = None
        if self._attribution is None:
            backend = self._owners or choose_backend(setting)
            self._backend_setting = setting
            self._attribution = Attribution(
                backend, self.ctx.processes,
                is_local=LocalAddresses(),  # re-reads interfaces as addresses come and go
                # the fast-path process races short-lived flows for the socket table; with
                # eBPF loaded it only runs if the programs fail to load (resolver.acquire)
                fastpath=isinstance(backend, (LinuxOwners, EbpfOwners)))
            if isinstance(backend, EbpfOwners):
                att = self._attribution
                backend.watch(lambda *seen: relabel(att, *seen))
        return self._attribution

    def attribution_status(self) -> dict:
        """Which attribution backend runs (or would run: the first capture loads it)."""
        setting = self.ctx.settings.get("attribution_backend") or "auto"
        att = self._attribution
        if att is None or (isinstance(att.backend, EbpfOwners)
                           and att.backend.reason == "not started"):
            if setting == "socket-table":
                return {"backend": "socket-table", "setting": setting, "started": False,
                        "reason": "the setting attribution_backend is socket-table"}
            return {"backend": "", "setting": setting, "started": False,
                    "reason": "loaded with the first capture"}
        out = backend_status(att.backend, self._backend_setting)
        out.update(setting=setting, started=True)
        return out

    # -- start ---------------------------------------------------------------
    def _open(self, adapters: list[str], bpf: str):
        names = adapters or default_capture_adapters()
        if not names:
            raise NotFound("adapter: no capturable adapter is up")
        # opened by the capture's own process, out of reach of this one's GIL
        # (docs/INTERNALS.md, Capture)
        return SnifferProcess(list(dict.fromkeys(names)), bpf)

    def _reserve(self) -> None:
        """Count a start against max_active_captures, or refuse it with BUSY."""
        limit = self.ctx.settings.get_int("max_active_captures")
        with self._lock:
            if len(self.live) + self._starting >= limit:
                raise Busy(f"capture: {limit} captures are active, the most the setting "
                           f"max_active_captures allows; stop one, or raise the setting "
                           f"(settings_set key_name=max_active_captures)")
            self._starting += 1

    def _release(self) -> None:
        with self._lock:
            self._starting -= 1

    def start(self, ctype: int, **how) -> dict:
        """Start a live capture (see _start for the arguments); BUSY beyond the cap."""
        self.reserve.check("a capture")  # IO_ERROR now rather than a capture failing at once
        self._reserve()
        try:
            return self._start(ctype, **how)
        finally:
            self._release()

    def _start(self, ctype: int, *, bpf: str = "", flags: int = 0, adapters=(), pids=(),
               process: dict | None = None, thread_id: int = 0, name: str = "") -> dict:
        sniffers = self._open(list(adapters), bpf)
        try:
            return self._started(sniffers, ctype, bpf=bpf, flags=flags, pids=pids,
                                 process=process, thread_id=thread_id, name=name)
        except BaseException:
            if not sniffers.started:
                sniffers.close()
            raise

    def _started(self, sniffers, ctype, *, bpf, flags, pids, process, thread_id, name):
        fields = {"type": ctype, "state": CaptureState.ACTIVE, "name": name, "filter": bpf,
                  "flags": flags,
                  "adapters": ",".join(a.name for a in sniffers.adapters), "start_time": now_ns(),
                  "thread_id": thread_id}
        if process:
            fields.update(process_id=process["id"], pid=process["pid"],
                          process_name=process["name"], process_path=process["path"])
        capture_id = capture_table.create(self.catalog, fields,
                                          process["id"] if process else None)
        db = CaptureDb(self.ctx.config.data_dir, capture_id)
        target = Target(pids, children=bool(flags & CaptureFlag.CHILD_PROCESSES),
                        thread_id=thread_id)
        hold = self.ctx.settings.get_int("attribution_hold_ms")
        live = LiveCapture(capture_id, sniffers, db, self.attribution, target, self.catalog,
                           local_ips=local_addresses(), hold_ms=hold,
                           on_stats=self._global_stats,
                           labels=self.ctx.settings.get_bool("app_labels_enabled"))
        if flags & CaptureFlag.RESOLVE_IPS:
            live.recorder.on_new_ips = lambda ips: self.ip_resolver.submit(db, ips)
        if self.ctx.settings.get_bool("extract_enabled"):
            self.extracts[capture_id] = attach(self.ctx, live.recorder, db, capture_id)
        live.on_failure = self._failed
        with self._lock:
            self.live[capture_id] = live
        live.start()
        return self.get(capture_id)

    def add_process(self, capture_id: int, process: dict) -> dict:
        live = self.live.get(capture_id)
        if live is None:
            raise NotFound(f"capture_id: no active capture {capture_id}")
        if live.target.system:
            raise Malformed(f"capture_id: capture {capture_id} is a system capture")
        live.target.pids.add(process["pid"])
        capture_table.add_process(self.catalog, capture_id, process["id"])
        return self.get(capture_id)

    def _global_stats(self, agg: dict, procs: dict | None = None,
                      threads: dict | None = None) -> None:
        """Fold a batch's aggregates into the catalog's system-wide statistics, and its
        per-process / per-thread packet counts into PROCESS / THREAD PacketCount."""
        minutes, keys, ips = {}, {}, {}
        for (kind, key, minute, proto), (p, b) in agg.items():
            if kind == AGG_ALL:
                minutes[(minute, proto)] = (p, b)
                continue
            k = ("ip" if kind == AGG_IP else "port", key)
            old = keys.get(k, (0, 0))
            keys[k] = (old[0] + p, old[1] + b)
            if kind == AGG_IP:
                t = minute * 60_000_000_000
                v = ips.setdefault(key, [0, 0, t, t])
                v[0] += p
                v[1] += b
                v[2], v[3] = min(v[2], t), max(v[3], t)
        assert AGG_PORT  # kinds are exhaustive: ALL, IP, PORT

        def fold(conn):
            stats_table.add(conn, minutes, keys)
            add_traffic(conn, ips)
            process_table.add_packets(conn, procs or {})
            process_table.add_thread_packets(conn, threads or {})
        self.catalog.submit(fold)

    # -- stop ----------------------------------------------------------------
    def stop(self, capture_id: int, *, state: int = CaptureState.COMPLETED,
             message: str = "") -> None:
        with self._lock:
            live = self.live.pop(capture_id, None)
        if live is None:
            raise NotFound(f"capture_id: no active capture {capture_id}")
        try:
            live.stop()
        finally:
            extract = self.extracts.pop(capture_id, None)
            try:
                if extract is not None:
                    extract.close()  # files still open at the end; writes their rows
            finally:
                live.db.close()
            if live.failure is not None:  # a write failed: not a complete capture
                state, message = CaptureState.INTERRUPTED, live.failure
            capture_table.finish(self.catalog, capture_id, state=state, end_time=now_ns(),
                                 message=message)

    def _failed(self, capture_id: int, message: str) -> None:
        """A capture's write failed (on its pipeline thread): stop it from another thread,
        after giving back the space reserve when the disk is full, so the stop can write."""
        if message.startswith(("disk full", "disk quota")):
            self.reserve.release()
        threading.Thread(target=self._stop_failed, args=(capture_id,), daemon=True,
                         name=f"capture-stop:{capture_id}").start()

    def _stop_failed(self, capture_id: int) -> None:
        try:
            self.stop(capture_id)  # stop() turns it INTERRUPTED with the failure message
        except NotFound:
            pass  # stopped by its user meanwhile
        except Exception as exc:  # noqa: BLE001 - a thread of its own: log, never re-raise
            log.error("capture %s: stopping it after its failed write failed too: %s",
                      capture_id, exc, exc_info=None if reason(exc) else exc)

    def stop_all(self) -> int:
        """Stop every active capture; one that fails to stop does not keep the others
        running (the first error is raised at the end)."""
        ids = list(self.live)
        first = None
        for cid in ids:
            try:
                self.stop(cid)
            except NotFound:
                pass
            except Exception as exc:  # noqa: BLE001 - logged here, reported once at the end
                log.error("capture %s: stopping failed: %s: %s", cid, type(exc).__name__, exc)
                first = first or exc
        if first is not None:
            raise first
        return len(ids)

    def close(self) -> None:
        """Service shutdown: stop every capture and the shared engines."""
        try:
            self.stop_all()
        except Exception:  # noqa: BLE001 - logged by stop_all; shutting down goes on
            pass
        with self._lock:
            dbs, self._dbs = list(self._dbs.values()), {}
        for db in dbs:
            db.close()
        if self._attribution is not None:
            self._attribution.close()
        if self._ip_resolver is not None:
            self._ip_resolver.close()

    def recover(self) -> int:
        """Captures left ACTIVE by a crash become INTERRUPTED, with their committed counts."""
        ids = capture_table.ids_in_state(self.catalog, CaptureState.ACTIVE)
        for capture_id in ids:
            counts = (0, 0, 0)
            path = capture_path(self.ctx.config.data_dir, capture_id)
            if os.path.exists(path):
                db = CaptureDb(self.ctx.config.data_dir, capture_id)
                try:
                    counts = tuple(db.one("SELECT count(*), coalesce(sum(len),0), "
                                          "(SELECT count(*) FROM connections) FROM packets"))
                finally:
                    db.close()
            capture_table.interrupt(self.catalog, capture_id, state=CaptureState.INTERRUPTED,
                                    counts=counts, end_time=now_ns(),
                                    message="the service stopped while capturing")
        return len(ids)

    # -- reading -------------------------------------------------------------
    def get(self, capture_id: int):
        row = capture_table.get(self.catalog, capture_id)
        if row is None:
            raise NotFound(f"capture_id: no capture {capture_id}")
        return row

    def db(self, capture_id: int, *, active: bool | None = None) -> CaptureDb:
        """The capture's database for reading; `active` demands that state (else BUSY)."""
        row = self.get(capture_id)
        live = self.live.get(capture_id)
        # ACTIVE covers live captures and files being ingested (their rows are being written)
        is_active = live is not None or row["state"] == CaptureState.ACTIVE
        if active is True and not is_active:
            raise Busy(f"capture_id: capture {capture_id} is not active (use capture_read)")
        if active is False and is_active:
            raise Busy(f"capture_id: capture {capture_id} is still active (use capture_stream)")
        if live is not None:
            return live.db
        with self._lock:
            db = self._dbs.get(capture_id)
            if db is None:
                if not os.path.exists(capture_path(self.ctx.config.data_dir, capture_id)):
                    raise NotFound(f"capture_id: capture {capture_id} has no packet data "
                                   f"(state {row['state']})")
                db = self._dbs[capture_id] = CaptureDb(self.ctx.config.data_dir, capture_id)
        return db

    def forget(self, capture_id: int) -> None:
        """Close a completed capture's database (before its file is deleted)."""
        with self._lock:
            db = self._dbs.pop(capture_id, None)
        if db is not None:
            db.close()

    def live_counts(self, capture_id: int):
        live = self.live.get(capture_id)
        if live is None:
            return None
        return {"PacketCount": live.recorder.packets, "ByteCount": live.recorder.bytes,
                "DroppedCount": live.dropped, "ConnectionCount": live.recorder.next_conn - 1}
