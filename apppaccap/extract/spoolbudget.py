"""What all the bodies one Extractor finds may spool together (extract/engine.py): the
spool stays as long as its capture, on the catalog's disk, and a body may decode to ~1000x
its wire bytes (gzip of zeros), so a capture's spool has a total and grows only with the
traffic it saw."""

from __future__ import annotations

MAX_CAPTURE_BYTES = 4 << 30  # in all (setting extract_max_capture_bytes; 64 bodies of 64 MiB)
# past one full body, per TCP payload byte seen: text and JSON gzip 4-20x, a bomb ~1000x
SPOOL_EXPANSION = 64
SPOOL_FILE_COST = 4096     # a spool file of one byte takes a file system block
_UNLIMITED = 1 << 62


class SpoolBudget:
    """What all the bodies of one Extractor may spool together: at most ``cap`` bytes,
    and at most ``free`` plus SPOOL_EXPANSION per TCP payload byte ``seen``. Each body
    is charged SPOOL_FILE_COST when it opens; ``exhausted`` turns True the first time
    a body is cut because of the budget rather than its own limit."""

    __slots__ = ("cap", "free", "seen", "used", "exhausted", "unspooled")

    def __init__(self, cap: int = _UNLIMITED, free: int = _UNLIMITED):
        self.cap, self.free, self.seen, self.used, self.exhausted = cap, free, 0, 0, False
        self.unspooled = 0  # empty bodies recorded without a spool file once it was spent

    def room(self) -> int:
        return max(min(self.cap, self.free + SPOOL_EXPANSION * self.seen) - self.used, 0)
