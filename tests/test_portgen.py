"""UDP port generations (attribution/portgen.py), live: the eBPF programs count binds per
port, and the socket table keeps a UDP port's list while nobody binds to it - a server's
next client costs no walk of the kernel's UDP hash - but sees a rival at once. Root, BTF
and a cgroup v2 mount are required (CI has them): where they are missing this fails."""

import os
import socket

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


def test_explicit_binds_count_automatic_ones_and_tcp_do_not(kernel):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    a.bind(("127.0.0.1", 0))
    port = a.getsockname()[1]
    first = kernel.port_generation(port)
    b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    b.bind(("::", port))   # a dual-stack rival on the same port
    assert kernel.port_generation(port) == first + 1
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
    for s in (a, b, c, t):
        s.close()


def test_a_servers_list_is_kept_until_a_rival_binds(kernel):
    diag = SockDiag()
    diag.udp_port_gen = kernel.port_generation
    dumps = []
    real = diag.dump
    diag.dump = lambda *a, **k: dumps.append(1) or real(*a, **k)   # counts, then the kernel
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    port = srv.getsockname()[1]
    try:
        for client in range(40000, 40010):
            assert diag.lookup(17, "127.0.0.1", port, "127.0.0.1", client)[0] == ino(srv)
        assert len(dumps) == 1
        rival = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        rival.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rival.bind(("::", port))   # the kernel still picks srv (IPv4, bound first)
        with rival:
            assert diag.lookup(17, "127.0.0.1", port, "127.0.0.1", 40011) is None
            found = diag.candidates(17, "127.0.0.1", port, "127.0.0.1", 40012)
            assert {e.inode for e in found} == {ino(srv), ino(rival)}
        assert len(dumps) == 2
    finally:
        srv.close()
        diag.close()
