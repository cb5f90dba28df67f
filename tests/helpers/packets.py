"""Frames built by hand: Ethernet (with VLAN tags), IPv4, IPv6, TCP, UDP, ICMP, ARP, DNS.

Checksums stay 0 unless asked for: neither the product nor tshark checks them. Addresses
are text ("10.0.0.1", "2001:db8::1", "aa:bb:cc:dd:ee:01"); a MAC may also be 6 bytes.
"""

from __future__ import annotations

import socket
import struct

MAC_A = "aa:bb:cc:dd:ee:01"
MAC_B = "aa:bb:cc:dd:ee:02"


def mac(addr) -> bytes:
    return addr if isinstance(addr, bytes) else bytes.fromhex(addr.replace(":", ""))


def a4(text: str) -> bytes:
    return socket.inet_aton(text)


def a6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def tcp(sport, dport, seq=0, ack=0, flags=0x02, win=64240, options=b"", payload=b"") -> bytes:
    doff = (20 + len(options)) // 4
    return (
        struct.pack("!HHIIHHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                    doff << 12 | flags, win, 0, 0)
        + options
        + payload
    )


def udp(sport, dport, payload=b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(typ, code=0, ident=0, seq=0, payload=b"") -> bytes:
    return struct.pack("!BBHHH", typ, code, 0, ident, seq) + payload


def ipv4(src, dst, proto, payload, ttl=64, ident=0x1234, frag_off=0, mf=False, df=False,
         options=b"", total=None, with_checksum=False) -> bytes:
    ihl = (20 + len(options)) // 4
    if total is None:
        total = ihl * 4 + len(payload)
    flags = (0x4000 if df else 0) | (0x2000 if mf else 0) | frag_off // 8
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, ident, flags, ttl, proto, 0,
                       a4(src), a4(dst)) + options
    if with_checksum:
        head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
    return head + payload


def ipv6(src, dst, nh, payload, hlim=64) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, hlim, a6(src),
                       a6(dst)) + payload


def eth(payload, ethertype=0x0800, src=MAC_A, dst=MAC_B, tags=()) -> bytes:
    """Ethernet frame; tags is a list of (tpid, vlan id), outermost first."""
    hdr = mac(dst) + mac(src)
    for tpid, vid in tags:
        hdr += struct.pack("!HH", tpid, vid)
    return hdr + struct.pack("!H", ethertype) + payload


def arp(op, sha, spa, tha, tpa) -> bytes:
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + mac(sha) + a4(spa) + mac(tha) + a4(tpa)


def dns_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"


def dns(ident, names, response=False, qtype=1, answers=()) -> bytes:
    """A DNS message asking `names`; a response answers the first with A `answers`."""
    flags = 0x8180 if response else 0x0100
    out = struct.pack("!HHHHHH", ident, flags, len(names), len(answers), 0, 0)
    for name in names:
        out += dns_name(name) + struct.pack("!HH", qtype, 1)
    for ip in answers:
        out += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + a4(ip)
    return out


def udp_frame(payload: bytes, sport: int = 40000, dport: int = 9, src="10.0.0.1",
              dst="10.0.0.2", ident=1) -> bytes:
    """Ethernet/IPv4/UDP from 02:00:00:00:00:02 to 02:00:00:00:00:01 (checksums 0)."""
    return eth(ipv4(src, dst, 17, udp(sport, dport, payload), ident=ident),
               src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
