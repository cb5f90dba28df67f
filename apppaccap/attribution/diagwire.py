"""sock_diag's messages: the request, the replies and the socket entry they carry.

The layout of inet_diag_req_v2 and inet_diag_msg (include/uapi/linux/inet_diag.h) and the
bytecode filter the kernel audits; sockdiag.py sends and receives them.
"""

from __future__ import annotations

import socket
import struct
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

# include/net/tcp_states.h; NEW_SYN_RECV is a request socket (handshake in progress)
TCP_ESTABLISHED, TCP_SYN_RECV, TCP_TIME_WAIT, TCP_LISTEN, TCP_NEW_SYN_RECV = 1, 3, 6, 10, 12

NLMSGHDR = struct.Struct("=IHHII")
# nlmsghdr + inet_diag_req_v2 {family, protocol, ext, pad, states, inet_diag_sockid
# {sport, dport, src[16], dst[16], if, cookie[2]}}. Ports are big-endian on the wire:
# they are packed "native" after htons so one Struct does the whole message.
REQUEST = struct.Struct("=IHHIIBBBBIHH16s16sIII")
# inet_diag_msg {family, state, timer, retrans, sockid, expires, rqueue, wqueue, uid, inode}
DIAG_MSG = struct.Struct("=BBBBHH16s16sIIIIIIII")
DIAG_MSG_LEN = DIAG_MSG.size  # 72
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
                 bytecode: bytes = b"", ifindex: int = 0) -> bytes:
    """Build nlmsghdr + inet_diag_req_v2 (+ optional INET_DIAG_REQ_BYTECODE attribute).

    src/dst are the raw idiag_src/idiag_dst fields: which end they mean depends on the
    protocol for exact lookups (see the module docstring).
    """
    attr = b""
    if bytecode:
        attr = RTATTR.pack(RTATTR.size + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    return REQUEST.pack(REQUEST.size + len(attr), SOCK_DIAG_BY_FAMILY, flags, seq, 0,
                        family, proto, 0, 0, states, socket.htons(sport), socket.htons(dport),
                        _addr_bytes(family, src), _addr_bytes(family, dst), ifindex,
                        INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE) + attr


def sport_filter(port: int) -> bytes:
    """Bytecode "local port == port": on true jump past the end (accept), else reject.

    The kernel audit wants `no` = remaining length + 4 for "reject"
    (inet_diag_bc_audit); the second op only carries the port in its `no` field.
    """
    return BC_OP.pack(INET_DIAG_BC_S_EQ, 8, 12) + BC_OP.pack(0, 0, port)


def _text(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(family, raw[:4])
    return socket.inet_ntop(family, raw)


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
            entries.append(parse_diag(data, body, off + length, proto))
        off += (length + 3) & ~3
    return entries, 0, False


def parse_diag(data, body: int, end: int, proto: int) -> SockEntry:
    (family, state, _timer, _retrans, sport, dport, src, dst, _if, _c0, _c1, _exp, _rq, _wq,
     uid, inode) = DIAG_MSG.unpack_from(data, body)
    v6only = False
    attr = body + DIAG_MSG_LEN
    while attr + RTATTR.size <= end:
        alen, atype = RTATTR.unpack_from(data, attr)
        if alen < RTATTR.size:
            break
        if atype == INET_DIAG_SKV6ONLY and alen > RTATTR.size:
            v6only = bool(data[attr + RTATTR.size])
        attr += (alen + 3) & ~3
    return SockEntry(proto, _text(family, src), socket.ntohs(sport), _text(family, dst),
                     socket.ntohs(dport), state, inode, uid, v6only)
