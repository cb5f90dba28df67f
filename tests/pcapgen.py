"""Generated capture files for the robustness tests (hostile payloads, many packets)."""

from __future__ import annotations

import random
import struct

ETH_IPV4 = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x08\x00"


def udp_frame(payload: bytes, sport: int = 40000, dport: int = 9) -> bytes:
    """An Ethernet/IPv4/UDP frame 10.0.0.1 → 10.0.0.2 carrying `payload` (checksums 0)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return ETH_IPV4 + ip + udp


def write_pcap(path, payloads, start_s: int = 1_700_000_000) -> int:
    """A classic little-endian pcap (Ethernet, µs) with one UDP frame per payload."""
    n = 0
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for i, payload in enumerate(payloads):
            frame = udp_frame(payload)
            fh.write(struct.pack("<IIII", start_s + i // 1000, (i % 1000) * 1000, len(frame),
                                 len(frame)))
            fh.write(frame)
            n += 1
    return n


def redos_payloads(count: int, binary_bytes: int = 1400, seed: int = 11):
    """Payloads that make a backtracking engine explode on `(a+)+$`: 28 'a's then '!'
    (2^28 ways to split the run before the match fails), followed by random '0'/'1' bytes
    that keep an RE2 program with a large state set busy (`[01]*1[01]{20}x`)."""
    rng = random.Random(seed)
    for _ in range(count):
        yield b"a" * 28 + b"!" + rng.randbytes(binary_bytes).translate(_ZERO_ONE)


_ZERO_ONE = bytes(0x30 | (i & 1) for i in range(256))  # any byte → '0' or '1' by its low bit
