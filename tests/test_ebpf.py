"""eBPF attribution, live: thread captures hold exactly their thread's packets (tcpdump as
the oracle), ping and ICMP datagram sockets are attributed, the socket table takes over
when asked to or when the programs cannot load. Root and BTF are required: a machine
where eBPF cannot load fails here with the reason, never skips."""

import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from apppaccap.attribution.ebpf import KernelFlows
from apppaccap.attribution.kernelowners import EbpfOwners
from apppaccap.attribution.libbpf import LoadError
from apppaccap.attribution.owners import LinuxOwners
from apppaccap.dissect.decode import decode
from apppaccap.pcap.reader import CaptureReader
from tests.helpers.live import Tcpdump
from tests.helpers.live import assert_same_packets
from tests.helpers.live import read_all
from tests.helpers.ports import free_port
from tests.test_netns import HOST_IP
from tests.test_netns import NS_IP
from tests.test_netns import netns  # noqa: F401 - the fixture

pytestmark = pytest.mark.live

# A main thread and a worker thread each make their own HTTP requests, concurrently; every
# connection's client port is printed with the thread that made it.
TWO_THREADS = r"""
import socket, sys, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
go = threading.Event()
out = threading.Lock()   # one whole line at a time: print() writes its pieces separately
def fetch(tag):
    for _ in range(n):
        c = socket.create_connection((host, port))
        local = c.getsockname()[1]
        c.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        while c.recv(65536):
            pass
        c.close()
        with out:
            print(tag, threading.get_native_id(), local, flush=True)
def worker():
    go.wait()
    fetch("worker")
t = threading.Thread(target=worker)
t.start()
print("tid", t.native_id, flush=True)
sys.stdin.readline()
go.set()
fetch("main")
t.join()
print("done", flush=True)
"""


def reference(path: str, ports: set) -> list[tuple[int, int]]:
    """(µs, length) of the tcpdump packets whose either port is in `ports`."""
    out = []
    with CaptureReader(path) as r:
        for rec in r:
            d = decode(rec.linktype, rec.data)
            if d.sport in ports or d.dport in ports:
                out.append((rec.ts_ns // 1000, rec.origlen))
    return out


def test_ebpf_loads_here():
    """CI has root and BTF: eBPF attribution must load (the error says why not)."""
    k = KernelFlows()
    try:
        k.start()
    except LoadError as exc:
        pytest.fail(f"eBPF attribution cannot load: {exc}")
    k.stop()


def run_two_threads(live_ajax, tmp_path, iface, host, server_host, server_cmd):
    port = free_port()
    server = subprocess.Popen(server_cmd(port), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, cwd=str(tmp_path))
    prog = subprocess.Popen([sys.executable, "-c", TWO_THREADS, server_host, str(port), "8"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(100):   # the server is up (in its namespace, too)
            try:
                socket.create_connection((server_host, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        tid = int(prog.stdout.readline().split()[1])
        dump = Tcpdump(iface, f"tcp port {port}", str(tmp_path / "ref.pcap"))
        flt = f"tcp port {port}"
        sys_cap = live_ajax.ok("capture_start_system", adapter=iface, filter=flt)
        main_cap = live_ajax.ok("capture_start_process", pid=prog.pid, thread_id=prog.pid,
                                flags=2, adapter=iface, filter=flt)
        thr_cap = live_ajax.ok("capture_start_process", pid=prog.pid, thread_id=tid, flags=2,
                               adapter=iface, filter=flt)
        assert live_ajax.ok("apppaccap")["Attribution"]["Backend"] == "ebpf"
        prog.stdin.write("go\n")
        prog.stdin.flush()
        lines = []
        for line in prog.stdout:
            if line.strip() == "done":
                break
            lines.append(line.split())
        time.sleep(0.5)
        live_ajax.ok("capture_stop_all")
        dump.stop()
    finally:
        prog.kill()
        prog.wait()
        server.kill()
        server.wait()
    worker_ports = {int(p) for tag, t, p in lines if tag == "worker" and int(t) == tid}
    main_ports = {int(p) for tag, t, p in lines if tag == "main" and int(t) == prog.pid}
    assert len(worker_ports) == 8 and len(main_ports) == 8, lines
    return (prog.pid, tid, worker_ports, main_ports, sys_cap, main_cap, thr_cap,
            str(tmp_path / "ref.pcap"))


def check_two_threads(live_ajax, result):
    pid, tid, worker_ports, main_ports, sys_cap, main_cap, thr_cap, ref = result
    for cap, ports, thread in ((thr_cap, worker_ports, tid), (main_cap, main_ports, pid)):
        packets = read_all(live_ajax, cap["CaptureId"])
        foreign = [(p["SrcPort"], p["DstPort"], p["Pid"], p["ThreadId"]) for p in packets
                   if not {p["SrcPort"], p["DstPort"]} & ports]
        assert not foreign, (thread, tid, foreign[:4], worker_ports, main_ports)
        assert all(p["Pid"] == pid and p["ThreadId"] == thread for p in packets)
        # exactly the thread's packets: the ones tcpdump saw on its connections, no other
        assert_same_packets([((p["Time"] - 116444736000000000) // 10, p["Length"])
                             for p in packets], reference(ref, ports))
    # the system capture names the thread of every client packet too
    everything = read_all(live_ajax, sys_cap["CaptureId"])
    for p in everything:
        if {p["SrcPort"], p["DstPort"]} & worker_ports:
            assert (p["Pid"], p["ThreadId"]) in ((pid, tid),) or p["Pid"] != pid, p
        if {p["SrcPort"], p["DstPort"]} & main_ports:
            assert (p["Pid"], p["ThreadId"]) in ((pid, pid),) or p["Pid"] != pid, p
    stream = live_ajax.ok("capture_thread_stream", capture_id=sys_cap["CaptureId"], pid=pid,
                          thread_id=tid)
    assert stream["Packets"] and all(
        {p["SrcPort"], p["DstPort"]} & worker_ports for p in stream["Packets"])


def test_thread_capture_on_loopback(live, live_ajax, tmp_path):
    result = run_two_threads(
        live_ajax, tmp_path, "lo", "127.0.0.1", "127.0.0.1",
        lambda port: [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"])
    check_two_threads(live_ajax, result)
    # the exported pcapng carries the worker's tid on every packet (option and comment)
    pid, tid, thr_cap = result[0], result[1], result[6]
    out = str(tmp_path / "thread.pcapng")
    done = live.jobs.wait(live_ajax.ok("capture_export", capture_id=thr_cap["CaptureId"],
                                       path=out)["CommandUid"])
    assert done["State"] == 3
    with CaptureReader(out) as r:
        records = list(r)
    assert records and all(rec.pid == pid and rec.tid == tid for rec in records)
    assert all(f"ThreadId: {tid}" in (rec.comment or "") for rec in records)


def test_thread_capture_through_a_namespace(live_ajax, tmp_path, netns):  # noqa: F811
    ns, host = netns
    result = run_two_threads(
        live_ajax, tmp_path, host, HOST_IP, NS_IP,
        lambda port: ["ip", "netns", "exec", ns, sys.executable, "-m", "http.server",
                      str(port), "--bind", NS_IP])
    check_two_threads(live_ajax, result)


PING_SOCKET = r"""
import socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
s = socket.socket(family, socket.SOCK_DGRAM, proto)
s.settimeout(2)
for seq in range(3):
    s.sendto(bytes([128 if family == socket.AF_INET6 else 8, 0, 0, 0, 0, 0, 0, seq]) + b"x" * 8,
             (sys.argv[1], 0))
    s.recv(100)
"""


def test_ping_and_icmp_sockets_attributed(live_ajax):
    old = open("/proc/sys/net/ipv4/ping_group_range").read()
    # echoes only: an ICMP error the kernel sends for another test's UDP (port unreachable)
    # has no process, and is not what this test is about
    cap = live_ajax.ok("capture_start_system", adapter="lo",
                       filter="icmp[icmptype] == icmp-echo or icmp[icmptype] == icmp-echoreply"
                              " or (icmp6 and (ip6[40] == 128 or ip6[40] == 129))")
    pids = []
    try:
        for cmd in (["ping", "-c", "3", "-i", "0.2", "127.0.0.1"],
                    ["ping", "-6", "-c", "3", "-i", "0.2", "::1"]):
            p = subprocess.run(cmd, capture_output=True)
            assert p.returncode == 0, p.stderr
        # ICMP datagram sockets ("ping sockets"): root's group allowed for the test only
        with open("/proc/sys/net/ipv4/ping_group_range", "w") as fh:
            fh.write("0 0")
        for addr in ("127.0.0.1", "::1"):
            proc = subprocess.Popen([sys.executable, "-c", PING_SOCKET, addr])
            assert proc.wait(10) == 0
            pids.append(proc.pid)
        time.sleep(0.5)
        live_ajax.ok("capture_stop_all")
    finally:
        with open("/proc/sys/net/ipv4/ping_group_range", "w") as fh:
            fh.write(old)
    packets = read_all(live_ajax, cap["CaptureId"])
    names = {}
    for p in packets:
        names.setdefault(p["ProcessName"], []).append(p)
    # 2 pings x 3 requests + 3 replies (one flow each: the same identifier both ways)
    assert len(names.get("ping", [])) == 12, {k: len(v) for k, v in names.items()}
    by_pid = {}
    for p in packets:
        by_pid.setdefault(p["Pid"], []).append(p)
    for pid in pids:
        assert len(by_pid.get(pid, [])) == 6, {k: len(v) for k, v in by_pid.items()}
    assert not [p for p in packets if not p["Pid"]], "an echo without its process"


def test_socket_table_setting_forces_the_fallback(live, live_ajax, http_server):
    http_server, _ = http_server
    live_ajax.ok("settings_set", key_name="attribution_backend", value="socket-table")
    assert live_ajax("settings_set", key_name="attribution_backend",
                     value="kernel")["ErrorCode"] != 0
    cap = live_ajax.ok("capture_start_system", adapter="lo",
                       filter=f"tcp port {http_server}")
    assert isinstance(live.captures.attribution.backend, LinuxOwners)
    info = live_ajax.ok("apppaccap")["Attribution"]
    assert info["Backend"] == "socket-table" and "socket-table" in info["Reason"]
    # ~1 s alive (1,200 bytes at 1 kB/s): the socket table sees only sockets that exist when
    # it looks, and a 5 ms curl on a loaded machine can be gone by then (its known limit)
    curl = subprocess.Popen(["curl", "-s", "--limit-rate", "1k", "-o", "/dev/null",
                             f"http://127.0.0.1:{http_server}/hello.txt"])
    curl.wait()
    time.sleep(0.5)
    live_ajax.ok("capture_stop_all")
    packets = read_all(live_ajax, cap["CaptureId"])
    assert packets and any(p["Pid"] == curl.pid for p in packets)
    # back to auto once no capture runs: the next capture loads eBPF again
    live_ajax.ok("settings_set", key_name="attribution_backend", value="auto")
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter="tcp port 9")
    assert isinstance(live.captures.attribution.backend, EbpfOwners)
    assert live_ajax.ok("apppaccap")["Attribution"]["Backend"] == "ebpf"
    live_ajax.ok("capture_stop_all")


def test_a_load_failure_falls_back_with_the_reason(tmp_path, caplog, http_server):
    http_server, _ = http_server
    bad = tmp_path / "appattr.bpf.o"
    bad.write_bytes(b"\x7fELF not really an object")
    backend = EbpfOwners(LinuxOwners(), object_path=str(bad))
    with caplog.at_level(logging.WARNING, logger="apppaccap.attribution.kernelowners"):
        backend.start()
    try:
        assert not backend.active
        assert backend.status()["backend"] == "socket-table"
        assert str(bad) in backend.reason and "libbpf could not open" in backend.reason
        warned = [r for r in caplog.records if "eBPF attribution unavailable" in r.message]
        assert len(warned) == 1 and str(bad) in warned[0].message
        # the socket table answers instead
        c = socket.create_connection(("127.0.0.1", http_server))
        lport = c.getsockname()[1]
        owners = backend.resolve(6, "127.0.0.1", lport, "127.0.0.1", http_server)
        assert owners and owners[0].pid == os.getpid() and owners[0].local_is_src
        c.close()
    finally:
        backend.stop()
    missing = EbpfOwners(LinuxOwners(), object_path=str(tmp_path / "absent.o"))
    missing.start()
    assert not missing.active and "is missing" in missing.reason
    missing.stop()


def test_softirq_replies_never_name_the_interrupted_task(http_server):
    """Loopback delivery runs the receiver's stack in softirq on top of the sender: the
    SYN-ACKs and ACKs sent there must not be blamed on the client that happens to run."""
    port, server = http_server
    k = KernelFlows()
    k.start()
    try:
        curls = {}
        for _ in range(20):
            c = subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{local_port}",
                                  f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE,
                                 text=True)
            curls[int(c.communicate()[0])] = c.pid
        time.sleep(0.1)
        k.drain()
        flows = {key: v for key, v in k.flows.items() if key[0] == 6 and port in key[2::2]}
    finally:
        k.stop()
    for lport, pid in curls.items():
        client = flows[(6, "127.0.0.1", lport, "127.0.0.1", port)]
        assert client[0] is not None and client[0].pid == pid and not client[0].inferred
        server_end = flows.get((6, "127.0.0.1", port, "127.0.0.1", lport), [None, None])
        named = [s for s in server_end if s is not None]
        assert named, f"the server's end of {lport} was never seen"
        assert all(s.pid == server.pid for s in named), (lport, pid, named)



def test_a_new_socket_never_inherits_a_closed_sockets_owner(http_server):
    """The kernel names the owner of what the stack sends in softirq (the ACKs of a server
    that has not read yet) from the socket's last task. A socket the allocator puts where a
    closed one was must start with no owner: here the HTTP server's sockets close, then our
    listener's next accepted socket, likely at the same address on this one CPU, is ACKed
    before we accept it. It may be nobody's yet; it must never be the HTTP server's."""
    port, server = http_server
    k = KernelFlows()
    k.start()
    wrong = []
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})   # one CPU: its slab freelist hands the address on
    listener = socket.create_server(("127.0.0.1", 0))
    lport = listener.getsockname()[1]
    try:
        for _ in range(40):
            with socket.create_connection(("127.0.0.1", port)) as c:
                c.sendall(b"GET /hello.txt HTTP/1.0\r\n\r\n")
                while c.recv(65536):
                    pass
            client = socket.create_connection(("127.0.0.1", lport))
            client.sendall(b"x" * 100)
            cport = client.getsockname()[1]
            time.sleep(0.01)   # our stack's ACK of those bytes, sent in softirq, is out
            k.drain()
            entry = k.flows.get((6, "127.0.0.1", lport, "127.0.0.1", cport)) or [None, None]
            wrong += [(cport, s) for s in entry if s is not None and s.pid != os.getpid()]
            conn, _ = listener.accept()
            conn.close()
            client.close()
    finally:
        os.sched_setaffinity(0, cpus)
        listener.close()
        k.stop()
    assert not wrong, f"the HTTP server (pid {server.pid}) named: {wrong[:3]}"


# Reads every packet on `lo` through a plain AF_PACKET socket (recvfrom, no mmap ring), as
# scapy's sniff() does: the kernel copies each packet to it with skb_copy_datagram_iovec.
SNIFFER = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("lo", 0))
print("ready", flush=True)
while True:
    s.recv(65535)
"""


def test_a_packet_sniffer_is_never_named_as_an_owner(http_server):
    """A program sniffing with a packet socket reads copies of other programs' packets: it
    must not become the owner of the flows it watches (it did: the reader's copy looked
    like a raw socket's receive)."""
    port, server = http_server
    sniffer = subprocess.Popen([sys.executable, "-c", SNIFFER], stdout=subprocess.PIPE,
                               text=True)
    assert sniffer.stdout.readline().strip() == "ready"
    k = KernelFlows()
    k.start()
    try:
        for _ in range(10):
            subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/"],
                           check=True)
        time.sleep(0.2)
        k.drain()
        named = [(key, s.pid) for key, v in k.flows.items() for s in v
                 if s is not None and port in key[2::2]]
    finally:
        k.stop()
        sniffer.kill()
        sniffer.wait()
    assert named, "no flow to the server was seen at all"
    assert all(pid != sniffer.pid for _, pid in named), \
        [key for key, pid in named if pid == sniffer.pid]


def test_captures_and_usage_share_one_load_of_the_programs(live, live_ajax, http_server):
    """Usage accounting (on by default) and a capture both ask the kernel: the programs run
    once per packet, with one ring buffer and one consumer, and both get their answers."""
    from apppaccap.attribution import kernelshare
    from tests.helpers.live import wait_for
    port, _server = http_server
    wait_for(lambda: live.usage.recorder is not None, 15, what="usage accounting")
    wait_for(lambda: kernelshare.users() == 1, 15, what="usage's use of the programs")
    cap = live_ajax.ok("capture_start_system", adapter="lo")
    try:
        assert kernelshare.users() == 2
        assert [t.name for t in threading.enumerate()
                if t.name == "attribution-ebpf"] == ["attribution-ebpf"]
        curl = subprocess.Popen(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/"])
        curl.wait(30)
        time.sleep(0.5)
    finally:
        live_ajax.ok("capture_stop_all")
    packets = [p for p in read_all(live_ajax, cap["CaptureId"]) if port in
               (p["SrcPort"], p["DstPort"])]
    assert packets and {p["Pid"] for p in packets} == {curl.pid}
    # usage named the same curl through the shared programs (its rows are filed within
    # a few ticks)
    wait_for(lambda: curl.pid in {q["Pid"] for p in live_ajax.ok(
        "usage_by_process", relative_time="5m", group="process")["Programs"]
        for q in p["Processes"]}, 15, what="usage to name curl")
    # the capture engine keeps its backend until shutdown; usage off leaves it loaded once
    live_ajax.ok("settings_set", key_name="usage_enabled", value="0")
    wait_for(lambda: kernelshare.users() == 1, 15, what="usage to let go of the programs")


def test_a_drain_after_the_question_spares_the_next():
    """The resolver drains the ring before each answer (the packet's events were written
    before it was asked about). A resolver behind the traffic asks many questions put
    before its last drain began: those need no drain of their own."""
    k = KernelFlows()
    k.start()
    try:
        asked = time.monotonic()
        k.drain(asked)
        drains = k.stats["drains"]
        k.drain(asked)   # asked before the last drain began: already taken in
        assert k.stats["drains"] == drains
        k.drain(time.monotonic() + 3600)   # asked after any drain began: drained again
        k.drain()
        assert k.stats["drains"] == drains + 2
    finally:
        k.stop()


SERVE_ONCE = ("import socket, os, time, sys; l = socket.socket(); l.setsockopt(1, 2, 1); "
              "l.bind(('127.0.0.1', int(sys.argv[1]))); l.listen(); print(os.getpid(), "
              "flush=True); c, _ = l.accept(); sys.argv[2] == 'send' and c.send(b'hello'); "
              "c.recv(99); time.sleep(0.2)")   # the new server only reads


def test_a_tcp_four_tuple_used_again_never_names_the_old_server():
    """A server on port B sent on a connection from A and exited; another server on B
    accepts a new connection from the same A. The new server's end must not be named for
    the old one (its SYN-ACK goes out in softirq, with no owner recorded yet): the client's
    SYN drops the 4-tuple's old records, and a newer reader of another process outranks
    an older sender (review, eighteenth session)."""
    k = KernelFlows()
    k.start()
    try:
        ports = []
        for _ in range(2):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
            s.close()
        a, b = ports
        old = subprocess.Popen([sys.executable, "-c", SERVE_ONCE, str(b), "send"],
                               stdout=subprocess.PIPE, text=True)
        old_pid = int(old.stdout.readline())
        for server in (old, None):
            if server is None:
                new = subprocess.Popen([sys.executable, "-c", SERVE_ONCE, str(b), "recv"],
                                       stdout=subprocess.PIPE, text=True)
                new_pid = int(new.stdout.readline())
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            c.bind(("127.0.0.1", a))
            c.connect(("127.0.0.1", b))
            if server is not None:
                c.recv(99)
            c.send(b"bye")
            c.close()
            (server or new).wait(5)
            time.sleep(0.05)
            k.drain()
        seen = k.owner(6, "127.0.0.1", b, "127.0.0.1", a)
        assert seen is None or seen.pid == new_pid, (seen, old_pid, new_pid)
    finally:
        k.stop()


VICTIM_SENDS = ("import socket, os, sys, time; s = socket.socket(2, 2); "
                "s.connect(('127.0.0.1', int(sys.argv[1]))); "
                "print(os.getpid(), s.getsockname()[1], flush=True)\n"
                "while True:\n    s.send(b'victim'); time.sleep(0.1)")
# Reads, in our namespace, a large datagram received on the victim's 4-tuple in a private
# network namespace (the socket passed over SCM_RIGHTS): skb_copy_datagram_iovec sees the
# reading task, and the skb carries no socket
READ_FOREIGN = r"""
import ctypes, fcntl, os, socket, struct, sys, time
V, R = int(sys.argv[1]), int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
a, b = socket.socketpair()
if os.fork() == 0:
    assert libc.unshare(0x10000000 | 0x40000000) == 0
    t = socket.socket(2, 2)
    fcntl.ioctl(t, 0x8914, struct.pack("16sh14x", b"lo", 1))
    s = socket.socket(2, 2); s.bind(("127.0.0.1", V))
    r = socket.socket(2, 2); r.bind(("127.0.0.1", R))
    r.sendto(b"f" * 30000, ("127.0.0.1", V))
    socket.send_fds(b, [b"x"], [s.fileno()])
    b.recv(1)
    os._exit(0)
print(os.getpid(), flush=True)
_, fds, _, _ = socket.recv_fds(a, 1, 1)
s = socket.socket(fileno=fds[0]); time.sleep(0.3); s.recv(65536)
a.send(b"k"); os.wait(); time.sleep(2)
"""


def test_a_read_in_our_namespace_of_a_foreign_sockets_datagram_names_nobody():
    """Review (eighteenth session): a UDP socket made in another network namespace and
    read here filed the reader under our namespace's 4-tuple, and the newer reader then
    outranked the flow's real sender. Packet copies name only echo readers now."""
    k = KernelFlows()
    k.start()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    r = peer.getsockname()[1]
    victim = subprocess.Popen([sys.executable, "-c", VICTIM_SENDS, str(r)],
                              stdout=subprocess.PIPE, text=True)
    attacker = None
    try:
        vpid, v = map(int, victim.stdout.readline().split())
        attacker = subprocess.Popen([sys.executable, "-c", READ_FOREIGN, str(v), str(r)],
                                    stdout=subprocess.PIPE, text=True)
        apid = int(attacker.stdout.readline())
        time.sleep(0.8)
        k.drain()
        seen = k.owner(17, "127.0.0.1", v, "127.0.0.1", r, sender=True)
        assert seen is not None and seen.pid == vpid, (seen, vpid, apid)
    finally:
        for p in (victim, attacker):
            if p is not None:
                p.kill()
                p.wait()
        peer.close()
        k.stop()
