"""The compiled pcap scanner against the Python path it stands in for.

Every pcap and pcapng file of the corpus (well-formed and malformed) and generated files
of realistic flows are ingested twice - through apppaccap/ingest/_pcapscan.c, and with the scanner
switched off - and the two capture databases must hold the same packets (every column
and the bytes), connections, statistics and IPs, end in the same state with the same
message, and export to byte-identical pcapng files (the scanner's captures are exported
by copying their EPB-framed blocks, the others packet by packet).
"""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import sys

import pytest

from apppaccap.ingest import export
from apppaccap.ingest import ingest
from apppaccap.ingest import scanner
from apppaccap.pcap.reader import CaptureReader
from apppaccap.pcap.reader import NotACaptureError
from apppaccap.store.blocks import BlockReader
from apppaccap.store.capturedb import CaptureDb
from apppaccap.store.capturedb import capture_path
from tests.helpers import corpus
from tests.helpers import tshark
from tests.helpers.pcapfiles import idb
from tests.helpers.pcapfiles import pcap_header
from tests.helpers.pcapfiles import pcap_record
from tests.helpers.pcapfiles import write_pcap


def _opens(rel: str) -> bool:
    """A corpus file that opens as pcap or pcapng (files refused at the header are not
    ours)."""
    try:
        with CaptureReader(corpus.path(rel)) as reader:
            return reader.format in scanner.CLASSIC or reader.format == "pcapng"
    except (NotACaptureError, OSError):
        return False


PCAPS = corpus.files(where=lambda row: _opens(row["path"]))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gen_flows(path: str, packets: int, profile: str = "long") -> None:
    """benchmarks/gen_flows.py: a pcap of realistic flows."""
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gen_flows.py"), path,
                    "--packets", str(packets), "--profile", profile], check=True, cwd=ROOT)


def test_scanner_is_built():
    # `make test` installs a compiler and Python's headers: the fast path must exist here
    assert scanner.scan is not None and scanner.scan_pcapng is not None


def _count_scanned(monkeypatch, name: str) -> list:
    """Wrap scanner.<name> so the returned list fills with the packets each call took."""
    taken: list = []
    real = getattr(scanner, name)

    def counting(*args):
        out = real(*args)
        taken.append(out[1])
        return out

    monkeypatch.setattr(scanner, name, counting)
    return taken


def _ingest(ctx, path, *, fast: bool, monkeypatch):
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(scanner, "scan", None)
            m.setattr(scanner, "scan_pcapng", None)
        reader = ingest.open_reader(path)
        cid = ingest.create_capture(ctx, path)
        result = ingest.ingest(ctx, reader, cid)
    return cid, result


def _dump(ctx, cid) -> dict:
    path = capture_path(ctx.config.data_dir, cid)
    conn = sqlite3.connect(path)
    try:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(packets)")
                if r[1] not in ("blk", "off")]
        blocks = BlockReader(conn, path)
        packets = []
        for row in conn.execute(f"SELECT {','.join(cols)}, blk, off FROM packets ORDER BY id"):
            *fields, blk, off = row
            packets.append((*fields, blocks.packet(blk, off, row[cols.index("caplen")])))
        blocks.close()
        out = {"packets": packets}
        for table, order in (("connections", "id"), ("agg", "kind, key, minute, proto"),
                             ("agg_sec", "kind, key, sec, proto"),
                             ("ips", "ip"), ("interfaces", "id"), ("processes", "process_id"),
                             ("threads", "pid, tid")):
            out[table] = conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
        return out
    finally:
        conn.close()


def _export(ctx, cid, tmp_path, name) -> bytes:
    db = CaptureDb(ctx.config.data_dir, cid)
    try:
        target = str(tmp_path / name)
        export.write_capture(db, target)
    finally:
        db.close()
    with open(target, "rb") as fh:
        return fh.read()


def _same(ctx, path, tmp_path, monkeypatch):
    fast_id, fast = _ingest(ctx, path, fast=True, monkeypatch=monkeypatch)
    slow_id, slow = _ingest(ctx, path, fast=False, monkeypatch=monkeypatch)
    assert (fast["State"], fast["Message"], fast["Packets"]) == \
        (slow["State"], slow["Message"], slow["Packets"])
    a, b = _dump(ctx, fast_id), _dump(ctx, slow_id)
    for table in a:
        assert a[table] == b[table], table
    assert _export(ctx, fast_id, tmp_path, "fast.pcapng") == \
        _export(ctx, slow_id, tmp_path, "slow.pcapng")
    return a


@pytest.mark.parametrize("rel", PCAPS)
def test_corpus_file_same_through_both_paths(ctx, rel, tmp_path, monkeypatch):
    _same(ctx, corpus.path(rel), tmp_path, monkeypatch)


def test_generated_flows_same_and_mostly_scanned(ctx, tmp_path, monkeypatch):
    src = str(tmp_path / "flows.pcap")
    gen_flows(src, 30000)
    taken = _count_scanned(monkeypatch, "scan")
    dump = _same(ctx, src, tmp_path, monkeypatch)
    assert len(dump["packets"]) >= 30000 and len(dump["connections"]) > 100
    # the compiled path did the bulk of the work
    assert sum(taken) > 0.9 * len(dump["packets"])
    assert len(tshark.fields(tmp_path / "fast.pcapng", "frame.number")) == len(dump["packets"])


def test_short_flows_same_and_created_by_the_scanner(ctx, tmp_path, monkeypatch):
    """The short-flow profile (~10 packets a flow, DNS-heavy): one packet in ten opens a
    flow, so more than 90 % scanned means the scanner created the connections itself
    (only flows the recorder already knew went through Python); the
    nDPI labels, hostnames learned from DNS and everything else equal the Python path's,
    as pcap and as pcapng."""
    src, png = str(tmp_path / "short.pcap"), str(tmp_path / "short.pcapng")
    gen_flows(src, 30000, "short")
    subprocess.run(["editcap", "-F", "pcapng", src, png], check=True)
    for path, name in ((src, "scan"), (png, "scan_pcapng")):
        taken = _count_scanned(monkeypatch, name)
        dump = _same(ctx, path, tmp_path, monkeypatch)
        conns = dump["connections"]
        assert len(conns) > 2000 and len(dump["packets"]) < 15 * len(conns)
        assert sum(taken) > 0.9 * len(dump["packets"])
        assert sum(1 for c in conns if c[16]) > 100   # hostnames from the DNS answers


def test_flow_states_opened_in_c_as_by_open_state(ctx, tmp_path, monkeypatch):
    """The scanner opens a new flow's nDPI state itself (AppLabeller.open_state in C) below
    the labeller's bound of flows in detection, and calls open_state past it (the flow is
    labelled Unknown at once): the same database as when open_state opens every flow.
    (The bound is reached at different flows by the scanner and the Python path - the
    scanner names settled flows at its batch's end - so this compares scanner runs.)"""
    from apppaccap.capture import applabels
    monkeypatch.setattr(applabels, "MAX_PENDING", 40)
    src = str(tmp_path / "short.pcap")
    gen_flows(src, 6000, "short")
    in_c, _ = _ingest(ctx, src, fast=True, monkeypatch=monkeypatch)
    with monkeypatch.context() as m:
        m.setattr(applabels.AppLabeller, "c_open_args", lambda self: ())
        in_python, _ = _ingest(ctx, src, fast=True, monkeypatch=monkeypatch)
    a, b = _dump(ctx, in_c), _dump(ctx, in_python)
    assert a == b
    apps = [c[19] for c in a["connections"]]   # app_proto
    assert apps.count("Unknown") > 100 and len(set(apps)) > 2


def _stretch(path: str, factor: int) -> None:
    """Spread a µs pcap's packets `factor` times wider in time (same order)."""
    with open(path, "r+b") as fh:
        data = bytearray(fh.read())
        pos, base = 24, None
        while pos + 16 <= len(data):
            sec, usec, caplen, _orig = struct.unpack_from("<IIII", data, pos)
            t = sec * 1_000_000 + usec
            base = t if base is None else base
            t = base + (t - base) * factor
            struct.pack_into("<II", data, pos, t // 1_000_000, t % 1_000_000)
            pos += 16 + caplen
        fh.seek(0)
        fh.write(data)


@pytest.mark.parametrize("max_held, stretch", [(300_000, 1), (1500, 1), (300_000, 2000)])
def test_aggregates_expanded_by_the_writer_process_match_in_process(ctx, tmp_path,
                                                                   monkeypatch, max_held,
                                                                   stretch):
    """A bulk ingest hands flat flow counters to the writer process, which expands them
    (store/flowagg.py), sums them over all batches and writes them at the end, the
    seconds (and minutes) a file in time order is done with as it goes, and everything
    each time it holds more than MAX_HELD rows (here also a tiny bound, so rows written
    early are added to later; and packets spread over ~4 minutes); with extraction on,
    the ingest writes in-process and upserts them batch by batch (and every packet takes
    the Python path): statistics, IPs and connections are the same."""
    from apppaccap.capture import recorder
    from apppaccap.store import bulkwriter
    monkeypatch.setitem(recorder.Recorder.__init__.__kwdefaults__, "batch_packets", 500)
    monkeypatch.setattr(bulkwriter, "MAX_HELD", max_held)
    src = str(tmp_path / "short.pcap")
    gen_flows(src, 4000, "short")
    _stretch(src, stretch)
    bulk_id, _ = _ingest(ctx, src, fast=True, monkeypatch=monkeypatch)
    ctx.settings.set("extract_enabled", "1")
    try:
        inproc_id, _ = _ingest(ctx, src, fast=True, monkeypatch=monkeypatch)
    finally:
        ctx.settings.set("extract_enabled", "0")
    a, b = _dump(ctx, bulk_id), _dump(ctx, inproc_id)
    assert len(a["agg"]) > 500
    for table in ("agg", "ips", "connections"):
        assert a[table] == b[table], table
    # the writer process sums the statistics of all batches and writes them once at the
    # end; the in-process writer upserts them batch by batch
    a, b = _statistics(ctx, bulk_id), _statistics(ctx, inproc_id)
    assert len(a["agg_sec"]) > 500 and len(a["ip_names"]) > 20 and len(a["span"]) == 1
    assert len({row[0] for row in a["agg_sec"]}) > (100 if stretch > 1 else 0)  # seconds
    assert a == b


def _statistics(ctx, cid) -> dict:
    conn = sqlite3.connect(capture_path(ctx.config.data_dir, cid))
    try:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
                for table, order in (("agg_sec", "kind, key, sec, proto"),
                                     ("proc_sec", "process_id, sec, direction"),
                                     ("span", "id"), ("ip_names", "ip, kind, name"))}
    finally:
        conn.close()


def test_note_on_one_packet_exports_like_the_packet_path(ctx, tmp_path, monkeypatch):
    """A verbatim-copied capture with a packet note: that packet's block is rewritten
    packet by packet, the others copied; the file equals the all-packets export."""
    src = str(tmp_path / "flows.pcap")
    gen_flows(src, 50000)
    fast_id, _ = _ingest(ctx, src, fast=True, monkeypatch=monkeypatch)
    slow_id, _ = _ingest(ctx, src, fast=False, monkeypatch=monkeypatch)
    for cid in (fast_id, slow_id):
        db = CaptureDb(ctx.config.data_dir, cid)
        assert db.one("SELECT count(DISTINCT blk) FROM packets")[0] > 2   # several blocks
        db.write(lambda c: c.execute("UPDATE packets SET notes = 'look here' WHERE id = 30000"))
        db.close()
    fast = _export(ctx, fast_id, tmp_path, "fast.pcapng")
    assert fast == _export(ctx, slow_id, tmp_path, "slow.pcapng")
    rows = tshark.fields(tmp_path / "fast.pcapng", "frame.number", "frame.comment",
                         display_filter="frame.comment")
    assert rows[0] == ["30000", "look here"]


def test_side_file_goes_with_the_capture(live, live_ajax):
    from apppaccap.store.blocks import side_path
    cmd = live_ajax.ok("pcap_ingest_file",
                       path=corpus.path("wellformed/http_get_file_download.pcap"))
    done = live.jobs.wait(cmd["CommandUid"])
    cid = int(done["Result"])
    db_path = capture_path(live.config.data_dir, cid)
    assert live_ajax.ok("capture_get_details", capture_id=cid)["PacketCount"] == 14
    assert os.path.getsize(side_path(db_path)) > 0
    live_ajax.ok("capture_delete", capture_id=cid)
    assert not os.path.exists(side_path(db_path)) and not os.path.exists(db_path)


def test_forgetting_flows_mid_file_same_through_both_paths(ctx, tmp_path, monkeypatch):
    """Small batches and a small connection bound make the recorder forget closed flows
    many times mid-file; the scanner must forget them too (a later packet of the same
    5-tuple starts a new connection on both paths)."""
    from apppaccap.capture import recorder
    monkeypatch.setattr(recorder, "MAX_CONNS", 20)
    monkeypatch.setitem(recorder.Recorder.__init__.__kwdefaults__, "batch_packets", 997)
    src = str(tmp_path / "flows.pcap")
    gen_flows(src, 20000)
    dump = _same(ctx, src, tmp_path, monkeypatch)
    assert len(dump["packets"]) >= 20000


def test_open_flows_stay_with_the_scanner_when_the_recorder_forgets_closed_ones(
        ctx, tmp_path, monkeypatch):
    """An eviction pass forgets closed flows only: the scanner drops those and keeps the
    open ones, whose later packets it still takes itself (with clear(), each came back
    through the Python path once per pass). Both paths still agree."""
    from apppaccap.capture import recorder
    from benchmarks.gen_flows import frame
    monkeypatch.setattr(recorder, "MAX_CONNS", 20)
    monkeypatch.setitem(recorder.Recorder.__init__.__kwdefaults__, "batch_packets", 50)
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    frames = []
    for i in range(300):   # 3 long-lived flows, and a stream of flows reset at once
        frames.append(frame(a, b, 6, 40000 + i % 3, 443, b"x" * 40, 0x18))
        frames.append(frame(a, b, 6, 1000 + i, 80, b"", 0x04))
    src = tmp_path / "evict.pcap"
    write_pcap(src, [(100_000_000_000 + i * 1000, f) for i, f in enumerate(frames)],
               snaplen=65535)
    handed_back = []
    real_one = ingest._record
    monkeypatch.setattr(ingest, "_record", lambda *args: handed_back.append(1) or
                        real_one(*args))
    passes = []
    real_evict = recorder.Recorder._evict
    monkeypatch.setattr(recorder.Recorder, "_evict", lambda rec: passes.append(
        len(rec.conns)) or real_evict(rec))
    dump = _same(ctx, str(src), tmp_path, monkeypatch)
    assert len(passes) >= 20                             # many passes on each path
    long_lived = [c for c in dump["connections"] if c[5] == 443]
    assert len(long_lived) == 3                          # never forgotten, never split
    # the scanned run (the first ingest) handed nothing back for the open flows
    assert len(handed_back) - len(frames) < 3, len(handed_back) - len(frames)


def test_ipv4_header_cut_before_the_destination_is_kept(ctx, tmp_path, monkeypatch):
    """18 bytes of an IPv4 header: a source but no destination. Both paths keep the packet
    (no connection) instead of failing the ingest."""
    frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6,
                                                           0, 0, 10, 0, 0, 1, 10, 0])
    src = tmp_path / "cut.pcap"
    src.write_bytes(pcap_header(snaplen=65535) + pcap_record(1_000_000_000, frame, origlen=60))
    dump = _same(ctx, str(src), tmp_path, monkeypatch)
    assert len(dump["packets"]) == 1 and dump["connections"] == []


def test_flow_forgotten_by_its_own_first_packet(ctx, tmp_path, monkeypatch):
    """The packet that fills a batch opens a flow with a RST: the flush it triggers forgets
    that very flow, so its next packet must start a new connection on both paths."""
    from apppaccap.capture import recorder
    from benchmarks.gen_flows import frame
    monkeypatch.setattr(recorder, "MAX_CONNS", 20)
    monkeypatch.setitem(recorder.Recorder.__init__.__kwdefaults__, "batch_packets", 100)
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    frames = [frame(a, b, 6, 1000 + i, 80, b"", 0x04) for i in range(99)]   # 99 reset flows
    frames += [frame(a, b, 6, 5000, 80, b"", 0x04),          # the 100th: new flow, RST
               frame(a, b, 6, 5000, 80, b"x" * 10, 0x18),    # then the same 5-tuple again
               frame(b, a, 6, 80, 5000, b"", 0x10)]
    src = tmp_path / "reset.pcap"
    write_pcap(src, [(100_000_000_000 + i * 1000, f) for i, f in enumerate(frames)],
               snaplen=65535)
    dump = _same(ctx, str(src), tmp_path, monkeypatch)
    conns = [c for c in dump["connections"] if 5000 in (c[3], c[5])]
    assert len(conns) == 2   # the reset one, and the new one for the later packets


def test_pcapng_from_editcap_and_mergecap_same_and_mostly_scanned(ctx, tmp_path, monkeypatch):
    """Wireshark's own tools write the pcapng (one interface; two after a merge with a
    corpus file): both paths agree and the scanner takes nearly every packet."""
    flows = str(tmp_path / "flows.pcap")
    gen_flows(flows, 20000)
    single, merged = str(tmp_path / "one.pcapng"), str(tmp_path / "two.pcapng")
    subprocess.run(["editcap", "-F", "pcapng", flows, single], check=True)
    subprocess.run(["mergecap", "-w", merged, single,
                    corpus.path("wellformed/http_bro_org_multi_object.pcap")], check=True)
    for path, interfaces in ((single, 1), (merged, 2)):
        taken = _count_scanned(monkeypatch, "scan_pcapng")
        dump = _same(ctx, path, tmp_path, monkeypatch)
        assert len(dump["interfaces"]) == interfaces
        assert sum(taken) > 0.9 * len(dump["packets"])


def test_interface_declared_after_the_last_packet(ctx, tmp_path, monkeypatch):
    """An IDB after the last EPB (mergecap and live tools write them): stored by both
    paths, and both exports carry it."""
    flows, single = str(tmp_path / "flows.pcap"), str(tmp_path / "one.pcapng")
    gen_flows(flows, 2000)
    subprocess.run(["editcap", "-F", "pcapng", flows, single], check=True)
    with open(single, "ab") as fh:   # editcap writes little-endian sections
        fh.write(idb(101))
    dump = _same(ctx, single, tmp_path, monkeypatch)
    assert [row[2] for row in dump["interfaces"]] == [1, 101]


def test_totals_sum_expanded_batches_as_they_sum_flows():
    """The writer process sums batches handed over as flat flows or already expanded
    (store/flowagg.py): both give what expand_flows gives for all batches at once."""
    from apppaccap.store.flowagg import Totals
    from apppaccap.store.flowagg import expand_flows
    base = 1_700_000_000
    batches = [[(6, "10.0.0.1", "10.0.0.2", 40000 + i % 7, 443, base + i // 3, 2 + i, 100 * i,
                 (base + i // 3) * 10**9 + i, (base + i // 3) * 10**9 + i + 5)
                for i in range(start, start + 40)] for start in (0, 40, 200)]
    batches.append([(17, "10.0.0.3", "10.0.0.3", 53, 53, base + 59, 1, 80, (base + 59) * 10**9,
                     (base + 59) * 10**9)])
    flat, expanded, settling = Totals(), Totals(), Totals()
    early_min: dict = {}
    early_sec: dict = {}
    for flows in batches:
        flat.add_flows(flows, {(5, base, 1): [1, 10]})
        ips, agg, per_sec = expand_flows(flows, {(5, base, 1): [1, 10]})
        expanded.add(ips, agg, per_sec)
        settling.add_flows(flows, {(5, base, 1): [1, 10]})
        settled = settling.take_settled()
        if settled is not None:  # written early: disjoint from what is held
            assert not early_min.keys() & settled[0].keys()
            assert not early_sec.keys() & settled[1].keys()
            early_min.update(settled[0])
            early_sec.update(settled[1])
    ips, agg, per_sec = expand_flows([f for flows in batches for f in flows],
                                     {(5, base, 1): [len(batches), 10 * len(batches)]})
    whole = (ips, agg, per_sec, [])
    assert flat.take() == whole
    assert expanded.take() == whole
    assert early_sec and early_min  # seconds settled, and the first minute closed
    rest = settling.take()
    assert not early_min.keys() & rest[1].keys() and not early_sec.keys() & rest[2][0].keys()
    assert ({**early_min, **rest[1]}, {**early_sec, **rest[2][0]}) == (agg, per_sec[0])


def _dns_response(rng) -> bytearray:
    """A DNS response of random names (UTF-8 and not), A/AAAA/CNAME answers named in full
    or by a compression pointer, IN class with and without mDNS's cache-flush bit."""
    def name():
        labels = [bytes(rng.choice(b"abc\xc3\xa9\xff.") for _ in range(rng.randint(1, 12)))
                  for _ in range(rng.randint(0, 4))]
        return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    answers = rng.randint(0, 5)
    out = struct.pack("!HHHH", 7, 0x8180, 1, answers) + b"\0\0\0\0" + name() + b"\0\1\0\1"
    for _ in range(answers):
        rtype = rng.choice([1, 28, 5])
        rdata = bytes(rng.getrandbits(8) for _ in range({1: 4, 28: 16, 5: 6}[rtype]))
        out += rng.choice([b"\xc0\x0c", name()])
        out += struct.pack("!HHIH", rtype, rng.choice([1, 0x8001, 3]), 30, len(rdata)) + rdata
    return bytearray(out)


def test_dns_answers_read_in_c_as_in_python():
    """The scanner reads DNS answers in C (its hostnames): the same (name, ip) pairs as
    dissect/dns.py's dns_answers for well-formed, damaged (bytes changed: pointer loops,
    label lengths, counts, flags) and cut responses."""
    import random

    from apppaccap.ingest._pcapscan import dns_answers as c_answers

    from apppaccap.dissect.dns import dns_answers
    rng = random.Random(15)
    found = 0
    for _ in range(20000):
        msg = _dns_response(rng)
        for _ in range(rng.choice([0, 0, 1, 2, 4])):
            msg[rng.randrange(len(msg))] = rng.getrandbits(8)
        if rng.random() < 0.1:
            msg = msg[:rng.randint(0, len(msg))]
        msg = bytes(msg)
        assert c_answers(msg) == dns_answers(msg), msg
        found += len(dns_answers(msg))
    assert found > 10000


def test_collector_settings_come_back_after_an_ingest(ctx, tmp_path, monkeypatch):
    """An ingest raises the collector's threshold and freezes what is alive after each
    batch (ingest._fewer_collections): both undone when it ends, and every batch's
    freeze happened while it ran."""
    import gc

    from apppaccap.capture import recorder
    monkeypatch.setitem(recorder.Recorder.__init__.__kwdefaults__, "batch_packets", 500)
    src = str(tmp_path / "short.pcap")
    gen_flows(src, 3000, "short")
    before = gc.get_threshold()
    frozen: list = []
    real = gc.freeze

    def freeze():
        real()
        frozen.append((gc.get_freeze_count(), gc.get_threshold()))

    monkeypatch.setattr(gc, "freeze", freeze)
    _ingest(ctx, src, fast=True, monkeypatch=monkeypatch)
    assert len(frozen) >= 5 and all(n > 0 and t[0] >= 50_000 for n, t in frozen)
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before


def test_connection_rows_packed_in_c_unpickle_as_conn_row():
    """The batch's connection rows go to the bulk writer packed (scanner.PackedConns):
    unpickled they are exactly {c.id: c.row()}, in the same order: a labelled connection
    packed from its row(), rows the format does not hold (an int beyond 64 bits, a string
    UTF-8 cannot encode) as their tuples, in their place."""
    import pickle

    from apppaccap.attribution.labels import Label
    from apppaccap.capture.recorder import Conn
    plain = Conn(7, 6, ("10.0.0.1", 40000), ("192.168.1.20", 443), 1_700_000_000_000_000_000)
    plain.pout, plain.bout, plain.last, plain.state = 3, 180, plain.first + 5, "ESTABLISHED"
    plain.app, plain.hostname = ("TLS", "Google", "Web"), "www.example.com"
    v6 = Conn(8, 17, ("fe80::1", 5353), ("ff02::fb", 5353), 0)
    v6.hostname = "h\u00e9te"   # not ASCII
    owned = Conn(9, 6, ("127.0.0.1", 5000), ("127.0.0.1", 80), 5)
    owned.label = Label(process_id=3, pid=100, tid=101, proc={}, local=None)
    huge = Conn(10, 6, ("10.0.0.2", 1), ("10.0.0.3", 2), 5)
    huge.bin = 2**70
    odd = Conn(11, 17, ("10.0.0.2", 1), ("10.0.0.3", 2), 5)
    odd.hostname = "bad\udcff"   # a lone surrogate
    conns = [plain, v6, owned, huge, odd]
    packed = scanner.PackedConns(conns)
    assert len(packed.rest) == 2   # huge, odd
    back = pickle.loads(pickle.dumps(packed))
    want = {c.id: c.row() for c in conns}
    assert back == want and list(back) == list(want)
    assert pickle.loads(pickle.dumps(scanner.PackedConns([]))) == {}


def test_two_ingests_at_once_same_as_one_at_a_time(ctx, tmp_path):
    """Two files ingested at once, in two threads switching often (the scanner calls back
    into Python - new connections, DNS answers - and the other ingest's scan runs then):
    each capture is the one it is when ingested alone (the scanner's per-call state -
    the flows it must write back - is per call, not shared)."""
    import threading
    a, b = str(tmp_path / "a.pcap"), str(tmp_path / "b.pcap")
    gen_flows(a, 6000, "short")
    gen_flows(b, 9000, "short")

    def one(path, out):
        reader = ingest.open_reader(path)
        cid = ingest.create_capture(ctx, path)
        ingest.ingest(ctx, reader, cid)
        out.append(cid)

    first: list = []
    one(a, first)
    one(b, first)
    alone = [_dump(ctx, cid) for cid in first]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        ids: list = [[], []]
        threads = [threading.Thread(target=one, args=(p, ids[i])) for i, p in enumerate((a, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        sys.setswitchinterval(old)
    assert [_dump(ctx, i[0]) for i in ids] == alone


def test_recycle_empties_a_buffer_that_then_fills_as_a_new_one():
    from apppaccap.ingest._pcapscan import recycle
    buf = bytearray(b"x" * 100_000)
    assert recycle(buf) is buf and len(buf) == 0 and bytes(buf) == b""
    buf += b"abc"          # Python's own appends still work on it (it may shrink then)
    assert bytes(buf) == b"abc"
    with pytest.raises(TypeError):
        recycle(b"bytes are immutable")


@pytest.mark.parametrize("reuse_max", [None, 1])
def test_batches_refill_earlier_buffers_and_store_the_same(ctx, tmp_path, monkeypatch,
                                                          reuse_max):
    """Each batch of a bulk ingest refills the packed-row buffer of the batch before and,
    once the side file has taken one, an earlier batch's byte buffer (their pages already
    touched); a byte buffer over bulkwriter.REUSE_MAX is never kept. Either way the
    database and the export equal the Python path's."""
    from apppaccap.capture import recorder
    from apppaccap.store import bulkwriter
    monkeypatch.setitem(recorder.Recorder.__init__.__kwdefaults__, "batch_packets", 500)
    if reuse_max is not None:
        monkeypatch.setattr(bulkwriter, "REUSE_MAX", reuse_max)
    refilled = {"plain": 0, "buf": 0}
    real = scanner._reuse

    def counting(rec, full):
        before = (rec.batch.plain, rec.batch.buf)
        real(rec, full)
        refilled["plain"] += rec.batch.plain is not before[0]
        refilled["buf"] += rec.batch.buf is not before[1]

    monkeypatch.setattr(scanner, "_reuse", counting)
    src = str(tmp_path / "short.pcap")
    gen_flows(src, 6000, "short")
    _same(ctx, src, tmp_path, monkeypatch)
    assert refilled["plain"] >= 10
    if reuse_max is None:
        assert refilled["buf"] >= 5
    else:
        assert refilled["buf"] == 0


def test_idle_conns_chooses_as_the_recorder_does():
    """The eviction pass's choice in C (_pcapscan.idle_conns, set by the scanner) against
    Recorder._evict's own: connections not written this batch that ended, or have been
    idle past IDLE_NS before the newest; None (Python decides) for a time that is not a
    64-bit integer."""
    from apppaccap.ingest._pcapscan import idle_conns

    from apppaccap.capture import recorder
    from apppaccap.capture.recorder import Conn

    newest = 1_700_000_000 * 10**9
    conns, dirty = {}, {}
    for i in range(200):
        c = Conn(i, 6, ("10.0.0.1", 1000 + i), ("10.0.0.2", 443), newest)
        c.last = newest - (i % 7) * recorder.IDLE_NS // 3 - (1 if i % 5 == 0 else 0)
        c.state = ("", "ESTABLISHED", "CLOSED", "RESET", "CLOSING", "SYN_SENT")[i % 6]
        conns[(6, ("10.0.0.1", 1000 + i), ("10.0.0.2", 443))] = c
        if i % 11 == 0:
            dirty[i] = c
    newest_seen = max(c.last for c in conns.values())
    expected = [(k, c) for k, c in conns.items() if c.id not in dirty and
                (c.state in ("CLOSED", "RESET") or newest_seen - c.last > recorder.IDLE_NS)]
    got = idle_conns(conns, dirty, recorder.IDLE_NS)
    assert got == expected and 0 < len(got) < len(conns)
    assert idle_conns({}, {}, recorder.IDLE_NS) == []
    odd = Conn(999, 6, ("10.0.0.1", 1), ("10.0.0.2", 2), 2**70)
    assert idle_conns({**conns, "odd": odd}, dirty, recorder.IDLE_NS) is None


def test_statistics_written_near_the_end_of_a_file_store_the_same(ctx, tmp_path,
                                                                  monkeypatch):
    """Once 95 % of a file is read the bulk writer writes the statistics it holds
    (scanner.EARLY_TOTALS: the write after the last packet is then short); the rows by
    minute and by second, the addresses' totals and everything else equal the Python
    path's, which writes them once."""
    from apppaccap.capture import recorder
    from apppaccap.store import bulkwriter
    monkeypatch.setitem(recorder.Recorder.__init__.__kwdefaults__, "batch_packets", 500)
    calls = []
    real = bulkwriter.BulkWriter.write_held
    monkeypatch.setattr(bulkwriter.BulkWriter, "write_held",
                        lambda self: calls.append(1) or real(self))
    src = str(tmp_path / "short.pcap")
    gen_flows(src, 8000, "short")
    dump = _same(ctx, src, tmp_path, monkeypatch)
    assert calls == [1]
    assert len(dump["agg_sec"]) > 100 and len(dump["ips"]) > 100
