"""Proc connector: message layout against hand-built bytes, the event bookkeeping, and a
live run with a real short-lived process."""

import os
import socket
import struct
import subprocess
import time

import pytest

from apppaccap.attribution import procevents as pe
from apppaccap.attribution.procevents import ProcEvents
from apppaccap.attribution.procfs import ProcInfo


def _event(what, data, seq=0, ack=0):
    ev = struct.pack("=IIQ", what, 1, 123456789) + data
    cn = struct.pack("=IIIIHH", 1, 1, seq, ack, len(ev), 0) + ev
    return struct.pack("=IHHII", 16 + len(cn), 3, 0, seq, 0) + cn


def test_listen_request_bytes():
    msg = pe.pack_control(pe.PROC_CN_MCAST_LISTEN, port=77, ack=77)
    assert msg == (
        struct.pack("=IHHII", 40, 3, 0, 0, 77)  # nlmsghdr, type NLMSG_DONE
        + struct.pack("=IIIIHH", 1, 1, 0, 77, 4, 0)  # cn_msg: CN_IDX_PROC, CN_VAL_PROC, len 4
        + struct.pack("=I", 1)  # PROC_CN_MCAST_LISTEN
    )


def test_parse_fork_exec_exit_comm():
    data = (_event(0x1, struct.pack("=IIII", 10, 10, 11, 11))
            + _event(0x2, struct.pack("=II", 11, 11))
            + _event(0x200, struct.pack("=II", 11, 11) + b"renamed\0\0\0\0\0\0\0\0\0")
            + _event(0x80000000, struct.pack("=IIII", 11, 11, 0, 17))
            + _event(0x4, struct.pack("=IIII", 11, 11, 0, 0)))  # UID: ignored
    assert pe.parse_events(data) == [
        ("fork", 10, 11, 11), ("exec", 11, 11), ("comm", 11, 11, "renamed"),
        ("exit", 11, 11),
    ]


def test_parse_ack():
    data = _event(0x0, struct.pack("=I", 1), seq=9, ack=4242)
    assert pe.parse_events(data) == [("ack", 4242, 1)]


class AckSocket:
    """recv() hands out prepared datagrams, then times out."""

    def __init__(self, datagrams):
        self.datagrams = list(datagrams)

    def recv(self, size):
        if self.datagrams:
            return self.datagrams.pop(0)
        time.sleep(0.01)
        raise socket.timeout


def test_subscription_is_confirmed_by_the_kernel_ack(monkeypatch):
    monkeypatch.setattr(pe, "read_process", lambda pid, root: _info(pid))
    ev = ProcEvents()
    ok = AckSocket([_event(0x2, struct.pack("=II", 9, 9)),  # raced the ack: still handled
                    _event(0x0, struct.pack("=I", 0), ack=1),  # another listener's ack
                    _event(0x0, struct.pack("=I", 0), ack=77)])
    assert ev._await_ack(ok, 77) == "" and ev.info(9) is not None
    refused = AckSocket([_event(0x0, struct.pack("=I", 1), ack=77)])  # EPERM
    assert ev._await_ack(refused, 77) == os.strerror(1)
    assert ev._await_ack(AckSocket([]), 77, timeout=0.05) == "no acknowledgement from the kernel"


def test_parse_ignores_truncated_and_foreign_messages():
    good = _event(0x2, struct.pack("=II", 5, 5))
    foreign = bytearray(good)
    foreign[16:20] = struct.pack("=I", 7)  # another connector index
    assert pe.parse_events(bytes(foreign)) == []
    assert pe.parse_events(good[:30]) == []


def _info(pid, name="x"):
    return ProcInfo(pid, 1, name, "/bin/" + name, name, "root", 0, [(pid, name)])


def test_bookkeeping_exec_fork_exit_comm(monkeypatch):
    reads = {}
    monkeypatch.setattr(pe, "read_process", lambda pid, root: reads.get(pid))
    seen = []
    ev = ProcEvents(on_exec=lambda p: seen.append(("exec", p)),
                    on_exit=lambda p: seen.append(("exit", p)),
                    on_fork=lambda a, b: seen.append(("fork", a, b)), max_recent=3)
    reads[11] = _info(11, "curl")
    ev._handle(("fork", 10, 11, 11))
    ev._handle(("fork", 11, 12, 11))  # a thread of 11: not a process
    ev._handle(("exec", 11, 11))
    assert ev.recent[11].name == "curl" and ev.recent_pids() == [11]
    ev._handle(("comm", 11, 11, "curl-renamed"))
    ev._handle(("exit", 12, 11))  # a thread's exit
    assert ev.recent_pids() == [11]
    ev._handle(("exit", 11, 11))
    assert ev.recent_pids() == [] and ev.info(11).name == "curl-renamed"
    assert ev.ended_ns(11) is not None
    assert seen == [("fork", 10, 11), ("exec", 11), ("exit", 11)]
    ev._handle(("fork", 1, 11, 11))  # pid 11 reused: its old facts must go
    assert ev.info(11) is None and ev.ended_ns(11) is None and ev.recent_pids() == [11]
    for pid in (20, 21, 22, 23):
        reads[pid] = _info(pid)
        ev._handle(("exec", pid, pid))
    assert list(ev.recent) == [21, 22, 23]  # bounded, oldest dropped
    assert ev.recent_pids(limit=2) == [23, 22]


def test_exec_of_vanished_process_keeps_no_stale_facts(monkeypatch):
    monkeypatch.setattr(pe, "read_process", lambda pid, root: None)
    ev = ProcEvents()
    ev.recent[5] = _info(5, "old")
    ev._handle(("exec", 5, 5))
    assert ev.info(5) is None


def test_a_failing_callback_does_not_break_handling(monkeypatch):
    monkeypatch.setattr(pe, "read_process", lambda pid, root: _info(pid))

    def boom(pid):
        raise RuntimeError("callback bug")

    ev = ProcEvents(on_exec=boom)
    with pytest.raises(RuntimeError):
        ev._handle(("exec", 3, 3))
    assert ev.info(3) is not None  # recorded before the callback ran


@pytest.mark.live
def test_live_exec_and_exit_of_short_process():
    seen = []
    ev = ProcEvents(on_exec=lambda p: seen.append(("exec", p)),
                    on_exit=lambda p: seen.append(("exit", p)))
    assert ev.start() is True  # must fail, not skip, where the connector is missing
    try:
        child = subprocess.Popen(["/bin/sleep", "0.2"])
        child.wait()
        deadline = time.monotonic() + 3
        while ("exit", child.pid) not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ("exec", child.pid) in seen and ("exit", child.pid) in seen
        info = ev.recent[child.pid]  # read at exec, still there after the exit
        assert info.name == "sleep"
        assert info.path == os.path.realpath("/bin/sleep")
        assert info.cmdline == "/bin/sleep 0.2" and info.ppid == os.getpid()
        assert child.pid not in ev.recent_pids()
    finally:
        t = time.monotonic()
        ev.stop()
        assert time.monotonic() - t < 1.0 and not ev.running
