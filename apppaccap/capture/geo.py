"""Reverse DNS and geolocation of IPs, in the background (CAPTURE_FLAG_RESOLVE_IPS).

Never on the capture path: IPs are queued, resolved by a small thread pool with a
cache, and written to the capture's and the catalog's `ips` rows (and to connections
that have no hostname yet). Geolocation needs a GeoLite2/GeoIP2 City database named by
the setting `geoip_db` and the optional `maxminddb` package.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import queue
import socket
import threading

from apppaccap.errors import AppError
from apppaccap.safefs.reading import open_regular
from apppaccap.store.capturedb import set_hostname
from apppaccap.store.ips import set_facts

log = logging.getLogger(__name__)


def open_geo_db(path: str):
    """A maxminddb reader, or None (with the reason logged) when unavailable.

    The path comes from a setting anyone allowed to call settings_set can change, and this
    runs on a capture's first new addresses: it is opened without blocking and only if it
    is a regular file (a FIFO here used to block the capture in open() for ever)."""
    if not path:
        return None
    try:
        import maxminddb
        fd = open_regular(path, name="geoip_db")
    except ImportError as exc:
        log.warning("geolocation disabled: %s", exc)
        return None
    except AppError as err:
        log.warning("geolocation disabled: cannot open the geoip_db file: %s", err.message)
        return None
    try:
        # the checked descriptor, reopened through /proc for memory-mapped reads (the same
        # file whatever happens to the path meanwhile); MODE_FD reads it into memory instead
        proc = f"/proc/self/fd/{fd}"
        if os.path.exists(proc):
            return maxminddb.open_database(proc)
        return maxminddb.open_database(os.fdopen(os.dup(fd), "rb"), maxminddb.MODE_FD)
    except Exception as exc:  # noqa: BLE001 - geolocation is optional
        log.warning("geolocation disabled: cannot read the geoip_db file (%s)", exc)
        return None
    finally:
        os.close(fd)


def geo_lookup(reader, ip: str) -> dict | None:
    try:
        rec = reader.get(ip) if reader is not None else None
    except ValueError:
        return None
    if not rec:
        return None
    loc = rec.get("location") or {}
    return {"country": (rec.get("country") or {}).get("names", {}).get("en", ""),
            "city": (rec.get("city") or {}).get("names", {}).get("en", ""),
            "lat": loc.get("latitude") or 0.0, "lng": loc.get("longitude") or 0.0}


def reverse_dns(ip: str) -> str:
    try:
        return socket.gethostbyaddr(ip)[0]
    except (OSError, UnicodeError):
        return ""


class IpResolver:
    """Background resolution; `submit(db, ips)` returns at once."""

    def __init__(self, catalog, geo_reader=None, workers: int = 4, lookup=reverse_dns):
        self.catalog = catalog
        self.geo = geo_reader
        self.lookup = lookup
        self.cache: dict[str, tuple[str, dict | None]] = {}
        self._q: queue.Queue = queue.Queue(100_000)
        self._threads = [threading.Thread(target=self._run, daemon=True, name=f"rdns-{i}")
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, db, ips) -> None:
        for ip in ips:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                continue
            if addr.is_multicast or addr.is_unspecified:
                continue
            try:
                self._q.put_nowait((db, ip))
            except queue.Full:
                return  # resolution is best effort: never block the capture

    def _run(self):
        while True:
            db, ip = self._q.get()
            if db is None:
                return
            if ip not in self.cache:
                self.cache[ip] = (self.lookup(ip), geo_lookup(self.geo, ip))
            name, geo = self.cache[ip]
            try:
                self._store(db, ip, name, geo)
            except Exception:  # noqa: BLE001 - a closed capture db: nothing to update
                log.debug("could not store resolution of %s", ip, exc_info=True)

    def _store(self, db, ip, name, geo):
        facts = dict(geo or {})
        if name:
            facts["hostname"] = name
        if not facts:
            return

        def write(conn, with_conns):
            set_facts(conn, ip, facts)
            if with_conns and name:
                set_hostname(conn, ip, name)
        db.submit(lambda c: write(c, True))
        self.catalog.submit(lambda c: write(c, False))

    def close(self):
        for _ in self._threads:
            self._q.put((None, None))
