"""procfs: inode -> pid search, thread guess and process facts, on fake /proc trees
(no root needed) and on this test process itself (live)."""

import os
import socket
import threading
import time

import psutil
import pytest

from apppaccap.attribution import procfs
from apppaccap.attribution.procfs import InodeOwners
from apppaccap.attribution.procfs import RecentFacts
from apppaccap.attribution.procfs import list_threads
from apppaccap.attribution.procfs import read_process
from apppaccap.attribution.procfs import thread_of

BTIME = 1_700_000_000


class FakeProc:
    """A /proc look-alike: fd entries are dangling symlinks whose text is what readlink
    returns on the real thing (socket:[123], pipe:[9], /dev/null)."""

    def __init__(self, root):
        self.root = root
        (root / "stat").write_text(f"cpu  1 2 3\nbtime {BTIME}\nprocesses 9\n")

    def add(self, pid, fds=None, threads=None, comm="app", ppid=1, starttime=250, uid=0,
            exe="/usr/bin/app", cmdline=("app", "--x")):
        base = self.root / str(pid)
        (base / "fd").mkdir(parents=True)
        for fd, target in (fds or {}).items():
            os.symlink(target, base / "fd" / str(fd))
        for tid, (tcomm, syscall) in (threads or {pid: (comm, "running")}).items():
            (base / "task" / str(tid)).mkdir(parents=True)
            (base / "task" / str(tid) / "comm").write_text(tcomm + "\n")
            (base / "task" / str(tid) / "syscall").write_text(syscall + "\n")
        rest = ["S", str(ppid)] + ["0"] * 17 + [str(starttime)] + ["0"] * 10  # field 22
        line = f"{pid} ({comm}) " + " ".join(rest) + "\n"
        (base / "stat").write_text(line)
        (base / "task" / str(pid)).mkdir(parents=True, exist_ok=True)
        (base / "task" / str(pid) / "stat").write_text(line)   # the leader's own (_stat)
        (base / "comm").write_text(comm + "\n")
        (base / "cmdline").write_bytes(b"\0".join(a.encode() for a in cmdline) + b"\0")
        (base / "status").write_text(f"Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
        if exe:
            os.symlink(exe, base / "exe")
        return base

    def set_fd(self, pid, fd, target):
        link = self.root / str(pid) / "fd" / str(fd)
        if link.is_symlink():
            link.unlink()
        if target is not None:
            os.symlink(target, link)

    def kill(self, pid):
        import shutil

        shutil.rmtree(self.root / str(pid))


@pytest.fixture
def proc(tmp_path):
    return FakeProc(tmp_path)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


# --- InodeOwners ---------------------------------------------------------------------------

def test_find_scans_new_pids_then_answers_from_validated_cache(proc):
    proc.add(10, {3: "socket:[500]", 4: "/dev/null"})
    proc.add(20, {5: "socket:[600]", 6: "pipe:[7]"})
    owners = InodeOwners(str(proc.root))
    assert owners.find(500) == 10
    assert owners.find(600) == 20 and owners.stats["cache"] == 1  # learnt while scanning 20
    proc.set_fd(20, 5, None)  # closed: the cache must not answer any more
    assert owners.find(600) is None
    assert owners.find(0) is None


def test_newest_pid_is_scanned_first_and_wins_a_shared_socket(proc):
    proc.add(100, {3: "socket:[700]"})
    proc.add(900, {3: "socket:[700]"})  # e.g. inherited across fork
    owners = InodeOwners(str(proc.root))
    assert owners.find(700) == 900
    assert owners.stats["pids_scanned"] == 1


def test_hint_pids_come_first(proc):
    proc.add(100, {3: "socket:[800]"})
    proc.add(900, {})
    owners = InodeOwners(str(proc.root))
    assert owners.find(800, hint_pids=[100]) == 100
    assert owners.stats["hint"] == 1 and owners.stats["pids_scanned"] == 1


def test_rescans_of_known_pids_are_rate_limited(proc):
    clock = Clock()
    proc.add(10, {})
    proc.add(11, {})
    owners = InodeOwners(str(proc.root), clock=clock, full_scan_interval=0.5, hot_pids=0,
                         newest_pids=0)
    assert owners.find(900) is None and owners.stats["full_scans"] == 1
    proc.set_fd(10, 3, "socket:[900]")  # an old process opens a new socket
    clock.t += 0.1
    assert owners.find(900) is None  # within the interval: no full rescan
    assert owners.stats["full_scans"] == 1
    clock.t += 0.5
    assert owners.find(900) == 10 and owners.stats["full_scans"] == 2


def test_recent_owners_are_rescanned_even_inside_the_interval(proc):
    clock = Clock()
    proc.add(10, {3: "socket:[1]"})
    proc.add(11, {})
    owners = InodeOwners(str(proc.root), clock=clock, full_scan_interval=10, newest_pids=0)
    assert owners.find(1) == 10  # 10 becomes a "hot" pid (a server, say)
    owners.find(12345)  # uses up the full scan
    proc.set_fd(10, 4, "socket:[2]")  # the server accepts a new connection
    assert owners.find(2) == 10 and owners.stats["hot"] == 1


def test_young_pid_scanned_before_it_had_its_socket_is_rescanned(proc):
    clock = Clock()
    for pid in (10, 500, 501):
        proc.add(pid, {})
    owners = InodeOwners(str(proc.root), clock=clock, full_scan_interval=10, hot_pids=0,
                         newest_pids=2)
    assert owners.find(77) is None  # every pid is known now, and the full scan is used up
    proc.set_fd(500, 3, "socket:[88]")  # e.g. a curl that exec'd, then connect()ed
    proc.set_fd(10, 3, "socket:[99]")  # an old daemon: outside the newest window
    assert owners.find(88) == 500
    assert owners.find(99) is None
    clock.t += 10
    assert owners.find(99) == 10


def test_reused_pid_is_not_trusted_from_cache(proc):
    proc.add(10, {3: "socket:[1]"})
    owners = InodeOwners(str(proc.root))
    assert owners.find(1) == 10
    proc.kill(10)
    proc.add(10, {3: "socket:[2]"})  # same pid, another process
    assert owners.find(1) is None
    assert owners.find(2) == 10


def test_forget_and_inode_map(proc):
    proc.add(10, {3: "socket:[1]", 4: "socket:[2]"})
    proc.add(20, {3: "socket:[2]"})
    owners = InodeOwners(str(proc.root))
    assert owners.inode_map() == {1: 10, 2: 20}
    owners.forget(10)
    assert 1 not in owners._inode_fd and 10 not in owners._pid_inodes


# --- thread_of -----------------------------------------------------------------------------

def test_single_threaded_process_gives_its_thread(proc):
    proc.add(10, {3: "socket:[5]"})
    assert thread_of(10, 5, str(proc.root)) == 10


def test_thread_blocked_in_recvfrom_on_the_socket(proc):
    proc.add(10, {3: "socket:[5]", 4: "socket:[6]"}, threads={
        10: ("main", "7 0x7ffd 0x2 0x1 0x0 0x0 0x0 0x7ffd 0x7f00"),  # poll: no fd in arg0
        11: ("rx", "45 0x3 0x7f00 0x1000 0x0 0x0 0x0 0x7ffd 0x7f00"),  # recvfrom(fd 3)
        12: ("tx", "44 0x4 0x7f00 0x10 0x0 0x0 0x0 0x7ffd 0x7f00"),  # sendto(fd 4)
        13: ("busy", "running"),
    })
    root = str(proc.root)
    assert thread_of(10, 5, root, syscalls={44, 45}) == 11
    assert thread_of(10, 6, root, syscalls={44, 45}) == 12
    assert thread_of(10, 99, root, syscalls={44, 45}) is None
    assert thread_of(10, 5, root, syscalls={44, 45}, max_threads=2) is None


def test_two_threads_on_one_socket_is_ambiguous(proc):
    proc.add(10, {3: "socket:[5]"}, threads={
        10: ("a", "43 0x3 0x0 0x0 0x0 0x0 0x0 0x1 0x2"),
        11: ("b", "43 0x3 0x0 0x0 0x0 0x0 0x0 0x1 0x2"),
    })
    assert thread_of(10, 5, str(proc.root), syscalls={43}) is None


def test_thread_of_gone_process(proc):
    assert thread_of(4242, 1, str(proc.root)) is None


# --- read_process --------------------------------------------------------------------------

def test_read_process_fields(proc):
    proc.add(77, comm="we ird) (name", ppid=5, starttime=250, uid=0,
             exe="/opt/app/bin/tool", cmdline=("tool", "-v", "a b"),
             threads={77: ("we ird) (name", "running"), 78: ("worker", "running")})
    info = read_process(77, str(proc.root))
    assert info.pid == 77 and info.ppid == 5
    assert info.name == "we ird) (name"
    assert info.path == "/opt/app/bin/tool"
    assert info.cmdline == "tool -v a b"
    assert info.user == "root"
    tck = os.sysconf("SC_CLK_TCK")
    assert info.start_time_ns == BTIME * 10**9 + 250 * 10**9 // tck
    assert info.threads == [(77, "we ird) (name"), (78, "worker")]
    assert list_threads(77, str(proc.root)) == info.threads


def test_read_process_unknown_uid_unreadable_exe_and_deleted(proc):
    proc.add(5, uid=4_000_000, exe=None)
    info = read_process(5, str(proc.root))
    assert info.user == "4000000" and info.path == ""
    proc.add(6, exe="/nonexistent/bin (deleted)")
    assert read_process(6, str(proc.root)).path == "/nonexistent/bin"
    assert read_process(12345, str(proc.root)) is None


def test_recent_facts_are_kept_a_moment_and_only_for_the_same_process(proc):
    clock = Clock()
    facts = RecentFacts(str(proc.root), ttl=1.0, clock=clock)
    proc.add(40, comm="server", starttime=250)
    assert facts.get(40).name == "server"
    (proc.root / "40" / "comm").write_text("renamed\n")  # what an exec would change
    clock.t += 0.5
    assert facts.get(40).name == "server"  # within the second: not read again
    clock.t += 0.6
    assert facts.get(40).name == "renamed"  # a second later: read again
    proc.kill(40)
    proc.add(40, comm="reused", starttime=900)  # the pid reused by another process
    assert facts.get(40).name == "reused"
    proc.kill(40)
    assert facts.get(40) is None


# --- live ----------------------------------------------------------------------------------

@pytest.mark.live
def test_live_find_own_socket_and_read_own_process():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    with srv:
        inode = os.fstat(srv.fileno()).st_ino
        assert InodeOwners().find(inode) == os.getpid()
    me = psutil.Process()
    info = read_process(os.getpid())
    assert (info.pid, info.ppid, info.name) == (me.pid, me.ppid(), me.name())
    assert info.path == me.exe() and info.cmdline == " ".join(me.cmdline())
    assert abs(info.start_time_ns / 1e9 - me.create_time()) < 1.5
    assert (threading.get_native_id(), me.name()) in info.threads


@pytest.mark.live
def test_live_thread_blocked_in_recv_is_identified():
    a, b = socket.socketpair()
    inode = os.fstat(b.fileno()).st_ino
    ready, got = threading.Event(), []

    def reader():
        got.append(threading.get_native_id())
        ready.set()
        b.recv(16)  # blocks in recvfrom(fd of b) until we write

    t = threading.Thread(target=reader)
    t.start()
    ready.wait(2)
    tid = None
    deadline = time.monotonic() + 3
    while tid is None and time.monotonic() < deadline:
        tid = thread_of(os.getpid(), inode)
        time.sleep(0.01)
    a.send(b"x")
    t.join(2)
    a.close()
    b.close()
    assert tid == got[0]


@pytest.mark.live
def test_live_full_scan_cost_is_bounded():
    owners = InodeOwners()
    t = time.perf_counter()
    owners.inode_map()
    assert time.perf_counter() - t < 0.5
    assert procfs.list_pids()[0] >= procfs.list_pids()[-1]


@pytest.mark.live
def test_live_process_facts_come_from_the_leaders_own_stat_file():
    """_stat reads /proc/<pid>/task/<pid>/stat (one task: constant time, read with the
    interpreter lock held) and must give what /proc/<pid>/stat gives for the process."""
    import threading

    from apppaccap.attribution import procfs

    stop = threading.Event()
    workers = [threading.Thread(target=stop.wait) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        whole = procfs._read(f"/proc/{os.getpid()}/stat")
        head, _, rest = whole.rpartition(")")
        fields = rest.split()
        assert procfs._stat(os.getpid(), "/proc")[:2] == (head.partition("(")[2],
                                                          int(fields[1]))
        assert procfs._stat(os.getpid(), "/proc")[2] == procfs.read_process(
            os.getpid()).start_time_ns
    finally:
        stop.set()
        for w in workers:
            w.join()
