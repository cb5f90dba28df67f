"""owners: the resolve/snapshot/process logic on injected fakes, the psutil fallback on a
fake psutil, and live resolves of sockets held by this process, a thread and a child."""

import os
import socket
import subprocess
import sys
import threading
import time
from collections import namedtuple

import pytest

from apppaccap.attribution.diagwire import SockEntry
from apppaccap.attribution.owners import LinuxOwners
from apppaccap.attribution.owners import Owner
from apppaccap.attribution.owners import PsutilOwners
from apppaccap.attribution.owners import boost_current_thread
from apppaccap.attribution.owners import default_owners
from apppaccap.attribution.owners import match_snapshot
from apppaccap.attribution.procfs import InodeOwners
from apppaccap.attribution.procfs import ProcInfo


def E(proto, lip, lport, rip, rport, state, inode):
    return SockEntry(proto, lip, lport, rip, rport, state, inode, 0)


class FakeDiag:
    def __init__(self, table, dump=()):
        self.table, self._dump = table, list(dump)
        self.is_local = lambda ip: ip.startswith("127.") or ip == "10.0.0.5"

    def candidates(self, proto, lip, lport, rip, rport, ifindex=0):
        return self.table.get((proto, lip, lport, rip, rport), [])

    def dump(self, proto):
        return [e for e in self._dump if e.proto == proto]


class FakeInodes:
    def __init__(self, owners, proc_root):
        self.owners, self.proc_root = owners, proc_root
        self.hints, self.forgotten = [], []

    def find(self, inode, hint_pids=()):
        self.hints.append(list(hint_pids))
        return self.owners.get(inode)

    def forget(self, pid):
        self.forgotten.append(pid)


class FakeEvents:
    on_exit = None

    def __init__(self, recent=None):
        self.recent = recent or {}

    def start(self):
        return True

    def stop(self):
        pass

    def recent_pids(self):
        return [99, 98]

    def info(self, pid):
        return self.recent.get(pid)


def fake_tree(root, pids_threads, fds=None):
    """pid -> number of threads; fds: pid -> {fd: target}."""
    for pid, n in pids_threads.items():
        for i in range(n):
            (root / str(pid) / "task" / str(pid + i)).mkdir(parents=True)
        (root / str(pid) / "fd").mkdir(parents=True, exist_ok=True)
        for fd, target in (fds or {}).get(pid, {}).items():
            os.symlink(target, root / str(pid) / "fd" / str(fd))
    return str(root)


def test_resolve_names_both_local_ends_src_first(tmp_path):
    root = fake_tree(tmp_path, {100: 1, 200: 1})
    diag = FakeDiag({
        (6, "127.0.0.1", 5000, "127.0.0.1", 80): [E(6, "127.0.0.1", 5000, "127.0.0.1", 80, 1, 1)],
        (6, "127.0.0.1", 80, "127.0.0.1", 5000): [E(6, "127.0.0.1", 80, "0.0.0.0", 0, 10, 2)],
    })
    inodes = FakeInodes({1: 100, 2: 200}, root)
    owners = LinuxOwners(sockdiag=diag, inodes=inodes, events=FakeEvents())
    owners.start()
    assert owners.resolve(6, "127.0.0.1", 5000, "127.0.0.1", 80) == [
        Owner(100, 100, 1, True), Owner(200, 200, 2, False, listener=True)]
    assert inodes.hints == [[99, 98], [99, 98]]  # cn_proc's newest pids are scanned first
    # the reverse direction of the same flow: the server's end is now the src
    assert owners.resolve(6, "127.0.0.1", 80, "127.0.0.1", 5000) == [
        Owner(200, 200, 2, True, listener=True), Owner(100, 100, 1, False)]
    assert owners.resolve(6, "10.9.9.9", 1, "10.9.9.8", 2) == []


def test_a_servers_next_connection_is_looked_for_in_its_last_owner_first(tmp_path):
    """Each accepted connection is a new inode: the port's last owner is read first, not
    the fd tables of every newer process (api_load: ~7 tables a connection before)."""
    newer = {pid: 1 for pid in range(300, 316)}  # 16 younger processes with sockets
    root = fake_tree(tmp_path, {100: 1, **newer},
                     fds={100: {3: "socket:[10]", 4: "socket:[11]"},
                          **{pid: {3: f"socket:[{pid}0]"} for pid in newer}})
    table = {(6, "127.0.0.1", 80, "127.0.0.1", 5000 + n):
             [E(6, "127.0.0.1", 80, "127.0.0.1", 5000 + n, 1, 11 + n)] for n in range(3)}
    inodes = InodeOwners(root, full_scan_interval=1e9)
    owners = LinuxOwners(sockdiag=FakeDiag(table), inodes=inodes, events=False, threads=False)
    assert owners.resolve(6, "127.0.0.1", 5000, "127.0.0.1", 80) == [Owner(100, None, 11, False)]
    for n in (1, 2):  # the server accepts another connection: a socket no cache knows
        os.symlink(f"socket:[{11 + n}]", tmp_path / "100" / "fd" / str(4 + n))
        before = inodes.stats["pids_scanned"]
        assert owners.resolve(6, "127.0.0.1", 5000 + n, "127.0.0.1", 80) == [
            Owner(100, None, 11 + n, False)]
        assert inodes.stats["pids_scanned"] - before == 1
    # a port's last owner is only a first guess: another process's socket there is found
    os.symlink("socket:[99]", tmp_path / "305" / "fd" / "9")
    table[6, "127.0.0.1", 80, "127.0.0.1", 6000] = [E(6, "127.0.0.1", 80, "127.0.0.1", 6000, 1,
                                                      99)]
    assert owners.resolve(6, "127.0.0.1", 6000, "127.0.0.1", 80) == [Owner(305, None, 99, False)]


def test_a_server_socket_with_no_thread_to_name_is_not_searched_again_at_once(
        tmp_path, monkeypatch):
    """thread_of reads every thread's syscall file; for a server's socket "none can be
    named" is kept a second, a thread it named is not (the next client's may differ)."""
    from apppaccap.attribution import owners as mod
    asked, answers = [], []
    monkeypatch.setattr(mod, "thread_of",
                        lambda pid, inode, root: asked.append(inode) or answers.pop(0))
    server = [E(17, "0.0.0.0", 53, "0.0.0.0", 0, 7, 5)]
    table = {(17, "127.0.0.1", 53, "127.0.0.1", p): server for p in range(4000, 4010)}
    owners = LinuxOwners(sockdiag=FakeDiag(table), inodes=FakeInodes({5: 100}, str(tmp_path)),
                         events=False)

    def tid_of(port):
        return owners.resolve(17, "127.0.0.1", port, "127.0.0.1", 53)[0].tid

    answers[:] = [100, 101, None]
    assert [tid_of(p) for p in (4000, 4001, 4002)] == [100, 101, None]  # each asked
    assert [tid_of(p) for p in range(4003, 4010)] == [None] * 7  # "none" kept
    assert len(asked) == 3
    monkeypatch.setattr(mod, "SERVER_THREAD_TTL", 0.0)
    answers[:] = [102]
    assert tid_of(4001) == 102  # kept for a while only


def test_shared_port_is_named_only_when_one_process_holds_all(tmp_path):
    root = fake_tree(tmp_path, {100: 1})
    two = [E(17, "0.0.0.0", 53, "0.0.0.0", 0, 7, 1), E(17, "0.0.0.0", 53, "0.0.0.0", 0, 7, 2)]
    diag = FakeDiag({(17, "10.0.0.5", 53, "10.0.0.9", 4000): two})
    same = LinuxOwners(sockdiag=diag, inodes=FakeInodes({1: 100, 2: 100}, root), events=False)
    assert same.resolve(17, "10.0.0.9", 4000, "10.0.0.5", 53) == [Owner(100, None, 1, False)]
    other = LinuxOwners(sockdiag=diag, inodes=FakeInodes({1: 100, 2: 300}, root), events=False)
    assert other.resolve(17, "10.0.0.9", 4000, "10.0.0.5", 53) == []
    half = LinuxOwners(sockdiag=diag, inodes=FakeInodes({1: 100}, root), events=False)
    assert half.resolve(17, "10.0.0.9", 4000, "10.0.0.5", 53) == []


def test_exits_seen_by_the_listener_are_forgotten_on_the_resolver_thread(tmp_path):
    inodes = FakeInodes({}, str(tmp_path))
    events = FakeEvents()
    owners = LinuxOwners(sockdiag=FakeDiag({}), inodes=inodes, events=events)
    events.on_exit(4242)  # what the listener thread does
    assert inodes.forgotten == []
    owners.resolve(6, "127.0.0.1", 1, "127.0.0.1", 2)
    assert inodes.forgotten == [4242]


def test_process_prefers_facts_read_at_exec(tmp_path):
    info = ProcInfo(7, 1, "curl", "/usr/bin/curl", "curl x", "root", 1, [(7, "curl")])
    owners = LinuxOwners(sockdiag=FakeDiag({}), inodes=FakeInodes({}, str(tmp_path)),
                         events=FakeEvents({7: info}))
    assert owners.process(7) == info
    assert owners.process(8) is None  # not in the fake /proc either


def test_snapshot_keys_and_dual_stack(tmp_path):
    root = fake_tree(tmp_path, {100: 1, 200: 2}, fds={
        100: {3: "socket:[1]", 4: "socket:[3]"}, 200: {3: "socket:[2]"}})
    dump = [E(6, "::", 80, "::", 0, 10, 1),  # dual-stack listener
            E(6, "127.0.0.1", 5000, "127.0.0.1", 80, 1, 2),
            E(6, "127.0.0.1", 5001, "127.0.0.1", 80, 6, 0),  # TIME_WAIT
            E(17, "::ffff:127.0.0.1", 53, "::", 0, 7, 3),
            E(17, "0.0.0.0", 54, "0.0.0.0", 0, 7, 999)]  # inode nobody holds
    owners = LinuxOwners(sockdiag=FakeDiag({}, dump), inodes=FakeInodes({}, root), events=False)
    snap = owners.snapshot()
    assert snap == {
        (6, "::", 80, "::", 0): [Owner(100, 100, 1, True)],
        (6, "0.0.0.0", 80, "0.0.0.0", 0): [Owner(100, 100, 1, True)],
        (6, "127.0.0.1", 5000, "127.0.0.1", 80): [Owner(200, None, 2, True)],
        (17, "127.0.0.1", 53, "0.0.0.0", 0): [Owner(100, 100, 3, True)],
    }
    assert match_snapshot(snap, 6, "127.0.0.1", 80, "127.0.0.1", 5000, lambda ip: True).pid == 100
    assert match_snapshot(snap, 6, "8.8.8.8", 80, "127.0.0.1", 5000, lambda ip: False) is None
    assert match_snapshot(snap, 17, "127.0.0.1", 53, "127.0.0.1", 9, lambda ip: True).pid == 100


def test_match_snapshot_ambiguous_pids():
    snap = {(17, "0.0.0.0", 5353, "0.0.0.0", 0): [Owner(1, None, 1, True),
                                                  Owner(2, None, 2, True)]}
    assert match_snapshot(snap, 17, "10.0.0.5", 5353, "10.0.0.9", 5353, lambda ip: True) is None


# --- psutil fallback -----------------------------------------------------------------------

Addr = namedtuple("Addr", "ip port")
Conn = namedtuple("Conn", "fd family type laddr raddr status pid")


class FakePsutil:
    def __init__(self, conns):
        self.conns, self.calls = conns, 0

    def net_connections(self, kind):
        assert kind == "inet"
        self.calls += 1
        return list(self.conns)


def test_psutil_backend_resolves_both_ends_and_skips_unknown_pids():
    ST, DG = socket.SOCK_STREAM, socket.SOCK_DGRAM
    ps = FakePsutil([
        Conn(3, 2, ST, Addr("127.0.0.1", 5000), Addr("127.0.0.1", 80), "ESTABLISHED", 10),
        Conn(4, 10, ST, Addr("::", 80), (), "LISTEN", 20),
        Conn(5, 2, ST, Addr("127.0.0.1", 5001), Addr("127.0.0.1", 80), "TIME_WAIT", 0),
        Conn(6, 2, ST, Addr("127.0.0.1", 5002), Addr("127.0.0.1", 80), "ESTABLISHED", None),
        Conn(7, 2, DG, Addr("0.0.0.0", 53), (), "NONE", 30),
    ])
    owners = PsutilOwners(psutil_module=ps, is_local=lambda ip: ip.startswith("127."))
    assert owners.resolve(6, "127.0.0.1", 5000, "127.0.0.1", 80) == [
        Owner(10, None, 0, True), Owner(20, None, 0, False)]
    assert owners.resolve(6, "127.0.0.1", 5002, "127.0.0.1", 80) == [Owner(20, None, 0, False)]
    assert owners.resolve(17, "127.0.0.1", 4444, "127.0.0.1", 53) == [Owner(30, None, 0, False)]
    assert owners.resolve(17, "8.8.8.8", 4444, "8.8.8.8", 53) == []


def test_psutil_backend_reuses_tables_and_rate_limits_refreshes():
    ps = FakePsutil([])
    owners = PsutilOwners(psutil_module=ps, ttl=60, min_refresh=60, is_local=lambda ip: True)
    for _ in range(5):
        owners.resolve(6, "127.0.0.1", 1, "127.0.0.1", 2)
    assert ps.calls == 1


# --- live ----------------------------------------------------------------------------------

def ino(sock):
    return os.fstat(sock.fileno()).st_ino


@pytest.fixture
def linux():
    owners = LinuxOwners()  # must fail, not skip, without sock_diag
    owners.start()
    assert owners._events_ok, "proc connector unavailable"
    yield owners
    owners.stop()


@pytest.mark.live
@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"),
                                         (socket.AF_INET6, "::1")])
def test_live_resolve_tcp_both_ends_are_this_process(linux, family, host):
    srv = socket.socket(family)
    srv.bind((host, 0))
    srv.listen()
    port = srv.getsockname()[1]
    cli = socket.create_connection((host, port))
    cport = cli.getsockname()[1]
    with srv, cli:
        got = linux.resolve(6, host, cport, host, port)
        assert [(o.pid, o.inode, o.local_is_src, o.listener) for o in got] == [
            (os.getpid(), ino(cli), True, False), (os.getpid(), ino(srv), False, True)]
        acc, _ = srv.accept()
        with acc:
            got = linux.resolve(6, host, cport, host, port)
            assert [(o.inode, o.listener) for o in got] == [(ino(cli), False), (ino(acc), False)]


@pytest.mark.live
def test_live_resolve_udp_and_dual_stack(linux):
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    rx.bind(("::", 0))  # dual-stack, unconnected
    port = rx.getsockname()[1]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))  # unconnected sender
    with rx, tx:
        tx.sendto(b"x", ("127.0.0.1", port))
        got = linux.resolve(17, "127.0.0.1", tx.getsockname()[1], "127.0.0.1", port)
        assert [(o.pid, o.inode) for o in got] == [(os.getpid(), ino(tx)), (os.getpid(), ino(rx))]
        assert linux.resolve(17, "8.8.8.8", 53, "8.8.4.4", 53) == []


@pytest.mark.live
def test_live_resolve_names_the_thread_blocked_in_recv(linux):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    a = socket.create_connection(srv.getsockname())
    b, _ = srv.accept()
    srv.close()
    tids = []

    def reader():
        tids.append(threading.get_native_id())
        b.recv(1)

    t = threading.Thread(target=reader)
    t.start()
    flow = (6, *b.getsockname(), *b.getpeername())
    deadline, owner = time.monotonic() + 3, None
    while time.monotonic() < deadline:
        owner = linux.resolve(*flow)[0]
        if owner.tid is not None:
            break
        time.sleep(0.01)
    a.send(b"x")
    t.join(2)
    a.close()
    b.close()
    assert owner.pid == os.getpid() and owner.inode > 0 and owner.tid == tids[0]


CHILD = ("import socket,sys; s=socket.create_connection(('127.0.0.1', int(sys.argv[1]))); "
         "print(s.getsockname()[1], flush=True); sys.stdin.read()")


@pytest.mark.live
def test_live_resolve_child_process_and_keep_its_name_after_exit(linux):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(port)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    with srv:
        cport = int(child.stdout.readline())
        got = linux.resolve(6, "127.0.0.1", cport, "127.0.0.1", port)
        assert [(o.pid, o.local_is_src) for o in got] == [(child.pid, True),
                                                          (os.getpid(), False)]
        assert got[0].tid == child.pid  # single-threaded child
        snap = linux.snapshot()
        assert snap[(6, "127.0.0.1", cport, "127.0.0.1", port)][0].pid == child.pid
        assert snap[(6, "127.0.0.1", port, "0.0.0.0", 0)][0].pid == os.getpid()
        child.stdin.close()
        child.wait(5)
        time.sleep(0.1)
        info = linux.process(child.pid)  # from the exec-time record: the child is gone
        assert info is not None and "-c" in info.cmdline and info.pid == child.pid
        assert not os.path.exists(f"/proc/{child.pid}")


@pytest.mark.live
def test_live_default_backend_and_thread_boost():
    owners = default_owners()
    assert isinstance(owners, LinuxOwners)
    owners.stop()
    out = {}

    def boosted():
        out["ok"] = boost_current_thread()
        out["policy"] = os.sched_getscheduler(threading.get_native_id())
        out["main"] = os.sched_getscheduler(os.getpid())

    t = threading.Thread(target=boosted)
    t.start()
    t.join()
    assert out["ok"] is True and out["policy"] == os.SCHED_FIFO
    assert out["main"] == os.SCHED_OTHER  # only the calling thread changed
