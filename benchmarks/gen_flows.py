"""Generate a pcap of realistic Ethernet/IPv4 flows (TCP handshakes, data, FINs; DNS/UDP).

Used by the ingest/export and search benchmarks:
    python benchmarks/gen_flows.py OUT.pcap [--packets 1000000]
"""

from __future__ import annotations

import argparse
import random
import struct
import sys

ETH = struct.Struct("!6s6sH")
IP4 = struct.Struct("!BBHHHBBH4s4s")
TCP = struct.Struct("!HHIIBBHHH")
UDP = struct.Struct("!HHHH")
REC = struct.Struct("<IIII")


def _ip(n: int) -> bytes:
    return struct.pack("!I", n)


def frame(src, dst, proto, sport, dport, payload, flags=0x18, seq=0, ack=0):
    if proto == 6:
        l4 = TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0)
    else:
        l4 = UDP.pack(sport, dport, 8 + len(payload), 0)
    total = 20 + len(l4) + len(payload)
    ip = IP4.pack(0x45, 0, total, 0, 0x4000, 64, proto, 0, src, dst)
    return ETH.pack(b"\x02\0\0\0\0\x02", b"\x02\0\0\0\0\x01", 0x0800) + ip + l4 + payload


def generate(path: str, packets: int, seed: int = 7) -> int:
    """Write about `packets` packets of interleaved flows; returns the exact count."""
    rng = random.Random(seed)
    blob = bytes(rng.getrandbits(8) for _ in range(1460))
    clients = [_ip(0x0A000000 + i) for i in range(1, 301)]
    servers = [_ip(0x5DB80000 + i) for i in range(1, 201)]
    t = 1_700_000_000 * 1_000_000
    n = 0
    active: list = []
    with open(path, "wb", buffering=8 << 20) as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))

        def emit(data):
            nonlocal n, t
            t += rng.randint(1, 40)
            f.write(REC.pack(t // 1_000_000, t % 1_000_000, len(data), len(data)))
            f.write(data)
            n += 1

        while n < packets:
            if len(active) < 64:
                c, s = rng.choice(clients), rng.choice(servers)
                if rng.random() < 0.15:   # a DNS exchange
                    sport = rng.randint(1024, 65535)
                    emit(frame(c, s, 17, sport, 53, blob[:40]))
                    emit(frame(s, c, 17, 53, sport, blob[:120]))
                    continue
                sport, dport = rng.randint(1024, 65535), rng.choice((80, 443, 8080, 22))
                flow = [c, s, sport, dport, rng.randint(20, 120), 1000, 5000]
                emit(frame(c, s, 6, sport, dport, b"", 0x02, flow[5]))
                emit(frame(s, c, 6, dport, sport, b"", 0x12, flow[6], flow[5] + 1))
                emit(frame(c, s, 6, sport, dport, b"", 0x10, flow[5] + 1, flow[6] + 1))
                active.append(flow)
                continue
            i = rng.randrange(len(active))
            c, s, sport, dport, left, cseq, sseq = active[i]
            if left <= 0:
                emit(frame(c, s, 6, sport, dport, b"", 0x11, cseq, sseq))
                emit(frame(s, c, 6, dport, sport, b"", 0x11, sseq, cseq + 1))
                emit(frame(c, s, 6, sport, dport, b"", 0x10, cseq + 1, sseq + 1))
                active.pop(i)
                continue
            if rng.random() < 0.3:
                size = rng.randint(20, 400)
                emit(frame(c, s, 6, sport, dport, blob[:size], 0x18, cseq, sseq))
                active[i][5] += size
            else:
                size = 1460 if rng.random() < 0.8 else rng.randint(100, 1460)
                emit(frame(s, c, 6, dport, sport, blob[:size], 0x18, sseq, cseq))
                active[i][6] += size
                emit(frame(c, s, 6, sport, dport, b"", 0x10, cseq, sseq + size))
            active[i][4] -= 1
    return n


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--packets", type=int, default=1_000_000)
    args = ap.parse_args()
    print(generate(args.out, args.packets), "packets", file=sys.stderr)
