"""Ingest through the compiled scanner (apppaccap/ingest/_pcapscan.c): pcap and pcapng.

The scanner records the common packet - a clean TCP/UDP frame in a pcap record or an
option-less pcapng Enhanced Packet Block - straight into the Recorder's batch:
connection counters and state, the (flow, second) aggregate, a packed row and the bytes
(framed as the EPB export writes). It creates the connection of a flow's first packet
itself (Recorder.conn_for's rules; the labeller gives it the flow's nDPI state) and
hands Python only what needs Python: DNS answers (Recorder.learn_answers, the (name, ip)
pairs it read with dissect/dns.py's rules) and the
labels it settled. Whatever record it will not take (blocks other than EPBs, packets with
options, records needing a warning, frames outside its decoder, a flow the Recorder
knows but the scanner forgot) it hands back, and the record goes through the ordinary
Python path (CaptureReader.next_record, then the caller's `one`) - so the Python code
stays the one definition of what is stored, and tests/test_pcapscan.py checks both paths
give identical databases and exports on every capture file of the corpus.

Used in a bulk ingest (no extraction feed), with export then copying blocks instead of
packets.
"""

from __future__ import annotations

import struct

from apppaccap.capture.applabels import STATE
from apppaccap.capture.recorder import SECOND_NS
from apppaccap.capture.recorder import Conn
from apppaccap.store.capturedb import PLAIN_FORMAT

try:
    from apppaccap.ingest._pcapscan import AGG_NS
    from apppaccap.ingest._pcapscan import DPI_STATE_SIZE
    from apppaccap.ingest._pcapscan import FlowTable
    from apppaccap.ingest._pcapscan import flow
    from apppaccap.ingest._pcapscan import idle_conns
    from apppaccap.ingest._pcapscan import pack_conns
    from apppaccap.ingest._pcapscan import recycle
    from apppaccap.ingest._pcapscan import scan
    from apppaccap.ingest._pcapscan import scan_pcapng
    from apppaccap.ingest._pcapscan import settle
    from apppaccap.ingest._pcapscan import unpack_conns
except ImportError:  # no compiler at install time (or a build older than the nDPI feed):
    # Python does it all
    scan = scan_pcapng = settle = flow = pack_conns = recycle = idle_conns = None
else:
    # a build aggregating by another unit, or sharing another nDPI state layout: not used
    if AGG_NS != SECOND_NS or DPI_STATE_SIZE != STATE.size:
        scan = scan_pcapng = None

FULL, END, SLOW, NEWFLOW = 0, 1, 2, 3
# the share of the file read after which the bulk writer writes the statistics it holds
# (BulkWriter.write_held): the write after the last packet then holds only the last
# stretch's (1M short-flow packets: the ingest's wait for it 0.09 -> 0.03 s; at 90 % the
# earlier write held the parser up as long as it saved)
EARLY_TOTALS = 0.95
CLASSIC = ("pcap", "pcap-ns", "pcap-modified")  # CaptureReader.format of classic pcap
ROW_SIZE = struct.calcsize(PLAIN_FORMAT)


class PackedConns:
    """A batch's connection rows packed in C (_pcapscan.pack_conns): pickled to the bulk
    writer as bytes, they are the {id: row} dict Recorder._submit makes again where they
    are unpickled (unpack_conns); making and pickling the row tuples cost the parsing
    process ~0.4 s per 1M packets of short flows."""

    __slots__ = ("packed", "rest")

    def __init__(self, conns):
        self.packed, self.rest = pack_conns(conns)

    def __reduce__(self):
        return unpack_conns, (self.packed, self.rest)


def usable(reader, rec) -> bool:
    """The scanner applies: compiled, a format it walks, and nothing per-packet it does
    not do (extraction feeds on every TCP packet)."""
    if rec.on_tcp is not None:
        return False
    if reader.format == "pcapng":
        return scan_pcapng is not None
    return scan is not None and reader.format in CLASSIC


class _Walk:
    """The scanner's view of the file: one call records a run of packets."""

    def __init__(self, reader, rec):
        self.reader, self.rec = reader, rec
        self.flows = FlowTable()  # scanner key (bytes) → _pcapscan.Flow, a table in C
        self.pcapng = reader.format == "pcapng"
        self.section = None    # pcapng: (big_endian, interfaces), refreshed after Python reads
        self.settled: list = []   # conns whose nDPI label the scanner settled
        self.dpi = (*rec.labeller.c_args(), self.settled, *rec.labeller.c_open_args()) \
            if rec.labeller is not None else None
        # the scanner creates connections itself (Recorder.conn_for's rules, in C) and
        # records DNS answers, handing the (name, ip) pairs it read to the Recorder
        self.maker = (Conn, rec, rec.conns, rec.hostnames, rec.local_ips,
                      rec.labeller.open_state if rec.labeller is not None else None,
                      rec.learn_answers)
        if rec.bulk is not None and rec.on_flush is None and rec.on_new_ips is None:
            rec.pack_conns = PackedConns  # every batch goes to the bulk writer, pickled
        rec.idle_conns = idle_conns  # the eviction pass's choice, in C
        if not self.pcapng:
            self.mm, self.size, self.big, self.unit, self.rhl, self.snaplen, self.linktype = \
                reader.pcap_layout()
        else:
            self.mm, self.size = reader.mapping()

    def run(self):
        rec, reader = self.rec, self.reader
        filling = rec.batch
        room = rec.batch_packets - len(filling.rows) - len(filling.plain) // ROW_SIZE
        batch = (self.flows, filling.plain, filling.buf, rec.next_id, room, rec.batch_bytes,
                 filling.flowsec, filling.dirty)
        if not self.pcapng:
            out = scan(self.mm, reader.bytes_done, self.size, self.big, self.unit, self.rhl,
                       self.snaplen, self.linktype, *batch, rec.epb_divs[0], self.dpi,
                       self.maker)
        elif self.section is None:
            return SLOW, None, 0   # the section header and interfaces are Python's to read
        else:
            out = scan_pcapng(self.mm, reader.bytes_done, self.size, *self.section, *batch,
                              self.dpi, self.maker)
        off, n, nbytes, code, key, src_is_a, last_ts = out
        rec.next_id += n
        rec.packets += n
        rec.bytes += nbytes
        reader.packets += n
        reader.bytes_done = off
        if self.pcapng and n:
            reader.pcapng_advance(last_ts)
        return code, key, src_is_a

    def settle(self):
        """Name the flows whose label the scanner settled (before their batch is written):
        AppLabeller.complete, in C for a flow nDPI did not detect (_pcapscan.settle)."""
        if self.settled:
            labeller, batch = self.rec.labeller, self.rec.batch
            names, *c_args = labeller.c_settle_args()
            settle(self.settled, labeller.pending, batch.dirty, names,
                   lambda conn: labeller.complete(conn, batch), *c_args)
            self.settled.clear()

    def python_read(self):
        """After the reader read a record itself: the section may have changed (a new
        section header, or interfaces declared since)."""
        if self.pcapng:
            self.section = self.reader.pcapng_section()


def _reuse(rec, full) -> None:
    """The new batch fills the buffers of earlier ones (_pcapscan.recycle keeps their
    pages): the packed rows of the batch just handed over (pickled as it was sent) and a
    byte buffer the side file has taken. New buffers cost ~4,000 page faults per batch."""
    batch, bulk = rec.batch, rec.bulk
    if batch is full or bulk is None or batch.plain or batch.buf:
        return
    batch.plain = recycle(full.plain)
    if bulk.reusable:
        batch.buf = recycle(bulk.reusable.pop())


def ingest(reader, rec, one, interfaces, progress=None, flushed=None) -> None:
    """Read every record of `reader` into `rec`. `one(record)` records a record the
    scanner left to Python and returns (decoded, connection); `interfaces()` is called
    after each such record (pcapng files declare interfaces as they go); `flushed()`
    after each batch is handed to the writer."""
    walk = _Walk(reader, rec)
    flows = walk.flows
    evicted = rec.evicted
    early = rec.bulk is None or not reader.size  # statistics written near the end (or not)
    rec.last_evicted = []  # the recorder tells which connections it forgot
    try:
        while True:
            # a flush (ours, or one add() made) may have made the recorder forget idle
            # flows - even one just registered below: so must the scanner
            if rec.evicted != evicted:
                if rec.evicted == evicted + 1:
                    flows.drop(rec.last_evicted)
                else:  # (more than one pass since: not seen here, but never wrong)
                    flows.clear()
                rec.last_evicted = []
                evicted = rec.evicted
            code, key, src_is_a = walk.run()
            if code == END:
                walk.settle()
                break
            if code == FULL:
                walk.settle()
                full = rec.batch
                rec.flush()
                _reuse(rec, full)
                if flushed is not None:
                    flushed()
                if progress is not None and reader.size:
                    progress(100.0 * reader.bytes_done / reader.size)
                if not early and reader.bytes_done >= EARLY_TOTALS * reader.size:
                    early = True
                    rec.bulk.write_held()
                reader.release_read_pages()
                continue
            record = reader.next_record()
            if record is None:
                break  # the end, or damage: reader.error says where and why
            interfaces()
            walk.python_read()
            d, conn = one(record)
            if code == NEWFLOW and conn is not None and key is not None:
                src_is_local = conn.local == (d.src, d.sport)
                # a flow nDPI is still looking at: the scanner feeds it too (its state)
                st = rec.labeller.state(conn) if rec.labeller is not None else None
                flows[key] = flow(conn, src_is_local == bool(src_is_a), conn.id, st)
    finally:
        rec.last_evicted = None
        reader.finish()
