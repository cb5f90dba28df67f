"""TCP stream reassembly for one direction of one connection.

Design choices (documented because IDSs disagree on them):

* **Overlaps: first received wins.**  Bytes already delivered, or already
  buffered out of order, are never replaced by a later segment covering the
  same sequence range; only the uncovered parts of the later segment are used.
  Zeek behaves the same way (it reports differing bytes as
  ``rexmit_inconsistency``); Snort and Suricata can instead emulate the target
  host's OS policy, which we cannot know.  It is also the only policy that
  needs no copy of already delivered data.
* **Sequence arithmetic is modulo 2**32**, relative to the next expected byte,
  so wraparound needs no special case.  A segment whose start lies *behind* the
  next expected byte is a retransmission: its old part is dropped and any new
  tail is used.
* **Mid-stream pickup:** without a SYN the stream starts at the first sequence
  number seen (payload or not).  Data from before that point that arrives later
  is treated as a retransmission and dropped.
* **Gaps.**  A segment that lands further ahead than ``limit`` bytes (the
  per-stream buffer bound) can never be reached by buffering, so the hole is
  skipped at once.  Narrower holes wait for the missing data until the buffered
  out-of-order bytes exceed ``limit`` or the stream ends; then the reassembler
  jumps to the lowest buffered segment.  The owner may also end the wait at once
  (:meth:`Reassembler.release`: the Extractor does when all its connections
  together hold too much).  Every skipped byte is reported to the
  consumer through ``gap(n)`` and counted in :attr:`Reassembler.missing`.
  Jumping "forward" also keeps captures with huge holes (sampled or lossy
  captures) in packet order, which is what ``tshark`` produces for them.
"""

from __future__ import annotations

from bisect import bisect_right
from bisect import insort

MASK = 0xFFFFFFFF
HALF = 0x80000000
# Rough bookkeeping cost of one buffered segment, so that floods of tiny
# segments are bounded too.
_SEG_OVERHEAD = 64


class Reassembler:
    """Reorders one TCP direction and feeds contiguous bytes to ``sink``.

    ``sink`` needs three methods: ``data(buf: bytes, ts_ns: int)``,
    ``gap(nbytes: int)`` and ``end(fin: bool)``.  ``end`` is called exactly
    once: with ``fin=True`` when the FIN has been reached in sequence, with
    ``fin=False`` when :meth:`finish` ends the stream without one.
    """

    __slots__ = ("sink", "limit", "started", "ended", "nxt", "offset", "starts", "segs",
                 "pend_bytes", "fin_off", "missing", "dup_bytes", "ack")

    def __init__(self, sink, limit: int = 1 << 20):
        self.sink = sink
        self.limit = max(int(limit), 1)
        self.started = False
        self.ended = False
        self.nxt = 0          # next expected sequence number (mod 2**32)
        self.offset = 0       # stream offset of ``nxt`` (bytes delivered + skipped)
        self.starts: list[int] = []   # sorted stream offsets of buffered segments
        self.segs: dict[int, tuple] = {}  # start -> (end, data, ts, ack)
        self.pend_bytes = 0
        self.fin_off: int | None = None
        self.missing = 0      # bytes skipped over as gaps
        self.dup_bytes = 0    # retransmitted / overlapping bytes dropped
        self.ack = 0          # ACK field of the segment whose data is being delivered

    def segment(self, seq: int, payload: bytes, ts_ns: int,
                syn: bool = False, fin: bool = False, ack: int = 0) -> None:
        """Add one segment (``payload`` may be empty) seen at ``ts_ns``.

        ``ack`` is the segment's acknowledgement number; it is exposed as
        :attr:`ack` while the segment's bytes are being delivered (the HTTP
        parser uses it to re-pair responses with requests after a loss).
        """
        if self.ended:
            return
        if syn:
            if self.started:
                return          # retransmitted SYN (its payload was seen already)
            self.started = True
            seq = (seq + 1) & MASK  # the SYN itself takes one sequence number
            self.nxt = seq
        elif not self.started:
            self.started = True
            self.nxt = seq & MASK
        d = (seq - self.nxt) & MASK
        n = len(payload)
        if d == 0 and not self.starts:
            # Fast path: in order with nothing buffered.
            if n:
                self.offset += n
                self.nxt = (self.nxt + n) & MASK
                self.ack = ack
                self.sink.data(payload, ts_ns)
            if fin:
                self._set_fin(self.offset)
            elif self.fin_off is not None and self.offset >= self.fin_off:
                self._end(True)
            return
        if d >= HALF:
            d -= 1 << 32
        if fin:
            self._set_fin(self.offset + d + n)
        if n:
            self._add(self.offset + d, payload, ts_ns, ack)
        if self.fin_off is not None and self.offset >= self.fin_off:
            self._end(True)

    def finish(self) -> None:
        """Stream over: deliver what is buffered (skipping holes), then end."""
        if self.ended:
            return
        while self.starts:
            self._jump(self.starts[0])
        self._end(self.fin_off is not None and self.offset >= self.fin_off)

    def release(self) -> None:
        """Stop waiting for holes: deliver everything buffered in order, each hole
        skipped as a gap; the stream goes on after the last buffered byte."""
        if self.ended:
            return
        while self.starts:
            self._jump(self.starts[0])
        if self.fin_off is not None and self.offset >= self.fin_off:
            self._end(True)

    # -- internals -------------------------------------------------------

    def _set_fin(self, off: int) -> None:
        if self.fin_off is None:
            self.fin_off = off
            if self.offset >= off:
                self._end(True)

    def _end(self, fin: bool) -> None:
        if not self.ended:
            self.ended = True
            self.starts.clear()
            self.segs.clear()
            self.pend_bytes = 0
            self.sink.end(fin)

    def _add(self, start: int, payload: bytes, ts: int, ack: int) -> None:
        end = start + len(payload)
        if end <= self.offset:
            self.dup_bytes += len(payload)
            return
        if start < self.offset:
            # Retransmission overlapping delivered data: keep the old bytes.
            self.dup_bytes += self.offset - start
            payload = payload[self.offset - start:]
            start = self.offset
        if start > self.offset + self.limit:
            # The hole is wider than the buffer bound: it can never be filled
            # within the bound, so give up on it now.
            self._jump(start)
        if start == self.offset and not self.starts:
            self._deliver(payload, ts, ack)
            return
        self._insert(start, end, payload, ts, ack)
        self._drain()
        while self.pend_bytes > self.limit and self.starts:
            self._jump(self.starts[0])

    def _insert(self, start: int, end: int, payload: bytes, ts: int, ack: int) -> None:
        """Buffer [start, end) minus whatever is already buffered."""
        starts, segs = self.starts, self.segs
        i = bisect_right(starts, start) - 1
        if i < 0:
            i = 0
        cur = start
        pieces = []
        while i < len(starts) and cur < end:
            s = starts[i]
            e = segs[s][0]
            i += 1
            if e <= cur:
                continue
            if s >= end:
                break
            if s > cur:
                pieces.append((cur, s))
            self.dup_bytes += min(e, end) - max(s, cur)
            cur = e
        if cur < end:
            pieces.append((cur, end))
        for s, e in pieces:
            data = payload if (s == start and e == end) else payload[s - start:e - start]
            insort(starts, s)
            segs[s] = (e, data, ts, ack)
            self.pend_bytes += e - s + _SEG_OVERHEAD

    def _drain(self) -> None:
        """Deliver buffered segments that are now contiguous."""
        starts, segs = self.starts, self.segs
        k = 0
        # Segments never overlap, so the ones that became deliverable are a
        # prefix of ``starts``; delete that prefix once (not pop(0) each).
        while k < len(starts) and starts[k] <= self.offset:
            s = starts[k]
            k += 1
            e, data, ts, ack = segs.pop(s)
            self.pend_bytes -= e - s + _SEG_OVERHEAD
            if e > self.offset:
                self._deliver(data[self.offset - s:] if s < self.offset else data, ts, ack)
        if k:
            del starts[:k]

    def _jump(self, target: int) -> None:
        """Skip forward to stream offset ``target``, delivering buffered data
        before it in order and reporting each hole as a gap."""
        while self.starts and self.starts[0] < target:
            self._gap_to(self.starts[0])
            self._drain()
        self._gap_to(target)
        self._drain()

    def _gap_to(self, target: int) -> None:
        n = target - self.offset
        if n > 0:
            self.missing += n
            self.offset = target
            self.nxt = (self.nxt + n) & MASK
            self.sink.gap(n)

    def _deliver(self, data: bytes, ts: int, ack: int) -> None:
        n = len(data)
        if n:
            self.offset += n
            self.nxt = (self.nxt + n) & MASK
            self.ack = ack
            self.sink.data(data, ts)

    def offset_of(self, seq: int) -> int:
        """Stream offset corresponding to sequence number ``seq``."""
        d = (seq - self.nxt) & MASK
        return self.offset + (d - (1 << 32) if d >= HALF else d)
