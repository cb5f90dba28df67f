"""Every field of the language, and where it is evaluated: SQL or Python.

The split, in one table (`FIELDS` below is the executable form of it):

| field(s)                              | SQL (packets row / small dictionary)   | Python   |
|---------------------------------------|----------------------------------------|----------|
| frame.number .len .cap_len            | id, len, caplen                        | —        |
| frame.time .time_epoch .time_relative | ts (id range when ts follows id)       | —        |
| eth.src .dst .addr                    | eth_src, eth_dst if stored (not now)   | bytes    |
| ip.src .dst .addr, ipv6.*, arp.*_ipv4 | src, dst via the capture's IP list;    | fallback |
|                                       | via `connections` (indexed) if narrow  |          |
| ip.proto .ttl, ipv6.hlim              | proto, ttl                             | fallback |
| tcp/udp .srcport .dstport .port       | sport, dport; via `connections`        | fallback |
| tcp.flags(.syn …)                     | tcp_flags                              | fallback |
| tcp.stream, udp.stream, conn.id       | conn_id (rank among the flows)         | —        |
| icmp.type, icmpv6.type                | icmp_type                              | fallback |
| proc.*, thread.id, capture.id         | process_id via `processes`, pid, tid   | —        |
| protocol words (eth ip tcp …)         | presence: l3, proto, ports, iface      | fallback |
| `contains` / `matches` on protocols   | candidates only (presence guard)       | bytes    |
| vlan(.id), dns(.qry.name), tcp.len,   | candidates only (guard)                | decode   |
| ip.len, eth.type, arp.opcode …        |                                        |          |

A field whose SQL columns are missing from a capture's schema (eth_src, eth_dst and summary
have already gone; others may follow) is evaluated in Python from the bytes, on the packets
its guard lets through. A guard naming an OPTIONAL column the capture lacks is dropped (the
candidates are then every packet), so only CORE columns are relied upon.
"""

from __future__ import annotations

import difflib

from apppaccap.dissect import readers
from apppaccap.dissect.decoded import mac_text
from apppaccap.search.fieldforms import App
from apppaccap.search.fieldforms import Col
from apppaccap.search.fieldforms import Const
from apppaccap.search.fieldforms import Exists
from apppaccap.search.fieldforms import Field
from apppaccap.search.fieldforms import Ip
from apppaccap.search.fieldforms import Port
from apppaccap.search.fieldforms import Proc
from apppaccap.search.fieldforms import Stream
from apppaccap.search.fieldforms import Time
from apppaccap.search.lexer import FilterError
from apppaccap.search.values import ABSTIME
from apppaccap.search.values import BOOL
from apppaccap.search.values import BYTES
from apppaccap.search.values import ETHER
from apppaccap.search.values import IPV4
from apppaccap.search.values import IPV6
from apppaccap.search.values import PROTO
from apppaccap.search.values import RELTIME
from apppaccap.search.values import STRING
from apppaccap.search.values import UINT

# Guards are written with the CORE columns every packets table keeps: id ts len caplen iface
# blk off l3 proto src dst sport dport conn_id process_id pid tid.
# The other columns of today's schema: a guard naming one that a capture lacks is dropped.
OPTIONAL_COLUMNS = frozenset("tcp_flags ttl vlan eth_src eth_dst icmp_type direction summary "
                             "notes ts_raw".split())


TCP_G = "proto = 6 AND (sport != 0 OR dport != 0)"
UDP_G = "proto = 17 AND (sport != 0 OR dport != 0)"
IP4_G, IP6_G = "l3 = 2048", "l3 = 34525"
IP4_H, IP6_H = "l3 = 2048 AND src IS NOT NULL", "l3 = 34525 AND src IS NOT NULL"
ICMP_G, ICMP6_G = "proto = 1 AND l3 = 2048", "proto = 58 AND l3 = 34525"
ETH_G = "iface IN ({eth})"
ARP_G = "l3 IN (2054, 32821)"
DNS_G = ("proto IN (6, 17) AND (sport IN (53, 5353, 5355) OR dport IN (53, 5353, 5355))")


def _d(test, *attrs):
    """Python getter: attributes of the decoded packet when `test(dec)` holds."""
    def get(v):
        d = v.dec
        return [getattr(d, a) for a in attrs] if test(d) else []
    return get


def _flag(mask):
    return lambda v: [1 if v.dec.tcp_flags & mask else 0] if readers.is_tcp(v.dec) else []


def _eth_mac(*which):
    def get(v):
        if v.lt != 1 or v.caplen < 14:
            return []
        return [mac_text(v.lt, v.data, w == "src") for w in which]
    return get


def _row(attr, test=None):
    return lambda v: [getattr(v, attr)] if test is None or test(v) else []


def _proc(attr):
    def get(v):
        p = v.scope.process(v.process_id)
        return [] if p is None or p.get(attr) is None else [p[attr]]
    return get


def _app(attr):
    def get(v):
        labels = v.scope.app_labels().get(v.conn_id)
        return [] if labels is None or labels[attr] is None else [labels[attr]]
    return get


def _stream(proto):
    return lambda v: v.scope.stream_rank(proto, v.conn_id)


def _time(kind):
    if kind == "relative":
        return lambda v: [v.ts - v.scope.first_ts]
    return lambda v: [v.ts]


def _app_fields():
    """HTTP and TLS, one TCP segment at a time (docs/FILTERS.md: no reassembly)."""
    h = "http.request"
    return [
        Field("http", PROTO, "HTTP segments: a registered port with data, or a head elsewhere",
              "http && tcp.port == 8000", TCP_G, None, readers.r_http, ranges=readers.r_http),
        Field(h, BOOL, "the segment starts with a request line", h, TCP_G, None,
              readers.http_request),
        Field("http.response", BOOL, "the segment starts with a status line", "http.response",
              TCP_G, None, readers.http_response),
        Field(h + ".method", STRING, "request method", 'http.request.method == "POST"', TCP_G,
              None, readers.http_method),
        Field(h + ".uri", STRING, "request URI as sent", 'http.request.uri contains "login"',
              TCP_G, None, readers.http_uri),
        Field("http.host", STRING, "Host header", 'http.host == "example.com"', TCP_G, None,
              readers.http_header("host")),
        Field("http.user_agent", STRING, "User-Agent header", 'http.user_agent contains "curl"',
              TCP_G, None, readers.http_header("user-agent")),
        Field("http.response.code", UINT, "status code", "http.response.code >= 400", TCP_G,
              None, readers.http_code, bits=16),
        Field("tls", PROTO, "TCP data on a TLS port (443, 465, 636, 853, 989-995, 5061)",
              "tls && !tls.handshake.type", TCP_G, None, readers.r_tls, ranges=readers.r_tls),
        Field("tls.handshake.type", UINT, "type of every handshake message (1 Client Hello)",
              "tls.handshake.type == 1", TCP_G, None, readers.tls_handshake_types, bits=8),
        Field("tls.handshake.extensions_server_name", STRING, "SNI of a Client Hello",
              'tls.handshake.extensions_server_name == "example.com"', TCP_G, None,
              readers.tls_server_names),
    ]


_FLAGS = [("fin", 0x01), ("syn", 0x02), ("reset", 0x04), ("push", 0x08), ("ack", 0x10),
          ("urg", 0x20), ("ece", 0x40), ("cwr", 0x80), ("ns", 0x100)]


def _fields():
    out = [
        Field("frame", PROTO, "every packet; its captured bytes", 'frame contains "GET /"',
              "1", Exists(), lambda v: readers.r_frame(v), ranges=readers.r_frame),
        Field("frame.number", UINT, "position in the capture, 1-based (= PacketId)",
              "frame.number <= 100", sql=Col(("id",), ("id",)), py=_row("id")),
        Field("frame.len", UINT, "length on the wire", "frame.len > 1000",
              sql=Col(("len",), ("len",)), py=_row("len")),
        Field("frame.cap_len", UINT, "captured length", "frame.cap_len < frame.len",
              sql=Col(("caplen",), ("caplen",)), py=_row("caplen")),
        Field("frame.time", ABSTIME, "arrival time; local time unless the value says Z/UTC/±hh:mm",
              'frame.time >= "2026-11-23 10:00:00"', sql=Time("abs"), py=_time("abs")),
        Field("frame.time_epoch", RELTIME, "arrival time, seconds since 1970 (UTC)",
              "frame.time_epoch < 1700000000.5", sql=Time("epoch"), py=_time("epoch")),
        Field("frame.time_relative", RELTIME, "seconds since the capture's first packet",
              "frame.time_relative <= 60", sql=Time("relative"), py=_time("relative")),
        Field("eth", PROTO, "Ethernet frames (interfaces of link type 1)", "eth && !ip",
              ETH_G, Exists(), readers.r_eth, ranges=readers.r_eth),
        Field("eth.src", ETHER, "source MAC", "eth.src == 00:11:22:33:44:55", ETH_G,
              Col(("eth_src",), ("eth_src",)), _eth_mac("src")),
        Field("eth.dst", ETHER, "destination MAC", "eth.dst == ff:ff:ff:ff:ff:ff", ETH_G,
              Col(("eth_dst",), ("eth_dst",)), _eth_mac("dst")),
        Field("eth.addr", ETHER, "either MAC", "eth.addr == 00-11-22-33-44-55", ETH_G,
              Col(("eth_dst", "eth_src"), ("eth_dst", "eth_src")), _eth_mac("dst", "src")),
        Field("eth.type", UINT, "EtherType of an Ethernet II frame (outer, before VLAN tags)",
              "eth.type == 0x8100", ETH_G, None, readers.eth_type, bits=16),
        # tshark tells 802.1Q tags (vlan) from 802.1ad service tags (ieee8021ad); the vlan
        # column holds the outer tag of either kind, so it only narrows the candidates
        Field("vlan", PROTO, "frames with an 802.1Q tag", "vlan && !ip", "vlan IS NOT NULL",
              None, readers.vlan_ids),
        Field("vlan.id", UINT, "VLAN id of every 802.1Q tag", "vlan.id == 10", "vlan IS NOT NULL",
              None, readers.vlan_ids, bits=12),
        Field("ieee8021ad.id", UINT, "VLAN id of every 802.1ad (QinQ service) tag",
              "ieee8021ad.id == 100", "vlan IS NOT NULL", None, readers.service_vlan_ids, bits=12),
        Field("ip", PROTO, "IPv4 packets", "ip && !tcp && !udp", IP4_G, Exists(),
              readers.r_ip, ranges=readers.r_ip),
        Field("ip.src", IPV4, "IPv4 source", "ip.src == 10.0.0.0/8", IP4_G,
              Ip(("src",), ("src",)), _d(readers.is_ip4, "src")),
        Field("ip.dst", IPV4, "IPv4 destination", "ip.dst in {10.0.0.1, 192.168.0.0/16}", IP4_G,
              Ip(("dst",), ("dst",)), _d(readers.is_ip4, "dst")),
        Field("ip.addr", IPV4, "either IPv4 address", "ip.addr == 192.0.2.1", IP4_G,
              Ip(("src", "dst"), ("src", "dst")), _d(readers.is_ip4, "src", "dst")),
        Field("ip.proto", UINT, "IPv4 protocol number (after IPv4 only)", "ip.proto == 47", IP4_H,
              Col(("proto",), ("proto",)), _d(readers.is_ip4, "proto"), bits=8),
        Field("ip.ttl", UINT, "IPv4 time to live", "ip.ttl < 10", IP4_H,
              Col(("ttl",), ("ttl",)), _d(readers.is_ip4, "ttl"), bits=8),
        Field("ip.len", UINT, "IPv4 total length", "ip.len > 1400", IP4_H, None, readers.ip_len,
              bits=16),
        Field("ip.id", UINT, "IPv4 identification", "ip.id == 0x1234", IP4_H, None, readers.ip_id,
              bits=16),
        Field("ipv6", PROTO, "IPv6 packets", "ipv6 && udp", IP6_G, Exists(), readers.r_ip6,
              ranges=readers.r_ip6),
        Field("ipv6.src", IPV6, "IPv6 source", "ipv6.src == fe80::/10", IP6_G,
              Ip(("src",), ("src",)), _d(readers.is_ip6, "src")),
        Field("ipv6.dst", IPV6, "IPv6 destination", "ipv6.dst == ff02::fb", IP6_G,
              Ip(("dst",), ("dst",)), _d(readers.is_ip6, "dst")),
        Field("ipv6.addr", IPV6, "either IPv6 address", "ipv6.addr == 2001:db8::1", IP6_G,
              Ip(("src", "dst"), ("src", "dst")), _d(readers.is_ip6, "src", "dst")),
        Field("ipv6.hlim", UINT, "IPv6 hop limit", "ipv6.hlim == 255", IP6_H,
              Col(("ttl",), ("ttl",)), _d(readers.is_ip6, "ttl"), bits=8),
        Field("ipv6.plen", UINT, "IPv6 payload length", "ipv6.plen == 0", IP6_H, None,
              readers.ipv6_plen, bits=16),
        Field("arp", PROTO, "ARP and RARP", "arp", ARP_G, Exists(), readers.r_arp,
              ranges=readers.r_arp),
        Field("arp.opcode", UINT, "1 request, 2 reply (3/4 RARP)", "arp.opcode == 2", ARP_G,
              None, readers.arp_opcode, bits=16),
        Field("arp.src.proto_ipv4", IPV4, "ARP sender IPv4", "arp.src.proto_ipv4 == 10.0.0.1",
              "l3 = 2054", Ip(("src",), ("src",), conn=False),
              _d(lambda d: d.l3 == readers.ARP and d.src is not None, "src")),
        Field("arp.dst.proto_ipv4", IPV4, "ARP target IPv4", "arp.dst.proto_ipv4 == 10.0.0.2",
              "l3 = 2054", Ip(("dst",), ("dst",), conn=False),
              _d(lambda d: d.l3 == readers.ARP and d.dst is not None, "dst")),
        Field("tcp", PROTO, "TCP segments (header and payload)", "tcp contains 00:50", TCP_G,
              Exists(), readers.r_tcp, ranges=readers.r_tcp),
        Field("tcp.srcport", UINT, "TCP source port", "tcp.srcport == 443", TCP_G,
              Port(("sport",), ("sport",), proto=6), _d(readers.is_tcp, "sport"), bits=16),
        Field("tcp.dstport", UINT, "TCP destination port", "tcp.dstport in {80, 8000..8099}",
              TCP_G, Port(("dport",), ("dport",), proto=6), _d(readers.is_tcp, "dport"), bits=16),
        Field("tcp.port", UINT, "either TCP port", "tcp.port == 443", TCP_G,
              Port(("sport", "dport"), ("sport", "dport"), proto=6),
              _d(readers.is_tcp, "sport", "dport"), bits=16),
        Field("tcp.flags", UINT, "TCP flags (9 bits: FIN 0x01 … NS 0x100)",
              "tcp.flags & 0x12 == 0x12", TCP_G, Col(("tcp_flags",), ("tcp_flags",)),
              _d(readers.is_tcp, "tcp_flags"), bits=12),
        Field("tcp.stream", UINT, "0-based TCP conversation index, as tshark", "tcp.stream == 3",
              TCP_G, Stream(6), _stream(6)),
        Field("tcp.len", UINT, "TCP segment data length (from the IP lengths)", "tcp.len > 0",
              TCP_G, None, readers.tcp_len),
        Field("tcp.seq_raw", UINT, "raw sequence number", "tcp.seq_raw == 0", TCP_G, None,
              readers.tcp_seq),
        Field("tcp.ack_raw", UINT, "raw acknowledgement number", "tcp.ack_raw == 1", TCP_G, None,
              readers.tcp_ack),
        Field("tcp.payload", BYTES, "TCP segment data", 'tcp.payload contains "HTTP/1.1"', TCP_G,
              None, readers.r_tcp_payload, ranges=readers.r_tcp_payload),
        Field("udp", PROTO, "UDP datagrams (header and payload)", "udp && !dns", UDP_G, Exists(),
              readers.r_udp, ranges=readers.r_udp),
        Field("udp.srcport", UINT, "UDP source port", "udp.srcport == 5353", UDP_G,
              Port(("sport",), ("sport",), proto=17), _d(readers.is_udp, "sport"), bits=16),
        Field("udp.dstport", UINT, "UDP destination port", "udp.dstport == 53", UDP_G,
              Port(("dport",), ("dport",), proto=17), _d(readers.is_udp, "dport"), bits=16),
        Field("udp.port", UINT, "either UDP port", "udp.port in {53, 5353}", UDP_G,
              Port(("sport", "dport"), ("sport", "dport"), proto=17),
              _d(readers.is_udp, "sport", "dport"), bits=16),
        Field("udp.stream", UINT, "0-based UDP conversation index, as tshark", "udp.stream == 0",
              UDP_G, Stream(17), _stream(17)),
        Field("udp.length", UINT, "UDP length field", "udp.length < 20", UDP_G, None,
              readers.udp_length, bits=16),
        Field("udp.payload", BYTES, "UDP datagram data", "udp.payload contains 00:01", UDP_G,
              None, readers.r_udp_payload, ranges=readers.r_udp_payload),
        Field("icmp", PROTO, "ICMP (IPv4)", "icmp", ICMP_G, Exists(), readers.r_icmp,
              ranges=readers.r_icmp),
        Field("icmp.type", UINT, "ICMP type", "icmp.type == 8",
              ICMP_G + " AND icmp_type IS NOT NULL",
              Col(("icmp_type",), ("icmp_type",)),
              _d(lambda d: readers.is_icmp(d) and d.icmp_type is not None, "icmp_type"), bits=8),
        Field("icmp.code", UINT, "ICMP code", "icmp.code == 3", ICMP_G, None, readers.icmp_code,
              bits=8),
        Field("icmpv6", PROTO, "ICMPv6", "icmpv6 && !(icmpv6.type in {135, 136})", ICMP6_G,
              Exists(), readers.r_icmp6, ranges=readers.r_icmp6),
        Field("icmpv6.type", UINT, "ICMPv6 type", "icmpv6.type == 128",
              ICMP6_G + " AND icmp_type IS NOT NULL", Col(("icmp_type",), ("icmp_type",)),
              _d(lambda d: readers.is_icmp6(d) and d.icmp_type is not None, "icmp_type"), bits=8),
        Field("icmpv6.code", UINT, "ICMPv6 code", "icmpv6.code == 0", ICMP6_G, None,
              readers.icmp6_code, bits=8),
        Field("dns", PROTO, "DNS on port 53 (UDP, or TCP with data)", "dns && udp.length > 512",
              DNS_G, None, readers.dns_present, ranges=readers.dns_present),
        Field("dns.qry.name", STRING, "every question name (DNS, mDNS, LLMNR)",
              'dns.qry.name contains "example"', DNS_G, None, readers.dns_qry_names),
        Field("dns.flags.response", BOOL, "1 in a response, 0 in a query",
              "dns.flags.response == 1", DNS_G, None, readers.dns_response),
        Field("dns.a", IPV4, "address of every A record (any section)", "dns.a == 192.0.2.1",
              DNS_G, None, readers.dns_a),
        Field("dns.resp.name", STRING, "owner name of every resource record",
              'dns.resp.name == "example.com"', DNS_G, None, readers.dns_resp_names),
        *_app_fields(),
        Field("proc.name", STRING, "owning process name", 'proc.name == "curl"',
              "process_id IS NOT NULL", Proc("name"), _proc("name")),
        Field("proc.path", STRING, "owning process executable", 'proc.path matches "^/usr/bin/"',
              "process_id IS NOT NULL", Proc("path"), _proc("path")),
        Field("proc.cmdline", STRING, "owning process command line",
              'proc.cmdline contains "--insecure"', "process_id IS NOT NULL", Proc("cmdline"),
              _proc("cmdline")),
        Field("proc.pid", UINT, "owning process id (system pid)", "proc.pid == 1234",
              "process_id IS NOT NULL", Col(("pid",), ("pid",)),
              _row("pid", lambda v: v.process_id is not None)),
        Field("proc.id", UINT, "our ProcessId (stable across pid reuse)", "proc.id == 17",
              "process_id IS NOT NULL", Col(("process_id",), ("process_id",)),
              _row("process_id", lambda v: v.process_id is not None), bits=63),
        Field("thread.id", UINT, "sending thread id, where known", "thread.id == 4321",
              "tid != 0", Col(("tid",), ("tid",)), _row("tid", lambda v: v.tid != 0)),
        Field("capture.id", UINT, "the CaptureId", "capture.id in {3, 5}", "1", Const("capture_id"),
              lambda v: [v.scope.capture_id], bits=63),
        Field("app.proto", STRING, "nDPI application protocol of the connection (HTTP, TLS, "
              "DNS, QUIC, SSH, Unknown...)", 'app.proto == "TLS"', "conn_id IS NOT NULL",
              App("proto"), _app("proto")),
        Field("app.name", STRING, "nDPI application of the connection, when it knows one "
              "(Google, YouTube...)", 'app.name matches "google"', "conn_id IS NOT NULL",
              App("name"), _app("name")),
        Field("app.category", STRING, "nDPI category of the connection (Web, Streaming, "
              "VPN...)", 'app.category == "SocialNetwork"', "conn_id IS NOT NULL",
              App("category"), _app("category")),
        Field("conn.id", UINT, "our ConnectionId (TCP and UDP flows, 1-based)", "conn.id == 12",
              "conn_id IS NOT NULL", Col(("conn_id",), ("conn_id",)),
              _row("conn_id", lambda v: v.conn_id is not None), bits=63),
    ]
    for name, mask in _FLAGS:
        out.append(Field(f"tcp.flags.{name}", BOOL, f"TCP {name.upper()} flag (0/1)",
                         f"tcp.flags.{name} == 1", TCP_G,
                         Col((f"(tcp_flags & {mask}) != 0",), ("tcp_flags",)), _flag(mask)))
    return {f.name: f for f in out}


FIELDS: dict[str, Field] = _fields()


def lookup(name: str, pos: int) -> Field:
    """The field called `name`, or FilterError suggesting close names."""
    f = FIELDS.get(name)
    if f is not None:
        return f
    close = difflib.get_close_matches(name, FIELDS, n=3, cutoff=0.7)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise FilterError(f"unknown field {name[:60]!r}{hint}", pos)
