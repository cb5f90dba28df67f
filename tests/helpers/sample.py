"""The capture the search tests generate, with what the corpus lacks (process comments,
DNS over TCP, mDNS with two questions, QinQ, Ethernet padding, a snaplen cut, a raw-IP
interface next to an Ethernet one), and the filters they run over it and the corpus."""

from __future__ import annotations

import os

from tests.helpers.packets import arp
from tests.helpers.packets import dns
from tests.helpers.packets import eth
from tests.helpers.packets import icmp
from tests.helpers.packets import ipv4
from tests.helpers.packets import ipv6
from tests.helpers.packets import tcp
from tests.helpers.packets import udp
from tests.helpers.pcapfiles import write_pcapng

T0 = 1_767_323_045  # 2026-01-02 03:04:05 UTC
MAC1, MAC2, MAC3 = (bytes([2, 0, 0, 0, 0, n]) for n in (1, 2, 3))


def ether(payload: bytes, etype: int = 0x0800, src=MAC1, dst=MAC2, tags=()) -> bytes:
    return eth(payload, etype, src=src, dst=dst, tags=tags)


def ip4(src, dst, proto, payload, ttl=64, ident=0, df=True, **kw) -> bytes:
    """IPv4 as this capture writes it: identification 0, Don't Fragment."""
    return ipv4(src, dst, proto, payload, ttl=ttl, ident=ident, df=df, **kw)


def segment(sport, dport, flags, payload=b"") -> bytes:
    """TCP as this capture writes it: sequence 1000, window 8192."""
    return tcp(sport, dport, seq=1000, flags=flags, win=8192, payload=payload)


def proc(pid, cmd, tid=None) -> str:
    text = f"PID: {pid}\nCmd: {cmd}\nArgs: {os.path.basename(cmd)} --run"
    return text + (f"\nThreadId: {tid}" if tid else "")


def write_sample(path, packets, linktypes=(1,)) -> None:
    """packets: (iface, data, comment or None, caplen or None); 0.25 s apart from T0."""
    write_pcapng(path, [(iface, T0 * 1_000_000 + i * 250_000, data[:caplen] if caplen else data,
                         len(data), comment)
                        for i, (iface, data, comment, caplen) in enumerate(packets)], linktypes)


def sample_packets() -> list:
    """The generated capture: what the corpus lacks, with process comments."""
    curl, py, res = proc(4242, "/usr/bin/curl", 4243), proc(5151, "/usr/bin/python3"), \
        proc(600, "/lib/systemd/systemd-resolved", 601)
    c, s = "192.168.1.10", "93.184.216.34"
    get = b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.0\r\n\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>hello</html>"
    p = []

    def add(data, comment=None, iface=0, caplen=None):
        p.append((iface, data, comment, caplen))

    add(ether(arp(1, MAC1, c, b"\0" * 6, "192.168.1.1"), 0x0806, dst=b"\xff" * 6))
    add(ether(arp(2, MAC2, "192.168.1.1", MAC1, c), 0x0806, src=MAC2, dst=MAC1))
    flow = [(0x02, b"", True), (0x12, b"", False), (0x10, b"", True), (0x18, get, True),
            (0x10, b"", False), (0x18, ok, False), (0x11, b"", True), (0x10, b"", False),
            (0x11, b"", False), (0x10, b"", True)]
    for flags, data, up in flow:
        seg = segment(40000, 80, flags, data) if up else segment(80, 40000, flags, data)
        add(ether(ip4(c, s, 6, seg) if up else ip4(s, c, 6, seg, ttl=53)), curl)
    add(ether(ip4(c, "10.0.0.5", 6, segment(40001, 443, 0x02))), py)
    add(ether(ip4("10.0.0.5", c, 6, segment(443, 40001, 0x14)), src=MAC2, dst=MAC1), py)
    add(ether(ip4(c, "192.168.1.1", 17, udp(53000, 53, dns(1, ["example.com"])))), res)
    add(ether(ip4("192.168.1.1", c, 17, udp(53, 53000, dns(1, ["example.com"], True,
                                                               answers=["93.184.216.34"])))), res)
    add(ether(ip4(c, "192.168.1.1", 17, udp(53001, 53, dns(2, ["www.example.org"], qtype=28)))),
        res)
    add(ether(ip4("192.168.1.20", "224.0.0.251", 17, udp(5353, 5353, dns(0, [
        "_http._tcp.local", "printer.local"]))), dst=bytes.fromhex("01005e0000fb"), src=MAC3))
    add(ether(ip4("192.168.1.20", "224.0.0.252", 17, udp(55555, 5355, dns(7, ["wpad"]))),
              src=MAC3))
    q = dns(9, ["tcp.example.net"])
    add(ether(ip4(c, "192.168.1.1", 6, segment(41000, 53, 0x02))), res)
    add(ether(ip4("192.168.1.1", c, 6, segment(53, 41000, 0x12))), res)
    add(ether(ip4(c, "192.168.1.1", 6, segment(41000, 53, 0x18, len(q).to_bytes(2, "big") + q))),
        res)
    add(ether(ip4(c, "8.8.8.8", 1, icmp(8, ident=1, seq=1, payload=b"ping-payload-0123"))))
    add(ether(ip4("8.8.8.8", c, 1, icmp(0, ident=1, seq=1, payload=b"ping-payload-0123"),
                  ttl=117)))
    v6a, v6b = "fe80::1", "fe80::2"
    add(ether(ipv6(v6a, v6b, 58, icmp(128, ident=1, seq=1)), 0x86DD))
    add(ether(ipv6(v6b, v6a, 58, icmp(129, ident=1, seq=1)), 0x86DD))
    add(ether(ipv6(v6a, "ff02::1:ff00:2", 58, icmp(135, payload=b"\xfe\x80" +
                                                     b"\0" * 13 + b"\x02"), hlim=255), 0x86DD))
    g1, g2 = "2001:db8::10", "2001:db8::20"
    for flags, data, up in [(0x02, b"", True), (0x12, b"", False), (0x10, b"", True),
                            (0x18, b"SSH-2.0-OpenSSH_9.0\r\n", False), (0x14, b"", True)]:
        seg = segment(50000, 22, flags, data) if up else segment(22, 50000, flags, data)
        add(ether(ipv6(g1, g2, 6, seg) if up else ipv6(g2, g1, 6, seg), 0x86DD), py)
    add(ether(ip4("10.10.0.1", "10.10.0.2", 17, udp(5000, 6000, b"vlan-data")), 0x0800,
              tags=[(0x8100, 10)]))
    add(ether(ip4("10.10.0.2", "10.10.0.1", 17, udp(6000, 5000, b"qinq-data")), 0x0800,
              tags=[(0x88A8, 100), (0x8100, 200)]))
    add(ether(ip4("192.168.1.30", "172.16.5.5", 17, udp(514, 514,
        b"<34>Oct 11 22:14:15 host su: 'su root' failed"))))
    add(ether(ip4(c, "10.0.0.99", 6, segment(1234, 1234, 0x29))))        # FIN PSH URG
    add(ether(ip4(c, "10.0.0.99", 6, segment(1235, 8080, 0xC2))), py)     # SYN ECE CWR
    add(ether(ip4(c, "203.0.113.9", 17, udp(40500, 33434, b"trace"), ttl=1)))
    pad = ether(ip4(s, c, 6, segment(80, 40000, 0x10))) + b"PADPAD"      # Ethernet padding
    add(pad, curl)
    add(ether(ip4(s, c, 6, segment(80, 40000, 0x18, ok * 20))), curl, caplen=96)  # snaplen cut
    add(ip4("172.16.9.1", "172.16.9.2", 17, udp(7000, 7001, b"raw-ip-data")), iface=1)
    add(ipv6("2001:db8::30", "2001:db8::31", 6, segment(6000, 443, 0x02)), iface=1)
    return p


# (ours, tshark's spelling when it differs): proc.* ride on the ptcpdump comment tshark shows
FILTERS = [
    "tcp", "udp", "ip", "ipv6", "arp", "icmp", "icmpv6", "eth", "vlan", "dns", "!tcp",
    "ip && !tcp && !udp", "tcp.port == 80", "tcp.port != 80", "tcp.port in {80, 443, 8080}",
    "tcp.port in {1000..60000}", "tcp.srcport == 80", "tcp.dstport >= 1024", "udp.port == 53",
    "udp.port != 53", "udp.srcport == 5353", "udp.length < 100", "tcp.flags.syn == 1",
    "tcp.flags.syn == 1 && tcp.flags.ack == 0", "tcp.flags.fin == 1 || tcp.flags.reset == 1",
    "tcp.flags & 0x12 == 0x12", "tcp.flags & 0x08", "tcp.flags == 0x10", "tcp.flags.ece == 1",
    "tcp.flags.urg == 1", "tcp.len > 0", "tcp.stream == 1", "tcp.stream in {0, 2}",
    "udp.stream == 0", "ip.ttl < 64", "ip.ttl >= 64 && ip.proto == 6", "ip.proto == 17",
    "ipv6.hlim == 255", "ip.len > 1000", "frame.len > 1000", "frame.len <= 60",
    "frame.len in {60..100}", "frame.cap_len < frame.len", "frame.number <= 10",
    "frame.number > 5 && frame.number < 15", "frame.time_relative <= 1",
    "frame.time_relative > 0.5", 'frame.time >= "2026-01-02 03:04:10"',
    'frame.time < "Jan 2, 2026 03:04:09.5"', "icmp.type == 8", "icmpv6.type == 128",
    "icmp.code == 0", "eth.dst == ff:ff:ff:ff:ff:ff", "eth.addr == 02:00:00:00:00:03",
    "eth.src == 02-00-00-00-00-01", "eth.type == 0x0800", "vlan.id == 200", "vlan.id == 10",
    "ieee8021ad.id == 100", "vlan && udp", "arp.opcode == 1",
    "arp.src.proto_ipv4 == 192.168.1.0/24", "dns.qry.name", 'dns.qry.name contains "example"',
    'dns.qry.name matches "^_"', 'dns.qry.name == "printer.local"',
    "dns && udp.srcport == 53", 'frame contains "HTTP"', 'frame contains "PADPAD"',
    'ip contains "PADPAD"', 'tcp contains "HTTP/1.1"', 'tcp.payload contains "Host:"',
    "udp contains 00:01", 'udp.payload contains "data"', 'frame matches "content-type: text"',
    'tcp.payload matches "^HTTP/1\\\\.[01] 200"', 'frame matches "(?-i)User-Agent"',
    "ip.src == 10.0.0.0/8", "ip.dst == 192.168.0.0/16", "ip.addr == 172.16.0.0/12",
    "!(ip.addr == 10.0.0.0/8)", "ip.addr != 10.0.0.0/8", "ip.src > 128.0.0.0",
    "ip.src in {10.0.0.1, 192.168.0.0/16}", "ipv6.addr == fe80::/10", "ipv6.dst == ff02::/16",
    "ipv6.src == 2001:db8::/32", "ip.src == ip.dst", "tcp.srcport < tcp.dstport",
    "(tcp.port == 80 || udp.port == 53) && frame.len > 100", "!(arp or icmp or dns)",
    "tcp.flags.ack == 1 and not tcp.len == 0", "ip.addr === 10.0.0.1", "ip.addr !== 10.0.0.8",
    "tcp.port ~= 80", "tcp.seq_raw == 1000", "ip.id == 0",
    ('proc.name == "curl"', 'frame.comment contains "Cmd: /usr/bin/curl\\n"'),
    ("proc.pid == 5151", 'frame.comment contains "PID: 5151\\n"'),
    ('proc.path matches "systemd"', 'frame.comment matches "^PID: [0-9]+\\nCmd: [^\\n]*systemd"'),
    ("thread.id == 4243", 'frame.comment contains "ThreadId: 4243"'),
    ("!proc.name", '!(frame.comment contains "PID: ")'),
    ('proc.name in {"curl", "python3"} && tcp.flags.syn == 1',
     '(frame.comment contains "Cmd: /usr/bin/curl\\n" || frame.comment contains '
     '"Cmd: /usr/bin/python3\\n") && tcp.flags.syn == 1'),
]
