"""Decode throughput of apppaccap.dissect.decode (one core, single process).

Prints packets/s for:
  * Ethernet/IPv4/TCP with a 742-byte payload (the libtins benchmark frame:
    docs/DECISIONS.md: the storage write path),
  * a mixed synthetic set (VLAN, IPv6, UDP/DNS, ICMP, ARP, SLL),
  * the real frames of the corpus' http_large_mixed_2k_packets.pcap,
each without touching ``summary`` (the ingest path) and then with ``summary``.

Run:  .venv/bin/python benchmarks/decode.py [seconds per figure, default 2]
"""

from __future__ import annotations

import os
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from apppaccap.dissect.decode import decode  # noqa: E402
from tests.helpers.corpus import CORPUS  # noqa: E402


def eth_ipv4_tcp(payload_len=742, src=b"\xc0\xa8\x00\x01", dst=b"\x5d\xb8\xd8\x22"):
    tcp = (
        struct.pack("!HHIIHHHH", 51234, 80, 1000, 2000, 5 << 12 | 0x18, 64240, 0, 0)
        + b"x" * payload_len
    )
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, src, dst) + tcp
    return b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\x08\x00" + ip


def mixed():
    frames = [(1, eth_ipv4_tcp(742, bytes([10, 0, 0, i]))) for i in range(40)]
    tcp = struct.pack("!HHIIHHHH", 443, 50000, 1, 2, 5 << 12 | 0x10, 500, 0, 0)
    ip6 = (
        struct.pack(
            "!IHBB16s16s",
            0x60000000,
            len(tcp),
            6,
            64,
            b"\x20\x01" + b"\x00" * 13 + b"\x01",
            b"\x20\x01" + b"\x00" * 13 + b"\x02",
        )
        + tcp
    )
    frames.append((1, b"\x00" * 12 + b"\x86\xdd" + ip6))
    frames.append((1, b"\x00" * 12 + b"\x81\x00\x00\x64\x08\x00" + eth_ipv4_tcp(100)[14:]))
    dns = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00\x00\x01\x00\x01"
    udp = struct.pack("!HHHH", 40000, 53, 8 + len(dns), 0) + dns
    frames.append(
        (
            1,
            b"\x00" * 12
            + b"\x08\x00"
            + struct.pack(
                "!BBHHHBBH4s4s",
                0x45,
                0,
                20 + len(udp),
                1,
                0,
                64,
                17,
                0,
                b"\x0a\0\0\1",
                b"\x08\x08\x08\x08",
            )
            + udp,
        )
    )
    frames.append(
        (113, struct.pack("!HHH", 0, 1, 6) + b"\x00" * 8 + b"\x08\x00" + eth_ipv4_tcp(300)[14:])
    )
    frames.append(
        (
            1,
            b"\xff" * 6
            + b"\x00" * 6
            + b"\x08\x06"
            + struct.pack("!HHBBH", 1, 0x800, 6, 4, 1)
            + b"\x00" * 6
            + b"\x0a\0\0\2"
            + b"\x00" * 6
            + b"\x0a\0\0\1",
        )
    )
    return frames


def corpus_frames(name="http_large_mixed_2k_packets.pcap"):
    path = os.path.join(CORPUS, "wellformed", name)
    if not os.path.exists(path):
        return []
    buf = open(path, "rb").read()
    order = "<" if buf[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack_from(order + "I", buf, 20)[0]
    frames, pos = [], 24
    while pos + 16 <= len(buf):
        caplen = struct.unpack_from(order + "I", buf, pos + 8)[0]
        frames.append((linktype, buf[pos + 16 : pos + 16 + caplen]))
        pos += 16 + caplen
    return frames


def rate(frames, seconds, with_summary):
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        if with_summary:
            for lt, data in frames:
                decode(lt, data).summary  # noqa: B018 - computing it is the point
        else:
            for lt, data in frames:
                decode(lt, data)
        count += len(frames)
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    sets = [
        ("Ethernet/IPv4/TCP, 742-byte payload", [(1, eth_ipv4_tcp())] * 1000),
        ("mixed synthetic (45 frames)", mixed() * 20),
        ("corpus http_large_mixed_2k_packets.pcap", corpus_frames()),
    ]
    print(f"python {sys.version.split()[0]}, {seconds:g} s per figure")
    for label, frames in sets:
        if not frames:
            print(f"{label}: corpus file not found, skipped")
            continue
        plain = rate(frames, seconds, False)
        summ = rate(frames, seconds, True)
        print(f"{label:42s} decode {plain:>12,.0f} pkt/s   decode+summary {summ:>10,.0f} pkt/s")


if __name__ == "__main__":
    main()
