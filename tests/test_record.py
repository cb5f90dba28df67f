"""A system capture's common packets recorded in C (capture/_record.c) against the Python
path (LiveCapture._release with Recorder.conn_for and Recorder.add).

Every packet of each corpus file goes through the real sniffer items (sniffer.frame_items)
and the real LiveCapture._release into a Recorder writing a real capture database, once
with the compiled recorder and once without: the databases must be equal, row for row, in
every table, and so must every batch handed to the writer, its dicts in the same order -
and the C path must have recorded most packets itself. Attribution is the
seam: each flow gets an entry as Attribution.entry makes them, answered with a process,
answered with nobody, or due a second look, by the flow.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections import deque

import pytest

from apppaccap.attribution.labels import PENDING
from apppaccap.attribution.labels import Label
from apppaccap.attribution.labels import flow_key
from apppaccap.capture import live
from apppaccap.capture import sniffer
from apppaccap.capture.aggregates import flat
from apppaccap.capture.applabels import AppLabeller
from apppaccap.capture.live import LiveCapture
from apppaccap.capture.live import Target
from apppaccap.capture.recorder import Recorder
from apppaccap.capture.sniffer import PACKET
from apppaccap.dissect.decoded import Decoded
from apppaccap.store import capturedb
from apppaccap.store.capturedb import CaptureDb
from tests.helpers import corpus

TABLES = ("packets", "blocks", "connections", "processes", "threads", "ips", "agg", "span",
          "agg_sec", "proc_sec", "ip_names")


FILES = corpus.capture_files()


def test_the_recorder_is_built():
    # `make test` installs a compiler and Python's headers: the fast path must exist here
    assert live.compiled_record is not None


class Flows:
    """Attribution.entry's entries, decided by the flow: a process (every other flow, its
    local end known for some), nobody, or a second look due (entry[3])."""

    def __init__(self):
        self.flows: dict = {}

    def entry(self, key5, syn=False):
        fk = flow_key(*key5)
        entry = self.flows.get(fk)
        if entry is None:
            h = zlib.crc32(repr(fk).encode())
            labels = []
            if h % 3:
                pid = 100 + h % 4
                proc = {"pid": pid, "ppid": 1, "name": f"app{pid}", "path": f"/bin/app{pid}",
                        "cmdline": f"app{pid} --serve", "user": "root", "start_time": 1.5}
                # the dst end, the originator (src end), or not known
                local = ((key5[3], key5[4]), (key5[1], key5[2]), None, None, None)[h % 5]
                labels = [Label(pid * 10, pid, pid + h % 2, proc, local)]
            entry = self.flows[fk] = [labels, 0.0, 0.0, 1 if h % 7 == 0 else 0, key5]
        return entry


def _items(rel: str, flows: Flows) -> list:
    linktypes, packets = corpus.sniffed(rel)
    payload = b"".join(PACKET.pack(ts, i, len(data)) + data for ts, i, data in packets)
    return sniffer.frame_items(payload, linktypes, flows.entry, False)


def _record(tmp_path, name: str, items: list, flows: Flows, labels: bool,
            local_ips=frozenset(), target=None) -> tuple:
    """The capture database the real _release makes of `items`, and the counters."""
    db = CaptureDb(str(tmp_path / name), 1)
    rec = Recorder(db, local_ips=local_ips, batch_packets=300)   # many flushes
    batches = []
    submit = rec._submit

    def seen(batch):
        """Each batch as it is handed to the writer, its dicts in their order."""
        batches.append((list(batch.rows), bytes(batch.buf), flat(batch.flowsec),
                        list(batch.procsec.items()), list(batch.threads.items()),
                        [(k, v[1:]) for k, v in batch.procs.items()],
                        [(k, c.row()) for k, c in batch.dirty.items()]))
        submit(batch)
    rec._submit = seen
    if labels:
        rec.labeller = AppLabeller.open()
    cap = object.__new__(LiveCapture)   # _release's state, without a sniffer process
    cap.attribution, cap.recorder, cap.hold = flows, rec, 0.0
    cap.target = target if target is not None else Target()
    cap.kept = cap.attributed = cap.unknown = 0
    for at in range(0, len(items), 256):   # chunks as the queue hands them over
        cap._release(deque([[0.0, items[at:at + 256], 0]]), 1.0, True)
    rec.finish_labels()
    rec.flush(wait=True)
    db.close()
    conn = sqlite3.connect(capturedb.capture_path(str(tmp_path / name), 1))
    try:
        tables = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                  for t in TABLES}
    finally:
        conn.close()
    return tables, (cap.kept, cap.attributed, cap.unknown, rec.packets, rec.bytes, rec.next_id,
                    batches)


@pytest.mark.parametrize("labels", [False, True], ids=["plain", "ndpi"])
@pytest.mark.parametrize("rel", FILES)
def test_every_corpus_file_gives_the_python_database(tmp_path, monkeypatch, rel, labels):
    if labels:
        # `make test` installs nDPI (libndpi-bin): the labels' path must be compared here
        assert AppLabeller.open() is not None
    flows = Flows()
    items = _items(rel, flows)
    calls = []
    real = live.compiled_record

    def counting(items, i, end, *args):
        out = real(items, i, end, *args)
        calls.append(out[1])
        return out
    monkeypatch.setattr(live, "compiled_record", counting)
    in_c, c_counts = _record(tmp_path, "c", items, flows, labels)
    monkeypatch.setattr(live, "compiled_record", None)
    in_py, py_counts = _record(tmp_path, "py", items, flows, labels)
    assert c_counts == py_counts
    for table in TABLES:
        assert in_c[table] == in_py[table], table
    # the C path recorded the common packets itself: a flow's packets after its first
    # three (its connection, its state and label set), but state changes, DNS answers
    # and flows waiting for an answer - also while nDPI still looks at the flow (fed in C)
    assert sum(calls) >= 0.9 * _common(items)


TARGETS = {"process": lambda: Target({101, 103}), "children": lambda: Target({1}, children=True),
           "thread": lambda: Target({101}, thread_id=102)}


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("rel", FILES)
def test_process_and_thread_captures_give_the_python_database(tmp_path, monkeypatch, rel,
                                                              target):
    """Target.pick in C: the packets of the capture's processes (their children joining
    it) or of its thread are recorded, the others passed, as in Python."""
    flows = Flows()
    items = _items(rel, flows)
    got = []
    for fast in (live.compiled_record, None):
        monkeypatch.setattr(live, "compiled_record", fast)
        chosen = TARGETS[target]()
        got.append((_record(tmp_path, f"{target}-{fast is None}", items, flows, False,
                            target=chosen), chosen.pids))
    assert got[0] == got[1]


def _common(items: list) -> int:
    seen: dict = {}
    n = 0
    for _ts, _iface, _data, d, key, ref in items:
        if key is None or ref is None or ref[0] is PENDING or ref[3]:
            continue
        fk = flow_key(*key)
        seen[fk] = seen.get(fk, 0) + 1
        if seen[fk] > 3 and d.tcp_flags & 7 == 0 and 53 not in (d.sport, d.dport) and \
                5353 not in (d.sport, d.dport):
            n += 1
    return n


def test_local_addresses_and_a_failed_write_agree(tmp_path, monkeypatch):
    """Direction from the machine's addresses, and a capture whose writing failed: every
    packet after the failure is lost, in C as in Python."""
    rel = max(FILES, key=lambda f: len(_items(f, Flows())))
    flows = Flows()
    items = _items(rel, flows)
    local = frozenset(it[3].src for it in items[:3] if it[3].src)
    got = []
    for fast in (live.compiled_record, None):
        monkeypatch.setattr(live, "compiled_record", fast)
        got.append(_record(tmp_path, f"local-{fast is None}", items, flows, False, local))
    assert got[0] == got[1]
    for fast in (live.compiled_record, None):
        monkeypatch.setattr(live, "compiled_record", fast)
        db = CaptureDb(str(tmp_path / f"failed-{fast is None}"), 1)
        rec = Recorder(db, batch_packets=300)
        rec.on_failure = lambda message: None
        rec.failure = "disk full"
        cap = object.__new__(LiveCapture)
        cap.attribution, cap.recorder, cap.target, cap.hold = flows, rec, Target(), 0.0
        cap.kept = cap.attributed = cap.unknown = 0
        cap._release(deque([[0.0, items, 0]]), 1.0, True)
        assert rec.packets == 0 and rec.lost == len(items) and cap.kept == len(items)
        db.close()


def _established(rec_flows: dict, sport: int, ts: int, flags: int = 0x10) -> tuple:
    """A queue item of a TCP flow from 10.0.0.1:sport to 10.0.0.2:80, its entry answered."""
    d = Decoded(0x0800, 6, "10.0.0.1", "10.0.0.2", sport, 80, flags, 0, 0, 64, None, None,
                None, 54, 0)
    key = (6, "10.0.0.1", sport, "10.0.0.2", 80)
    label = Label(7, 70, 71, {"pid": 70, "ppid": 1, "name": "app", "path": "/bin/app",
                              "cmdline": "app", "user": "root", "start_time": 1.5}, None)
    return (ts, 0, b"x" * 60, d, key, rec_flows.setdefault(sport, [[label], 0.0, 0.0, 0, key]))


@pytest.mark.parametrize("victim_last", [False, True])
def test_an_error_recording_a_run_is_handed_back_and_never_repeats(tmp_path, victim_last):
    """A connection whose counters cannot be added (here: not ints) fails its run. The
    error is raised to _run (which logs it), the chunk moves past the packets recorded,
    none is recorded twice, and the other connection's packets are all stored. (The
    attacker review found the C path returning no result then: _run called _release again
    on the same chunk every 20 ms, recording the same packets again and again.)"""
    entries: dict = {}
    db = CaptureDb(str(tmp_path), 1)
    rec = Recorder(db)
    cap = object.__new__(LiveCapture)
    cap.attribution, cap.recorder, cap.target, cap.hold = Flows(), rec, Target(), 0.0
    cap.kept = cap.attributed = cap.unknown = 0
    setup = [_established(entries, 1000, 1, 0x02), _established(entries, 1000, 2),
             _established(entries, 2000, 3, 0x02), _established(entries, 2000, 4)]
    cap._release(deque([[0.0, setup, 0]]), 1.0, True)
    victim = next(c for c in rec.conns.values() if c.local[1] == 1000)
    victim.pout = "not a number"
    seq = [_established(entries, 1000, 5), _established(entries, 1000, 6),
           _established(entries, 2000, 7), _established(entries, 2000, 8)]
    if victim_last:
        seq = seq[2:] + seq[:2]
    chunk = [0.0, seq, 0]
    raised = 0
    for _ in range(3):   # as _run calls it again after an error
        try:
            cap._release(deque([chunk]), 1.0, True)
        except TypeError:
            raised += 1
    assert raised >= 1 and chunk[2] == len(seq)
    ids = [row[0] for row in rec.batch.rows]
    assert len(ids) == len(set(ids))
    stored = [row[9] for row in rec.batch.rows[len(setup):]]
    assert stored.count(2000) == 2
    rec.flush(wait=True)
    db.close()


@pytest.mark.parametrize("compiled", [True, False], ids=["c", "python"])
def test_a_second_look_holds_only_what_it_can_change(tmp_path, monkeypatch, compiled):
    """A flow whose second look is due (entry[3]: the kernel named its originator, the
    socket table still has to name the other end) is held for a process capture, which
    may want that end, but not for a system capture when the first label - the one it
    stores - names the originator with its thread. A label without a thread is held."""
    if not compiled:
        monkeypatch.setattr(live, "compiled_record", None)

    def kept(target, tid, local_is_src=True) -> int:
        entries: dict = {}
        items = [_established(entries, 1000 + n, n) for n in range(4)]
        for sport, entry in entries.items():
            lab = entry[0][0]
            local = ("10.0.0.1", sport) if local_is_src else ("10.0.0.2", 80)
            entry[0][0] = Label(lab.process_id, lab.pid, tid, lab.proc, local)
            entry[3] = 1.0   # a second look due
        db = CaptureDb(str(tmp_path / f"{target is None}{tid}{local_is_src}"), 1)
        cap = object.__new__(LiveCapture)
        cap.attribution, cap.recorder, cap.hold = Flows(), Recorder(db), 10.0
        cap.target = target or Target()
        cap.kept = cap.attributed = cap.unknown = 0
        cap._release(deque([[0.0, items, 0]]), 1.0, False)   # within the hold
        db.close()
        return cap.kept

    assert kept(None, 71) == 4                       # system, originator with its thread
    assert kept(None, 0) == 0                        # its thread still unknown
    assert kept(None, 71, local_is_src=False) == 0   # the first label is the other end
    assert kept(Target({70}), 71) == 0               # a process capture waits

