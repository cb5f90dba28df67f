"""UDP port generations (attribution/portgen.py), live: the eBPF programs count binds per
port, and the socket table keeps a UDP port's list while nobody binds to it - a server's
next client costs no walk of the kernel's UDP hash - but sees a rival at once. Root, BTF
and a cgroup v2 mount are required (CI has them): where they are missing this fails."""

import ctypes
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from apppaccap.attribution import portgen
from apppaccap.attribution.ebpf import KernelFlows
from apppaccap.attribution.sockdiag import SockDiag

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def kernel():
    k = KernelFlows()
    k.start()
    assert k.ports is not None, "no UDP port generations: cgroup v2 root missing?"
    yield k
    k.stop()
    assert k.port_generation(53) is None


def ino(sock) -> int:
    return os.fstat(sock.fileno()).st_ino


def test_the_cgroup_v2_root_is_found():
    assert portgen.cgroup2_root() is not None


def test_explicit_binds_and_releases_count_automatic_binds_and_tcp_do_not(kernel):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    port = a.getsockname()[1]
    first = kernel.port_generation(port)
    a.close()   # a release counts too (cgroup/sock_release)
    assert kernel.port_generation(port) == first + 1
    b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    b.bind(("::", port))   # the port taken again, dual-stack
    assert kernel.port_generation(port) == first + 2
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.sendto(b"x", ("127.0.0.1", port))   # bound automatically: a port nobody holds
    auto = c.getsockname()[1]
    t = socket.socket()
    t.bind(("127.0.0.1", 0))
    tcp = t.getsockname()[1]
    before = kernel.port_generation(auto), kernel.port_generation(tcp)
    c.sendto(b"y", ("127.0.0.1", port))
    t.listen()
    assert (kernel.port_generation(auto), kernel.port_generation(tcp)) == before
    for s in (b, c, t):
        s.close()


@pytest.mark.parametrize("option", ["SO_REUSEADDR", "SO_REUSEPORT"])
def test_a_port_others_may_join_has_no_generation(kernel, option):
    """A socket with SO_REUSEADDR (or SO_REUSEPORT) lets another socket join its port
    without a bind the programs see; such a port's list must be read every time."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, getattr(socket, option), 1)
    s.bind(("127.0.0.1", 0))
    with s:
        assert kernel.port_generation(s.getsockname()[1]) is None


def counted(kernel) -> tuple[SockDiag, list]:
    """A SockDiag using the kernel's generations, and the list its dumps are counted in."""
    diag = SockDiag()
    diag.udp_port_gen = kernel.port_generation
    dumps: list = []
    real = diag.dump
    diag.dump = lambda *a, **k: dumps.append(1) or real(*a, **k)   # counts, then the kernel
    return diag, dumps


def test_a_servers_list_is_kept_until_a_socket_binds_there(kernel):
    diag, dumps = counted(kernel)
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("0.0.0.0", 0))
    port = srv.getsockname()[1]
    try:
        for client in range(40000, 40010):
            assert diag.lookup(17, "127.0.0.1", port, "127.0.0.1", client)[0] == ino(srv)
        assert len(dumps) == 1
        other = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        other.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        other.bind(("::", port))   # IPv6 only: it may share the port without any option
        with other:
            assert diag.lookup(17, "127.0.0.1", port, "127.0.0.1", 40011)[0] == ino(srv)
        assert len(dumps) == 2   # its bind changed the generation: read again
    finally:
        srv.close()
        diag.close()


def test_a_rival_joining_without_a_bind_is_seen_at_once(kernel):
    """Found by review: a dual-stack socket of another program bound to the port,
    connected (not a rival), then disconnected with connect(AF_UNSPEC) becomes an equal
    owner of the port without any bind. The kernel still picks the first socket, so only a
    list read again shows it: the port allowed sharing, and is read every time."""
    diag, dumps = counted(kernel)
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    port = srv.getsockname()[1]
    rival = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rival.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    rival.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    rival.bind(("::", port))
    rival.connect(("::ffff:127.0.0.9", 9))
    try:
        assert diag.lookup(17, "127.0.0.1", port, "127.0.0.1", 40000)[0] == ino(srv)
        libc = ctypes.CDLL(None, use_errno=True)
        unspec = struct.pack("H", socket.AF_UNSPEC) + bytes(26)
        assert libc.connect(rival.fileno(), unspec, len(unspec)) == 0
        assert diag.lookup(17, "127.0.0.1", port, "127.0.0.1", 40001) is None
        found = diag.candidates(17, "127.0.0.1", port, "127.0.0.1", 40002)
        assert {e.inode for e in found} == {ino(srv), ino(rival)}
        assert len(dumps) == 3
    finally:
        srv.close()
        rival.close()
        diag.close()


SEND_ONCE = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             "s.bind(('127.0.0.1', 0)); s.sendto(b'x', ('127.0.0.1', int(sys.argv[1]))); "
             "print(s.getsockname()[1])")


def test_a_udp_port_taken_again_is_never_named_for_its_old_owner(kernel):
    """The kernel knows an unconnected UDP socket's task per local port (its sends and
    reads). Once that socket is closed and another binds the port - here a socket that
    never reads, so the kernel never sees it - its flows must not be named for the old
    owner: with any process able to bind a freed port, that names one user's traffic
    another's. An answer carries its port's generation and counts only while it holds."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    old = subprocess.Popen([sys.executable, "-c", SEND_ONCE, str(sink.getsockname()[1])],
                           stdout=subprocess.PIPE, text=True)
    port = int(old.communicate()[0])
    time.sleep(0.05)
    kernel.drain()
    seen = kernel.flows.get((17, "127.0.0.1", port, "127.0.0.1", sink.getsockname()[1]))
    assert seen is not None and seen[0].pid == old.pid   # its own flow: seen in context
    mine = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    mine.bind(("127.0.0.1", port))   # the freed port taken; this socket never reads
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.sendto(b"y", ("127.0.0.1", port))
    time.sleep(0.05)
    kernel.drain()
    seen = kernel.owner(17, "127.0.0.1", port, "127.0.0.1", client.getsockname()[1])
    assert seen is None or seen.pid != old.pid, f"named the port's old owner {old.pid}"
    for s in (sink, mine, client):
        s.close()


AIM_AND_WAIT = ("import socket, struct, sys, time; p = int(sys.argv[1]); "
                "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                "s.setsockopt(socket.IPPROTO_IP, 51, struct.pack('I', p | p << 16)); "
                "s.connect(('127.0.0.1', int(sys.argv[2]))); print(s.getsockname()[1], "
                "flush=True); time.sleep(2)")   # 51: IP_LOCAL_PORT_RANGE, one port wide


def test_a_freed_port_taken_by_an_automatic_bind_is_never_named_for_its_old_owner(kernel):
    """An automatic bind runs no bind hook, and IP_LOCAL_PORT_RANGE lets any user aim it
    at the port another process just freed; nothing these kernels let us hook sees the
    port freed. What the kernel saw per port (the old socket's sends) must name nobody
    then: the new socket's flows go to the socket table (review, eighteenth session)."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))   # the old owner talked to another peer
    old = subprocess.Popen([sys.executable, "-c", SEND_ONCE.replace(
        "s.bind(('127.0.0.1', 0)); ", ""), str(other.getsockname()[1])],
        stdout=subprocess.PIPE, text=True)   # an automatic bind, one datagram, exit
    port = int(old.communicate()[0])
    new = subprocess.Popen([sys.executable, "-c", AIM_AND_WAIT, str(port),
                            str(peer.getsockname()[1])], stdout=subprocess.PIPE, text=True)
    try:
        assert int(new.stdout.readline()) == port
        peer.sendto(b"for the new socket", ("127.0.0.1", port))
        time.sleep(0.05)
        kernel.drain()
        seen = kernel.owner(17, "127.0.0.1", port, "127.0.0.1", peer.getsockname()[1])
        assert seen is None or seen.pid != old.pid, f"named the port's old owner {old.pid}"
    finally:
        new.kill()
        new.wait()
        peer.close()
        other.close()


READ_ONCE = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             "s.bind(('0.0.0.0', int(sys.argv[1]))); print('ready', flush=True); s.recv(99)")


def test_a_udp_server_that_has_read_is_named_by_the_kernel_for_a_new_client(kernel):
    """A server bound by port number that has read once is known per port: a new client's
    datagram names it and its reading thread with no socket-table lookup. Once it exits
    (its socket released), the port's generation moves on and it names nobody."""
    port = free_udp_port()
    server = subprocess.Popen([sys.executable, "-c", READ_ONCE, str(port)],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline() == "ready\n"
    first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    first.sendto(b"read me", ("127.0.0.1", port))
    server.wait(timeout=5)   # read it, then exited
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    kernel.drain()
    held = kernel.socks.get((17, "0.0.0.0", port))
    assert held is not None and held[1].pid == held[1].tid == server.pid
    # exited: released, a new generation
    assert kernel.owner(17, "127.0.0.1", port, "127.0.0.1", client.getsockname()[1]) is None
    live = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    live.bind(("0.0.0.0", port))
    first.sendto(b"x", ("127.0.0.1", port))
    live.recv(9)
    kernel.drain()
    seen = kernel.owner(17, "127.0.0.1", port, "127.0.0.1", client.getsockname()[1])
    assert seen is not None and (seen.pid, seen.tid) == (os.getpid(), threading.get_native_id())
    for s in (first, client, live):
        s.close()


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


JOIN_AT = ("import socket, struct, sys, time; p, peer = int(sys.argv[1]), int(sys.argv[2]); "
           "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
           "s.setsockopt(socket.IPPROTO_IP, 24, 1); s.bind(('127.0.0.2', 0)); "
           "s.setsockopt(socket.IPPROTO_IP, 51, struct.pack('I', p | p << 16)); "
           "s.connect(('127.0.0.1', peer)); print(s.getsockname()[1], flush=True); "
           "time.sleep(2)")   # 24: IP_BIND_ADDRESS_NO_PORT, 51: IP_LOCAL_PORT_RANGE


def test_a_wildcard_server_that_connects_is_not_named_for_a_socket_joining_its_port(kernel):
    """A wildcard socket that connects narrows its address, and another socket may then
    join the port at another address with an automatic bind (no hook). The connect
    starts a new generation: what the kernel saw of the wildcard socket names nobody
    else at that port (review, eighteenth session)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", 0))
    port = server.getsockname()[1]
    server.close()
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", port))   # by number: a port it holds
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.sendto(b"hello", ("127.0.0.1", port))
    server.recv(9)
    kernel.drain()
    assert kernel.owner(17, "127.0.0.1", port, "127.0.0.9", 9).pid == os.getpid()
    server.connect(("127.0.0.1", peer.getsockname()[1]))   # narrowed to 127.0.0.1
    joiner = subprocess.Popen([sys.executable, "-c", JOIN_AT, str(port),
                               str(peer.getsockname()[1])], stdout=subprocess.PIPE, text=True)
    try:
        assert int(joiner.stdout.readline()) == port
        peer.sendto(b"for the joiner", ("127.0.0.2", port))
        time.sleep(0.05)
        kernel.drain()
        seen = kernel.owner(17, "127.0.0.2", port, "127.0.0.1", peer.getsockname()[1])
        assert seen is None or seen.pid != os.getpid(), "named the narrowed server"
    finally:
        joiner.kill()
        joiner.wait()
        for s in (server, peer):
            s.close()



SEND_FROM = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             "s.bind(('127.0.0.1', int(sys.argv[1]))); "
             "s.sendto(b'x', ('127.0.0.1', int(sys.argv[2])))")


def test_a_send_of_a_closed_socket_never_names_a_later_receiver_of_its_port(kernel):
    """Another process sent from port P to C and exited; a socket bound to P since
    receives from C. The old send names the old owner only for a flow whose first packet
    left from P (a short flow's sender, closed before it was asked about), never for one
    P receives (review, eighteenth session: named the old owner, both ways)."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    port = free_udp_port()
    old = subprocess.run([sys.executable, "-c", SEND_FROM, str(port),
                          str(peer.getsockname()[1])], check=True)
    assert old.returncode == 0
    mine = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    mine.bind(("127.0.0.1", port))
    peer.sendto(b"to the new socket", ("127.0.0.1", port))
    mine.recv(99)
    time.sleep(0.05)
    kernel.drain()
    end = (17, "127.0.0.1", port, "127.0.0.1", peer.getsockname()[1])
    seen = kernel.owner(*end)   # asked as the receiving end
    assert seen is None or seen.pid == os.getpid()
    assert kernel.flows.get(end)[0].pid != os.getpid()   # the old send is on record
    for s in (peer, mine):
        s.close()


def test_an_ipv6_only_socket_never_answers_for_ipv4_flows(kernel):
    """The per-port answer comes only from a socket that can receive the flow's family: an
    IPv6-only socket that shares the port of an IPv4 server (any user may bind one) must
    not be named for the server's IPv4 clients."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    port = free_udp_port()
    server.bind(("0.0.0.0", port))
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    v6.bind(("::", port))
    sink6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sink6.bind(("::1", 0))
    v6.sendto(b"x", ("::1", sink6.getsockname()[1]))   # a per-port record at (::, port)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    time.sleep(0.05)
    kernel.drain()
    assert kernel.socks.get((17, "::", port)) is not None
    assert kernel.owner(17, "127.0.0.1", port, "127.0.0.1", client.getsockname()[1]) is None
    seen = kernel.owner(17, "::1", port, "::1", 5)   # its own family: named
    assert seen is not None and seen.pid == os.getpid()
    for s in (server, v6, sink6, client):
        s.close()
