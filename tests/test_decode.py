"""Tests for apppaccap.dissect.decode: hand-built frames for every link type and protocol,
truncation at every offset, fuzzing, the shared pcap corpus, and a cross-check with tshark."""

from __future__ import annotations

import ipaddress
import os
import random
import struct

import pytest

from apppaccap.dissect import decode as dec
from apppaccap.dissect.decode import decode
from apppaccap.dissect.dns import dns_answers
from apppaccap.dissect.dns import dns_query_name
from apppaccap.dissect.summary import tcp_flags_text
from tests.helpers import corpus
from tests.helpers import tshark
from tests.helpers.packets import MAC_A
from tests.helpers.packets import MAC_B
from tests.helpers.packets import a4
from tests.helpers.packets import a6
from tests.helpers.packets import arp
from tests.helpers.packets import dns
from tests.helpers.packets import dns_name
from tests.helpers.packets import eth
from tests.helpers.packets import icmp
from tests.helpers.packets import ipv4
from tests.helpers.packets import ipv6
from tests.helpers.packets import mac
from tests.helpers.packets import tcp
from tests.helpers.packets import udp
from tests.helpers.pcapfiles import read_pcap

# ---------------------------------------------------------------- frame builders


def ext(nh, body=b"\x00" * 6):
    """Generic IPv6 extension header (hop-by-hop, routing, destination options)."""
    assert (len(body) + 2) % 8 == 0
    return bytes([nh, (len(body) + 2) // 8 - 1]) + body


def frag6(nh, offset, more, ident=7):
    return struct.pack("!BBHI", nh, 0, offset | (1 if more else 0), ident)


def ah(nh, icv=b"\x00" * 12):
    return bytes([nh, (12 + len(icv)) // 4 - 2]) + b"\x00\x00" + b"\x00" * 8 + icv


def sll(payload, proto=0x0800, addr=MAC_A):
    return (
        struct.pack("!HHH", 0, 1, 6) + mac(addr) + b"\x00\x00" + struct.pack("!H", proto) + payload
    )


def sll2(payload, proto=0x0800, addr=MAC_A):
    return struct.pack("!HHIHBB", proto, 0, 3, 1, 0, 6) + mac(addr) + b"\x00\x00" + payload


def null(payload, family=2, order="<"):
    return struct.pack(order + "I", family) + payload


def make_tcp_frame(
    src="10.0.0.1", dst="93.184.216.34", sport=51234, dport=80, flags=0x02, payload=b"", **kw
):
    return eth(
        ipv4(src, dst, 6, tcp(sport, dport, seq=1000, ack=2000, flags=flags, payload=payload), **kw)
    )


def make_udp_frame(src="10.0.0.1", dst="224.0.0.251", sport=5353, dport=5353, payload=b"x" * 45):
    return eth(ipv4(src, dst, 17, udp(sport, dport, payload)))


def make_udp6_frame(
    src="2001:db8::1", dst="2001:db8::2", sport=40000, dport=443, payload=b"hello", exts=()
):
    """exts: list of (header type, builder(nh) -> bytes), in order."""
    nh, body = 17, udp(sport, dport, payload)
    for typ, build in reversed(exts):
        body, nh = build(nh) + body, typ
    return eth(ipv6(src, dst, nh, body), 0x86DD)


def dns_query(name="example.com", qtype=1, ident=0x1A2B):
    return dns(ident, [name], qtype=qtype)


def dns_response():
    """www.example.com CNAME example.com; example.com A x2 and AAAA; all names compressed."""
    q = dns_name("www.example.com") + struct.pack("!HH", 1, 1)  # question name at offset 12
    rr = (
        b"\xc0\x0c"
        + struct.pack("!HHIH", 5, 1, 60, 2)
        + b"\xc0\x10"  # CNAME -> example.com
        + b"\xc0\x10"
        + struct.pack("!HHIH", 1, 1, 60, 4)
        + a4("93.184.216.34")
        + b"\xc0\x10"
        + struct.pack("!HHIH", 1, 1, 60, 4)
        + a4("93.184.216.35")
        + b"\xc0\x10"
        + struct.pack("!HHIH", 28, 1, 60, 16)
        + a6("2606:2800:220:1::1")
    )
    return struct.pack("!HHHHHH", 0x1A2B, 0x8180, 1, 4, 0, 0) + q + rr


# ---------------------------------------------------------------- invariants


def check(d, data):
    """Properties every result must have, whatever the input."""
    assert isinstance(d, dec.Decoded)
    assert 0 <= d.payload_off <= len(data)
    assert d.payload_len >= 0 and d.payload_off + d.payload_len <= len(data)
    assert isinstance(d.summary, str) and d.summary
    # every odd input is caught by an explicit bounds check, never by the catch-all
    assert d.note is None or "Decoder error" not in d.note, d.note
    if d.fragment or d.proto not in (6, 17):
        assert (d.sport, d.dport) == (0, 0)
    if d.proto != 6:
        assert d.tcp_flags == d.tcp_seq == d.tcp_ack == 0
    if d.proto not in (1, 58):
        assert d.icmp_type is None and d.icmp_code is None
    if d.src is None:
        assert d.dst is None and d.sport == 0
    d.eth_src, d.eth_dst  # noqa: B018 - must not raise
    return d


def dd(linktype, data):
    return check(decode(linktype, data), data)


# ---------------------------------------------------------------- Ethernet / IPv4 / TCP / UDP


def test_ethernet_ipv4_tcp_syn():
    frame = make_tcp_frame()
    d = dd(1, frame)
    assert (d.l3, d.proto, d.src, d.dst, d.sport, d.dport) == (
        0x0800,
        6,
        "10.0.0.1",
        "93.184.216.34",
        51234,
        80,
    )
    assert (d.tcp_flags, d.tcp_seq, d.tcp_ack, d.ttl, d.vlan) == (0x02, 1000, 2000, 64, None)
    assert (d.eth_src, d.eth_dst) == (MAC_A, MAC_B)
    assert (d.payload_off, d.payload_len, d.fragment, d.note) == (54, 0, False, None)
    assert (d.icmp_type, d.icmp_code) == (None, None)
    assert d.summary == "TCP 10.0.0.1:51234 → 93.184.216.34:80 [SYN] Seq=1000 Win=64240 Len=0"


def test_tcp_payload_options_and_ack_summary():
    opts = b"\x02\x04\x05\xb4\x01\x01\x04\x02"  # MSS, NOP, NOP, SACK-permitted
    frame = eth(
        ipv4(
            "10.0.0.2", "10.0.0.1", 6, tcp(80, 51234, 5, 6, 0x18, options=opts, payload=b"HTTP/1.1")
        )
    )
    d = dd(1, frame)
    assert (d.payload_off, d.payload_len) == (14 + 20 + 28, 8)
    assert frame[d.payload_off : d.payload_off + d.payload_len] == b"HTTP/1.1"
    assert d.summary == "TCP 10.0.0.2:80 → 10.0.0.1:51234 [PSH, ACK] Seq=5 Ack=6 Win=64240 Len=8"


def test_ethernet_padding_is_not_payload():
    frame = make_udp_frame(payload=b"abc")
    padded = frame + b"\x00" * (60 - len(frame))
    d = dd(1, padded)
    assert (d.proto, d.sport, d.dport, d.payload_off, d.payload_len) == (17, 5353, 5353, 42, 3)
    assert d.summary == "UDP 10.0.0.1:5353 → 224.0.0.251:5353 Len=3"


def test_udp_summary_len():
    d = dd(1, make_udp_frame())
    assert d.summary == "UDP 10.0.0.1:5353 → 224.0.0.251:5353 Len=45"
    assert d.payload_len == 45


def test_ipv4_options():
    opts = b"\x94\x04\x00\x00"  # router alert, IHL 6
    d = dd(1, eth(ipv4("1.2.3.4", "5.6.7.8", 17, udp(1, 2, b"zz"), options=opts)))
    assert (d.sport, d.dport, d.payload_off, d.payload_len, d.l3_off, d.l4_off) == (
        1,
        2,
        14 + 24 + 8,
        2,
        14,
        38,
    )


def test_ipv4_first_and_later_fragments():
    body = udp(5000, 6000, b"A" * 32)
    first = dd(1, eth(ipv4("10.1.1.1", "10.2.2.2", 17, body[:24], mf=True)))
    assert (first.fragment, first.proto, first.sport, first.dport) == (False, 17, 5000, 6000)
    later = dd(1, eth(ipv4("10.1.1.1", "10.2.2.2", 17, body[24:], frag_off=24)))
    assert (later.fragment, later.proto, later.sport, later.dport) == (True, 17, 0, 0)
    assert (later.src, later.dst, later.payload_off, later.payload_len, later.l4_off) == (
        "10.1.1.1",
        "10.2.2.2",
        34,
        16,
        -1,
    )
    assert "fragment" in later.summary and "10.1.1.1 → 10.2.2.2" in later.summary


def test_ipv4_tso_zero_total_length_uses_captured_length():
    frame = make_tcp_frame(payload=b"p" * 100, total=0)
    d = dd(1, frame)
    assert (d.sport, d.payload_len, d.note) == (51234, 100, None)


def test_ipv4_bogus_total_length_is_noted_but_decoded():
    d = dd(1, make_tcp_frame(payload=b"abcd", total=12))
    assert d.sport == 51234 and d.payload_len == 4
    assert "Bogus IPv4 total length 12" in d.note and "Bogus IPv4 total length 12" in d.summary


def test_ipv4_bad_version_and_ihl():
    frame = bytearray(make_tcp_frame())
    frame[14] = 0x65
    d = dd(1, bytes(frame))
    assert (
        d.src is None and d.proto == 0 and d.note == "Bogus IPv4 version 6" and d.summary == d.note
    )
    frame[14] = 0x44
    d = dd(1, bytes(frame))
    assert d.src is None and "Bogus IPv4 header length 16" in d.summary


def test_other_ip_protocol_gre():
    d = dd(1, eth(ipv4("192.0.2.1", "192.0.2.2", 47, b"\x00\x00\x88\x0b" + b"x" * 10)))
    assert (d.proto, d.sport, d.dport, d.payload_off, d.payload_len) == (47, 0, 0, 34, 14)
    assert d.summary == "GRE 192.0.2.1 → 192.0.2.2 Len=14"


# ---------------------------------------------------------------- VLAN


@pytest.mark.parametrize(
    "tags, vlan",
    [
        ([(0x8100, 100)], 100),
        ([(0x8100, 0x2000 | 42)], 42),  # priority bits are not the id
        ([(0x88A8, 200), (0x8100, 100)], 200),  # 802.1ad QinQ: outermost wins
        ([(0x9100, 300), (0x8100, 7)], 300),
    ],
)
def test_vlan_tags(tags, vlan):
    frame = eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1234, 443)), tags=tags)
    d = dd(1, frame)
    assert (d.vlan, d.l3, d.sport, d.dport) == (vlan, 0x0800, 1234, 443)
    assert d.payload_off == 14 + 4 * len(tags) + 40


def test_vlan_truncated_tag():
    d = dd(1, mac(MAC_B) + mac(MAC_A) + b"\x81\x00\x00")
    assert d.src is None and "Truncated VLAN tag" in d.summary


def test_vlan_stack_is_bounded():
    """Eight tags decode; a crafted stack (hundreds of tags) is cut at the ninth."""
    inner = ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2))
    d = dd(1, eth(inner, tags=[(0x8100, i) for i in range(1, 9)]))
    assert (d.vlan, d.src, d.sport, d.note) == (1, "10.0.0.1", 1, None)
    for tags in (9, 370):
        d = dd(1, eth(inner, tags=[(0x8100, 1)] * tags))
        assert d.src is None and d.note == "Too many VLAN tags (more than 8)"
        assert d.payload_off == 14 + 4 * 8   # the walk stopped there


def test_llc_snap_and_plain_8023():
    snap = b"\xaa\xaa\x03\x00\x00\x00\x08\x00" + ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2))
    d = dd(1, mac(MAC_B) + mac(MAC_A) + struct.pack("!H", len(snap)) + snap)
    assert (d.l3, d.src, d.sport) == (0x0800, "10.0.0.1", 1)
    stp = (
        mac("01:80:c2:00:00:00")
        + mac(MAC_A)
        + struct.pack("!H", 38)
        + b"\x42\x42\x03"
        + b"\x00" * 35
    )
    d = dd(1, stp)
    assert (d.l3, d.src, d.payload_off) == (0, None, 14)
    assert d.summary == "Ethernet frame, 52 bytes"


def test_unknown_ethertype():
    d = dd(1, eth(b"\x00" * 46, 0x88CC))
    assert (d.l3, d.proto, d.payload_off, d.payload_len) == (0x88CC, 0, 14, 46)
    assert d.summary == "Ethertype 0x88cc (LLDP), 60 bytes"


# ---------------------------------------------------------------- IPv6


def test_ipv6_tcp():
    frame = eth(ipv6("2001:db8::1", "2001:db8::2", 6, tcp(40000, 443, flags=0x12), hlim=57), 0x86DD)
    d = dd(1, frame)
    assert (d.l3, d.proto, d.src, d.dst, d.sport, d.dport, d.ttl) == (
        0x86DD,
        6,
        "2001:db8::1",
        "2001:db8::2",
        40000,
        443,
        57,
    )
    assert d.tcp_flags == 0x12 and d.payload_off == 14 + 40 + 20
    assert d.summary.startswith(
        "TCP [2001:db8::1]:40000 → [2001:db8::2]:443 [SYN, ACK] Seq=0 Ack=0"
    )


def test_ipv6_extension_headers_walked():
    frame = make_udp6_frame(
        exts=[
            (0, lambda nh: ext(nh)),  # hop-by-hop 8
            (43, lambda nh: ext(nh, b"\x00" * 14)),  # routing 16
            (51, lambda nh: ah(nh)),  # AH 24
            (60, lambda nh: ext(nh)),
        ]
    )  # dest opts 8
    d = dd(1, frame)
    assert (d.proto, d.sport, d.dport, d.fragment) == (17, 40000, 443, False)
    assert d.l4_off == 14 + 40 + 8 + 16 + 24 + 8
    assert (d.payload_off, d.payload_len) == (d.l4_off + 8, 5)
    assert frame[d.payload_off :] == b"hello"


def test_ipv6_fragments():
    first = dd(1, make_udp6_frame(exts=[(44, lambda nh: frag6(nh, 0, True))]))
    assert (first.fragment, first.proto, first.sport, first.dport) == (False, 17, 40000, 443)
    later = dd(1, make_udp6_frame(exts=[(44, lambda nh: frag6(nh, 1448, False))]))
    assert (later.fragment, later.proto, later.sport, later.dport) == (True, 17, 0, 0)
    assert later.payload_off == 14 + 40 + 8 and later.l4_off == -1
    assert later.summary.startswith("IPv6 fragment 2001:db8::1 → 2001:db8::2 (UDP)")


def test_ipv6_esp_and_no_next_header_stop():
    esp = dd(1, eth(ipv6("2001:db8::1", "2001:db8::2", 50, b"\x00\x00\x01\x00" * 6), 0x86DD))
    assert (esp.proto, esp.sport, esp.payload_off, esp.payload_len) == (50, 0, 54, 24)
    assert esp.summary == "ESP 2001:db8::1 → 2001:db8::2 Len=24"
    nonext = dd(1, eth(ipv6("2001:db8::1", "2001:db8::2", 60, ext(59)), 0x86DD))
    assert (nonext.proto, nonext.payload_off, nonext.payload_len) == (59, 62, 0)


def test_ipv6_truncated_extension_header():
    frame = eth(ipv6("2001:db8::1", "2001:db8::2", 0, ext(6, b"\x00" * 14) + tcp(1, 2)), 0x86DD)
    d = dd(1, frame[: 14 + 40 + 10])
    assert d.src == "2001:db8::1" and d.sport == 0
    assert "Truncated IPv6 extension header 0 (10 of 16 bytes captured)" in d.summary


def test_ipv6_too_many_extension_headers_and_bad_version():
    body = ext(17) + udp(1, 2)
    for _ in range(19):
        body = ext(60) + body  # 20 destination-options headers in a row
    d = dd(229, ipv6("::1", "::2", 60, body))
    assert d.src == "::1" and d.sport == 0 and "Too many IPv6 extension headers" in d.summary
    frame = bytearray(ipv6("::1", "::2", 17, udp(1, 2)))
    frame[0] = 0x40
    d = dd(229, bytes(frame))
    assert (d.src, d.note) == (None, "Bogus IPv6 version 4")


def test_truncated_ipv6_header_keeps_source():
    d = dd(229, ipv6("2001:db8::7", "::2", 6, tcp(1, 2), hlim=9)[:30])
    assert (d.src, d.dst, d.ttl, d.proto, d.l3_off) == ("2001:db8::7", None, 9, 6, 0)
    assert (
        d.summary == "IPv6 2001:db8::7 → ? Len=30 [Truncated IPv6 header (30 of 40 bytes captured)]"
    )


def test_udp_length_rules():
    inner = udp(7, 9, b"abcdef")
    d = dd(1, eth(ipv4("10.0.0.1", "10.0.0.2", 17, inner[:4] + struct.pack("!H", 10) + inner[6:])))
    assert (d.payload_len, d.note) == (2, None)  # UDP says 2 payload bytes; the rest is not payload
    d = dd(1, eth(ipv4("10.0.0.1", "10.0.0.2", 17, inner[:4] + struct.pack("!H", 5) + inner[6:])))
    assert d.payload_len == 6 and d.note == "Bogus UDP length 5 (less than 8)"
    d = dd(1, eth(ipv4("10.0.0.1", "10.0.0.2", 17, inner[:4] + struct.pack("!H", 99) + inner[6:])))
    assert d.payload_len == 6 and d.note == "Bogus UDP length 99 (IP payload is 14)"


def test_address_cache_stays_bounded(monkeypatch):
    monkeypatch.setattr(dec, "_ADDR_MAX", 8)
    dec._ADDR.clear()
    for i in range(50):
        d = dd(101, ipv4(f"10.0.1.{i}", f"10.0.2.{i}", 17, udp(1, 2)))
        assert (d.src, d.dst) == (f"10.0.1.{i}", f"10.0.2.{i}")
        assert len(dec._ADDR) <= 8


# ---------------------------------------------------------------- ICMP / ICMPv6 / ARP


def test_icmp_echo():
    d = dd(1, eth(ipv4("10.0.0.1", "10.0.0.2", 1, icmp(8, 0, 0x42, 7, b"ping" * 8))))
    assert (d.proto, d.icmp_type, d.icmp_code, d.sport, d.dport) == (1, 8, 0, 0, 0)
    assert (d.payload_off, d.payload_len) == (42, 32)
    assert d.summary == "ICMP Echo request 10.0.0.1 → 10.0.0.2 id=0x0042 seq=7"


def test_icmp_error_reports_outer_only():
    inner = ipv4("10.0.0.2", "8.8.8.8", 17, udp(33000, 53))
    d = dd(1, eth(ipv4("10.0.0.1", "10.0.0.2", 1, icmp(3, 3) + inner)))
    assert (d.icmp_type, d.icmp_code, d.sport, d.dport, d.src) == (3, 3, 0, 0, "10.0.0.1")
    assert d.summary == "ICMP Destination unreachable (Port unreachable) 10.0.0.1 → 10.0.0.2"


def test_icmpv6_echo_and_neighbor_solicitation():
    d = dd(1, eth(ipv6("fe80::1", "fe80::2", 58, icmp(128, 0, 1, 2)), 0x86DD))
    assert (d.proto, d.icmp_type, d.icmp_code) == (58, 128, 0)
    assert d.summary == "ICMPv6 Echo request fe80::1 → fe80::2 id=0x0001 seq=2"
    ns = struct.pack("!BBHI", 135, 0, 0, 0) + a6("fe80::99")
    d = dd(1, eth(ipv6("fe80::1", "ff02::1:ff00:99", 58, ns, hlim=255), 0x86DD))
    assert (d.icmp_type, d.ttl) == (135, 255)
    assert d.summary == "ICMPv6 Neighbor solicitation for fe80::99 from fe80::1"


def test_truncated_icmp_header():
    d = dd(1, eth(ipv4("10.0.0.1", "10.0.0.2", 1, icmp(8, 0, 1, 1)[:3])))
    assert (d.icmp_type, d.icmp_code, d.payload_off, d.payload_len) == (8, 0, 34, 3)
    assert (
        d.summary
        == "ICMP 10.0.0.1 → 10.0.0.2 Len=3 [Truncated ICMP header (3 of 8 bytes captured)]"
    )


def test_arp_request_reply_gratuitous():
    d = dd(
        1,
        eth(
            arp(1, MAC_A, "10.0.0.2", "00:00:00:00:00:00", "10.0.0.1"),
            0x0806,
            dst="ff:ff:ff:ff:ff:ff",
        ),
    )
    assert (d.l3, d.proto, d.src, d.dst, d.payload_off, d.eth_dst) == (
        0x0806,
        0,
        "10.0.0.2",
        "10.0.0.1",
        42,
        "ff:ff:ff:ff:ff:ff",
    )
    assert d.summary == "ARP Who has 10.0.0.1? Tell 10.0.0.2"
    d = dd(1, eth(arp(2, MAC_B, "10.0.0.1", MAC_A, "10.0.0.2"), 0x0806))
    assert d.summary == f"ARP 10.0.0.1 is at {MAC_B}"
    d = dd(1, eth(arp(1, MAC_A, "10.0.0.9", "00:00:00:00:00:00", "10.0.0.9"), 0x0806))
    assert d.summary == "ARP Gratuitous ARP for 10.0.0.9 (Request)"
    d = dd(1, eth(arp(1, MAC_A, "10.0.0.2", MAC_B, "10.0.0.1")[:20], 0x0806))
    assert d.src is None and d.summary == "Truncated ARP packet (20 of 28 bytes captured)"


# ---------------------------------------------------------------- other link types


def test_linux_sll_and_sll2():
    seg = ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1111, 22, flags=0x10, payload=b"ssh"))
    d = dd(113, sll(seg))
    assert (d.l3, d.sport, d.dport, d.payload_off, d.payload_len) == (0x0800, 1111, 22, 16 + 40, 3)
    assert (d.eth_src, d.eth_dst) == (MAC_A, None)
    d = dd(276, sll2(seg))
    assert (d.l3, d.sport, d.dport, d.payload_off, d.payload_len) == (0x0800, 1111, 22, 20 + 40, 3)
    assert (d.eth_src, d.eth_dst) == (MAC_A, None)
    d = dd(276, sll2(arp(1, MAC_A, "10.0.0.2", "00:00:00:00:00:00", "10.0.0.1"), 0x0806))
    assert d.summary == "ARP Who has 10.0.0.1? Tell 10.0.0.2"
    d = dd(113, sll(b"\x00" * 30, proto=0x0004))  # 802.2 LLC pseudo-protocol
    assert d.l3 == 0 and d.summary == "Linux cooked (SLL) frame, 46 bytes"
    d = dd(113, sll(ipv6("::1", "::1", 17, udp(7, 9)), 0x86DD)[:10])
    assert d.summary == "Truncated Linux cooked (SLL) header (10 of 16 bytes captured)"


@pytest.mark.parametrize("linktype", [101, 12, 14])
def test_raw_ip_picks_version_from_nibble(linktype):
    d4 = dd(linktype, ipv4("10.0.0.1", "10.0.0.2", 17, udp(53, 5353)))
    assert (d4.l3, d4.src, d4.sport, d4.payload_off, d4.eth_src) == (
        0x0800,
        "10.0.0.1",
        53,
        28,
        None,
    )
    d6 = dd(linktype, ipv6("::1", "::2", 6, tcp(1, 2)))
    assert (d6.l3, d6.src, d6.dst, d6.dport) == (0x86DD, "::1", "::2", 2)
    bad = dd(linktype, b"\x30" + b"\x00" * 30)
    assert bad.l3 == 0 and bad.summary == "Unknown IP version 3 in raw IP packet"
    assert dd(linktype, b"").summary == "Empty raw IP packet"


def test_linktype_ipv4_ipv6():
    assert dd(228, ipv4("1.1.1.1", "2.2.2.2", 6, tcp(3, 4))).dport == 4
    assert dd(229, ipv6("::1", "::2", 17, udp(3, 4))).dport == 4
    d = dd(228, ipv6("::1", "::2", 17, udp(3, 4)))
    assert d.src is None and d.note == "Bogus IPv4 version 6"


@pytest.mark.parametrize(
    "linktype, family, order, l3",
    [
        (0, 2, "<", 0x0800),
        (0, 2, ">", 0x0800),
        (0, 24, "<", 0x86DD),
        (0, 28, ">", 0x86DD),
        (0, 30, "<", 0x86DD),
        (0, 10, "<", 0x86DD),
        (108, 2, ">", 0x0800),
        (108, 24, "<", 0x86DD),
    ],
)
def test_null_and_loop_families_in_both_byte_orders(linktype, family, order, l3):
    payload = (
        ipv4("127.0.0.1", "127.0.0.1", 17, udp(9, 10))
        if l3 == 0x0800
        else ipv6("::1", "::1", 17, udp(9, 10))
    )
    d = dd(linktype, null(payload, family, order))
    assert (d.l3, d.sport, d.dport, d.payload_off) == (
        l3,
        9,
        10,
        4 + (20 if l3 == 0x0800 else 40) + 8,
    )


def test_null_header_holding_an_ethertype():
    # null_loopback.pcap packet 3 starts 0f 00 08 00: Wireshark reads it as ethertype 0x0800
    d = dd(0, b"\x0f\x00\x08\x00" + ipv4("10.0.0.138", "10.0.0.1", 17, udp(53, 1024)))
    assert (d.l3, d.src, d.sport) == (0x0800, "10.0.0.138", 53)
    d = dd(
        0, b"\x00\x02\x00\x00" + ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2))
    )  # IRIX: AF in 2 bytes
    assert (d.l3, d.dport) == (0x0800, 2)


def test_null_unknown_family():
    d = dd(0, null(b"\x00" * 20, 99))
    assert d.l3 == 0 and d.summary == "Unknown loopback address family 99"


def test_fcs_bits_in_linktype_are_masked():
    d = dd(0x30000065, ipv4("10.0.0.1", "10.0.0.2", 6, tcp(5, 6)))
    assert (d.linktype, d.src, d.dport) == (101, "10.0.0.1", 6)


def test_unsupported_link_type():
    d = dd(231, b"\x00" * 62)
    assert (d.l3, d.src, d.payload_off, d.payload_len) == (0, None, 0, 62)
    assert d.summary == "Unsupported link type 231 (62 bytes)"


# ---------------------------------------------------------------- truncation


def test_truncated_tcp_header_keeps_what_is_known():
    frame = make_tcp_frame()
    d = dd(1, frame[: 14 + 20 + 12])
    assert (d.src, d.dst, d.sport, d.dport, d.tcp_seq, d.tcp_flags) == (
        "10.0.0.1",
        "93.184.216.34",
        51234,
        80,
        0,
        0,
    )
    assert (d.payload_off, d.payload_len) == (34, 12)
    assert (
        d.summary == "TCP 10.0.0.1:51234 → 93.184.216.34:80 Len=12"
        " [Truncated TCP header (12 of 20 bytes captured)]"
    )
    d = dd(1, frame[: 14 + 20])
    assert d.sport == 0 and "Truncated TCP header (0 of 20 bytes captured)" in d.summary


def test_truncated_ipv4_header():
    d = dd(1, make_tcp_frame()[: 14 + 16])
    assert (d.src, d.dst, d.ttl, d.proto) == ("10.0.0.1", None, 64, 6)
    assert "Truncated IPv4 header (16 of 20 bytes captured)" in d.summary


def test_truncated_tcp_options():
    frame = eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 2, options=b"\x01" * 20)))
    d = dd(1, frame[: 14 + 20 + 30])
    assert (d.sport, d.dport, d.tcp_flags) == (1, 2, 2)
    assert "Truncated TCP options (30 of 40 header bytes captured)" in d.summary


PREFIX_FRAMES = [
    (1, make_tcp_frame(payload=b"GET / HTTP/1.1\r\n"), 54),
    (
        1,
        eth(
            ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 53, dns_query())),
            tags=[(0x88A8, 5), (0x8100, 6)],
        ),
        50,
    ),
    (
        1,
        make_udp6_frame(exts=[(0, lambda nh: ext(nh)), (44, lambda nh: frag6(nh, 0, True))]),
        14 + 40 + 16 + 8,
    ),
    (1, eth(ipv4("10.0.0.1", "10.0.0.2", 1, icmp(8, 0, 1, 1, b"x" * 8))), 42),
    (1, eth(arp(1, MAC_A, "10.0.0.2", MAC_B, "10.0.0.1"), 0x0806), 42),
    (113, sll(ipv6("::1", "::2", 58, icmp(128, 0, 1, 1)), 0x86DD), 16 + 48),
    (276, sll2(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 2, options=b"\x01" * 12))), 20 + 52),
    (0, null(ipv4("127.0.0.1", "127.0.0.1", 17, udp(1, 2, b"abc"))), 32),
    (108, null(ipv6("::1", "::1", 6, tcp(1, 2)), 24, ">"), 64),
    (101, ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 2)), 40),
    (229, ipv6("::1", "::1", 60, ext(17) + udp(1, 2)), 56),
]


@pytest.mark.parametrize("linktype, frame, header_len", PREFIX_FRAMES)
def test_every_prefix_decodes(linktype, frame, header_len):
    full = dd(linktype, frame)
    assert full.note is None
    for cut in range(len(frame)):
        d = dd(linktype, frame[:cut])
        if cut < header_len:
            assert d.note is not None, (cut, d.summary)  # says what is missing
        else:
            assert d.note is None, (cut, d.summary)
            assert (d.src, d.dst, d.sport, d.dport, d.proto) == (
                full.src,
                full.dst,
                full.sport,
                full.dport,
                full.proto,
            )
            assert d.payload_off == full.payload_off and d.payload_len == full.payload_len - (
                len(frame) - cut
            )


def test_fuzz_random_bytes():
    rng = random.Random(1234)
    linktypes = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 231, 0x30000001, 0xFFFFFFFF]
    for _ in range(20000):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
        dd(rng.choice(linktypes), data)


def test_fuzz_mutated_frames():
    rng = random.Random(99)
    seeds = [(lt, f) for lt, f, _ in PREFIX_FRAMES] + [
        (1, eth(ipv4("1.1.1.1", "2.2.2.2", 17, udp(53, 5353, dns_response()))))
    ]
    for _ in range(20000):
        lt, frame = rng.choice(seeds)
        buf = bytearray(frame)
        for _ in range(rng.randrange(1, 6)):
            buf[rng.randrange(len(buf))] = rng.getrandbits(8)
        buf = buf[: rng.randrange(len(buf) + 1)] if rng.random() < 0.3 else buf
        dd(lt, bytes(buf))


def test_decode_never_raises_on_wrong_types():
    for lt, data in [(1, None), ("x", b"abc"), (None, None), (1, 12345)]:
        d = decode(lt, data)
        assert isinstance(d, dec.Decoded) and d.note.startswith("Decoder error") and d.summary


@pytest.mark.parametrize("wrap", [bytearray, memoryview, lambda b: memoryview(bytearray(b))])
def test_other_buffer_types(wrap):
    d = decode(1, wrap(make_tcp_frame()))
    assert (d.src, d.dport, d.eth_src, d.note) == ("10.0.0.1", 80, MAC_A, None)
    d = decode(1, wrap(make_tcp_frame()[: 14 + 16]))  # partial header: address sliced from data
    assert (d.src, d.summary) == (
        "10.0.0.1",
        "IPv4 10.0.0.1 → ? Len=16 [Truncated IPv4 header (16 of 20 bytes captured)]",
    )
    d = decode(1, wrap(eth(arp(1, MAC_A, "10.0.0.2", MAC_B, "10.0.0.1"), 0x0806)))
    assert d.summary == "ARP Who has 10.0.0.1? Tell 10.0.0.2"
    assert all(type(k) is bytes for k in dec._ADDR)  # the cache never pins a caller's buffer
    assert dns_answers(wrap(dns_response()))[0] == ("example.com", "93.184.216.34")


# ---------------------------------------------------------------- DNS


def test_dns_answers_with_compression():
    resp = dns_response()
    assert dns_answers(resp) == [
        ("example.com", "93.184.216.34"),
        ("example.com", "93.184.216.35"),
        ("example.com", "2606:2800:220:1::1"),
    ]
    assert dns_query_name(resp) == "www.example.com"
    assert dns_query_name(dns_query("a.b.example.org")) == "a.b.example.org"
    assert dns_answers(dns_query()) == []  # a query has no answers
    for cut in range(len(resp)):
        assert dns_answers(resp[:cut]) == []  # cut anywhere: something is missing -> []
        dns_query_name(resp[:cut])


def test_dns_mdns_cache_flush_class_and_no_question():
    rr = dns_name("printer.local") + struct.pack("!HHIH", 1, 0x8001, 120, 4) + a4("192.168.1.50")
    msg = struct.pack("!HHHHHH", 0, 0x8400, 0, 1, 0, 0) + rr
    assert dns_answers(msg) == [("printer.local", "192.168.1.50")]
    assert dns_query_name(msg) is None


def test_dns_pointer_loops_terminate():
    # the question name is a pointer to itself
    looping = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0) + b"\xc0\x0c"
    assert dns_answers(looping) == [] and dns_query_name(looping) is None
    ping_pong = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0) + b"\x01a\xc0\x0e" + b"\xc0\x0c"
    assert dns_answers(ping_pong) == [] and dns_query_name(ping_pong) is None
    forward = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\xff"
    assert dns_query_name(forward) is None
    assert dns_answers(b"") == [] and dns_query_name(b"\x00" * 11) is None
    assert dns_answers(None) == [] and dns_query_name(None) is None


def test_dns_name_too_long_rejected():
    name = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00"  # 320 bytes > 255
    msg = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"
    assert dns_query_name(msg) is None


def test_dns_summaries():
    d = dd(1, eth(ipv4("10.0.0.1", "8.8.8.8", 17, udp(40000, 53, dns_query()))))
    assert d.summary == "DNS Standard query A example.com"
    d = dd(1, eth(ipv4("8.8.8.8", "10.0.0.1", 17, udp(53, 40000, dns_response()))))
    assert d.summary == (
        "DNS Standard query response A www.example.com A 93.184.216.34 A 93.184.216.35"
        " AAAA 2606:2800:220:1::1"
    )
    nx = bytearray(dns_query())
    nx[2:4] = b"\x81\x83"
    d = dd(1, eth(ipv4("8.8.8.8", "10.0.0.1", 17, udp(53, 40000, bytes(nx)))))
    assert d.summary == "DNS Standard query response A example.com No such name"
    tcp_dns = struct.pack("!H", len(dns_query())) + dns_query("tcp.example", 28)
    d = dd(1, eth(ipv4("10.0.0.1", "8.8.8.8", 6, tcp(40000, 53, flags=0x18, payload=tcp_dns))))
    assert d.summary == "DNS Standard query AAAA tcp.example"
    d = dd(1, eth(ipv4("10.0.0.1", "8.8.8.8", 17, udp(40000, 53, b"not dns"))))
    assert d.summary == "UDP 10.0.0.1:40000 → 8.8.8.8:53 Len=7"


def test_tcp_flags_text():
    assert tcp_flags_text(0x02) == "SYN"
    assert tcp_flags_text(0x12) == "SYN, ACK"
    assert tcp_flags_text(0x11) == "FIN, ACK"
    assert tcp_flags_text(0x18) == "PSH, ACK"
    assert tcp_flags_text(0xC2) == "SYN, ECE, CWR"
    assert tcp_flags_text(0x100) == "AE"
    assert tcp_flags_text(0) == "<None>"


# ---------------------------------------------------------------- corpus

def pcap_frames(path):
    """(link type field, [packet bytes]) of a classic pcap file."""
    linktype, records = read_pcap(path)
    return linktype, [data for _, data in records]


# Classic pcap files only: pcapng files are read (and their packets decoded) by the pcapng
# reader's own tests.
@pytest.mark.parametrize(
    "rel", corpus.files(where=lambda r: "pcapng" not in r["format"]), ids=os.path.basename
)
def test_corpus_file_decodes(rel):
    linktype, packets = pcap_frames(corpus.path(rel))
    decoded = [dd(linktype, p) for p in packets]
    if rel.startswith("wellformed/"):
        assert len(packets) == int(corpus.row(rel)["packets"])
        assert [d.summary for d in decoded if d.note] == []  # nothing odd in the well-formed set
        assert all(d.l3 for d in decoded)  # every frame's network protocol was found


def by_name(name):
    linktype, packets = pcap_frames(corpus.path("malformed", name))
    return [dd(linktype, p) for p in packets]


def test_corpus_malformed_specifics():
    [d] = by_name("zeek__ip4-trunc.pcap")  # frame captured at 20 of 46 bytes: 6 bytes of IPv4
    assert (d.l3, d.src, d.payload_off, d.payload_len) == (0x0800, None, 14, 6)
    assert d.summary == "Truncated IPv4 header (6 of 20 bytes captured)"
    [d] = by_name("zeek__ipv4-truncated-broken-header.pcap")  # tshark: Bogus IP length (20 < 60)
    assert d.l3 == 0x0800 and "IPv4" in d.summary and d.note
    [d] = by_name("zeek__ip6-ext-trunc.pcap")
    assert (
        d.src == "2001:4f8:4:7:2e0:81ff:fe52:ffff"
        and "Truncated IPv6 extension header 0" in d.summary
    )
    # FCS bits in the link type, a 12-byte TCP header
    [d] = by_name("tcpdump__tcp_header_heapoverflow.pcap")
    assert (d.linktype, d.src, d.sport, d.dport) == (1, "48.48.48.48", 12336, 12336)
    assert "Truncated TCP header (12 of 20 bytes captured)" in d.summary
    [d] = by_name("tcpdump__ipv6hdr-heapoverflow.pcap")  # LINKTYPE_IPV6 | FCS bits, truncated HBH
    assert d.linktype == 229 and d.src == "3030:3030:3030:3030:3030:3030:3030:3030"
    assert "Truncated IPv6 extension header 0" in d.summary
    [d] = by_name("zeek__udp-contents-truncated-oob.pcap")
    assert (d.src, d.dst, d.sport, d.dport, d.payload_len) == (
        "192.0.2.1",
        "198.51.100.2",
        40000,
        55555,
        0,
    )
    [d] = by_name("tcpdump__ipv6_jumbogram_invalid_length.pcap")
    assert (d.proto, d.icmp_type, d.src) == (58, 128, "2200::244:212:3fff:feae:22f7")
    d = by_name("tcpdump__unsupported-link-type-dbus.pcap")[0]
    assert d.summary.startswith("Unsupported link type 231 (")
    [d] = by_name("zeek__trunc-hdr.pcap")
    assert d.summary.startswith("Truncated Ethernet header")


# ---------------------------------------------------------------- tshark cross-check

TSHARK_FILES = [
    "http_vlan_download.pcap",
    "dns_udp_mixed.pcap",
    "ftp_ipv6_retr.pcap",
    "icmp_5_pings.pcap",
    "icmpv6_ping.pcap",
    "linux_sll_tcp_dns.pcap",
    "linux_sll_nanosec_handshake.pcap",
    "linux_sll2_icmp_arp.pcap",
    "linux_sll2_tls.pcap",
    "rawip_mixed_v4v6.pcap",
    "rawip_ipv6_http_streams.pcap",
    "linktype_ipv4_228.pcap",
    "null_loopback.pcap",
    "pptp_bigendian.pcap",
    "smb1_dssetup_bigendian.pcap",
    "nanosec_bigendian_http.pcap",
]
TSHARK_FIELDS = [
    "ip.src",
    "ipv6.src",
    "ip.dst",
    "ipv6.dst",
    "tcp.srcport",
    "udp.srcport",
    "tcp.dstport",
    "udp.dstport",
]


def first(value):
    return value.split(",")[0] if value else ""


@tshark.needs_tshark
@pytest.mark.parametrize("name", TSHARK_FILES)
def test_five_tuples_match_tshark(name):
    """Addresses and ports agree with tshark, packet by packet (outer layer only).

    Excluded on purpose: tshark also lists the inner headers of ICMP errors and tunnels (GRE,
    IP-in-IP, Teredo); we take tshark's first (outermost) address, and compare ports only when
    our outer protocol is TCP or UDP (for ICMP, GRE, ... we must report port 0, and do).  IP
    reassembly is switched off so that tshark, like us, sees each fragment on its own.  IPv6
    addresses are compared as addresses, not strings (tshark and inet_ntop may differ in form).
    """
    path = corpus.path("wellformed", name)
    linktype, packets = pcap_frames(path)
    lines = tshark.fields(path, *TSHARK_FIELDS, options=(
        "-n", "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE", "-E", "occurrence=a"))
    assert len(lines) == len(packets)
    compared = 0
    for number, (line, pkt) in enumerate(zip(lines, packets), 1):
        ip4s, ip6s, ip4d, ip6d, tsp, usp, tdp, udp_ = (first(v) for v in line)
        d = decode(linktype, pkt)
        where = f"{name} packet {number}: {d.summary}"
        if d.l3 == 0x0800:
            assert (d.src, d.dst) == (ip4s, ip4d), where
        elif d.l3 == 0x86DD:
            assert ipaddress.ip_address(d.src) == ipaddress.ip_address(ip6s), where
            assert ipaddress.ip_address(d.dst) == ipaddress.ip_address(ip6d), where
        else:
            assert not (ip4s or ip6s), where  # e.g. ARP: tshark has no ip.src either
        if d.proto == 6 and not d.fragment:
            assert (str(d.sport), str(d.dport)) == (tsp, tdp), where
        elif d.proto == 17 and not d.fragment:
            assert (str(d.sport), str(d.dport)) == (usp, udp_), where
        else:
            assert (d.sport, d.dport) == (0, 0), where
        compared += 1
    assert compared == len(packets) > 0
