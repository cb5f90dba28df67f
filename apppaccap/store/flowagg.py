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


class Totals:
    """A bulk load's statistics summed over many batches in the writer process, written
    once (capturedb.write_stats) instead of upserted batch by batch: a file of short
    flows re-upserted each IP's and each busy port's row in every batch, and the rows
    by minute are summed from the ones by second only when written."""

    def __init__(self):
        self.ips: dict = {}    # ip → [packets, bytes, first, last]; first seen first (ips.id)
        self.sec: dict = {}    # (kind, key, second, proto) → [p, b], from flows
        self.agg: dict = {}    # (kind, key, minute, proto) → [p, b], handed over expanded
        self.agg_sec: dict = {}  # the same by second, handed over expanded
        self.proc_sec: dict = {}
        self.span = None
        self.names: dict = {}  # (ip, kind, name) → None: a set that keeps its order
        self.newest = None     # the latest second of a flow

    def __len__(self) -> int:
        """Rows held (the writer writes them out early past a bound: memory)."""
        return (len(self.ips) + len(self.sec) + len(self.agg) + len(self.agg_sec)
                + len(self.proc_sec) + len(self.names))

    def add_flows(self, flows, procsec: dict) -> None:
        """What expand_flows takes: (proto, a_ip, b_ip, a_port, b_port, second, packets,
        bytes, first, last) tuples and (process_id, second, direction) → [p, b]."""
        ips, acc = self.ips, self.sec
        get, ip_get = acc.get, ips.get
        lo = hi = None
        top = self.newest
        for proto, a_ip, b_ip, a_port, b_port, sec, n, b, first, last in flows:
            if lo is None or first < lo:
                lo = first
            if hi is None or last > hi:
                hi = last
            if top is None or sec > top:
                top = sec
            keys = [(AGG_ALL, "", sec, proto)]
            for ip in (a_ip, b_ip) if a_ip != b_ip else (a_ip,):
                if ip:
                    keys.append((AGG_IP, ip, sec, proto))
                    v = ip_get(ip)
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
                v = get(k)
                if v is None:
                    acc[k] = [n, b]
                else:
                    v[0] += n
                    v[1] += b
        self.newest = top
        _sum_into(self.proc_sec, procsec)
        if lo is not None:
            self._span((lo, hi))

    def take_settled(self, margin: int = 2):
        """(rows by minute, rows by second) that no later packet of a file in time order
        adds to: seconds older than the newest by `margin`, and the minutes they close.
        Written as the load goes, they leave the final write (an out-of-order file still
        comes out right: the writes add up). None when there are none."""
        if self.newest is None:
            return None
        cut = self.newest - margin
        done = {k: v for k, v in self.sec.items() if k[2] < cut}
        if not done:
            return None
        sec, agg = self.sec, self.agg
        get = agg.get
        for k, (n, b) in done.items():
            del sec[k]
            kind, key, second, proto = k
            m = (kind, key, second // 60, proto)
            v = get(m)
            if v is None:
                agg[m] = [n, b]
            else:
                v[0] += n
                v[1] += b
        closed = cut // 60  # minutes before this one hold only seconds before `cut`
        minutes = {k: v for k, v in agg.items() if k[2] < closed}
        for k in minutes:
            del agg[k]
        return minutes, done

    def add_names(self, names) -> None:
        """(ip, kind, name) rows for ip_names."""
        self.names.update(dict.fromkeys(names))

    def add(self, ips, agg, per_sec) -> None:
        """Statistics handed over expanded (write_batch's arguments)."""
        for ip, (n, b, first, last) in (ips or {}).items():
            v = self.ips.get(ip)
            if v is None:
                self.ips[ip] = [n, b, first, last]
            else:
                v[0] += n
                v[1] += b
                v[2] = min(v[2], first)
                v[3] = max(v[3], last)
        _sum_into(self.agg, agg or {})
        if per_sec is not None:
            agg_sec, proc_sec, span = per_sec
            _sum_into(self.agg_sec, agg_sec)
            _sum_into(self.proc_sec, proc_sec)
            if span is not None:
                self._span(span)

    def _span(self, span) -> None:
        lo, hi = span
        if self.span is not None:
            lo, hi = min(lo, self.span[0]), max(hi, self.span[1])
        self.span = (lo, hi)

    def take(self):
        """(ips, agg, per_sec, names) as write_stats takes them; empties the totals."""
        agg, agg_sec = self.agg, self.agg_sec
        if agg_sec:
            _sum_into(agg_sec, self.sec)
        else:
            agg_sec = self.sec
        get = agg.get
        for (kind, key, sec, proto), (n, b) in self.sec.items():
            k = (kind, key, sec // 60, proto)
            v = get(k)
            if v is None:
                agg[k] = [n, b]  # a new list: agg_sec's may be this very dict's
            else:
                v[0] += n
                v[1] += b
        out = (self.ips, agg, (agg_sec, self.proc_sec, self.span), list(self.names))
        self.__init__()
        return out


def _add(acc: dict, k, n: int, b: int) -> None:
    v = acc.get(k)
    if v is None:
        acc[k] = [n, b]
    else:
        v[0] += n
        v[1] += b


def _sum_into(acc: dict, rows: dict) -> None:
    for k, (n, b) in rows.items():
        _add(acc, k, n, b)
