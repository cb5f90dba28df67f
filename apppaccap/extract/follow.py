"""Follow stream: the payload of one connection, both directions in the order it was seen.

TCP follows Wireshark's own "Follow TCP Stream" (epan/dissectors/packet-tcp.c,
follow_tcp_tap_listener and check_follow_fragments, Wireshark 4.0) rule for rule, so the
result equals `tshark -q -z follow,tcp,raw,<stream>` byte for byte. That is why it does
not reuse :mod:`apppaccap.extract.reassembly` (built for file extraction): the two
disagree where the capture has holes, and here tshark is the reference:

* The client (direction 0) is the sender of the first packet, as in tshark; the caller
  may name it (the SYN sender) with ``client=``.
* Each direction starts at the first sequence number seen in it (after the SYN, which
  takes one number). Bytes behind the next expected byte are retransmissions: dropped,
  but a retransmission that carries more than was seen contributes its new tail.
* A segment ahead of the next expected byte waits (out of order) until the hole is
  filled. When the *other* direction acknowledges past the hole, the receiver did get
  the missing bytes, so the hole is reported as a gap (tshark writes the text
  "[N bytes missing in capture file]" there) and the stream goes on from the lowest
  waiting segment. Segments still waiting at the end are never output (tshark neither).
* Sequence numbers advance by the segment length the IP header reports, the data is
  what was captured: a packet cut by the snap length adds fewer bytes than it advances.

* A SYN with a new sequence number in a direction already seen (the same address and
  port pair used again; tshark splits it into a second stream) starts that direction over
  at the new SYN: the result is the old connection's stream followed by the new one's.

UDP: every datagram with a payload, in order.
"""

from __future__ import annotations

MASK = 0xFFFFFFFF
HALF = 0x80000000
FIN, SYN = 0x01, 0x02
# Bounds on what one follow may hold, whatever the packets say (docs/SECURITY.md): the
# chunks it answers (a Segment object each: one-byte segments in alternating directions
# made one per byte), and the segments waiting behind a hole (a sender that skips one
# sequence number and never fills it made every later byte wait in memory, and every
# packet scan the whole waiting list). Past either bound the follow is Truncated.
MAX_SEGMENTS = 100_000
MAX_WAITING = 1024


def _lt(a: int, b: int) -> bool:
    """a < b in sequence space (mod 2**32)."""
    return a != b and ((a - b) & MASK) >= HALF


class Follow:
    """Collects the chunks of one connection, ``max_bytes`` of data at most.

    ``chunks`` is a list of ``[direction, offset, bytearray]`` (consecutive chunks of the
    same direction merged) and ``[direction, offset, None, nbytes]`` for a gap; offsets
    count the bytes of that direction so far, gaps included. ``truncated`` turns True
    when a byte did not fit: the caller may stop feeding packets then.
    """

    def __init__(self, max_bytes: int, client: tuple | None = None):
        self.max_bytes = max_bytes
        self.client = client          # (ip, port) of direction 0
        self.server = None
        self.chunks: list = []
        self.kept = [0, 0]            # data bytes in chunks, per direction
        self.gaps = [0, 0]            # bytes reported missing per direction
        self.truncated = False
        self._seq = [0, 0]
        self._written = [0, 0]
        self._offset = [0, 0]
        self._frags: list[list] = [[], []]   # [seq, data] waiting, in arrival order
        self._waiting = 0                     # bytes in _frags

    # -- input ------------------------------------------------------------------------

    def udp(self, src: tuple, dst: tuple, data: bytes) -> None:
        d = self._dir(src, dst)
        if data:
            self._emit(d, data)

    def tcp(self, src: tuple, dst: tuple, seq: int, ack: int, flags: int, data: bytes,
            seglen: int) -> None:
        """One TCP segment: ``data`` is its captured payload, ``seglen`` the payload length
        the IP header reports (at least ``len(data)``)."""
        d = self._dir(src, dst)
        if flags & SYN:
            seq = (seq + 1) & MASK
            if (self._seq[d] or self._written[d]) and seq != self._seq[d]:
                # the port pair is used again (tshark makes it a new stream): this
                # direction starts over at the new SYN, after what came before
                self._waiting -= sum(len(f[1]) for f in self._frags[d])
                self._seq[d], self._written[d], self._frags[d] = seq, 0, []
        if self._frags[1 - d]:
            while self._check(1 - d, ack, True):
                pass
        if self._written[d] == 0 and self._seq[d] == 0:
            self._seq[d] = seq
        length = seglen
        nxt = self._seq[d]
        if _lt(seq, nxt):
            end = (seq + length) & MASK
            if _lt(nxt, end):
                skip = (nxt - seq) & MASK
                data = data[skip:] if len(data) > skip else b""
                seq, length = nxt, (end - nxt) & MASK
        if not data or _lt(seq, self._seq[d]):
            return
        if seq == self._seq[d]:
            self._seq[d] = (self._seq[d] + length) & MASK
            self._written[d] += len(data)
            self._emit(d, data)
            while self._check(d, 0, False):
                pass
        else:
            room = self.max_bytes - self.kept[0] - self.kept[1] - self._waiting
            if len(self._frags[d]) >= MAX_WAITING or len(data) > room:
                self.truncated = True  # more waiting than the answer could ever hold
                return
            self._frags[d].append([seq, bytes(data)])
            self._waiting += len(data)

    # -- internals --------------------------------------------------------------------

    def _dir(self, src: tuple, dst: tuple) -> int:
        if self.client is None:
            self.client = src
        if self.server is None:
            self.server = dst if src == self.client else src
        return 0 if src == self.client else 1

    def _check(self, d: int, acked: int, use_ack: bool) -> bool:
        """check_follow_fragments: deliver one waiting segment that now fits (True), or
        jump over a hole the other side acknowledged (True); False when nothing moved."""
        frags = self._frags[d]
        if not frags:
            return False
        lowest = frags[0][0]
        for i, (fseq, fdata) in enumerate(frags):
            if _lt(fseq, lowest):
                lowest = fseq
            if _lt(fseq, self._seq[d]):
                end = (fseq + len(fdata)) & MASK
                if _lt(self._seq[d], end):
                    new_pos = (self._seq[d] - fseq) & MASK
                    if len(fdata) > new_pos:
                        self._emit(d, fdata[new_pos:])
                    self._seq[d] = (self._seq[d] + len(fdata) - new_pos) & MASK
                self._waiting -= len(fdata)
                del frags[i]
                return True
            if fseq == self._seq[d]:
                if fdata:
                    self._emit(d, fdata)
                self._seq[d] = (self._seq[d] + len(fdata)) & MASK
                self._waiting -= len(fdata)
                del frags[i]
                return True
        if use_ack and _lt(lowest, acked):
            missing = (lowest - self._seq[d]) & MASK
            if missing >= HALF:
                missing -= 1 << 32
            self._gap(d, missing)
            self._seq[d] = lowest
            return True
        return False

    def _emit(self, d: int, data: bytes) -> None:
        off = self._offset[d]
        self._offset[d] += len(data)
        room = self.max_bytes - self.kept[0] - self.kept[1]
        if room <= 0:
            self.truncated = True
            return
        if len(data) > room:
            data = data[:room]
            self.truncated = True
        self.kept[d] += len(data)
        last = self.chunks[-1] if self.chunks else None
        if last is not None and last[0] == d and last[2] is not None:
            last[2] += data
        elif len(self.chunks) < MAX_SEGMENTS:
            self.chunks.append([d, off, bytearray(data)])
        else:
            self.kept[d] -= len(data)
            self.truncated = True

    def _gap(self, d: int, n: int) -> None:
        self.gaps[d] += max(n, 0)
        off = self._offset[d]
        self._offset[d] += max(n, 0)
        if self.kept[0] + self.kept[1] < self.max_bytes and len(self.chunks) < MAX_SEGMENTS:
            self.chunks.append([d, off, None, n])
        else:
            self.truncated = True
