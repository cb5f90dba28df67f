"""Run a Plan over one capture: SQL in id chunks, Python tests on the candidates only.

Chunks (ranges of packet ids) give progress, a point to notice cancellation and a place
to hand results over while the scan goes on. Packet bytes are read a block at a time (a
`blocks` row holds many packets' bytes); a View exposes one candidate to the field
getters without copying: `contains` searches the block in place.
"""

from __future__ import annotations

from bisect import bisect_right

from apppaccap.dissect.decode import decode
from apppaccap.store.blocks import BlockReader

CHUNK = 65536
_BASE = "id, ts, len, caplen, iface, blk, off, process_id, conn_id, pid, tid"
_NBASE = 11


class View:
    """One candidate packet: its row, its bytes inside the block, its decode (on demand)."""

    __slots__ = ("row", "scope", "blob", "base", "extra", "_dec", "_data")

    def __init__(self, row, scope, blob):
        self.row, self.scope, self.blob = row, scope, blob
        self.base = row[6]
        self.extra = row[_NBASE:]
        self._dec = self._data = None

    id = property(lambda self: self.row[0])
    ts = property(lambda self: self.row[1])
    len = property(lambda self: self.row[2])
    caplen = property(lambda self: self.row[3])
    process_id = property(lambda self: self.row[7])
    conn_id = property(lambda self: self.row[8])
    pid = property(lambda self: self.row[9])
    tid = property(lambda self: self.row[10])

    @property
    def lt(self) -> int:
        return self.scope.linktypes.get(self.row[4], 1)

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = self.blob[self.base:self.base + self.row[3]]
        return self._data

    @property
    def dec(self):
        if self._dec is None:
            self._dec = decode(self.lt, self.data)
        return self._dec

    def find(self, needle: bytes, start: int, end: int) -> bool:
        """Is needle inside bytes [start, end) of the packet? (searched in the block)"""
        b = self.base
        return self.blob.find(needle, b + start, b + min(end, self.row[3])) >= 0

    def slice(self, start: int, end: int) -> memoryview:
        b = self.base
        return memoryview(self.blob)[b + start:b + min(end, self.row[3])]


def scan(scope, plan, *, chunk: int = CHUNK, cancelled=None, first: int | None = None,
         last: int | None = None):
    """Yield (packets covered, [(packet_id, ts)…]) chunk by chunk, in packet id order.

    `first`/`last` narrow the scan to that id range (a page of capture_filter_packets).

    `cancelled()` is asked between chunks and before every Python-tested row (one row can
    cost a `matches` over a 256 KiB frame; the check costs less than a microsecond); when
    it says yes the generator simply stops.
    """
    if cancelled is None:
        cancelled = _never
    if plan.empty or scope.max_id < scope.min_id:
        yield scope.packets, []
        return
    conn = scope.conn
    first = scope.min_id if first is None else max(first, scope.min_id)
    last = scope.max_id if last is None else min(last, scope.max_id)
    if plan.ids is not None:
        first, last = max(first, plan.ids[0]), min(last, plan.ids[1])
        skipped = max(0, first - scope.min_id) + max(0, scope.max_id - last)
        if skipped:
            yield min(skipped, scope.packets), []
    if first > last:
        return
    where = plan.where
    blocks = None
    if plan.exact:
        sql = f"SELECT id, ts FROM packets WHERE id >= ? AND id <= ? AND ({where}) ORDER BY id"
    else:
        cols = _BASE + "".join(f", {s}" for s in plan.select)
        sql = f"SELECT {cols} FROM packets WHERE id >= ? AND id <= ? AND ({where}) ORDER BY id"
        blocks = BlockReader(conn)
        test = plan.py
        slim = (f"SELECT id, blk, off, caplen FROM packets WHERE id >= ? AND id <= ? AND ({where})"
                " ORDER BY id")
        one = f"SELECT {_BASE} FROM packets WHERE id = ?"
    lo = first
    try:
        while lo <= last:
            if cancelled():
                return
            hi = min(lo + chunk - 1, last)
            if plan.exact:
                found = conn.execute(sql, (lo, hi, *plan.params)).fetchall()
            elif plan.needle is not None:
                # four narrow columns for every candidate (half the cost of the full row), the
                # full row only for the packets whose frame holds the bytes
                rows = conn.execute(slim, (lo, hi, *plan.params)).fetchall()
                found = []
                for _id, blk, _off, _caplen in _block_hits(rows, plan.needle, blocks):
                    if cancelled():
                        return
                    r = conn.execute(one, (_id,)).fetchone()
                    if test(View(r, scope, blocks.get(blk))):
                        found.append((r[0], r[1]))
            else:
                found = []
                cur = conn.execute(sql, (*plan.select_params, lo, hi, *plan.params))
                for row in cur:
                    if cancelled():
                        return
                    if test(View(row, scope, blocks.get(row[5]))):
                        found.append((row[0], row[1]))
            yield hi - lo + 1, found
            lo = hi + 1
    finally:
        if blocks is not None:
            blocks.close()  # its side-file handle: Windows cannot delete an open file


def _never() -> bool:
    return False


def _block_hits(rows, needle: bytes, blocks: BlockReader):
    """The candidate rows whose frame bytes contain needle, found by searching each block
    once (memchr speed) instead of each packet: only the hits reach the Python test."""
    n = len(needle)
    i, total = 0, len(rows)
    while i < total:  # rows: (id, blk, off, caplen) in id order
        blk = rows[i][1]
        j = i
        while j < total and rows[j][1] == blk:
            j += 1
        group = rows[i:j]  # one block's candidates, in offset order (ids follow offsets)
        offs = [r[2] for r in group]
        blob = blocks.get(blk)
        end = group[-1][2] + group[-1][3]
        pos = blob.find(needle, offs[0], end)
        while pos >= 0:
            k = bisect_right(offs, pos) - 1
            stop = offs[k] + group[k][3]
            if pos + n <= stop:
                yield group[k]
                pos = blob.find(needle, stop, end)   # next packet on
            else:  # across a packet boundary, or between candidates: look further
                pos = blob.find(needle, pos + 1, end)
        i = j


def matching_ids(scope, plan, cancelled=None) -> list[int]:
    """All matching packet ids of a capture (capture_export's filter)."""
    out: list[int] = []
    for _covered, found in scan(scope, plan, cancelled=cancelled):
        out.extend(pid for pid, _ts in found)
    return out
