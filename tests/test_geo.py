"""Geolocation from a real GeoLite2 City database (shipped by maxminddb-geolite2)."""

import glob
import os
import time

import _maxminddb_geolite2
import pytest

from apppaccap.capture.geo import IpResolver
from apppaccap.capture.geo import geo_lookup
from apppaccap.capture.geo import open_geo_db
from apppaccap.store.capturedb import CaptureDb

DB = glob.glob(os.path.join(os.path.dirname(_maxminddb_geolite2.__file__), "*.mmdb"))[0]


def test_lookup_real_database():
    reader = open_geo_db(DB)
    geo = geo_lookup(reader, "81.2.69.160")       # MaxMind's documented test address (UK)
    assert geo["country"] == "United Kingdom" and geo["lat"] and geo["lng"]
    assert geo_lookup(reader, "127.0.0.1") is None
    assert open_geo_db("/no/such.mmdb") is None    # a missing database disables geo, loudly


def test_resolver_fills_capture_and_catalog(ctx):
    db = CaptureDb(ctx.config.data_dir, 1)
    resolver = IpResolver(ctx.catalog, open_geo_db(DB),
                          lookup=lambda ip: "uk-host.example" if ip == "81.2.69.160" else "")
    try:
        resolver.submit(db, ["81.2.69.160", "not-an-ip", "224.0.0.251"])
        deadline = time.monotonic() + 5
        row = None
        while time.monotonic() < deadline:
            row = db.one("SELECT * FROM ips WHERE ip = '81.2.69.160'")
            if row is not None and row["country"]:
                break
            time.sleep(0.02)
        assert row["country"] == "United Kingdom" and row["hostname"] == "uk-host.example"
        # the catalog's row goes through the catalog's own writer: it may come a moment later
        glob_row = None
        while time.monotonic() < deadline + 5 and glob_row is None:
            glob_row = ctx.catalog.one("SELECT * FROM ips WHERE ip = '81.2.69.160'")
            time.sleep(0.02)
        assert glob_row is not None and glob_row["country"] == "United Kingdom"
        assert db.one("SELECT count(*) FROM ips")[0] == 1   # junk and multicast skipped
    finally:
        resolver.close()
        db.close()


@pytest.mark.parametrize("path,expected", [(DB, 1), ("/no/such.mmdb", 0), ("", 0)])
def test_mapdata_follows_setting(ajax, path, expected):
    ajax.ok("settings_set", key_name="geoip_db", value=path) if path else None
    assert ajax.ok("apppaccap")["MapData"] == expected
