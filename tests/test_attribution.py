"""Attribution logic with an injected backend (no root, no sockets)."""

import sys
import threading
import time
from types import SimpleNamespace

from apppaccap.attribution.labels import PENDING
from apppaccap.attribution.labels import flow_key
from apppaccap.attribution.owners import Owner
from apppaccap.attribution.resolver import Attribution


class FakeBook:
    def __init__(self):
        self.ids = {}

    def identify(self, recs):
        return [self.ids.setdefault((r["pid"], r["start_time"]), len(self.ids) + 1) for r in recs]


class FakeBackend:
    """resolve() answers from a table that the test changes over time."""

    def __init__(self):
        self.table = {}
        self.calls = []
        self.snap = {}

    def start(self):
        pass

    def stop(self):
        pass

    def resolve(self, proto, src, sport, dst, dport):
        self.calls.append((src, sport, dst, dport))
        return list(self.table.get((proto, src, sport, dst, dport), []))

    def snapshot(self):
        return self.snap

    def process(self, pid):
        return SimpleNamespace(ppid=1, name=f"p{pid}", path=f"/bin/p{pid}", cmdline="", user="",
                               start_time_ns=pid * 1000)


def wait_status(att, key, **kw):
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        st = att.status(key, **kw)
        if st is not PENDING:
            return st
        time.sleep(0.002)
    raise AssertionError("still pending")


KEY = (6, "10.0.0.1", 40000, "10.0.0.2", 80)


def make(backend):
    att = Attribution(backend, FakeBook(), boost=False, is_local=lambda ip: ip == "10.0.0.1")
    att.acquire()
    return att


def test_pending_then_labelled_and_sticky():
    be = FakeBackend()
    be.table[KEY] = [Owner(4242, None, 99, True)]
    att = make(be)
    try:
        assert att.status(KEY) is PENDING
        labels = wait_status(att, KEY)
        assert [(lab.pid, lab.local) for lab in labels] == [(4242, ("10.0.0.1", 40000))]
        be.table.clear()                   # the process exits; its flow keeps the label
        reply = (6, "10.0.0.2", 80, "10.0.0.1", 40000)
        assert att.status(reply)[0].pid == 4242
        # the reply direction is the same flow: never looked up again (a second look at
        # the first one, for its thread, may have happened)
        assert ("10.0.0.2", 80, "10.0.0.1", 40000) not in be.calls
    finally:
        att.release()


def test_second_look_finds_the_thread_and_keeps_an_end_that_closed():
    be = FakeBackend()
    # both ends local, no thread known yet: a second look is due and pipelines hold
    be.table[KEY] = [Owner(7, None, 5, True), Owner(8, None, 6, False)]
    att = make(be)
    try:
        att.status(KEY)
        assert [lab.pid for lab in wait_status(att, KEY)] == [7, 8]
        entry = att.flows[flow_key(*KEY)]
        assert entry[3]                      # the second look is pending
        be.table[KEY] = [Owner(8, 81, 6, False)]   # client gone; the server thread known
        deadline = time.monotonic() + 2
        while entry[3] and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not entry[3]
        assert [(lab.pid, lab.tid) for lab in att.status(KEY)] == [(7, 0), (8, 81)]
    finally:
        att.release()


def test_late_owner_found_by_retry():
    be = FakeBackend()
    att = make(be)
    try:
        att.status(KEY)
        time.sleep(0.003)                  # first look finds nothing …
        be.table[KEY] = [Owner(7, None, 5, True)]   # … the socket appears a moment later
        assert wait_status(att, KEY)[0].pid == 7
        assert len(be.calls) >= 2
    finally:
        att.release()


def test_nobody_is_empty_not_wrong():
    be = FakeBackend()
    att = make(be)
    try:
        att.status(KEY)
        assert wait_status(att, KEY) == []
    finally:
        att.release()


def test_new_syn_on_reused_tuple_re_resolves():
    be = FakeBackend()
    be.table[KEY] = [Owner(1, None, 5, True)]
    att = make(be)
    try:
        att.status(KEY, syn=True)
        assert wait_status(att, KEY)[0].pid == 1
        att.flows[(6, ("10.0.0.1", 40000), ("10.0.0.2", 80))][1] -= 5   # resolved long ago
        be.table[KEY] = [Owner(2, None, 6, True)]
        assert att.status(KEY, syn=True) is PENDING
        assert wait_status(att, KEY)[0].pid == 2
    finally:
        att.release()


def test_a_sweep_reads_a_programs_facts_once_for_its_many_flows():
    """Short flows of one sender (2,000/s) each went to the program's facts again."""
    be = FakeBackend()
    asked = []
    facts = be.process
    be.process = lambda pid: asked.append(pid) or facts(pid)
    att = Attribution(be, FakeBook(), boost=False, sweep_interval=3600,
                      is_local=lambda ip: ip == "10.0.0.1")
    att.acquire()
    try:
        keys = [(6, "10.0.0.1", 40000 + n, "10.0.0.2", 80) for n in range(50)]
        for key in keys:
            att.status(key)
        for key in keys:
            assert wait_status(att, key) == []  # nobody's at first
        be.snap = {(6, "10.0.0.1", 40000 + n, "10.0.0.2", 80): [Owner(9, None, n, True)]
                   for n in range(50)}
        asked.clear()
        att._sweep()
        assert all(att.status(key)[0].pid == 9 for key in keys)
        assert asked == [9]
    finally:
        att.release()


def test_sweep_labels_preexisting_flow():
    be = FakeBackend()
    att = Attribution(be, FakeBook(), boost=False, sweep_interval=0.05,
                      is_local=lambda ip: ip == "10.0.0.1")
    att.acquire()
    try:
        att.status(KEY)
        assert wait_status(att, KEY) == []
        be.snap = {(6, "10.0.0.1", 40000, "10.0.0.2", 80): [Owner(9, None, 1, True)]}
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not att.status(KEY):
            time.sleep(0.02)
        assert att.status(KEY)[0].pid == 9 and att.stats["swept"] >= 1
    finally:
        att.release()


def test_the_gil_is_handed_over_faster_only_for_the_socket_table():
    """The socket table races short-lived processes: while it resolves, the interpreter
    switches threads every 0.5 ms. The eBPF backend's answers wait in the kernel: the
    default interval stays (a faster one cost every API answer ~10 % more CPU)."""
    before = sys.getswitchinterval()
    for active, during in ((False, min(before, 0.0005)), (True, before)):
        be = FakeBackend()
        be.active = active
        att = make(be)
        try:
            assert sys.getswitchinterval() == during
        finally:
            att.release()
        assert sys.getswitchinterval() == before


class KernelFirstBackend(FakeBackend):
    """The eBPF backend's two questions: a first one, answered with the originator the
    kernel saw in context alone when it did (resolve_first), and the whole answer with the
    socket table's ends (resolve)."""

    def __init__(self):
        super().__init__()
        self.kernel = {}
        self.asked_kernel = []
        self.gate = threading.Event()

    def resolve_first(self, proto, src, sport, dst, dport, asked=None):
        self.asked_kernel.append(asked)
        known = list(self.kernel.get((proto, src, sport, dst, dport), []))
        rest = len(known) < len(self.table.get((proto, src, sport, dst, dport), []))
        if rest and known and known[0].local_is_src and known[0].tid:
            return known, True
        return self.resolve(proto, src, sport, dst, dport), False

    def resolve(self, proto, src, sport, dst, dport):
        self.gate.wait(2)   # the socket table, as slow as the test wants
        return super().resolve(proto, src, sport, dst, dport)


def test_the_originator_the_kernel_saw_answers_at_once_the_rest_follows():
    """With the originator seen by the kernel in context, its label is published at once
    with a second look due (a system capture need not wait: labels.originator_final); the
    other end, asked of the socket table, joins it on that second look."""
    be = KernelFirstBackend()
    sender, server = Owner(4242, 4243, 0, True), Owner(77, 78, 5, False)
    be.kernel[KEY] = [sender]
    be.table[KEY] = [sender, server]
    att = Attribution(be, FakeBook(), boost=False, is_local=lambda ip: True)
    att.acquire()
    try:
        entry = att.entry(KEY)
        deadline = time.monotonic() + 2
        while entry[0] is PENDING:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        # published before the socket table answered, a second look due
        assert [lab.pid for lab in entry[0]] == [4242] and entry[3]
        be.gate.set()
        while entry[3] or len(entry[0]) < 2:
            assert time.monotonic() < deadline, entry
            time.sleep(0.001)
        assert [(lab.pid, lab.tid, lab.local) for lab in entry[0]] == [
            (4242, 4243, ("10.0.0.1", 40000)), (77, 78, ("10.0.0.2", 80))]
        assert be.asked_kernel[0] is not None and be.calls == [KEY[1:]]
    finally:
        att.release()


def test_a_thread_less_originator_waits_for_the_whole_answer():
    be = KernelFirstBackend()
    be.kernel[KEY] = [Owner(4242, 0, 0, True)]
    be.table[KEY] = [Owner(4242, 4243, 0, True), Owner(77, 78, 5, False)]
    be.gate.set()
    att = Attribution(be, FakeBook(), boost=False, is_local=lambda ip: True)
    att.acquire()
    try:
        labels = wait_status(att, KEY)
        assert [lab.pid for lab in labels] == [4242, 77]   # one answer, both ends
    finally:
        att.release()
