"""ip_query, ip_set_data, ip_set_geo — per-IP facts, globally and per capture."""

from __future__ import annotations

import ipaddress

from apppaccap.api.captures import captures
from apppaccap.api.labels import capture_databases as label_databases
from apppaccap.api.packets import ip_object
from apppaccap.api.registry import endpoint
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.store.capturedb import NAME_AGENT
from apppaccap.store.capturedb import NAME_DOMAIN
from apppaccap.store.ips import set_facts
from apppaccap.wire import DataType

NAMES_MAX = 100


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise Malformed(f"ip: not an IP address: {text[:60]!r}") from None


def _databases(ctx, capture_id: int):
    """The catalog, plus the capture's database when capture_id is given."""
    dbs = [ctx.catalog]
    if capture_id:
        dbs.append(captures(ctx).db(capture_id))
    return dbs


def _upsert(db, ip: str, assignments: dict) -> None:
    db.write(lambda c: set_facts(c, ip, assignments))


@endpoint(DataType.JSON)
def ip_query(ctx, *, ip: str, capture_id: int = 0) -> dict:
    """What is known of an IP address (IP object), with Domains (names seen for it: DNS
    answers, TLS SNI, HTTP Host) and UserAgents (HTTP user agents it sent), from the
    capture's connections or, for the global list, from every capture (at most 100 each).

    - ip: IPv4 or IPv6 address
    - capture_id: read the capture's list; 0 = system-wide (live captures, ingested files)
    """
    ip = _ip(ip)
    db = _databases(ctx, capture_id)[-1]
    row = db.one("SELECT * FROM ips WHERE ip = ?", (ip,))
    if row is None:
        where = f"capture {capture_id}" if capture_id else "the global list"
        raise NotFound(f"ip: {ip} is not in {where}")
    out = ip_object(row)
    found: dict = {NAME_DOMAIN: set(), NAME_AGENT: set()}
    for cdb in label_databases(ctx, capture_id):
        for kind, name in cdb.read("SELECT kind, name FROM ip_names WHERE ip = ? LIMIT 201",
                                   (ip,)):
            if kind in found:
                found[kind].add(name)
    out["Domains"] = sorted(found[NAME_DOMAIN])[:NAMES_MAX]
    out["UserAgents"] = sorted(found[NAME_AGENT])[:NAMES_MAX]
    return out


@endpoint(DataType.INT)
def ip_set_data(ctx, *, ip: str, capture_id: int = 0, data: str = "") -> int:
    """Attach free-form data to an IP (globally, and in a capture when given).

    - ip: IPv4 or IPv6 address
    - capture_id: also update this capture's list
    - data: the data; blank clears
    """
    ip = _ip(ip)
    if len(data) > 1 << 16:
        raise Malformed("data: longer than 65536 characters")
    for db in _databases(ctx, capture_id):
        _upsert(db, ip, {"data": data})
    return 0


@endpoint(DataType.INT)
def ip_set_geo(ctx, *, ip: str, lat: float, lng: float, capture_id: int = 0,
               hostname: str = "", country: str = "", city: str = "") -> int:
    """Store geolocation resolved elsewhere for an IP.

    - ip: IPv4 or IPv6 address
    - lat: latitude, -90..90
    - lng: longitude, -180..180
    - capture_id: also update this capture's list
    - hostname: the host name
    - country: the country
    - city: the city
    """
    ip = _ip(ip)
    problems = []
    if not -90 <= lat <= 90:
        problems.append("lat: must be between -90 and 90")
    if not -180 <= lng <= 180:
        problems.append("lng: must be between -180 and 180")
    for name, value in (("hostname", hostname), ("country", country), ("city", city)):
        if len(value) > 255:
            problems.append(f"{name}: longer than 255 characters")
    if problems:
        raise Malformed("; ".join(problems))
    values = {"lat": lat, "lng": lng, "country": country, "city": city}
    if hostname:
        values["hostname"] = hostname
    for db in _databases(ctx, capture_id):
        _upsert(db, ip, values)
    return 0
