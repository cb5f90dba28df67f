"""Stateless packet decoder: link layer -> IPv4/IPv6/ARP -> TCP/UDP/ICMP/ICMPv6, plus DNS helpers.

Pure functions, no I/O.  ``decode()`` runs on every captured and ingested packet, so the
common path (Ethernet/VLAN, IPv4/IPv6, TCP/UDP) is written for speed: precompiled
``struct`` unpackers, one pass through a single function, a tuple-based result, a small
cache for address strings, and the human ``summary`` (plus the MAC strings) computed only
when somebody reads them.  Anything that cannot be decoded is described in ``note`` and in
``summary`` instead of raising.
"""

from __future__ import annotations

import socket
import struct
from collections import namedtuple

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_ARP = 0x0806

# pcap link-type fields may carry FCS-length bits in the upper nibble (0x30000065 = RAW + FCS).
_LT_MASK = 0x0FFFFFFF
# DLT_RAW is 12 on most BSDs and 14 on OpenBSD; libpcap maps both to raw IP, so do we.
_RAW_TYPES = frozenset((LINKTYPE_RAW, 12, 14))
_VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))  # 802.1Q, 802.1ad, old QinQ TPIDs
_AF_INET6 = frozenset((10, 24, 28, 30))  # Linux, NetBSD/OpenBSD, FreeBSD, macOS
_IP6_EXT = frozenset((0, 43, 44, 60, 51))  # hop-by-hop, routing, fragment, dest opts, AH
_MAX_IP6_EXT = 16  # real packets have a handful; bounds pathological chains

_u16 = struct.Struct("!H").unpack_from
_2u16 = struct.Struct("!HH").unpack_from
_ip4 = struct.Struct("!BxHxxHBB2x4s4s").unpack_from  # vhl, total len, frag, ttl, proto, src, dst
_ip6 = struct.Struct("!B3xHBB16s16s").unpack_from  # version/tc, payload len, nh, hlim, src, dst
_tcp = struct.Struct("!HHIIH").unpack_from  # sport, dport, seq, ack, offset+flags
_udp = struct.Struct("!HHH").unpack_from  # sport, dport, length
_dns_hdr = struct.Struct("!HHHH").unpack_from  # id, flags, qdcount, ancount
_dns_rr = struct.Struct("!HHIH").unpack_from  # type, class, ttl, rdlength
_inet_ntop = socket.inet_ntop
_AF6 = socket.AF_INET6

# Address text cache: formatting an address costs ~250 ns, a dict hit ~70 ns, and traffic
# repeats the same few addresses.  Cleared wholesale when big so memory stays bounded.
_ADDR = {}
_ADDR_MAX = 65536


def _addr(raw):
    """Text form of a 4- or 16-byte address (cache miss path)."""
    if len(_ADDR) >= _ADDR_MAX:
        _ADDR.clear()
    text = _ADDR[raw] = _ntop4(raw) if len(raw) == 4 else _inet_ntop(_AF6, raw)
    return text


def _ntop4(b):
    # measured: faster than socket.inet_ntoa (which needs a bytes slice first)
    return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"


_FIELDS = ("l3 proto src dst sport dport tcp_flags tcp_seq tcp_ack ttl vlan icmp_type icmp_code "
           "payload_off payload_len fragment linktype l3_off l4_off note data")
_Base = namedtuple("_Base", _FIELDS, defaults=(0, 0, None, None, 0, 0, 0, 0, 0, 0, None, None,
                                                 None, 0, 0, False, 0, -1, -1, None, b""))


class Decoded(_Base):
    """Result of :func:`decode` (a named tuple; read it by attribute).

    Beyond the contract fields it carries ``linktype`` (masked), ``l3_off`` / ``l4_off``
    (offsets of the network and transport headers, -1 when absent), ``note`` (why decoding
    stopped early or what was odd, else None) and ``data`` (the packet bytes, kept so that
    ``eth_src``, ``eth_dst`` and ``summary`` can be computed when read; so a result keeps a
    memoryview passed as ``data`` alive, and ``summary`` is rebuilt on each read).
    """

    __slots__ = ()

    @property
    def eth_src(self):
        """Source MAC ("aa:bb:..") for Ethernet, or the SLL/SLL2 link-layer address when 6 bytes."""
        return _mac(self.linktype, self.data, True)

    @property
    def eth_dst(self):
        """Destination MAC for Ethernet; None for other link types."""
        return _mac(self.linktype, self.data, False)

    @property
    def summary(self):
        """One-line description, like Wireshark's Info column."""
        try:
            return _summary(self)
        except Exception as exc:  # last resort: a summary must never break a listing
            return f"{len(self.data)} bytes (summary failed: {type(exc).__name__})"

    def __repr__(self):
        return f"<Decoded {self.summary!r}>"


_new = tuple.__new__  # builds the result without the namedtuple's Python-level __new__


def decode(linktype, data):
    """Decode one captured frame of the given pcap link type.  Never raises.

    Returns a :class:`Decoded`.  Fields that could not be decoded keep their "unknown"
    value (0 / None) and ``note`` says what was truncated or malformed.
    """
    try:
        lt = linktype & 0x0FFFFFFF  # _LT_MASK, as a constant on the hot path
        n = len(data)
        l3 = proto = sport = dport = flags = seq = ack = ttl = 0
        src = dst = vlan = itype = icode = note = warn = None
        frag = False
        off = l3off = l4off = -1
        lim = n  # end of the network-layer packet inside data (IP length strips padding)

        # ---- link layer: find the ethertype (l3) and where it starts (off) ----
        if lt == 1:
            if n >= 14:
                l3 = (data[12] << 8) | data[13]
                off = 14
            else:
                note = f"Truncated Ethernet header ({n} of 14 bytes captured)"
        elif lt in _RAW_TYPES:
            off = 0
            if n:
                ver = data[0] >> 4
                l3 = 0x0800 if ver == 4 else 0x86DD if ver == 6 else 0
                if not l3:
                    note = f"Unknown IP version {ver} in raw IP packet"
            else:
                note = "Empty raw IP packet"
        elif lt == 113:  # Linux cooked v1: type, ARPHRD, addr len, addr[8], protocol
            if n >= 16:
                l3 = (data[14] << 8) | data[15]
                off = 16
                if l3 < 0x0600:  # 802.3/802.2/CAN/netlink pseudo-protocols, not ethertypes
                    l3 = 0
            else:
                note = f"Truncated Linux cooked (SLL) header ({n} of 16 bytes captured)"
        elif lt == 276:  # Linux cooked v2: protocol first, 20-byte header
            if n >= 20:
                l3 = (data[0] << 8) | data[1]
                off = 20
                if l3 < 0x0600:
                    l3 = 0
            else:
                note = f"Truncated Linux cooked v2 (SLL2) header ({n} of 20 bytes captured)"
        elif lt == 228 or lt == 229:
            off = 0
            l3 = 0x0800 if lt == 228 else 0x86DD
        elif lt == 0 or lt == 108:
            if n >= 4:
                fam = _null_family(data)
                off = 4
                if fam == 2:
                    l3 = 0x0800
                elif fam in _AF_INET6:
                    l3 = 0x86DD
                elif fam > 1500:  # some writers put an ethertype here (Wireshark accepts it)
                    l3 = fam & 0xFFFF
                else:
                    note = f"Unknown loopback address family {fam}"
            else:
                note = f"Truncated loopback header ({n} of 4 bytes captured)"
        else:
            note = f"Unsupported link type {lt} ({n} bytes)"

        while l3 in _VLAN_TPIDS:  # 802.1Q / 802.1ad / QinQ after Ethernet or SLL
            if off + 4 > n:
                note = f"Truncated VLAN tag ({n - off} of 4 bytes captured)"
                break
            tci, l3 = _2u16(data, off)
            if vlan is None:
                vlan = tci & 0x0FFF
            off += 4
        if lt == 1 and l3 <= 1500 and note is None:
            # 802.3 length field: only LLC/SNAP carries an ethertype we can follow.
            if data[off:off + 3] == b"\xaa\xaa\x03" and off + 8 <= n:
                l3 = _u16(data, off + 6)[0]
                off += 8
            else:
                l3 = 0

        # ---- network layer ----
        if note is not None:
            pass
        elif l3 == 0x0800:
            l3off = off
            have = n - off
            if have >= 20:
                vhl, tot, fo, ttl, proto, s, d = _ip4(data, off)
                ihl = (vhl & 15) << 2
                if vhl >> 4 != 4:
                    note = f"Bogus IPv4 version {vhl >> 4}"
                    ttl = proto = 0
                elif ihl < 20:
                    note = f"Bogus IPv4 header length {ihl} (less than 20)"
                    ttl = proto = 0
                else:
                    src = _ADDR.get(s) or _addr(s)
                    dst = _ADDR.get(d) or _addr(d)
                    end = off + tot
                    if tot < ihl:
                        # 0 is what TSO-offloaded packets show; anything else is bogus.
                        if tot:
                            warn = f"Bogus IPv4 total length {tot} (less than header length {ihl})"
                        end = n
                    lim = end if end < n else n
                    l4off = off + ihl
                    if l4off > lim:
                        note = (f"Truncated IPv4 options ({lim - off} of {ihl} header bytes"
                                " captured)")
                        l4off = -1
                        off = lim
                    elif fo & 0x1FFF:  # non-first fragment: no transport header here
                        frag = True
                        off = l4off
                        l4off = -1
            else:
                note = f"Truncated IPv4 header ({have} of 20 bytes captured)"
                if have >= 10:
                    ttl, proto = data[off + 8], data[off + 9]
                if have >= 16:
                    s = bytes(data[off + 12:off + 16])  # bytes: a hashable cache key
                    src = _ADDR.get(s) or _addr(s)
        elif l3 == 0x86DD:
            l3off = off
            have = n - off
            if have >= 40:
                vtc, plen, proto, ttl, s, d = _ip6(data, off)
                if vtc >> 4 != 6:
                    note = f"Bogus IPv6 version {vtc >> 4}"
                    ttl = proto = 0
                else:
                    src = _ADDR.get(s) or _addr(s)
                    dst = _ADDR.get(d) or _addr(d)
                    end = off + 40 + plen if plen else n  # 0: jumbogram or offload
                    lim = end if end < n else n
                    p = off + 40
                    hops = 0
                    while proto in _IP6_EXT:
                        hops += 1
                        if hops > _MAX_IP6_EXT:
                            note = f"Too many IPv6 extension headers (more than {_MAX_IP6_EXT})"
                            break
                        if p + 8 > lim:
                            note = (f"Truncated IPv6 extension header {proto}"
                                    f" ({max(lim - p, 0)} of 8 bytes captured)")
                            break
                        if proto == 44:
                            frag = _u16(data, p + 2)[0] & 0xFFF8 != 0  # non-first fragment
                            proto = data[p]
                            p += 8
                            if frag:
                                break
                            continue
                        hlen = (data[p + 1] + 2) << 2 if proto == 51 else (data[p + 1] + 1) << 3
                        if p + hlen > lim:
                            note = (f"Truncated IPv6 extension header {proto} ({lim - p} of"
                                    f" {hlen} bytes captured)")
                            break
                        proto = data[p]
                        p += hlen
                    if note is not None or frag:
                        off = p if p < lim else lim
                    else:
                        l4off = p
            else:
                note = f"Truncated IPv6 header ({have} of 40 bytes captured)"
                if have >= 8:
                    proto, ttl = data[off + 6], data[off + 7]
                if have >= 24:
                    s = bytes(data[off + 8:off + 24])
                    src = _ADDR.get(s) or _addr(s)
        elif l3 == 0x0806:
            l3off = off
            if n - off >= 8:
                hlen, plen = data[off + 4], data[off + 5]
                end = off + 8 + 2 * (hlen + plen)
                if end <= n:
                    if plen == 4:
                        p = off + 8 + hlen
                        s = bytes(data[p:p + 4])
                        d = bytes(data[p + 4 + hlen:p + 8 + hlen])
                        src = _ADDR.get(s) or _addr(s)
                        dst = _ADDR.get(d) or _addr(d)
                    off = end
                else:
                    note = f"Truncated ARP packet ({n - off} of {end - off} bytes captured)"
            else:
                note = f"Truncated ARP header ({n - off} of 8 bytes captured)"

        # ---- transport layer ----
        if l4off >= 0:
            have = lim - l4off
            off = l4off  # payload starts here unless a full L4 header is decoded below
            if proto == 6:
                if have >= 20:
                    sport, dport, seq, ack, flags = _tcp(data, l4off)
                    hlen = (flags >> 12) << 2
                    flags &= 0x01FF
                    if hlen < 20:
                        note = f"Bogus TCP header length {hlen} (less than 20)"
                    elif hlen > have:
                        note = f"Truncated TCP options ({have} of {hlen} header bytes captured)"
                    else:
                        off = l4off + hlen
                else:
                    note = f"Truncated TCP header ({have} of 20 bytes captured)"
                    if have >= 4:
                        sport, dport = _2u16(data, l4off)
            elif proto == 17:
                if have >= 8:
                    sport, dport, ulen = _udp(data, l4off)
                    off = l4off + 8
                    if ulen == 0:  # jumbogram (RFC 2675): the IP length rules
                        pass
                    elif ulen < 8:
                        warn = f"Bogus UDP length {ulen} (less than 8)"
                    elif l4off + ulen <= lim:  # bytes past the UDP length are not payload
                        lim = l4off + ulen
                    elif l4off + ulen > end:
                        warn = f"Bogus UDP length {ulen} (IP payload is {end - l4off})"
                else:
                    note = f"Truncated UDP header ({have} of 8 bytes captured)"
                    if have >= 4:
                        sport, dport = _2u16(data, l4off)
            elif proto == 1 or proto == 58:
                if have >= 2:
                    itype, icode = data[l4off], data[l4off + 1]
                if have >= 8:
                    off = l4off + 8
                else:
                    name = "ICMP" if proto == 1 else "ICMPv6"
                    note = f"Truncated {name} header ({have} of 8 bytes captured)"

        if off < 0:
            off = 0
        plen = lim - off
        if plen < 0:
            plen = 0
        if warn is not None:
            note = warn if note is None else f"{note}; {warn}"
        return _new(Decoded, (l3, proto, src, dst, sport, dport, flags, seq, ack, ttl, vlan, itype,
                              icode, off, plen, frag, lt, l3off, l4off, note, data))
    except Exception as exc:  # last resort: the explicit checks above should make this dead code
        return _failed(linktype, data, exc)


def _failed(linktype, data, exc):
    try:
        lt, n = linktype & _LT_MASK, len(data)
    except Exception:
        lt, n, data = 0, 0, b""
    return Decoded(linktype=lt, payload_len=n, data=data,
                   note=f"Decoder error: {type(exc).__name__}: {exc}")


def _null_family(data):
    """AF_ value (or ethertype) of a NULL/LOOP header, whatever byte order wrote it.

    NULL uses the capturing host's order and LOOP network order; AF_ values are small, so a
    value with high bits set was written in the other order.  IRIX/UNICOS put a 16-bit AF_
    value in the first two bytes.  Same normalisation as Wireshark's packet-null.c.
    """
    v = int.from_bytes(data[:4], "little")
    if v & 0xFFFF0000:
        if not v & 0xFF000000 and v >> 16 < 6:
            return v >> 16
        return int.from_bytes(data[:4], "big")
    if not v & 0xFF and v & 0xFF00 < 0x0600:
        return v >> 8
    return v


def _mac(lt, data, source):
    n = len(data)
    if lt == 1 and n >= 12:
        return (data[6:12] if source else data[0:6]).hex(":")
    if not source:
        return None
    if lt == 113 and n >= 16 and data[4:6] == b"\x00\x06":
        return data[6:12].hex(":")
    if lt == 276 and n >= 20 and data[11] == 6:
        return data[12:18].hex(":")
    return None


# ---------------------------------------------------------------- text helpers

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
_DNS_TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
              28: "AAAA", 33: "SRV", 35: "NAPTR", 41: "OPT", 43: "DS", 46: "RRSIG", 47: "NSEC",
              48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 255: "ANY"}
_DNS_OPCODES = {0: "Standard query", 1: "Inverse query", 2: "Server status request",
                4: "Zone change notification", 5: "Dynamic update"}
_DNS_RCODES = {1: "Format error", 2: "Server failure", 3: "No such name", 4: "Not implemented",
               5: "Refused"}
_DNS_PORTS = (53, 5353)


def _ep(ip, port):
    """Endpoint text: 1.2.3.4:80 or [2001:db8::1]:80."""
    if ip is None:
        ip = "?"
    if not port:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _summary(d):
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


# ---------------------------------------------------------------- DNS

def _read_name(buf, pos):
    """Read a possibly compressed DNS name at pos -> (name, position after it) or None."""
    labels = []
    after = -1
    jumps = total = 0
    n = len(buf)
    while True:
        if pos >= n:
            return None
        ln = buf[pos]
        if ln >= 0xC0:  # compression pointer
            if pos + 1 >= n or jumps >= 32:  # a pointer loop ends here
                return None
            if after < 0:
                after = pos + 2
            jumps += 1
            pos = ((ln & 0x3F) << 8) | buf[pos + 1]
        elif ln >= 0x40:  # extended label types (RFC 6891 §5) are not used in practice
            return None
        elif ln == 0:
            name = b".".join(labels).decode("utf-8", "backslashreplace") or "<Root>"
            return name, (after if after >= 0 else pos + 1)
        else:
            total += ln + 1
            if pos + 1 + ln > n or total > 255:
                return None
            labels.append(bytes(buf[pos + 1:pos + 1 + ln]))
            pos += 1 + ln


def _question(payload):
    """(id, flags, qdcount, ancount, qname, qtype, position after the question) or None."""
    if len(payload) < 12:
        return None
    ident, flags, qd, an = _dns_hdr(payload, 0)
    if not qd:
        return ident, flags, qd, an, None, 0, 12
    got = _read_name(payload, 12)
    if got is None or got[1] + 4 > len(payload):
        return None
    return ident, flags, qd, an, got[0], _u16(payload, got[1])[0], got[1] + 4


def dns_query_name(payload):
    """Name in the first question of a DNS message, or None."""
    try:
        q = _question(payload)
        return q[4] if q else None
    except Exception:
        return None


def dns_answers(payload):
    """(name, ip) pairs of the A/AAAA records in the answer section of a DNS response.

    Follows name compression (loops are cut off); returns [] for queries and for anything
    malformed.
    """
    try:
        if len(payload) < 12:
            return []
        _ident, flags, qd, an = _dns_hdr(payload, 0)
        if not flags & 0x8000:
            return []
        pos, n, out = 12, len(payload), []
        for _ in range(qd):
            got = _read_name(payload, pos)
            if got is None:
                return []
            pos = got[1] + 4
        for _ in range(an):
            got = _read_name(payload, pos)
            if got is None or got[1] + 10 > n:
                return []
            name, pos = got
            rtype, rclass, _ttl, rdlen = _dns_rr(payload, pos)
            pos += 10
            if pos + rdlen > n:
                return []
            if rclass & 0x7FFF == 1:  # IN; mDNS sets the top "cache flush" bit
                if rtype == 1 and rdlen == 4:
                    out.append((name, _ntop4(payload[pos:pos + 4])))
                elif rtype == 28 and rdlen == 16:
                    out.append((name, _inet_ntop(_AF6, bytes(payload[pos:pos + 16]))))
            pos += rdlen
        return out
    except Exception:
        return []


def _dns_text(payload):
    """'DNS Standard query A example.com' style text, or None if it does not parse as DNS."""
    q = _question(payload)
    if q is None:
        return None
    _ident, flags, qd, an, qname, qtype, _ = q
    if not qd and not an:
        return None
    op = _DNS_OPCODES.get(flags >> 11 & 15, f"Opcode {flags >> 11 & 15}")
    parts = [f"DNS {op}{' response' if flags & 0x8000 else ''}"]
    if qname is not None:
        parts.append(f"{_DNS_TYPES.get(qtype, f'TYPE{qtype}')} {qname}")
    if flags & 0x8000:
        rcode = flags & 15
        if rcode:
            parts.append(_DNS_RCODES.get(rcode, f"rcode {rcode}"))
        for _name, ip in dns_answers(payload):
            parts.append(f"{'AAAA' if ':' in ip else 'A'} {ip}")
    return " ".join(parts)

