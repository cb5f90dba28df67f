"""One thread per adapter: libpcap → bounded queue. Nothing else happens here.

pypcap facts (docs/ARCHITECTURE.md, Decisions: pypcap and libpcap on Linux): dispatch()
holds the GIL while it waits, so we use a non-blocking handle + select() on its fd and
dispatch(-1) only when readable; that also stops cleanly. On lo the kernel counts every
packet twice in stats().

Not immediate mode: libpcap 1.10 on Linux implements immediate mode with
TPACKET_V2 fixed-size frames of `snaplen` bytes, so a 32 MiB ring at snaplen
256 KiB holds only 128 packets and a burst of 2,000 loopback datagrams lost 87 %
(measured). TPACKET_V3 with a 1 ms block timeout packs packets by their real size
and still delivers them within ~1 ms, which is what attribution needs.
"""

from __future__ import annotations

import logging
import queue
import select
import threading

from apppaccap.capture.bpf import filter_text
from apppaccap.capture.bpf import set_filter
from apppaccap.dissect.decode import decode
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound

SNAPLEN = 262144
ECHO = {1: (0, 8), 58: (128, 129)}  # ICMP / ICMPv6 echo reply and request types
log = logging.getLogger(__name__)


def open_handle(adapter: str, bpf: str):
    """Open a live handle with the BPF filter compiled by libpcap (errors → Malformed)."""
    import pcap  # lazily, as in adapters.py: only capturing needs libpcap loaded
    bpf = filter_text(bpf)  # before any handle exists: nothing to clean up on refusal
    if adapter not in pcap.findalldevs():
        # pcap.pcap(name=X) would otherwise try X as a capture *file*.
        raise NotFound(f"adapter: no capture device {adapter!r}")
    try:
        h = pcap.pcap(name=adapter, snaplen=SNAPLEN, promisc=False, immediate=False,
                      timestamp_in_ns=True, buffer_size=32 << 20, timeout_ms=1)
    except OSError as exc:
        raise NotFound(f"adapter: cannot open {adapter!r}: {exc}") from None
    if bpf:
        try:
            set_filter(h, bpf)  # checks the text first: see capture/bpf.py (double free)
        except Malformed:
            h.close()
            raise
    h.setnonblock(True)
    return h


class Sniffer:
    """Reads one adapter into `out` as (ts_ns, iface_index, bytes, decoded, flow key, what
    on_flow returned for it).

    The 5-tuple is decoded here and a new flow's owner is asked for at once (`on_flow`,
    non-blocking): every millisecond counts against a process that lives for five.
    """

    def __init__(self, handle, iface: int, out: queue.Queue, name: str, on_flow=None,
                 icmp: bool = False):
        self.handle = handle
        # ICMP echoes are flows too (keyed by their identifier, as the eBPF backend
        # reports them); only asked for when the backend can answer them
        self.icmp = icmp
        self.on_flow = on_flow
        self.iface = iface
        self.out = out
        self.name = name
        self.linktype = handle.datalink()
        self.overflow = 0
        self._closed, self._final_drops = False, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sniffer:{name}", daemon=True)

    def start(self):
        self._thread.start()

    def _run(self):
        put = self.out.put_nowait
        iface = self.iface
        fd = self.handle.fileno()
        linktype = self.linktype
        on_flow = self.on_flow
        icmp = self.icmp

        def on_packet(ts, pkt):
            data = bytes(pkt)
            d = decode(linktype, data)
            key = ref = None
            if (d.proto == 6 or d.proto == 17) and d.src is not None and not d.fragment:
                key = (d.proto, d.src, d.sport, d.dst, d.dport)
                if on_flow is not None:
                    ref = on_flow(key, d.proto == 6 and d.tcp_flags & 0x12 == 0x02)
            elif icmp and d.icmp_type in ECHO.get(d.proto, ()) and d.src is not None \
                    and 0 < d.l4_off <= len(data) - 8 and not d.fragment:
                ident = data[d.l4_off + 4] << 8 | data[d.l4_off + 5]
                key = (d.proto, d.src, ident, d.dst, ident)
                if on_flow is not None:
                    ref = on_flow(key, False)
            try:
                put((ts, iface, data, d, key, ref))
            except queue.Full:
                self.overflow += 1  # counted and reported in DroppedCount, never blocked on

        self._on_packet = on_packet
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    self.handle.dispatch(-1, on_packet)
                except OSError:
                    if self._stop.is_set():
                        break
                    raise
                except Exception:  # noqa: BLE001 - one bad packet must not stop the sniffer
                    log.exception("sniffer %s: packet handling failed", self.name)

    def libpcap_drops(self) -> int:
        """Packets the kernel/libpcap dropped so far (cumulative; readable while running)."""
        if self._closed:
            return self._final_drops
        try:
            received, dropped, if_dropped = self.handle.stats()
            # On lo the kernel counts every packet twice (module docstring); so are its drops.
            return (dropped + if_dropped) // (2 if self.name == "lo" else 1)
        except OSError:
            return 0

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        # What the kernel already holds belongs to the capture: read it before closing.
        on_packet = getattr(self, "_on_packet", None)
        if on_packet is not None:
            for _ in range(100):
                try:
                    if self.handle.dispatch(-1, on_packet) <= 0:
                        break
                except OSError:
                    break
        drops = self.libpcap_drops()
        self._final_drops, self._closed = drops, True
        self.handle.close()
        return drops
