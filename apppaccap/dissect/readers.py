"""Field values taken from a packet's bytes (the Python side of the field table).

Everything here works on `capture.decode.decode()`'s result plus the raw bytes, and
mirrors what tshark shows: protocol byte ranges for `contains`/`matches`, header fields
we do not keep in columns (ip.len, tcp.len, arp.opcode …) and DNS question names.
Functions take a `View` (see scan.py): `.dec` (Decoded), `.data` (bytes), `.lt`.
"""

from __future__ import annotations

import struct

from apppaccap.dissect import dns
from apppaccap.dissect import http
from apppaccap.dissect import tls
from apppaccap.dissect.dns import question_names

ETH, IP4, IP6, ARP, RARP = 1, 0x0800, 0x86DD, 0x0806, 0x8035
TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
DNS_PORTS = (53, 5353, 5355)  # dns, mdns, llmnr: tshark shows dns.* fields for all three
_u16 = struct.Struct("!H").unpack_from
_u32 = struct.Struct("!I").unpack_from


def is_ip4(d) -> bool:
    return d.l3 == IP4 and d.src is not None


def is_ip6(d) -> bool:
    return d.l3 == IP6 and d.src is not None


def is_tcp(d) -> bool:
    # same test as the SQL guard: port 0 on both sides means no transport header decoded
    return d.proto == TCP and bool(d.sport or d.dport)


def is_udp(d) -> bool:
    return d.proto == UDP and bool(d.sport or d.dport)


def is_icmp(d) -> bool:
    return d.proto == ICMP and d.l3 == IP4


def is_icmp6(d) -> bool:
    return d.proto == ICMP6 and d.l3 == IP6


def ip_end(v) -> int:
    """End of the IP packet inside the captured bytes (padding after it is not IP)."""
    d, data = v.dec, v.data
    o = d.l3_off
    n = len(data)
    if o < 0:
        return n
    if d.l3 == IP4 and o + 4 <= n:
        total = _u16(data, o + 2)[0]
        ihl = (data[o] & 15) << 2
        return n if total < ihl else min(n, o + total)
    if d.l3 == IP6 and o + 6 <= n:
        plen = _u16(data, o + 4)[0]
        return n if plen == 0 else min(n, o + 40 + plen)
    return n


# ---- protocol byte ranges: [(start, end)] inside the packet, [] when absent -------------

def r_frame(v):
    return [(0, v.caplen)]


def r_eth(v):
    return [(0, v.caplen)] if v.lt == ETH and v.caplen >= 14 else []


def r_ip(v):
    d = v.dec
    return [(d.l3_off, ip_end(v))] if d.l3 == IP4 and d.l3_off >= 0 else []


def r_ip6(v):
    d = v.dec
    return [(d.l3_off, ip_end(v))] if d.l3 == IP6 and d.l3_off >= 0 else []


def r_arp(v):
    d = v.dec
    o = _arp_off(d)
    if o < 0:
        return []
    data = v.data
    if o + 6 > len(data):
        return [(o, len(data))]
    return [(o, min(len(data), o + 8 + 2 * (data[o + 4] + data[o + 5])))]


def _l4(v, test):
    d = v.dec
    return [(d.l4_off, ip_end(v))] if test(d) and d.l4_off >= 0 else []


def r_tcp(v):
    return _l4(v, is_tcp)


def r_udp(v):
    d = v.dec
    if not is_udp(d) or d.l4_off < 0:
        return []
    end = ip_end(v)
    if d.l4_off + 6 <= len(v.data):
        ulen = _u16(v.data, d.l4_off + 4)[0]
        if ulen >= 8:
            end = min(end, d.l4_off + ulen)
    return [(d.l4_off, end)]


def r_icmp(v):
    return _l4(v, is_icmp)


def r_icmp6(v):
    return _l4(v, is_icmp6)


def _payload(v, test):
    d = v.dec
    if test(d) and d.l4_off >= 0 and d.payload_off > d.l4_off and d.payload_len > 0:
        return [(d.payload_off, d.payload_off + d.payload_len)]
    return []


def r_tcp_payload(v):
    return _payload(v, is_tcp)


def r_udp_payload(v):
    return _payload(v, is_udp)


# ---- header fields not kept in columns -----------------------------------------------

_TYPE_FIELD = {1: (12, 14), 113: (14, 16), 276: (0, 20)}  # link type → (type field, after)
VLAN_TPIDS = (0x8100, 0x9100)   # tshark's vlan dissector (0x9100: its QinQ preference)
SERVICE_TPID = 0x88A8           # 802.1ad: tshark's ieee8021ad protocol


def vlan_tags(v) -> list:
    """[(tpid, vid)] of the tags after the link header, outermost first."""
    where = _TYPE_FIELD.get(v.lt)
    data = v.data
    if where is None or where[0] + 2 > len(data):
        return []
    tpid, p = _u16(data, where[0])[0], where[1]
    out = []
    while tpid in (0x8100, 0x88A8, 0x9100, 0x9200) and p + 4 <= len(data):
        out.append((tpid, _u16(data, p)[0] & 0x0FFF))
        tpid = _u16(data, p + 2)[0]
        p += 4
    return out


def vlan_ids(v):
    return [vid for tpid, vid in vlan_tags(v) if tpid in VLAN_TPIDS]


def service_vlan_ids(v):
    return [vid for tpid, vid in vlan_tags(v) if tpid == SERVICE_TPID]


def eth_type(v):
    if v.lt != ETH or v.caplen < 14:
        return []
    t = _u16(v.data, 12)[0]
    return [t] if t > 1500 else []  # 802.3 frames carry a length (eth.len), not a type


def ip_len(v):
    d = v.dec
    return [_u16(v.data, d.l3_off + 2)[0]] if is_ip4(d) else []


def ip_id(v):
    d = v.dec
    return [_u16(v.data, d.l3_off + 4)[0]] if is_ip4(d) else []


def ipv6_plen(v):
    d = v.dec
    return [_u16(v.data, d.l3_off + 4)[0]] if is_ip6(d) else []


def tcp_len(v):
    """TCP segment length from the IP lengths (not the captured bytes), as tshark's tcp.len."""
    d, data = v.dec, v.data
    if not is_tcp(d) or d.l4_off < 0 or d.l4_off + 13 > len(data):
        return []
    thl = (data[d.l4_off + 12] >> 4) << 2
    o = d.l3_off
    if d.l3 == IP4:
        total = _u16(data, o + 2)[0]
        if total < ((data[o] & 15) << 2):
            total = len(data) - o  # TSO: total length 0, use what was captured
        ip_payload = total - (d.l4_off - o)
    else:
        plen = _u16(data, o + 4)[0]
        ip_payload = (plen or len(data) - o - 40) - (d.l4_off - o - 40)
    n = ip_payload - thl
    return [n] if n >= 0 else []


def tcp_seq(v):
    d = v.dec
    return [d.tcp_seq] if is_tcp(d) and d.payload_off > d.l4_off >= 0 else []


def tcp_ack(v):
    d = v.dec
    return [d.tcp_ack] if is_tcp(d) and d.payload_off > d.l4_off >= 0 else []


def udp_length(v):
    d = v.dec
    if is_udp(d) and d.l4_off >= 0 and d.l4_off + 6 <= len(v.data):
        return [_u16(v.data, d.l4_off + 4)[0]]
    return []


def icmp_code(v):
    d = v.dec
    return [d.icmp_code] if is_icmp(d) and d.icmp_code is not None else []


def icmp6_code(v):
    d = v.dec
    return [d.icmp_code] if is_icmp6(d) and d.icmp_code is not None else []


def _arp_off(d) -> int:
    """Start of an ARP/RARP header (decode() only sets l3_off for ARP; RARP's header starts
    where decoding stopped)."""
    if d.l3 == ARP:
        return d.l3_off
    if d.l3 == RARP:
        return d.payload_off
    return -1


def arp_opcode(v):
    d = v.dec
    o = _arp_off(d)
    if o >= 0 and o + 8 <= len(v.data):
        return [_u16(v.data, o + 6)[0]]
    return []


# ---- DNS -----------------------------------------------------------------------------

def dns_present(v):
    """tshark's `dns` protocol: UDP port 53, or TCP port 53 carrying data (mDNS and
    LLMNR are separate protocols there, although they fill the dns.* fields)."""
    d = v.dec
    if not (d.sport == 53 or d.dport == 53):
        return []
    if is_udp(d) or (is_tcp(d) and d.payload_len > 0 and d.payload_off > d.l4_off):
        return [(d.payload_off, d.payload_off + d.payload_len)]
    return []


def dns_qry_names(v):
    d = v.dec
    if not (d.sport in DNS_PORTS or d.dport in DNS_PORTS) or d.payload_len <= 0:
        return []
    if not (is_udp(d) or is_tcp(d)) or d.payload_off <= d.l4_off:
        return []
    start = d.payload_off + (2 if d.proto == TCP else 0)  # DNS over TCP: 2-byte length first
    return question_names(v.data[start:d.payload_off + d.payload_len])


def _dns_message(v):
    """The DNS message of a DNS/mDNS/LLMNR packet (after TCP's length prefix), or None."""
    d = v.dec
    if not (d.sport in DNS_PORTS or d.dport in DNS_PORTS) or d.payload_len <= 0:
        return None
    if not (is_udp(d) or is_tcp(d)) or d.payload_off <= d.l4_off:
        return None
    start = d.payload_off + (2 if d.proto == TCP else 0)
    return v.data[start:d.payload_off + d.payload_len]


def dns_response(v):
    msg = _dns_message(v)
    return dns.is_response(msg) if msg is not None else []


def dns_a(v):
    msg = _dns_message(v)
    return dns.a_records(msg) if msg is not None else []


def dns_resp_names(v):
    msg = _dns_message(v)
    return dns.resp_names(msg) if msg is not None else []


# ---- HTTP and TLS: one TCP segment at a time, as tshark without reassembly ----------------

def tcp_payload(v):
    """The TCP segment's data (a memoryview-free bytes slice), or None when it has none."""
    d = v.dec
    if not is_tcp(d) or d.payload_off <= d.l4_off or d.payload_len <= 0:
        return None
    return v.data[d.payload_off:d.payload_off + d.payload_len]


def r_http(v):
    data = tcp_payload(v)
    d = v.dec
    if data is None or not http.is_http(d.sport, d.dport, data):
        return []
    return [(d.payload_off, d.payload_off + d.payload_len)]


def _http_head(v):
    data = tcp_payload(v)
    return http.parse(data) if data is not None else None


def http_request(v):
    h = _http_head(v)
    return [1] if h is not None and h.is_request else []


def http_response(v):
    h = _http_head(v)
    return [1] if h is not None and not h.is_request else []


def http_method(v):
    h = _http_head(v)
    return [h.method] if h is not None and h.is_request else []


def http_uri(v):
    h = _http_head(v)
    return [h.uri] if h is not None and h.is_request else []


def http_code(v):
    h = _http_head(v)
    return [h.code] if h is not None and not h.is_request else []


def http_header(name):
    def get(v):
        h = _http_head(v)
        return h.header(name) if h is not None else []
    return get


def r_tls(v):
    d = v.dec
    if not (d.sport in tls.TCP_PORTS or d.dport in tls.TCP_PORTS) or tcp_payload(v) is None:
        return []
    return [(d.payload_off, d.payload_off + d.payload_len)]


def tls_handshake_types(v):
    return tls.handshake_types(tcp_payload(v)) if r_tls(v) else []


def tls_server_names(v):
    return tls.server_names(tcp_payload(v)) if r_tls(v) else []
