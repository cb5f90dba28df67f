"""Socket lookups through NETLINK_SOCK_DIAG, with the standard library only.

sock_diag(7) answers "which socket owns this 4-tuple" in a few microseconds and needs no
privilege. It returns the socket's inode and uid but never a pid: the inode -> pid step
lives in procfs.py.

Two kernel quirks shape this module (net/ipv4/inet_diag.c, net/ipv4/udp_diag.c):

* TCP's exact lookup is the receive-path lookup (established, then listener), so a tuple
  with no connection of its own can come back as the *listening* socket, and a tuple whose
  connection has not been accept()ed yet comes back with inode 0.
* UDP's exact lookup calls __udp4_lib_lookup(src, sport, dst, dport) "swapped for
  historical reasons": idiag_src/sport name the *remote* end, idiag_dst/dport the local
  one. Because it is the receive-path lookup it already finds unconnected and
  wildcard-bound sockets. The dump, by contrast, reports src = local for both protocols.

A wildcard or listener match is only accepted when the requested local address is really
one of this host's addresses: otherwise a local 0.0.0.0:53 resolver would be named the
owner of the remote end of every outgoing DNS query.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time
from collections.abc import Callable

from apppaccap.attribution.diagwire import ALL_STATES
from apppaccap.attribution.diagwire import DIAG_MSG_LEN
from apppaccap.attribution.diagwire import NETLINK_SOCK_DIAG
from apppaccap.attribution.diagwire import NLMSGHDR
from apppaccap.attribution.diagwire import SOCK_DIAG_BY_FAMILY
from apppaccap.attribution.diagwire import TCP_ESTABLISHED
from apppaccap.attribution.diagwire import TCP_LISTEN
from apppaccap.attribution.diagwire import TCP_NEW_SYN_RECV
from apppaccap.attribution.diagwire import TCP_SYN_RECV
from apppaccap.attribution.diagwire import TCP_TIME_WAIT
from apppaccap.attribution.diagwire import SockEntry
from apppaccap.attribution.diagwire import pack_request
from apppaccap.attribution.diagwire import parse_diag
from apppaccap.attribution.diagwire import parse_messages
from apppaccap.attribution.diagwire import sport_filter
from apppaccap.attribution.localaddr import LocalAddresses
from apppaccap.attribution.localaddr import is_wildcard
from apppaccap.attribution.localaddr import unmap

# --- the socket --------------------------------------------------------------------------

class SockDiag:
    """A NETLINK_SOCK_DIAG socket: exact lookups and dumps. Thread-safe (one lock)."""

    def __init__(self, is_local: Callable[[str], bool] | None = None, timeout: float = 1.0):
        """Open the netlink socket; raises OSError when sock_diag is unavailable."""
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        # a lost reply must never hang the resolver: the kernel's own timeouts, not
        # settimeout(), which polls before every send and recv (twice the system calls,
        # each letting the interpreter lock go)
        tv = struct.pack("ll", int(timeout), int(timeout % 1 * 1e6))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        self._sock.bind((0, 0))
        self._buf = bytearray(1 << 16)
        self._seq = 0
        self._lock = threading.Lock()
        self.is_local = is_local or LocalAddresses()
        self._port_cache: dict[tuple[int, int],
                               tuple[float, list[SockEntry], int | None]] = {}
        self.port_cache_ttl = 1.0  # TCP listeners are long-lived; their dump costs ~0.5 ms
        # UDP port -> its generation (portgen.py, from the eBPF programs), or None (not
        # tracked, or a port others may join): a UDP port's list is only kept while no
        # socket bound to the port since
        self.udp_port_gen: Callable[[int], int | None] | None = None

    def close(self) -> None:
        """Close the netlink socket."""
        self._sock.close()

    # -- transport

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        return self._seq

    def _exact(self, family: int, proto: int, src: str, sport: int, dst: str,
               dport: int, ifindex: int = 0) -> SockEntry | None:
        # The hot path: one send, one recv, no intermediate lists.
        buf = self._buf
        with self._lock:
            seq = self._next_seq()
            try:
                self._sock.send(pack_request(family, proto, src, sport, dst, dport, seq=seq,
                                             ifindex=ifindex))
                while True:
                    self._sock.recv_into(buf)
                    length, mtype, _f, rseq, _p = NLMSGHDR.unpack_from(buf)
                    if rseq == seq:
                        break  # else: a late reply to an earlier, timed-out request
            except (OSError, ValueError):
                return None
            if mtype != SOCK_DIAG_BY_FAMILY or length < NLMSGHDR.size + DIAG_MSG_LEN:
                return None  # NLMSG_ERROR: -ENOENT when no socket matches
            return parse_diag(buf, NLMSGHDR.size, length, proto)

    def _dump(self, family: int, proto: int, states: int, bytecode: bytes) -> list[SockEntry]:
        """Send a dump request, collect messages with our sequence number to NLMSG_DONE."""
        zero = "0.0.0.0" if family == socket.AF_INET else "::"
        out: list[SockEntry] = []
        with self._lock:
            seq = self._next_seq()
            self._sock.send(pack_request(family, proto, zero, 0, zero, 0, seq=seq, dump=True,
                                         states=states, bytecode=bytecode))
            done = False
            while not done:
                n = self._sock.recv_into(self._buf)
                view = memoryview(self._buf)[:n]
                if n < NLMSGHDR.size or NLMSGHDR.unpack_from(view)[3] != seq:
                    continue  # a late reply to an earlier, timed-out request
                entries, err, done = parse_messages(view, proto)
                out.extend(entries)
        if err and err != errno.ENOENT:
            raise OSError(err, os.strerror(err))
        return out

    # -- public API

    def dump(self, proto: int, states: int = ALL_STATES, local_port: int | None = None
             ) -> list[SockEntry]:
        """All sockets of `proto` (6 or 17), IPv4 and IPv6, optionally only one local port.

        TIME_WAIT and not-yet-accepted sockets are included with inode 0. Cost here:
        ~20 us per family for UDP, ~230 us per family for TCP (the kernel walks its whole
        established hash whatever the filter).
        """
        bc = sport_filter(local_port) if local_port is not None else b""
        return (self._dump(socket.AF_INET, proto, states, bc)
                + self._dump(socket.AF_INET6, proto, states, bc))

    def candidates(self, proto: int, local_ip: str, local_port: int, remote_ip: str,
                   remote_port: int, ifindex: int = 0) -> list[SockEntry]:
        """Every socket that may own this end of the flow, best match first; [] if none.

        One entry: a certain answer. Several: sockets sharing the port (SO_REUSEADDR /
        SO_REUSEPORT / a listener and its wildcard twin) that fit equally well, so the
        socket cannot be named, only possibly its process (see owners.py).

        Rules: a connected socket whose 4-tuple equals the request is certain. A listener
        (TCP) or an unconnected socket (UDP) is only considered when `local_ip` is one of
        this host's addresses. TIME_WAIT and orphaned sockets (inode 0) are not owners,
        but a connection still waiting in the accept queue belongs to its listener.
        `ifindex` (the capture interface) lets the lookup see SO_BINDTODEVICE sockets.
        """
        if proto not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
            return []  # other protocols have no inet_diag handler (and ask for a module)
        local_ip, remote_ip = unmap(local_ip), unmap(remote_ip)
        hit = self._exact_any(proto, local_ip, local_port, remote_ip, remote_port, ifindex)
        if hit is None and not ifindex:
            # Device-bound sockets only answer when idiag_if names their device.
            ifx = self.is_local.ifindex(local_ip) if hasattr(self.is_local, "ifindex") else 0
            if ifx:
                hit = self._exact_any(proto, local_ip, local_port, remote_ip, remote_port, ifx)
        if hit is None:
            return []
        if hit.inode and _same_tuple(hit, local_ip, remote_ip, remote_port):
            return [] if hit.state == TCP_TIME_WAIT else [hit]
        if not self.is_local(local_ip):
            return []  # a wildcard socket would match any foreign address: not ours
        if proto == socket.IPPROTO_TCP:
            if hit.inode == 0 and hit.state not in (TCP_ESTABLISHED, TCP_SYN_RECV,
                                                    TCP_NEW_SYN_RECV):
                return []  # TIME_WAIT, or orphaned after close(): nobody holds it
            if hit.state != TCP_LISTEN and hit.inode:
                return []  # a different connection answered: not this flow's socket
            return self._shared(proto, hit, local_ip, local_port, cached=True)
        if not hit.inode or hit.remote_port:
            return []
        # Any user may share a UDP port (SO_REUSEADDR, a dual-stack socket the kernel's pick
        # hides), and a kept list without that rival named the other user's flows the
        # victim's: the list is kept only while the port's generation says no socket bound
        # to it since (and none there allows sharing), else read every time
        return self._shared(proto, hit, local_ip, local_port, cached=False,
                            generation=self.udp_port_gen)

    def find(self, proto: int, local_ip: str, local_port: int, remote_ip: str,
             remote_port: int, ifindex: int = 0) -> SockEntry | None:
        """The one socket owning this end of the flow, or None (absent or ambiguous)."""
        found = self.candidates(proto, local_ip, local_port, remote_ip, remote_port, ifindex)
        return found[0] if len(found) == 1 else None

    def lookup(self, proto: int, local_ip: str, local_port: int, remote_ip: str,
               remote_port: int, ifindex: int = 0) -> tuple[int, int] | None:
        """(inode, uid) of the socket owning this end of the flow, or None.

        proto 6 or 17; IPv4 (dual-stack sockets included) or IPv6. inode 0 (TIME_WAIT,
        orphaned) and ambiguous shared ports count as not found. See candidates().
        """
        hit = self.find(proto, local_ip, local_port, remote_ip, remote_port, ifindex)
        return (hit.inode, hit.uid) if hit else None

    # -- helpers

    def _exact_any(self, proto, local_ip, local_port, remote_ip, remote_port, ifindex=0):
        if proto == socket.IPPROTO_UDP:  # UDP wants the remote end in idiag_src
            a, ap, b, bp = remote_ip, remote_port, local_ip, local_port
        else:
            a, ap, b, bp = local_ip, local_port, remote_ip, remote_port
        if ":" in local_ip or ":" in remote_ip:
            if ":" not in local_ip or ":" not in remote_ip:
                return None  # mixed families cannot be one socket
            return self._exact(socket.AF_INET6, proto, a, ap, b, bp, ifindex)
        hit = self._exact(socket.AF_INET, proto, a, ap, b, bp, ifindex)
        if hit is None:  # older kernels: dual-stack sockets answer only to the mapped form
            hit = self._exact(socket.AF_INET6, proto, "::ffff:" + a, ap, "::ffff:" + b, bp,
                              ifindex)
        return hit

    def _shared(self, proto: int, hit: SockEntry, local_ip: str, local_port: int,
                cached: bool, generation=None) -> list[SockEntry]:
        """The kernel picked `hit` among the sockets bound to this port; list its equals.

        The kernel's pick is right for the packet it delivers, but a lookup without the
        packet cannot tell which member of a shared port sent or got it. A TCP port's list
        (`cached`) is kept port_cache_ttl; a UDP port's too when `generation` (port ->
        its generation or None) says the port's sockets are the same. A kept list is read
        again when the kernel's pick is not in it as the pick is now.
        """
        key = (proto, local_port)
        gen = generation(local_port) if generation is not None else None
        if gen is not None:
            cached = True   # (read before the dump: a bind during it changes it)
        now = time.monotonic()
        got = self._port_cache.get(key) if cached else None
        if got is None or now - got[0] > self.port_cache_ttl or got[2] != gen or (
                hit.inode and not any(e.inode == hit.inode and e.remote_port == hit.remote_port
                                      and e.local_ip == hit.local_ip for e in got[1])):
            # TCP: only listeners can share a port's flows (_rank); asking for them alone
            # spares the kernel its walk of every connection, and us a busy server's
            # thousands of TIME_WAIT entries (~3 ms a dump at 200 connections/s)
            states = 1 << TCP_LISTEN if proto == socket.IPPROTO_TCP else ALL_STATES
            try:
                got = (now, self.dump(proto, states, local_port=local_port), gen)
            except OSError:
                return []
            if cached:
                if len(self._port_cache) > 1024:
                    self._port_cache.clear()
                self._port_cache[key] = got
        return _rank(got[1], proto, local_ip, hit)


def _same_tuple(e: SockEntry, local_ip: str, remote_ip: str, remote_port: int) -> bool:
    return (e.remote_port == remote_port and unmap(e.remote_ip) == remote_ip
            and unmap(e.local_ip) == local_ip)


def _rank(entries: list[SockEntry], proto: int, local_ip: str, hit: SockEntry
          ) -> list[SockEntry]:
    """Listeners / unconnected sockets able to own `local_ip`, best bind first.

    Mirrors the kernel's scoring: a socket bound to the address beats a wildcard one.
    Returns the best rank's sockets, `hit` first.
    """
    v4 = ":" not in local_ip
    ranks: dict[int, dict[int, SockEntry]] = {}
    for e in entries:
        if not e.inode or e.remote_port:
            continue
        if proto == socket.IPPROTO_TCP and e.state != TCP_LISTEN:
            continue
        lip = unmap(e.local_ip)
        if v4 and ":" in lip and (lip != "::" or e.v6only):
            continue  # an IPv6-only socket cannot own IPv4 traffic
        if not v4 and ":" not in lip:
            continue
        if lip == local_ip:
            rank = 1
        elif is_wildcard(lip):
            rank = 2
        else:
            continue
        ranks.setdefault(rank, {})[e.inode] = e
    if not ranks:
        return [hit] if hit.inode else []
    best = ranks[min(ranks)]
    first = best.pop(hit.inode, None)
    return ([first] if first else []) + list(best.values())
