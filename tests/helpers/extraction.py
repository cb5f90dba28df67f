"""The extraction tests' side: a TCP decoder, the Extractor fed from a capture file or
from a synthetic connection, synthetic HTTP captures, and the oracle's rules for gaps.

Deliberately independent of the product's reader and decoder: it only needs to turn
capture files (read by tests/helpers/pcapfiles.py) into the arguments of
``Extractor.tcp``.  Link types Ethernet (with 802.1Q/QinQ tags), Linux SLL v1 and v2,
raw IP (101, 12, 14, 228, 229), BSD NULL/LOOP; IPv4 (unfragmented) and IPv6 (common
extension headers) carrying TCP.
"""

from __future__ import annotations

import collections
import os
import struct

from tests.helpers.packets import eth
from tests.helpers.packets import ipv4
from tests.helpers.packets import tcp
from tests.helpers.pcapfiles import read_frames
from tests.helpers.pcapfiles import write_pcap

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


def _ip_start(linktype, frame):
    """(ethertype-ish, offset) of the network header, or None."""
    if linktype == 1:
        et, off = struct.unpack(">H", frame[12:14])[0], 14
        while et in (0x8100, 0x88A8, 0x9100) and len(frame) >= off + 4:
            et, off = struct.unpack(">H", frame[off + 2:off + 4])[0], off + 4
        return et, off
    if linktype == 113:
        return struct.unpack(">H", frame[14:16])[0], 16
    if linktype == 276:
        return struct.unpack(">H", frame[0:2])[0], 20
    if linktype in (101, 12, 14):
        v = frame[0] >> 4 if frame else 0
        return (0x0800 if v == 4 else 0x86DD if v == 6 else 0), 0
    if linktype == 228:
        return 0x0800, 0
    if linktype == 229:
        return 0x86DD, 0
    if linktype in (0, 108):
        v = frame[4] >> 4 if len(frame) > 4 else 0
        return (0x0800 if v == 4 else 0x86DD if v == 6 else 0), 4
    return None


def _ipv6_text(b):
    import ipaddress
    return ipaddress.IPv6Address(b).compressed


def decode_tcp(linktype, frame):
    """(src, sport, dst, dport, seq, ack, flags, payload) or None."""
    try:
        return _decode_tcp(linktype, frame)
    except (struct.error, IndexError, ValueError):
        return None             # truncated or malformed headers


def _decode_tcp(linktype, frame):
    start = _ip_start(linktype, frame)
    if start is None:
        return None
    et, off = start
    if et == 0x0800:
        if len(frame) < off + 20:
            return None
        ihl = (frame[off] & 0x0F) * 4
        total, frag, proto = (struct.unpack(">H", frame[off + 2:off + 4])[0],
                              struct.unpack(">H", frame[off + 6:off + 8])[0], frame[off + 9])
        if proto != 6 or frag & 0x3FFF:
            return None
        src = ".".join(map(str, frame[off + 12:off + 16]))
        dst = ".".join(map(str, frame[off + 16:off + 20]))
        end = off + total if total else len(frame)
        off += ihl
    elif et == 0x86DD:
        if len(frame) < off + 40:
            return None
        plen = struct.unpack(">H", frame[off + 4:off + 6])[0]
        nxt = frame[off + 6]
        src, dst = _ipv6_text(frame[off + 8:off + 24]), _ipv6_text(frame[off + 24:off + 40])
        end = off + 40 + plen
        off += 40
        while nxt in (0, 43, 60, 44):
            if nxt == 44:
                if struct.unpack(">H", frame[off + 2:off + 4])[0] & 0xFFF9:
                    return None
                nxt, off = frame[off], off + 8
            else:
                nxt, off = frame[off], off + (frame[off + 1] + 1) * 8
        if nxt != 6:
            return None
    else:
        return None
    if len(frame) < off + 20:
        return None
    sport, dport, seq, ack, doff_flags = struct.unpack(">HHIIH", frame[off:off + 14])
    hlen = (doff_flags >> 12) * 4
    payload = frame[off + hlen:min(end, len(frame))]
    return src, sport, dst, dport, seq, ack, doff_flags & 0x3F, bytes(payload)


def tcp_packets(path):
    """Yield (conn_id, ts_ns, src, sport, dst, dport, seq, ack, flags, payload,
    closed) for every TCP packet; ``closed`` is True when this packet completes
    FINs both ways or is a RST (what the product's pipeline calls close_conn on)."""
    conns = {}
    next_id = 1
    for lt, ts, frame in read_frames(path):
        pkt = decode_tcp(lt, frame)
        if pkt is None:
            continue
        src, sport, dst, dport, seq, ack, flags, payload = pkt
        key = tuple(sorted(((src, sport), (dst, dport))))
        st = conns.get(key)
        if st is None or (st["closed"] and flags & SYN and not flags & ACK):
            st = conns[key] = {"id": next_id, "fins": set(), "closed": False}
            next_id += 1
        if flags & FIN:
            st["fins"].add((src, sport))
        closed = False
        if not st["closed"] and (flags & RST or len(st["fins"]) == 2):
            st["closed"] = closed = True
        yield st["id"], ts, src, sport, dst, dport, seq, ack, flags, payload, closed


class Collect:
    """A sink that keeps every FileEvent."""

    def __init__(self):
        self.events = []

    def file(self, ev):
        self.events.append(ev)


def feed(ex, path):
    """Every TCP packet of a capture file into Extractor `ex`, closing connections as the
    pipeline does, then flush."""
    for cid, ts, src, sport, dst, dport, seq, ack, flags, payload, closed in tcp_packets(path):
        ex.tcp(cid, ts, src, sport, dst, dport, seq, ack, flags, payload)
        if closed:
            ex.close_conn(cid)
    ex.flush()


def extract(path, spool_dir, **kw):
    """Run the Extractor over a capture file; return the list of FileEvents."""
    from apppaccap.extract import Extractor

    sink = Collect()
    feed(Extractor(sink, spool_dir=str(spool_dir), **kw), path)
    return sink.events


class SynthConn:
    """Builds and feeds the packets of one synthetic TCP connection.

    ``segments()`` cuts data into segments and advances the sequence number
    without feeding them (so a test can reorder, drop or duplicate them);
    ``client()`` / ``server()`` cut and feed in order.
    """

    def __init__(self, ex, conn_id=1, client=("10.0.0.1", 40000), server=("10.0.0.2", 80),
                 cisn=1000, sisn=5000, handshake=True, ts=1_000_000_000):
        self.ex, self.id, self.cl, self.sv = ex, conn_id, client, server
        self.seq = {True: cisn, False: sisn}
        self.ts = ts
        if handshake:
            self.feed(True, cisn, b"", SYN)
            self.feed(False, sisn, b"", SYN | ACK)
            self.seq = {True: (cisn + 1) & 0xFFFFFFFF, False: (sisn + 1) & 0xFFFFFFFF}

    def feed(self, from_client, seq, payload, flags=ACK, ack=0):
        """Feed one packet."""
        self.ts += 1000
        src, dst = (self.cl, self.sv) if from_client else (self.sv, self.cl)
        self.ex.tcp(self.id, self.ts, src[0], src[1], dst[0], dst[1], seq & 0xFFFFFFFF,
                    ack, flags, payload)

    def segments(self, from_client, data, mss=1460):
        """Cut ``data`` into (seq, payload) segments and advance the sequence."""
        out = []
        for off in range(0, len(data), mss):
            out.append((self.seq[from_client], data[off:off + mss]))
            self.seq[from_client] = (self.seq[from_client] + len(data[off:off + mss])) & 0xFFFFFFFF
        return out

    def send(self, from_client, data, mss=1460):
        for seq, payload in self.segments(from_client, data, mss):
            self.feed(from_client, seq, payload)

    def client(self, data, mss=1460):
        self.send(True, data, mss)

    def server(self, data, mss=1460):
        self.send(False, data, mss)

    def fin(self, from_client):
        self.feed(from_client, self.seq[from_client], b"", FIN | ACK)
        self.seq[from_client] = (self.seq[from_client] + 1) & 0xFFFFFFFF

    def close(self):
        """FIN both ways, then close_conn (what the pipeline does)."""
        self.fin(False)
        self.fin(True)
        self.ex.close_conn(self.id)


def new_extractor(tmp_path, **kw):
    """(Extractor, Collect sink) spooling under ``tmp_path``."""
    from apppaccap.extract import Extractor

    sink = Collect()
    return Extractor(sink, spool_dir=str(tmp_path / "spool"), **kw), sink


def body_of(ev):
    """The spooled body of a FileEvent."""
    with open(ev.spool_path, "rb") as f:
        return f.read()


def split_tcp_streams(path, outdir):
    """Write each TCP connection of a capture to its own classic pcap file.

    Returns a list of (file_path, [tcp payloads]) in first-seen order.  All
    frames of the source must share one link type.
    """
    streams, lts = {}, set()
    for lt, ts, frame in read_frames(path):
        pkt = decode_tcp(lt, frame)
        if pkt is None:
            continue
        lts.add(lt)
        key = tuple(sorted(((pkt[0], pkt[1]), (pkt[2], pkt[3]))))
        streams.setdefault(key, []).append((ts, frame, pkt[7]))
    if len(lts) > 1:
        raise ValueError("mixed link types")
    linktype = next(iter(lts), 1)
    out = []
    for i, frames in enumerate(streams.values()):
        fn = os.path.join(str(outdir), f"stream{i}.pcap")
        write_pcap(fn, [(ts, frame) for ts, frame, _ in frames], linktype, nsec=True)
        out.append((fn, [p for _, _, p in frames if p]))
    return out


def write_synthetic_pcap(path, conversations, mss=1460):
    """Write Ethernet/IPv4/TCP packets for synthetic conversations.

    ``conversations`` is a list of lists of (from_client, bytes); each
    conversation gets its own client port, a handshake, the data cut into
    ``mss``-byte segments (each acknowledged by the peer's current sequence
    number) and FINs.  Checksums are left at zero (tshark does not check them).
    """
    def frame(src, dst, sport, dport, seq, ack, flags, payload):
        segment = tcp(sport, dport, seq, ack, flags, win=65535, payload=payload)
        return eth(ipv4(src, dst, 6, segment, ident=0, df=True),
                   src="02:00:00:00:00:01", dst="02:00:00:00:00:02")

    records, ts = [], 1_700_000_000_000_000_000
    for n, conv in enumerate(conversations):
        cl, sv = ("10.1.0.1", 30000 + n), ("10.1.0.2", 80)
        seq = {True: 1000, False: 9000}
        pkts = [(True, SYN, b""), (False, SYN | ACK, b""), (True, ACK, b"")]
        for from_client, data in conv:
            pkts += [(from_client, ACK, data[i:i + mss]) for i in range(0, len(data), mss)]
        pkts += [(False, FIN | ACK, b""), (True, FIN | ACK, b""), (False, ACK, b"")]
        for from_client, flags, payload in pkts:
            (src, sport), (dst, dport) = (cl, sv) if from_client else (sv, cl)
            s = seq[from_client] - (1 if flags & SYN else 0)
            records.append((ts, frame(src, dst, sport, dport, s, seq[not from_client],
                                      flags, payload)))
            # ``seq`` holds the next data byte: the SYN sits just before it.
            seq[from_client] += len(payload) + (1 if flags & FIN else 0)
            ts += 1_000_000
    write_pcap(path, records, nsec=True)


def check_gapped_stream(events, t_counts, t_blobs, payloads):
    """The documented differences from tshark for a connection with lost segments
    (tests/test_extract_oracle.py, points 1-3): every complete object of ours tshark
    exports too; no body we find incomplete does tshark export; what tshark exports and
    we lack is a fragment inside one TCP payload. Returns (objects only tshark has,
    incomplete objects of ours)."""
    complete = collections.Counter(e.sha256 for e in events if e.complete)
    incomplete = [e for e in events if not e.complete]
    assert not complete - t_counts, "a complete object of ours that tshark lacks"
    for ev in incomplete:
        assert ev.missing_bytes > 0 or ev.truncated
        assert ev.sha256 not in t_counts, "tshark exported a body we found incomplete"
    for h in (t_counts - complete):
        blob = t_blobs[h]
        assert any(blob in p for p in payloads), \
            f"tshark object of {len(blob)} bytes is not a single-segment fragment"
    return sum((t_counts - complete).values()), len(incomplete)
