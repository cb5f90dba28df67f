"""Per-batch aggregate expansion: (flow, second) counters → per-IP totals and
per-IP/port/protocol rows by minute and by second (write_batch stores them).

In the store layer so the bulk writer process (store/bulkwriter.py) can run it: a file
ingest hands its flows over flat and the expansion leaves the parsing process.
"""

from __future__ import annotations

from array import array
from struct import iter_unpack

from apppaccap.store.capturedb import AGG_ALL
from apppaccap.store.capturedb import AGG_IP
from apppaccap.store.capturedb import AGG_PORT

try:  # the same in C (store/_packedrows.c), when the extension is built
    from apppaccap.store._packedrows import FlowTotals
    from apppaccap.store._packedrows import pack_flows as _c_pack_flows
except ImportError:  # pragma: no cover - built without libsqlite3-dev
    FlowTotals = _c_pack_flows = None


def flow_totals():
    """Totals.add_flows / take_settled / take in C (_packedrows.FlowTotals: add(packed,
    extras, conns) -> span, written by capturedb.write_flow_totals; ~0.7 s less writer
    CPU per 1M short-flow packets than the dicts below), or None when not built."""
    return FlowTotals() if FlowTotals is not None else None


def pack_flows(flowsec: dict):
    """A batch's (flow, second) -> [packets, bytes, first, last] counters (flow: a
    connection, or a (proto, src, dst, sport, dport) tuple) → (bytes of native int64
    sextuples (conn id, second, packets, bytes, first, last), extras): what the bulk
    writer gets instead of flat tuples (pickling those and their address strings cost the
    parsing process more than making them). A tuple flow goes to `extras`, its id being
    -1 - its index there; a connection's addresses are read back from the batch's
    connection rows (unpack_flows), which hold every connection a packet touched."""
    if _c_pack_flows is not None:
        return _c_pack_flows(flowsec)
    rows, extras = array("q"), []
    for (flow, sec), (n, b, first, last) in flowsec.items():
        if isinstance(flow, tuple):
            cid = -1 - len(extras)
            extras.append(flow)
        else:
            cid = flow.id
        rows.extend((cid, sec, n, b, first, last))
    return rows.tobytes(), extras


def unpack_flows(packed, extras, conns: dict):
    """pack_flows's output, with the batch's connection rows ({id: row}, row[1:6] = proto,
    local ip, local port, remote ip, remote port) → the flat tuples expand_flows takes."""
    for cid, sec, n, b, first, last in iter_unpack("6q", packed):
        if cid >= 0:
            r = conns[cid]
            yield r[1], r[2], r[4], r[3], r[5], sec, n, b, first, last
        else:
            yield (*extras[-1 - cid], sec, n, b, first, last)


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
    flows re-upserted each IP's and each busy port's row in every batch. Rows from flows
    are held by second (and, once rolled up, by minute) so that the seconds a file is
    done with come out without a scan of the rest."""

    def __init__(self):
        self.ips: dict = {}    # ip → [packets, bytes, first, last]; first seen first (ips.id)
        self.secs: dict = {}   # second → {(kind, key, proto): [p, b]}, from flows
        self.mins: dict = {}   # minute → {(kind, key, proto): [p, b]}: settled seconds'
        self.agg: dict = {}    # (kind, key, minute, proto) → [p, b], handed over expanded
        self.agg_sec: dict = {}  # the same by second, handed over expanded
        self.proc_sec: dict = {}
        self.span = None
        self.names: dict = {}  # (ip, kind, name) → None: a set that keeps its order
        self.newest = None     # the latest second of a flow

    def __len__(self) -> int:
        """Rows held (the writer writes them out early past a bound: memory)."""
        return (len(self.ips) + sum(map(len, self.secs.values()))
                + sum(map(len, self.mins.values())) + len(self.agg) + len(self.agg_sec)
                + len(self.proc_sec) + len(self.names))

    def add_flows(self, flows, procsec: dict) -> None:
        """What expand_flows takes: (proto, a_ip, b_ip, a_port, b_port, second, packets,
        bytes, first, last) tuples and (process_id, second, direction) → [p, b]."""
        ips, secs = self.ips, self.secs
        ip_get, sec_get = ips.get, secs.get
        lo = hi = None
        top = self.newest
        at = acc = get = None
        for proto, a_ip, b_ip, a_port, b_port, sec, n, b, first, last in flows:
            if lo is None or first < lo:
                lo = first
            if hi is None or last > hi:
                hi = last
            if sec != at:
                if top is None or sec > top:
                    top = sec
                acc = sec_get(sec)
                if acc is None:
                    acc = secs[sec] = {}
                at, get = sec, acc.get
            keys = [(AGG_ALL, "", proto)]
            for ip in (a_ip, b_ip) if a_ip != b_ip else (a_ip,):
                if ip:
                    keys.append((AGG_IP, ip, proto))
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
                    keys.append((AGG_PORT, str(port), proto))
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

    def add_span(self, procsec: dict, span) -> None:
        """A batch's process counters and (first, last) packet time, when its flows are
        summed in C (flow_totals)."""
        _sum_into(self.proc_sec, procsec)
        if span is not None:
            self._span(span)

    def take_settled(self, margin: int = 2):
        """(rows by minute, rows by second) that no later packet of a file in time order
        adds to: seconds older than the newest by `margin`, and the minutes they close.
        Written as the load goes, they leave the final write (an out-of-order file still
        comes out right: the writes add up). None when there are none."""
        if self.newest is None:
            return None
        cut = self.newest - margin
        old = sorted(s for s in self.secs if s < cut)
        if not old:
            return None
        done: dict = {}
        for sec in old:
            self._roll(sec, self.secs.pop(sec), done)
        closed = cut // 60  # minutes before this one hold only seconds before `cut`
        minutes: dict = {}
        for minute in sorted(m for m in self.mins if m < closed):
            for (kind, key, proto), v in self.mins.pop(minute).items():
                minutes[(kind, key, minute, proto)] = v
        return minutes, done

    def _roll(self, sec: int, rows: dict, out: dict) -> None:
        """One second's rows into `out` (by (kind, key, second, proto)) and its minute."""
        acc = self.mins.get(sec // 60)
        if acc is None:
            acc = self.mins[sec // 60] = {}
        get = acc.get
        for k, (n, b) in rows.items():
            kind, key, proto = k
            out[(kind, key, sec, proto)] = [n, b]
            v = get(k)
            if v is None:
                acc[k] = [n, b]
            else:
                v[0] += n
                v[1] += b

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
        seconds: dict = {}
        for sec in sorted(self.secs):
            self._roll(sec, self.secs[sec], seconds)
        minutes: dict = {}
        for minute, rows in self.mins.items():
            for (kind, key, proto), v in rows.items():
                minutes[(kind, key, minute, proto)] = v
        agg, agg_sec = self.agg, self.agg_sec
        if agg:  # rows handed over expanded too (not from a file ingest)
            _sum_into(agg, minutes)
        else:
            agg = minutes
        if agg_sec:
            _sum_into(agg_sec, seconds)
        else:
            agg_sec = seconds
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
