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
import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_S_EQ = 11  # enum in include/uapi/linux/inet_diag.h
INET_DIAG_SKV6ONLY = 11  # reply attribute (same number, different enum)
ALL_STATES = 0xFFFFFFFF

TCP_ESTABLISHED, TCP_SYN_RECV, TCP_TIME_WAIT, TCP_LISTEN = 1, 3, 6, 10
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
              11: "CLOSING", 12: "NEW_SYN_RECV"}

NLMSGHDR = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid:
# sport/dport and addresses are big-endian, interface and cookie host order.
REQ_V2 = struct.Struct("=BBBBI")
SOCKID = struct.Struct(">HH16s16s")
SOCKID_TAIL = struct.Struct("=III")
# inet_diag_msg: family, state, timer, retrans, sockid (48 bytes), expires, rqueue,
# wqueue, uid, inode.
DIAG_MSG = struct.Struct("=BBBB")
DIAG_MSG_TAIL = struct.Struct("=IIIII")
DIAG_MSG_LEN = 4 + 48 + 20
RTATTR = struct.Struct("=HH")
BC_OP = struct.Struct("=BBH")


class SockEntry(NamedTuple):
    """One socket as sock_diag reports it (addresses as text, local end first)."""

    proto: int
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    state: int
    inode: int
    uid: int
    v6only: bool = False


# --- packing ---------------------------------------------------------------------------

def _addr_bytes(family: int, ip: str) -> bytes:
    """16-byte inet_diag address field: IPv4 in the first 4 bytes, zero padded."""
    return socket.inet_pton(family, ip).ljust(16, b"\0")


def pack_request(family: int, proto: int, src: str, sport: int, dst: str, dport: int,
                 *, seq: int = 1, dump: bool = False, states: int = ALL_STATES,
                 bytecode: bytes = b"") -> bytes:
    """Build nlmsghdr + inet_diag_req_v2 (+ optional INET_DIAG_REQ_BYTECODE attribute).

    src/dst are the raw idiag_src/idiag_dst fields: which end they mean depends on the
    protocol for exact lookups (see the module docstring).
    """
    body = (REQ_V2.pack(family, proto, 0, 0, states)
            + SOCKID.pack(sport, dport, _addr_bytes(family, src), _addr_bytes(family, dst))
            + SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE))
    if bytecode:
        body += RTATTR.pack(RTATTR.size + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, flags, seq, 0) + body


def sport_filter(port: int) -> bytes:
    """Bytecode "local port == port": on true jump past the end (accept), else reject.

    The kernel audit wants `no` = remaining length + 4 for "reject"
    (inet_diag_bc_audit); the second op only carries the port in its `no` field.
    """
    return BC_OP.pack(INET_DIAG_BC_S_EQ, 8, 12) + BC_OP.pack(0, 0, port)


def _text(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw[:4] if family == socket.AF_INET else raw)


def parse_messages(data: bytes | memoryview, proto: int) -> tuple[list[SockEntry], int, bool]:
    """Parse one recv() worth of netlink messages.

    Returns (entries, errno or 0, done). An NLMSG_ERROR with error 0 is an ack.
    """
    entries: list[SockEntry] = []
    off, end = 0, len(data)
    while off + NLMSGHDR.size <= end:
        length, mtype, _flags, _seq, _pid = NLMSGHDR.unpack_from(data, off)
        if length < NLMSGHDR.size or off + length > end:
            break
        body = off + NLMSGHDR.size
        if mtype == NLMSG_DONE:
            return entries, 0, True
        if mtype == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, body)
            return entries, -err, True
        if mtype == SOCK_DIAG_BY_FAMILY and length >= NLMSGHDR.size + DIAG_MSG_LEN:
            entries.append(_parse_diag(data, body, off + length, proto))
        off += (length + 3) & ~3
    return entries, 0, False


def _parse_diag(data, body: int, end: int, proto: int) -> SockEntry:
    family, state, _timer, _retrans = DIAG_MSG.unpack_from(data, body)
    sport, dport, src, dst = SOCKID.unpack_from(data, body + 4)
    _exp, _rq, _wq, uid, inode = DIAG_MSG_TAIL.unpack_from(data, body + 52)
    v6only = False
    attr = body + DIAG_MSG_LEN
    while attr + RTATTR.size <= end:
        alen, atype = RTATTR.unpack_from(data, attr)
        if alen < RTATTR.size:
            break
        if atype == INET_DIAG_SKV6ONLY and alen > RTATTR.size:
            v6only = bool(data[attr + RTATTR.size])
        attr += (alen + 3) & ~3
    return SockEntry(proto, _text(family, bytes(src)), sport, _text(family, bytes(dst)), dport,
                     state, inode, uid, v6only)


# --- addresses ---------------------------------------------------------------------------

def unmap(ip: str) -> str:
    """'::ffff:1.2.3.4' -> '1.2.3.4'; anything else unchanged."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip


def is_wildcard(ip: str) -> bool:
    return ip in ("0.0.0.0", "::")


class LocalAddresses:
    """Is an address one of this host's (this network namespace's)?

    Loopback ranges are always local. The interface list comes from psutil and is
    re-read at most every `refresh` seconds, and only when an unknown address is asked
    about, so DHCP changes are picked up without polling.
    """

    def __init__(self, refresh: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self._refresh, self._clock = refresh, clock
        self._addrs: set[str] = set()
        self._loaded = -1e18

    def _load(self) -> None:
        import psutil  # imported here: only this fallback path needs it

        addrs = set()
        for items in psutil.net_if_addrs().values():
            for a in items:
                if a.family in (socket.AF_INET, socket.AF_INET6):
                    addrs.add(a.address.split("%", 1)[0])
        self._addrs, self._loaded = addrs, self._clock()

    def __call__(self, ip: str) -> bool:
        ip = unmap(ip)
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if addr.is_loopback:
            return True
        if addr.is_multicast or addr.is_unspecified or ip == "255.255.255.255":
            return False
        if ip in self._addrs:
            return True
        if self._clock() - self._loaded >= self._refresh:
            try:
                self._load()
            except Exception:  # psutil missing or failing: only loopback counts as local
                self._loaded = self._clock()
            return ip in self._addrs
        return False


# --- the socket --------------------------------------------------------------------------

class SockDiag:
    """A NETLINK_SOCK_DIAG socket: exact lookups and dumps. Thread-safe (one lock)."""

    def __init__(self, is_local: Callable[[str], bool] | None = None, timeout: float = 1.0):
        """Open the netlink socket; raises OSError when sock_diag is unavailable."""
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        self._sock.settimeout(timeout)  # a lost reply must never hang the resolver
        self._sock.bind((0, 0))
        self._buf = bytearray(1 << 16)
        self._seq = 0
        self._lock = threading.Lock()
        self.is_local = is_local or LocalAddresses()

    def close(self) -> None:
        """Close the netlink socket."""
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- transport

    def _transact(self, msg: bytes, proto: int, dump: bool) -> tuple[list[SockEntry], int]:
        """Send one request; collect replies with our sequence number.

        An exact lookup answers with one message (the socket or an NLMSG_ERROR); a dump
        ends with NLMSG_DONE.
        """
        out: list[SockEntry] = []
        seq = NLMSGHDR.unpack_from(msg)[3]
        self._sock.send(msg)
        while True:
            n = self._sock.recv_into(self._buf)
            view = memoryview(self._buf)[:n]
            if n < NLMSGHDR.size or NLMSGHDR.unpack_from(view)[3] != seq:
                continue  # a late reply to an earlier, timed-out request
            entries, err, done = parse_messages(view, proto)
            out.extend(entries)
            if done or not dump:
                return out, err

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        return self._seq

    def _exact(self, family: int, proto: int, src: str, sport: int, dst: str,
               dport: int) -> SockEntry | None:
        with self._lock:
            try:
                msg = pack_request(family, proto, src, sport, dst, dport, seq=self._next_seq())
                entries, err = self._transact(msg, proto, dump=False)
            except (OSError, ValueError):
                return None
        return entries[0] if entries and not err else None

    def _dump(self, family: int, proto: int, states: int, bytecode: bytes) -> list[SockEntry]:
        zero = "0.0.0.0" if family == socket.AF_INET else "::"
        with self._lock:
            msg = pack_request(family, proto, zero, 0, zero, 0, seq=self._next_seq(), dump=True,
                               states=states, bytecode=bytecode)
            entries, err = self._transact(msg, proto, dump=True)
        if err and err != errno.ENOENT:
            raise OSError(err, os.strerror(err))
        return entries

    # -- public API

    def dump(self, proto: int, states: int = ALL_STATES, local_port: int | None = None
             ) -> list[SockEntry]:
        """All sockets of `proto` (6 or 17), IPv4 and IPv6, optionally only one local port.

        TIME_WAIT and not-yet-accepted sockets are included with inode 0.
        """
        bc = sport_filter(local_port) if local_port is not None else b""
        return (self._dump(socket.AF_INET, proto, states, bc)
                + self._dump(socket.AF_INET6, proto, states, bc))

    def find(self, proto: int, local_ip: str, local_port: int, remote_ip: str,
             remote_port: int) -> SockEntry | None:
        """The socket that owns this end of the flow, with inode != 0, or None.

        Accepts a connected socket whose 4-tuple equals the request; a listener or an
        unconnected/wildcard UDP socket only when `local_ip` is one of ours.
        """
        local_ip, remote_ip = unmap(local_ip), unmap(remote_ip)
        local = self.is_local(local_ip)
        hit = self._exact_any(proto, local_ip, local_port, remote_ip, remote_port)
        if hit is not None:
            if hit.inode and self._acceptable(hit, local_ip, remote_ip, remote_port, local):
                return hit
            if (proto == socket.IPPROTO_TCP and local and hit.inode == 0
                    and hit.state in (TCP_ESTABLISHED, TCP_SYN_RECV, 12)):
                # Not yet accept()ed: the connection has no file yet and belongs to the
                # listener whose owner will accept it.
                zero = "0.0.0.0" if ":" not in local_ip else "::"
                lst = self._exact_any(proto, local_ip, local_port, zero, 0)
                if lst is not None and lst.inode and lst.state == TCP_LISTEN:
                    return lst
            if proto == socket.IPPROTO_TCP or hit.inode:
                return None
        if not local:
            return None
        return self._from_dump(proto, local_ip, local_port, remote_ip, remote_port)

    def lookup(self, proto: int, local_ip: str, local_port: int, remote_ip: str,
               remote_port: int) -> tuple[int, int] | None:
        """(inode, uid) of the socket owning this end of the flow, or None (see find())."""
        hit = self.find(proto, local_ip, local_port, remote_ip, remote_port)
        return (hit.inode, hit.uid) if hit else None

    # -- helpers

    def _exact_any(self, proto, local_ip, local_port, remote_ip, remote_port):
        if proto == socket.IPPROTO_UDP:  # UDP wants the remote end in idiag_src
            a, ap, b, bp = remote_ip, remote_port, local_ip, local_port
        else:
            a, ap, b, bp = local_ip, local_port, remote_ip, remote_port
        if ":" in local_ip or ":" in remote_ip:
            if ":" not in local_ip or ":" not in remote_ip:
                return None  # mixed families cannot be one socket
            return self._exact(socket.AF_INET6, proto, a, ap, b, bp)
        hit = self._exact(socket.AF_INET, proto, a, ap, b, bp)
        if hit is None:  # older kernels: dual-stack sockets answer only to the mapped form
            hit = self._exact(socket.AF_INET6, proto, "::ffff:" + a, ap, "::ffff:" + b, bp)
        return hit

    @staticmethod
    def _acceptable(hit: SockEntry, local_ip, remote_ip, remote_port, local: bool) -> bool:
        exact = (unmap(hit.remote_ip) == remote_ip and hit.remote_port == remote_port
                 and unmap(hit.local_ip) == local_ip)
        if exact:
            return hit.state != TCP_TIME_WAIT
        # listener, or unconnected / wildcard-bound UDP socket
        return local and hit.remote_port == 0

    def _from_dump(self, proto, local_ip, local_port, remote_ip, remote_port):
        """Port-filtered dump for what the exact lookup cannot see (device-bound sockets,
        kernels without the lookups above). Ambiguous answers count as not found."""
        v4 = ":" not in local_ip
        try:
            entries = self.dump(proto, local_port=local_port)
        except OSError:
            return None
        best: dict[int, set] = {}
        for e in entries:
            if not e.inode or e.state == TCP_TIME_WAIT:
                continue
            lip, rip = unmap(e.local_ip), unmap(e.remote_ip)
            if v4 and ":" in e.local_ip and e.v6only:
                continue
            if v4 != (":" not in lip) and not (v4 and lip == "::"):
                continue
            if lip == local_ip and rip == remote_ip and e.remote_port == remote_port:
                rank = 0
            elif e.remote_port or (proto == socket.IPPROTO_TCP and e.state != TCP_LISTEN):
                continue
            elif lip == local_ip:
                rank = 1
            elif is_wildcard(lip):
                rank = 2
            else:
                continue
            best.setdefault(rank, {})[e.inode] = e
        for rank in sorted(best):
            if len(best[rank]) == 1:
                return next(iter(best[rank].values()))
            return None  # two different sockets fit equally well: do not guess
        return None
