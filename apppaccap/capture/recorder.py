"""Decoded, labelled packets → packet rows, connections, IPs and aggregates, in batches.

Live captures and file ingest share this class, so connections, statistics and
hostnames are built the same way whatever the source.
"""

from __future__ import annotations

import logging

from apppaccap.attribution.labels import Label
from apppaccap.attribution.labels import flow_key
from apppaccap.capture.aggregates import expand
from apppaccap.capture.batch import Batch
from apppaccap.dissect.dns import dns_answers
from apppaccap.errors import IOFailure
from apppaccap.pcap.pcapng_writer import EPB_FLAGS
from apppaccap.pcap.pcapng_writer import frame_epb
from apppaccap.store.capturedb import NAME_DOMAIN
from apppaccap.store.capturedb import write_batch
from apppaccap.store.faults import io_failure
from apppaccap.store.flowagg import pack_flows
from apppaccap.wire import Direction

log = logging.getLogger(__name__)

SECOND_NS = 1_000_000_000
MINUTE_NS = 60 * SECOND_NS
MAX_CONNS = 100_000          # flows kept in memory before ended/idle ones are forgotten
IDLE_NS = 10 * MINUTE_NS
MAX_TS = 2**63
# plain ints on the per-packet path (rows are pickled to the bulk writer)
DIR_IN, DIR_OUT, DIR_UNKNOWN = int(Direction.IN), int(Direction.OUT), int(Direction.UNKNOWN)
TCP, UDP = 6, 17
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


class Conn:
    __slots__ = ("id", "proto", "local", "remote", "label", "peer", "first", "last", "pout",
                 "bout", "pin", "bin", "state", "hostname", "fin", "app")

    def __init__(self, cid, proto, local, remote, ts):
        self.id, self.proto, self.local, self.remote = cid, proto, local, remote
        self.label = self.peer = self.app = None  # app: capture/applabels.py
        self.first = self.last = ts
        self.pout = self.bout = self.pin = self.bin = 0
        self.state, self.hostname, self.fin = "", "", 0

    def row(self):
        lab, peer = self.label, self.peer
        return (self.id, self.proto, self.local[0], self.local[1], self.remote[0], self.remote[1],
                lab.process_id if lab else None, lab.pid if lab else 0, lab.tid if lab else 0,
                self.first, self.last, self.pout, self.bout, self.pin, self.bin, self.state,
                self.hostname, peer.process_id if peer else None, peer.pid if peer else 0,
                *(self.app or (None, None, None)))


class Recorder:
    """Accumulates one capture's rows and writes them to its CaptureDb in batches."""

    def __init__(self, db, *, local_ips: frozenset = frozenset(), first_packet_id: int = 1,
                 batch_packets: int = 20000, batch_bytes: int = 8 << 20):
        self.db = db
        self.local_ips = local_ips
        self.next_id = first_packet_id
        self.next_conn = 1
        self.conns: dict = {}
        self.hostnames: dict[str, str] = {}
        self.batch_packets, self.batch_bytes = batch_packets, batch_bytes
        self.packets = self.bytes = 0
        self.pending = None  # the last submitted batch's future
        self._inflight = (0, 0)  # packets and bytes of that batch (lost if it fails)
        self._mark = (0, 0)      # self.packets / self.bytes at the last flush
        # A failed batch stores nothing (one transaction): its packets leave PacketCount for
        # `lost` (DroppedCount), and so does every packet after it - nothing more is
        # written once a write failed. `failure` says why; `on_failure(message)` is told
        # once (a live capture stops then); without it flush() raises a fresh error.
        self.lost, self.failure, self.failure_is_io, self.on_failure = 0, None, False, None
        # callable(agg, procs, threads) — global statistics and process/thread counters
        self.on_flush = None
        self.on_new_ips = None  # callable(list of IPs first seen in this batch)
        # callable(conn_id, ts, decoded, data) for every TCP packet of a connection — the
        # file extractor's feed (None when extraction is off, the common case)
        self.on_tcp = None
        self.labeller = None  # capture/applabels.py AppLabeller: nDPI labels (None: off)
        self.bulk = None  # a BulkWriter (store/bulkwriter.py) for file ingest
        self.evicted = 0  # eviction passes so far (ingest/scanner.py forgets those flows then)
        # the last pass's connections, kept for the scanner when it asks (a list; None: not)
        self.last_evicted: list | None = None
        self.epb_divs = None  # ns a timestamp tick per interface, blocks stored as EPBs (scanner)
        self.pack_conns = None  # dirty conns -> {id: row} as pickled to the bulk writer (scanner)
        # (conns, dirty, idle_ns) -> _evict's [(key, conn)] or None, in C (the scanner's)
        self.idle_conns = None
        self._known_ips: set = set()
        self._reset()

    def _reset(self):
        self.batch = Batch()

    def conn_for(self, d, ts):
        """The Conn of a decoded packet (created on first sight), or None without ports/IPs."""
        if d.src is None or d.dst is None or d.proto not in (TCP, UDP):
            return None  # (an IPv4 header cut at 16-19 bytes has a source but no destination)
        key = flow_key(d.proto, d.src, d.sport, d.dst, d.dport)
        c = self.conns.get(key)
        if c is None:
            src, dst = (d.src, d.sport), (d.dst, d.dport)
            # The originator is "local" unless we know better: a SYN+ACK comes from the server,
            # and a packet from an address of this machine is ours.
            if d.proto == TCP and d.tcp_flags & (SYN | ACK) == SYN | ACK:
                src, dst = dst, src
            elif d.dst in self.local_ips and d.src not in self.local_ips:
                src, dst = dst, src
            c = Conn(self.next_conn, d.proto, src, dst, min(max(ts, 0), MAX_TS - 1))
            c.hostname = self.hostnames.get(dst[0], "")
            self.next_conn += 1
            self.conns[key] = c
        return c

    def add(self, ts, iface, data, origlen, d, conn=None, label: Label | None = None,
            notes=None, direction=None) -> int:
        """Record one packet; returns its PacketId (0: not stored, writing has failed)."""
        if self.failure is not None:
            self.lost += 1
            if self.on_failure is None:
                raise self.error()
            return 0
        batch = self.batch
        ts_raw = None
        if ts >= MAX_TS or ts < 0:
            # Files can carry timestamps past 2262 (or before 1970) that SQLite's int64 cannot
            # hold: the row keeps the exact value as text in ts_raw (export writes it back
            # unchanged); everything else uses the clamped value.
            ts_raw = str(ts)
            ts = min(max(ts, 0), MAX_TS - 1)
        pid_ = self.next_id
        self.next_id += 1
        size = origlen
        caplen = len(data)
        # one tuple unpack instead of a dozen named-tuple attribute lookups (hot path)
        (l3, proto, src, dst, sport, dport, tcp_flags, _seq, _ack, ttl, vlan, icmp_type,
         _code, payload_off, payload_len) = d[:15]
        if conn is not None:
            if label is not None and conn.label is None:
                conn.label = label
                if label.local is not None and label.local != conn.local:
                    conn.local, conn.remote = conn.remote, conn.local
                    conn.hostname = self.hostnames.get(conn.remote[0], "")
            local = conn.local
            out = sport == local[1] and src == local[0]
            if direction is None:
                direction = DIR_OUT if out else DIR_IN
            if out:
                conn.pout += 1
                conn.bout += size
            else:
                conn.pin += 1
                conn.bin += size
            conn.last = ts
            if proto == TCP:
                # state changes only on SYN/FIN/RST or until established
                if tcp_flags & 0x07 or conn.state != "ESTABLISHED":
                    _tcp_state(conn, tcp_flags)
                if self.on_tcp is not None:
                    self.on_tcp(conn.id, ts, d, data)
            elif not conn.state:
                conn.state = "ACTIVE"
            if conn.app is None and self.labeller is not None:
                self.labeller.feed(conn, d, data, ts, batch)
                # an ended flow gets its label now: nDPI's memory back at once
                if conn.app is None and (conn.state == "CLOSED" or conn.state == "RESET"):
                    self.labeller.settle((conn,), batch)
            batch.dirty[conn.id] = conn
            conn_id = conn.id
            fk = conn
        else:
            if direction is None:
                direction = DIR_OUT if src in self.local_ips else \
                    DIR_IN if dst in self.local_ips else DIR_UNKNOWN
            conn_id = None
            fk = (proto, src, dst, sport, dport)
        if proto == UDP and payload_len and (sport == 53 or sport == 5353):
            self.learn_dns(data[payload_off:payload_off + payload_len])
        if label is not None:
            p = batch.procs.get(label.process_id)
            if p is None:
                batch.procs[label.process_id] = [label.proc, 1, size]
            else:
                p[1] += 1
                p[2] += size
            k = (label.pid, label.tid, label.process_id)
            batch.threads[k] = batch.threads.get(k, 0) + 1
            k = (label.process_id, ts // SECOND_NS, direction)
            a = batch.procsec.get(k)
            if a is None:
                batch.procsec[k] = [1, size]
            else:
                a[0] += 1
                a[1] += size
            process_id, pid, tid = label.process_id, label.pid, label.tid
        else:
            process_id, pid, tid = None, 0, 0
        if self.epb_divs is not None:
            off = frame_epb(batch.buf, iface, ts // self.epb_divs[iface], data, origlen,
                            EPB_FLAGS.get(direction))
        else:
            off = len(batch.buf)
            batch.buf += data
        batch.rows.append((pid_, ts, size, caplen, iface, l3, proto, src, dst, sport, dport,
                           tcp_flags, ttl, vlan, icmp_type, direction, conn_id, process_id, pid,
                           tid, notes, off, ts_raw))
        # One aggregate per (flow, second) here; expanded into per-IP/port/protocol rows
        # (by minute and by second) at flush time: the per-packet cost is one dict update.
        k = (fk, ts // SECOND_NS)
        a = batch.flowsec.get(k)
        if a is None:
            batch.flowsec[k] = [1, size, ts, ts]
        else:
            a[0] += 1
            a[1] += size
            a[3] = ts
        self.packets += 1
        self.bytes += size
        if len(batch.rows) >= self.batch_packets or len(batch.buf) >= self.batch_bytes:
            self.flush()
        return pid_

    def _expand(self):
        """(flow, second) aggregates → per-IP totals, (kind, key, minute, proto) rows, the
        same by second, and the batch's (first, last) packet time (capture/aggregates.py)."""
        return expand(self.batch.flowsec, self.batch.procsec)

    def learn_dns(self, payload: bytes) -> None:
        """Hostnames from a DNS answer (the compiled scanner reads the answers itself and
        hands their (name, ip) pairs to learn_answers)."""
        self.learn_answers(dns_answers(payload))

    def learn_answers(self, answers) -> None:
        for name, ip in answers:
            self.hostnames[ip] = name
            self.batch.names.add((ip, NAME_DOMAIN, name))
            if len(self.conns) < 5000:  # open connections to `ip` get the name at the flush
                self.batch.answered.setdefault(ip, name)

    def _name_conns(self, answered: dict) -> None:
        """One pass a batch, not an answer (opened since: named from `hostnames`)."""
        for c in self.conns.values():
            if not c.hostname and c.remote[0] in answered:
                c.hostname = answered[c.remote[0]]
                self.batch.dirty[c.id] = c
        self.batch.answered = {}

    def flush(self, wait: bool = False):
        """Submit the accumulated batch to the writer thread (one transaction)."""
        batch = self.batch  # _reset() starts a new one
        if batch.answered:  # one pass per batch, not one per answer (learn_dns)
            self._name_conns(batch.answered)
        filled = bool(batch.rows or batch.plain or batch.dirty)
        if self.bulk is None:
            # back-pressure: at most one batch in flight (an idle call only looks)
            self._settle(block=filled or wait)
        if self.failure is not None:
            self._drop_batch()
        elif filled:
            self._submit(batch)
            self._mark = (self.packets, self.bytes)
            self._reset()
        if wait and self.pending is not None:
            if self.bulk is not None:
                self.bulk.drain()
                self.pending = None
            else:
                self._settle()
        if self.failure is not None and self.on_failure is None:
            raise self.error()  # a fresh exception each time: nothing chains or grows
        if len(self.conns) > MAX_CONNS:
            self._evict()

    def _submit(self, batch) -> None:
        d = batch.dirty.values()  # pack_conns: set by ingest/scanner.py for bulk ingests only
        conns = self.pack_conns(d) if self.pack_conns else {c.id: c.row() for c in d}
        procs = {k: tuple(v) for k, v in batch.procs.items()}
        threads = {}
        for (pid, tid, _process_id), n in batch.threads.items():
            threads[(pid, tid)] = threads.get((pid, tid), 0) + n
        if self.bulk is not None and self.on_flush is None and self.on_new_ips is None:
            # nobody here reads the expanded aggregates: the writer process expands them
            # (store/flowagg.py), off the parsing process's core
            args = (batch.rows, batch.buf, conns, procs, threads, None, None, batch.plain,
                    None, batch.names)
            self.pending = self.bulk.submit_batch(args, (*pack_flows(batch.flowsec), batch.procsec))
            return
        ips, agg, per_sec = self._expand()
        args = (batch.rows, batch.buf, conns, procs, threads, ips, agg, batch.plain, per_sec,
                batch.names)
        if self.bulk is not None:
            self.pending = self.bulk.submit_batch(args)
        else:
            self.pending = self.db.submit(lambda c: write_batch(c, *args))
            self._inflight = (self.packets - self._mark[0], self.bytes - self._mark[1])
        if self.on_flush is not None:
            self.on_flush(agg, procs, batch.threads)
        if self.on_new_ips is not None:
            new = [ip for ip in ips if ip not in self._known_ips]
            self._known_ips.update(new)
            if new:
                self.on_new_ips(new)

    def error(self) -> Exception:
        """The write failure as a new exception (IOFailure for a disk fault)."""
        return IOFailure(self.failure) if self.failure_is_io else RuntimeError(self.failure)

    def _settle(self, block: bool = True) -> None:
        """Wait for the batch in flight; if it failed, account for its packets as lost."""
        fut = self.pending
        if fut is None or not (block or fut.done()):
            return
        self.pending = None
        try:
            fut.result()
        except Exception as exc:  # noqa: BLE001 - recorded once, reported as `failure`
            packets, size = self._inflight
            self.packets -= packets
            self.bytes -= size
            self._mark = (self._mark[0] - packets, self._mark[1] - size)
            self.lost += packets
            self._failed(exc)

    def _drop_batch(self) -> None:
        """After a failure: the packets gathered since the last flush are lost, not kept."""
        packets, size = self.packets - self._mark[0], self.bytes - self._mark[1]
        self.packets -= packets
        self.bytes -= size
        self.lost += packets
        self._mark = (self.packets, self.bytes)
        self._reset()

    def _failed(self, exc: Exception) -> None:
        if self.failure is not None:
            return
        failure = io_failure(exc, "writing packets")
        if failure is not None:  # the database writer logged the disk fault already
            self.failure, self.failure_is_io = failure.message, True
        else:
            self.failure = f"writing packets failed ({type(exc).__name__}: {exc})"
            log.error("%s", self.failure, exc_info=exc)
        if self.on_failure is not None:
            self.on_failure(self.failure)

    def _evict(self) -> None:
        """Bound memory on long captures: forget flows that ended or have been idle for
        IDLE_NS (their rows are already written); a later packet starts a new connection."""
        self.evicted += 1
        gone = self.idle_conns(self.conns, self.batch.dirty, IDLE_NS) \
            if self.idle_conns is not None else None
        if gone is None:
            newest = max(c.last for c in self.conns.values())
            gone = [(k, c) for k, c in self.conns.items() if c.id not in self.batch.dirty and
                    (c.state in ("CLOSED", "RESET") or newest - c.last > IDLE_NS)]
        conns = [c for _k, c in gone]
        if self.labeller is not None:  # their labels are final now (written next flush)
            self.labeller.settle(conns, self.batch)
        for key, _c in gone:
            del self.conns[key]
        if self.last_evicted is not None:
            self.last_evicted = conns

    def forget_flows(self) -> None:
        """The end of a file, its last batch submitted: free every flow's memory while the
        writer finishes (~30 ms per 100,000 flows, which the ingest waited for after)."""
        self.conns.clear()
        self.hostnames.clear()

    def finish_labels(self) -> None:
        """The end of the capture: pending flows get nDPI's give-up label; nDPI is freed."""
        if self.labeller is not None:
            self.labeller.settle(None, self.batch)
            self.labeller.close()
            self.labeller = None


def _tcp_state(c: Conn, flags: int) -> None:
    if flags & RST:
        c.state = "RESET"
    elif flags & FIN:
        c.fin += 1
        c.state = "CLOSED" if c.fin >= 2 else "CLOSING"
    elif flags & SYN:
        c.state = "SYN_SENT" if not flags & ACK else "SYN_RECEIVED"
    elif c.state in ("", "SYN_SENT", "SYN_RECEIVED"):
        c.state = "ESTABLISHED"
