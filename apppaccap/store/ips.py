"""The `ips` table's rows, in the catalog (the global list) and in capture databases.

Both databases keep an `ips` table with the same columns (store/migrations.py), so one set
of statements serves either: pass the catalog's or a capture database's connection. Every
function runs inside the caller's write transaction.
"""

from __future__ import annotations

# A batch's (ip, packets, bytes, first, last) added to the list (also the capture writer's,
# store/capturedb.py: write_batch, on the packet path).
IPS_UPSERT = (
    "INSERT INTO ips(ip,packets,bytes,first_time,last_time) VALUES (?,?,?,?,?) "
    "ON CONFLICT(ip) DO UPDATE SET packets=packets+excluded.packets, "
    "bytes=bytes+excluded.bytes, first_time=min(first_time,excluded.first_time), "
    "last_time=max(last_time,excluded.last_time)")

# What ip_set_data / ip_set_geo and the resolver (geo.py) may set.
FACTS = ("hostname", "country", "city", "lat", "lng", "data")


def add_traffic(conn, ips: dict) -> None:
    """ips: ip → (packets, bytes, first, last) deltas."""
    if ips:
        conn.executemany(IPS_UPSERT, [(ip, *v) for ip, v in ips.items()])


def set_facts(conn, ip: str, facts: dict) -> None:
    """Set some of FACTS for `ip`, adding it to the list when it is not there yet."""
    unknown = set(facts) - set(FACTS)
    if unknown:
        raise ValueError(f"ips: no column {sorted(unknown)}")
    if not facts:
        return
    cols = ", ".join(f"{k} = :{k}" for k in facts)
    params = dict(facts, ip=ip)
    conn.execute("INSERT OR IGNORE INTO ips(ip) VALUES (:ip)", params)
    conn.execute(f"UPDATE ips SET {cols} WHERE ip = :ip", params)


def clear(conn) -> None:
    conn.execute("DELETE FROM ips")
