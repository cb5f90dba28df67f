"""The time window and bucket of a statistics answer, and where its rows come from.

A series' bucket follows the span it covers, so a chart always has enough points: 1 s up
to 5 minutes, 1 minute up to 5 hours, 1 hour up to 5 days, days beyond (at least five
buckets from 5 minutes on, at most ~300). Second buckets are read from the per-second
aggregates the recorder keeps while writing (`agg_sec`, `proc_sec`); longer buckets from
the per-minute `agg` (or `proc_sec` grouped). The span reported is the real one: the
first and last packet times kept while writing (`span`), clipped to the asked range.
Captures written before the per-second aggregates existed get minute buckets at least.
"""

from __future__ import annotations

from dataclasses import dataclass

from apppaccap.filetime import from_ns

SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR, DAY = 60 * MINUTE, 1440 * MINUTE


def bucket_for(span_ns: int) -> int:
    """The bucket (ns) of a series covering span_ns."""
    if span_ns <= 5 * MINUTE:
        return SECOND
    if span_ns <= 5 * HOUR:
        return MINUTE
    if span_ns <= 5 * DAY:
        return HOUR
    return DAY


@dataclass
class Window:
    lo: int | None      # first packet time in the range (ns), None: no packets
    hi: int | None      # last packet time in the range (ns)
    size: int           # bucket (ns)
    fine: bool          # per-second rows exist for this capture

    @property
    def table(self) -> tuple[str, str, int]:
        """(aggregate table, its time column, that column's unit in ns) for this bucket."""
        if self.fine and self.size == SECOND:
            return "agg_sec", "sec", SECOND
        return "agg", "minute", MINUTE

    def bounds(self, unit: int) -> tuple[int, int]:
        """The window in `unit`s (inclusive), for WHERE col BETWEEN ? AND ?."""
        return self.lo // unit, self.hi // unit

    def fields(self) -> dict:
        """FirstTime/LastTime (FILETIME) and the bucket in seconds."""
        if self.lo is None:
            return {"FirstTime": 0, "LastTime": 0, "BucketSeconds": self.size // SECOND}
        return {"FirstTime": from_ns(self.lo), "LastTime": from_ns(self.hi),
                "BucketSeconds": self.size // SECOND}


def window(db, start: int | None = None, end: int | None = None) -> Window:
    """The capture's packets' time span within [start, end] and the bucket for it."""
    row = db.one("SELECT first, last FROM span WHERE id = 0")
    fine = row is not None
    if fine:
        first, last = row[0], row[1]
    else:  # written before per-second aggregates: whole minutes
        r = db.one("SELECT min(minute), max(minute) FROM agg")
        first, last = (None, None) if r[0] is None else (r[0] * MINUTE, (r[1] + 1) * MINUTE - 1)
    if first is None:
        return Window(None, None, SECOND if fine else MINUTE, fine)
    lo = first if start is None else max(start, first)
    hi = last if end is None else min(end, last)
    if hi < lo:
        return Window(None, None, SECOND if fine else MINUTE, fine)
    size = bucket_for(hi - lo)
    return Window(lo, hi, size if fine or size != SECOND else MINUTE, fine)


def bucketed(rows, size: int, unit: int, width: int = 2) -> dict:
    """rows of (time in `unit`s, v1..v_width) → {bucket start ns: [sums]}."""
    out: dict[int, list] = {}
    for r in rows:
        t = r[0] * unit // size * size
        acc = out.setdefault(t, [0] * width)
        for i in range(width):
            acc[i] += r[1 + i]
    return out
