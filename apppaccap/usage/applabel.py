"""Application labels for usage accounting: nDPI (dissect/ndpi.py) on the first packets of
each flow the counting handles see (docs/LABELS.md, Usage accounting).

Each counting thread (usage/counting.py) has a FlowLabeller with its own nDPI detection
module (a module is not thread-safe). The thread's packet callback already parses every
packet's headers; for a flow still in detection it hands the packet here, from the IP
header on. The rule is the captures' (capture/applabels.py): pure TCP ACKs are neither fed
nor counted, feeding stops when nDPI has nothing more to learn or after MAX_PACKETS, and a
flow that goes quiet or runs too long is given nDPI's give-up answer (a port/address
guess). Every other packet costs the callback one test of `None`.

A settled label goes to the recorder's shared `FlowLabels` (flow key → (AppProtocol, App,
Category), bounded); the recorder's tick reads it per flow. When a live capture has already
labelled the flow, its label is taken instead (read only: the capture's Conn is looked at,
nothing written) and this flow is not dissected again.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from apppaccap.attribution.labels import flow_key
from apppaccap.capture.applabels import MAX_PACKETS
from apppaccap.dissect import ndpi

log = logging.getLogger(__name__)

MAX_KNOWN = 50_000       # settled flow labels kept (the usage lookup's own flow bound)
MAX_PENDING = 10_000     # flows in detection per adapter (688 bytes of nDPI state each)
GIVE_UP_NS = 5_000_000_000  # a flow in detection this long is settled on what nDPI knows
SWEEP_NS = 1_000_000_000
_TCP = 6


class FlowLabels:
    """Settled labels by flow key, shared by the counting threads (writers) and the tick
    (reader); `from_capture(key5)` reads a live capture's label for the flow, or None."""

    def __init__(self, from_capture=None):
        self.known: OrderedDict = OrderedDict()
        self.from_capture = from_capture
        self._lock = threading.Lock()

    def put(self, fk, labels: tuple) -> None:
        with self._lock:
            self.known[fk] = labels
            self.known.move_to_end(fk)
            while len(self.known) > MAX_KNOWN:
                self.known.popitem(last=False)

    def settled(self, fk) -> bool:
        with self._lock:
            if fk not in self.known:
                return False
            self.known.move_to_end(fk)  # a long-lived flow stays known
            return True

    def of(self, key5: tuple):
        """(AppProtocol, App, Category) of a flow: a live capture's label first, else
        usage's own; None while unknown."""
        if self.from_capture is not None:
            try:
                labels = self.from_capture(key5)
            except Exception:  # noqa: BLE001 - a capture stopping under us: use our own
                labels = None
            if labels:
                return tuple(labels)
        return self.known.get(flow_key(*key5))


class FlowLabeller:
    """One counting thread's nDPI module and the flows it is still looking at. Every method
    runs on that thread."""

    def __init__(self, labels: FlowLabels, det):
        self.labels = labels
        self.det = det
        self.pending: dict = {}   # flow key → state [nDPI flow, fed, master, app, cat, began]
        self._swept = 0

    @classmethod
    def open(cls, labels: FlowLabels):
        det = ndpi.open_detector()  # None (the reason logged once) without nDPI 4.2
        return cls(labels, det) if det is not None else None

    def begin(self, key5: tuple, ts: int):
        """The detection state of a flow seen in this tick, or None when its label is known
        (by us or a live capture), i.e. nothing to feed."""
        fk = flow_key(*key5)
        st = self.pending.get(fk)
        if st is not None or self.labels.settled(fk):
            return st
        if self.labels.from_capture is not None and self.labels.of(key5) is not None:
            self.labels.put(fk, self.labels.of(key5))
            return None
        if len(self.pending) >= MAX_PENDING:
            self.labels.put(fk, (ndpi.UNKNOWN, "", ""))  # as captures do beyond their bound
            return None
        st = self.pending[fk] = [self.det.new_flow(), 0, 0, 0, 0, ts, fk]
        return st

    def feed(self, st: list, pkt, off: int, l4: int, end: int, proto: int, ts: int) -> None:
        """One packet of a flow in detection; `off` is where its IP header starts, `l4` its
        transport header, `end` the end of the IP packet (past a snaplen cut: the IP length
        is patched down, nDPI refuses a packet shorter than its header says)."""
        if not st[0]:
            return  # settled earlier in this tick
        if proto == _TCP and len(pkt) > l4 + 13:
            payload = end - l4 - (pkt[l4 + 12] >> 4) * 4
            if payload <= 0 and not pkt[l4 + 13] & 0x07:
                return  # a pure ACK teaches nDPI nothing
        l3 = bytes(pkt[off:end])
        if len(pkt) < end:
            l3 = _cut(l3)
        master, app, cat, more = self.det.process(st[0], l3, ts // 1_000_000)
        st[1] += 1
        if master or app:
            st[2], st[3], st[4] = master, app, cat
        if ((master or app) and not more) or st[1] >= MAX_PACKETS:
            self._settle(st)

    def _settle(self, st: list) -> None:
        flow, _fed, master, app, cat, _began, fk = st
        verdict = (master, app, cat) if master or app else self.det.giveup(flow)
        self.labels.put(fk, self.det.names(*verdict))
        self.det.free_flow(flow)
        st[0] = 0
        self.pending.pop(fk, None)

    def sweep(self, now: int) -> None:
        """Settle flows in detection for longer than GIVE_UP_NS (a quiet flow, one that
        carries nothing nDPI can name); at most once a second."""
        if now - self._swept < SWEEP_NS:
            return
        self._swept = now
        for st in [s for s in self.pending.values() if now - s[5] > GIVE_UP_NS]:
            self._settle(st)

    def close(self) -> None:
        for st in list(self.pending.values()):
            self._settle(st)  # what nDPI knows so far is still a label
        self.det.close()


def _cut(l3: bytes) -> bytes:
    """An IP packet cut by the snaplen, its length field set to what is there."""
    b = bytearray(l3)
    n = len(b)
    if n >= 20 and b[0] >> 4 == 4:
        b[2:4] = n.to_bytes(2, "big")
    elif n >= 40 and b[0] >> 4 == 6:
        b[4:6] = (n - 40).to_bytes(2, "big")
    return bytes(b)
