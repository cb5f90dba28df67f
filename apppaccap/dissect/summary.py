"""Human one-line packet descriptions (Wireshark's Info column) for a decode() result.

Split out of decode.py: nothing here is on the capture path; `Decoded.summary` calls
describe() when somebody reads a packet.
"""

from __future__ import annotations

import socket
import struct

from apppaccap.dissect.dns import dns_text as _dns_text

_u16 = struct.Struct("!H").unpack_from
_2u16 = struct.Struct("!HH").unpack_from
_inet_ntop = socket.inet_ntop
_AF6 = socket.AF_INET6


_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "AE")


def _flags_text(flags):
    names = [name for bit, name in enumerate(_FLAG_NAMES) if flags >> bit & 1]
    if flags & 0xE00:
        names.append("Reserved")
    return ", ".join(names) or "<None>"


_FLAGS_TEXT = tuple(_flags_text(i) for i in range(0x200))  # every value decode() can return


def tcp_flags_text(flags):
    """TCP flags as Wireshark lists them, e.g. ``"SYN, ACK"``; ``"<None>"`` when none."""
    return _FLAGS_TEXT[flags] if 0 <= flags < 0x200 else _flags_text(flags)


_PROTO_NAMES = {1: "ICMP", 2: "IGMP", 4: "IPIP", 6: "TCP", 17: "UDP", 41: "IPv6", 47: "GRE",
                50: "ESP", 51: "AH", 58: "ICMPv6", 59: "IPv6-NoNxt", 89: "OSPF", 103: "PIM",
                112: "VRRP", 115: "L2TP", 132: "SCTP", 136: "UDPLite"}
_ETHER_NAMES = {0x8035: "RARP", 0x8847: "MPLS", 0x8848: "MPLS multicast", 0x8863: "PPPoE Discovery",
                0x8864: "PPPoE Session", 0x888E: "EAPOL", 0x88CC: "LLDP", 0x88E5: "MACsec",
                0x88F7: "PTP", 0x8809: "Slow protocols (LACP)", 0x0842: "Wake-on-LAN",
                0x9000: "Loopback"}
_LINK_NAMES = {0: "Null/Loopback", 1: "Ethernet", 12: "Raw IP", 14: "Raw IP", 101: "Raw IP",
               108: "OpenBSD loopback", 113: "Linux cooked (SLL)", 228: "Raw IPv4",
               229: "Raw IPv6", 276: "Linux cooked v2 (SLL2)"}
_ICMP_TYPES = {0: "Echo reply", 3: "Destination unreachable", 4: "Source quench", 5: "Redirect",
               8: "Echo request", 9: "Router advertisement", 10: "Router solicitation",
               11: "Time-to-live exceeded", 12: "Parameter problem", 13: "Timestamp request",
               14: "Timestamp reply"}
_UNREACH = {0: "Network unreachable", 1: "Host unreachable", 2: "Protocol unreachable",
            3: "Port unreachable", 4: "Fragmentation needed", 9: "Network prohibited",
            10: "Host prohibited", 13: "Communication administratively filtered"}
_ICMP6_TYPES = {1: "Destination unreachable", 2: "Packet too big", 3: "Time exceeded",
                4: "Parameter problem", 128: "Echo request", 129: "Echo reply",
                130: "Multicast listener query", 131: "Multicast listener report",
                132: "Multicast listener done", 133: "Router solicitation",
                134: "Router advertisement", 135: "Neighbor solicitation",
                136: "Neighbor advertisement", 137: "Redirect",
                143: "Multicast listener report v2"}
_DNS_PORTS = (53, 5353)


def _ep(ip, port):
    """Endpoint text: 1.2.3.4:80 or [2001:db8::1]:80."""
    if ip is None:
        ip = "?"
    if not port:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def describe(d):
    (l3, p, src, dst, sport, dport, flags, seq, ack, _ttl, _vlan, _it, _ic, poff, plen, frag, lt,
     l3off, l4, note, data) = d
    text = ""
    if frag:
        text = (f"{'IPv4' if l3 == 0x0800 else 'IPv6'} fragment {src} → {dst}"
                f" ({_PROTO_NAMES.get(p, p)}) Len={plen}")
    elif l3 == 0x0806:
        if poff > l3off:
            text = _arp_text(data, l3off, src, dst)
    elif src is not None:
        whole = l4 >= 0 and poff > l4  # transport header fully decoded
        if whole and (p == 6 or p == 17):
            if sport in _DNS_PORTS or dport in _DNS_PORTS:
                start = poff + 2 if p == 6 else poff  # DNS over TCP has a length prefix
                text = _dns_text(data[start:poff + plen]) or ""
            if not text:
                a, b = (f"[{src}]", f"[{dst}]") if ":" in src else (src, dst)
                if p == 6:
                    acked = f" Ack={ack}" if flags & 0x10 else ""
                    text = (f"TCP {a}:{sport} → {b}:{dport} [{_FLAGS_TEXT[flags]}] Seq={seq}{acked}"
                            f" Win={_u16(data, l4 + 14)[0]} Len={plen}")
                else:
                    text = f"UDP {a}:{sport} → {b}:{dport} Len={plen}"
        elif whole and (p == 1 or p == 58):
            text = _icmp_text(d, data, l4)
        else:
            v = "IPv4" if l3 == 0x0800 else "IPv6"
            name = _PROTO_NAMES.get(p, f"{v} proto {p}") if l4 >= 0 else v
            text = f"{name} {_ep(src, sport)} → {_ep(dst, dport)} Len={plen}"
    elif l3 and note is None:
        name = _ETHER_NAMES.get(l3)
        text = f"Ethertype 0x{l3:04x}{f' ({name})' if name else ''}, {len(data)} bytes"
    if note:
        return f"{text} [{note}]" if text else note
    return text or f"{_LINK_NAMES.get(lt) or f'Link type {lt}'} frame, {len(data)} bytes"


def _arp_text(data, o, spa, tpa):
    op = _u16(data, o + 6)[0]
    if spa is None or data[o + 4] != 6:
        hrd, pro = _2u16(data, o)
        return f"ARP opcode {op} (hardware type {hrd}, protocol 0x{pro:04x})"
    if op == 1:
        if spa == tpa:
            return f"ARP Gratuitous ARP for {spa} (Request)"
        return f"ARP Who has {tpa}? Tell {spa}"
    if op == 2:
        return f"ARP {spa} is at {data[o + 8:o + 14].hex(':')}"
    return f"ARP opcode {op} {spa} → {tpa}"


def _icmp_text(d, data, l4):
    t, c, v6 = d.icmp_type, d.icmp_code, d.proto == 58
    name = (_ICMP6_TYPES if v6 else _ICMP_TYPES).get(t, f"Type {t}")
    text = f"{'ICMPv6' if v6 else 'ICMP'} {name}"
    if t in ((128, 129) if v6 else (0, 8)):
        ident, seq = _2u16(data, l4 + 4)
        return f"{text} {d.src} → {d.dst} id=0x{ident:04x} seq={seq}"
    if v6 and t in (135, 136) and d.payload_len >= 16:
        return f"{text} for {_inet_ntop(_AF6, data[l4 + 8:l4 + 24])} from {d.src}"
    if t == 3 and not v6:
        text += f" ({_UNREACH.get(c, f'code {c}')})"
    elif c:
        text += f" (code {c})"
    return f"{text} {d.src} → {d.dst}"


