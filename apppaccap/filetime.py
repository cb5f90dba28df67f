"""Windows FILETIME (100-ns ticks since 1601-01-01 UTC), the API's time unit.

Internally every timestamp is integer nanoseconds since the Unix epoch (what
pcap files and the kernel give us); conversion happens only at the API edge.
"""

import time

EPOCH_DIFF_TICKS = 116444736000000000  # 1601→1970 in 100-ns ticks


def from_ns(ns: int | None) -> int:
    """Unix-epoch nanoseconds → FILETIME ticks (0 stays 0: "never")."""
    if not ns:
        return 0
    return ns // 100 + EPOCH_DIFF_TICKS


def to_ns(ft: int) -> int:
    """FILETIME ticks → Unix-epoch nanoseconds."""
    return (ft - EPOCH_DIFF_TICKS) * 100


def to_ns_clamped(ft: int) -> int:
    """FILETIME ticks → Unix-epoch ns, clamped to the signed 64-bit range that SQLite and
    packet times have (years 1677-2262): FILETIME 1 (year 1601) is "before every packet",
    not a number SQLite cannot store."""
    return max(-(1 << 63), min((1 << 63) - 1, to_ns(ft)))


def now_ns() -> int:
    return time.time_ns()


def now() -> int:
    return from_ns(time.time_ns())
