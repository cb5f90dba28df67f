"""Per-batch aggregate expansion: (flow, second) counters → per-IP totals and
per-IP/port/protocol rows by minute and by second (write_batch stores them).

In the store layer so the bulk writer process (store/bulkwriter.py) can run it: a file
ingest hands its flows over flat and the expansion leaves the parsing process.
"""

from __future__ import annotations

from apppaccap.store.capturedb import AGG_ALL
from apppaccap.store.capturedb import AGG_IP
from apppaccap.store.capturedb import AGG_PORT


def expand_flows(flows, procsec: dict):
    """`flows`: (proto, a_ip, b_ip, a_port, b_port, second, packets, bytes, first, last)
    tuples → per-IP totals, (kind, key, minute, proto) rows, the same by second (with
    `procsec`), and the batch's (first, last) packet time."""
    ips: dict = {}
    agg_sec: dict = {}
    lo = hi = None
    get = agg_sec.get
    # by second first (one dict update per key of a flow), then summed into minutes:
    # there are far fewer (key, second) rows than flows
    for proto, a_ip, b_ip, a_port, b_port, sec, n, b, first, last in flows:
        lo = first if lo is None or first < lo else lo
        hi = last if hi is None or last > hi else hi
        keys = [(AGG_ALL, "", sec, proto)]
        for ip in (a_ip, b_ip) if a_ip != b_ip else (a_ip,):
            if ip:
                keys.append((AGG_IP, ip, sec, proto))
                v = ips.get(ip)
                if v is None:
                    ips[ip] = [n, b, first, last]
                else:
                    v[0] += n
                    v[1] += b
                    if first < v[2]:
                        v[2] = first
                    if last > v[3]:
                        v[3] = last
        for port in (a_port, b_port) if a_port != b_port else (a_port,):
            if port:
                keys.append((AGG_PORT, str(port), sec, proto))
        for k in keys:
            acc = get(k)
            if acc is None:
                agg_sec[k] = [n, b]
            else:
                acc[0] += n
                acc[1] += b
    agg: dict = {}
    for (kind, key, sec, proto), (n, b) in agg_sec.items():
        k = (kind, key, sec // 60, proto)
        acc = agg.get(k)
        if acc is None:
            agg[k] = [n, b]
        else:
            acc[0] += n
            acc[1] += b
    return ips, agg, (agg_sec, procsec, None if lo is None else (lo, hi))
