"""Generated capture files for the robustness tests (hostile payloads, many packets)."""

from __future__ import annotations

import random

from tests.helpers.packets import udp_frame
from tests.helpers.pcapfiles import write_pcap


def write_udp_pcap(path, payloads, start_s: int = 1_700_000_000) -> int:
    """A classic pcap (Ethernet, µs) with one UDP frame 10.0.0.1 → 10.0.0.2:9 per payload,
    a thousand to the second."""
    return write_pcap(path, (((start_s + i // 1000) * 1_000_000_000 + (i % 1000) * 1_000_000,
                              udp_frame(payload)) for i, payload in enumerate(payloads)))


def redos_payloads(count: int, binary_bytes: int = 1400, seed: int = 11):
    """Payloads that make a backtracking engine explode on `(a+)+$`: 28 'a's then '!'
    (2^28 ways to split the run before the match fails), followed by random '0'/'1' bytes
    that keep an RE2 program with a large state set busy (`[01]*1[01]{20}x`)."""
    rng = random.Random(seed)
    for _ in range(count):
        yield b"a" * 28 + b"!" + rng.randbytes(binary_bytes).translate(_ZERO_ONE)


_ZERO_ONE = bytes(0x30 | (i & 1) for i in range(256))  # any byte → '0' or '1' by its low bit
