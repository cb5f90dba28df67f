"""Stateless packet decoder: link layer -> IPv4/IPv6/ARP -> TCP/UDP/ICMP/ICMPv6.

Pure functions, no I/O.  ``decode()`` runs on every captured and ingested packet, so the
common path (Ethernet/VLAN, IPv4/IPv6, TCP/UDP) is written for speed: precompiled
``struct`` unpackers, one pass through a single function, a tuple-based result, a small
cache for address strings, and the human ``summary`` (plus the MAC strings) computed only
when somebody reads them (summary.py; DNS parsing in dns.py).  Anything that cannot be
decoded is described in ``note`` and in ``summary`` instead of raising.
"""

from __future__ import annotations

import socket
import struct

from apppaccap.dissect.decoded import Decoded

LINKTYPE_RAW = 101

# pcap link-type fields may carry FCS-length bits in the upper nibble (0x30000065 = RAW + FCS).
_LT_MASK = 0x0FFFFFFF
# DLT_RAW is 12 on most BSDs and 14 on OpenBSD; libpcap maps both to raw IP, so do we.
_RAW_TYPES = frozenset((LINKTYPE_RAW, 12, 14))
_VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))  # 802.1Q, 802.1ad, old QinQ TPIDs
_AF_INET6 = frozenset((10, 24, 28, 30))  # Linux, NetBSD/OpenBSD, FreeBSD, macOS
_IP6_EXT = frozenset((0, 43, 44, 60, 51))  # hop-by-hop, routing, fragment, dest opts, AH
_MAX_IP6_EXT = 16  # real packets have a handful; bounds pathological chains
# Real frames carry one tag or two (QinQ). A crafted stack of ~370 tags in one 1,514-byte
# frame took ~45 us to walk (a common packet takes ~1), 1.85 ms in a 64 KiB one.
_MAX_VLAN_TAGS = 8

_u16 = struct.Struct("!H").unpack_from
_2u16 = struct.Struct("!HH").unpack_from
_ip4 = struct.Struct("!BxHxxHBB2x4s4s").unpack_from  # vhl, total len, frag, ttl, proto, src, dst
_ip6 = struct.Struct("!B3xHBB16s16s").unpack_from  # version/tc, payload len, nh, hlim, src, dst
_tcp = struct.Struct("!HHIIH").unpack_from  # sport, dport, seq, ack, offset+flags
_udp = struct.Struct("!HHH").unpack_from  # sport, dport, length
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

        tags = 0
        while l3 in _VLAN_TPIDS:  # 802.1Q / 802.1ad / QinQ after Ethernet or SLL
            if off + 4 > n:
                note = f"Truncated VLAN tag ({n - off} of 4 bytes captured)"
                break
            tags += 1
            if tags > _MAX_VLAN_TAGS:
                note = f"Too many VLAN tags (more than {_MAX_VLAN_TAGS})"
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
