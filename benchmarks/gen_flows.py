"""Generate a pcap of realistic Ethernet/IPv4 flows (TCP handshakes, data, FINs; DNS/UDP).

Used by the ingest/export and search benchmarks:
    python benchmarks/gen_flows.py OUT.pcap [--packets 1000000] [--profile long|short]

Profiles: "long" (the default) - ~64 concurrent TCP flows of 20-120 exchanges (1M packets
≈ 9,400 flows of ~106 packets) plus 15 % DNS pairs; "short" - traffic as real networks
mostly see it: heavy-tailed flow sizes with a mean of ~10 packets (1M packets ≈ 100,000
flows), DNS-heavy with real query/answer messages, ~400 flows interleaved, TCP handshakes
with FIN or RST teardowns, and some other UDP.
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


def generate(path: str, packets: int, seed: int = 7, profile: str = "long") -> int:
    """Write about `packets` packets of interleaved flows; returns the exact count."""
    if profile == "short":
        return _short(path, packets, seed)
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


def _dns_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"


def dns_query(qid: int, name: str) -> bytes:
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _dns_name(name) + b"\0\x01\0\x01"


def dns_answer(qid: int, name: str, ip: bytes) -> bytes:
    # one A record, its name a pointer to the question (0xC00C), as resolvers answer
    return (struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + _dns_name(name) +
            b"\0\x01\0\x01" + struct.pack("!HHHIH", 0xC00C, 1, 1, 300, 4) + ip)


def _short(path: str, packets: int, seed: int) -> int:
    """The short-flow profile: each step advances one of ~400 concurrent flows."""
    rng = random.Random(seed)
    blob = bytes(rng.getrandbits(8) for _ in range(1460))
    clients = [_ip(0x0A000000 + i) for i in range(1, 2001)]
    servers = [_ip(0x5DB80000 + i) for i in range(1, 5001)]
    names = [f"host{i}.example{i % 97}.com" for i in range(len(servers))]
    resolvers = [_ip(0x08080808), _ip(0x01010101), _ip(0x0A0000FE)]
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
            if len(active) < 400:
                c = rng.choice(clients)
                kind = rng.random()
                sport = rng.randint(1024, 65535)
                if kind < 0.35:     # DNS: query now, the answer on a later step
                    i = rng.randrange(len(servers))
                    r, qid = rng.choice(resolvers), rng.getrandbits(16)
                    emit(frame(c, r, 17, sport, 53, dns_query(qid, names[i])))
                    active.append(["dns", c, r, sport, qid, names[i], servers[i]])
                elif kind < 0.42:   # other UDP (NTP-, QUIC-, syslog-like): 1-6 datagrams
                    s = rng.choice(servers)
                    active.append(["udp", c, s, sport, rng.choice((123, 443, 514)),
                                   rng.randint(1, 6)])
                else:               # TCP: handshake, a heavy-tailed number of exchanges
                    s = rng.choice(servers[:1000])
                    dport = rng.choice((443, 443, 80, 8080, 22))
                    left = min(int(2 * rng.paretovariate(1.3)) - 1, 20000)
                    emit(frame(c, s, 6, sport, dport, b"", 0x02, 1000))
                    active.append(["syn", c, s, sport, dport, left, 1000, 5000])
                continue
            i = rng.randrange(len(active))
            fl = active[i]
            kind, c, s, sport = fl[0], fl[1], fl[2], fl[3]
            if kind == "dns":
                emit(frame(s, c, 17, 53, sport, dns_answer(fl[4], fl[5], fl[6])))
                active.pop(i)
            elif kind == "udp":
                out = rng.random() < 0.6
                size = rng.randint(48, 1200)
                emit(frame(c, s, 17, sport, fl[4], blob[:size]) if out else
                     frame(s, c, 17, fl[4], sport, blob[:size]))
                fl[5] -= 1
                if fl[5] <= 0:
                    active.pop(i)
            elif kind == "syn":
                dport, cseq, sseq = fl[4], fl[6], fl[7]
                emit(frame(s, c, 6, dport, sport, b"", 0x12, sseq, cseq + 1))
                emit(frame(c, s, 6, sport, dport, b"", 0x10, cseq + 1, sseq + 1))
                fl[0], fl[6], fl[7] = "tcp", cseq + 1, sseq + 1
            else:
                dport, left, cseq, sseq = fl[4], fl[5], fl[6], fl[7]
                if left <= 0:
                    if rng.random() < 0.1:   # reset instead of a FIN exchange
                        emit(frame(s, c, 6, dport, sport, b"", 0x14, sseq, cseq))
                    else:
                        emit(frame(c, s, 6, sport, dport, b"", 0x11, cseq, sseq))
                        emit(frame(s, c, 6, dport, sport, b"", 0x11, sseq, cseq + 1))
                        emit(frame(c, s, 6, sport, dport, b"", 0x10, cseq + 1, sseq + 1))
                    active.pop(i)
                    continue
                if rng.random() < 0.4:
                    size = rng.randint(20, 600)
                    emit(frame(c, s, 6, sport, dport, blob[:size], 0x18, cseq, sseq))
                    fl[6] += size
                else:
                    size = 1460 if rng.random() < 0.7 else rng.randint(100, 1460)
                    emit(frame(s, c, 6, dport, sport, blob[:size], 0x18, sseq, cseq))
                    fl[7] += size
                    emit(frame(c, s, 6, sport, dport, b"", 0x10, cseq, sseq + size))
                fl[5] -= 1
    return n


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--profile", choices=("long", "short"), default="long")
    args = ap.parse_args()
    print(generate(args.out, args.packets, profile=args.profile), "packets", file=sys.stderr)
