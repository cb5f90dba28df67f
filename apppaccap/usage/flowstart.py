"""Flow starts, at once: the counting handles hand packets over in blocks (up to 50 ms
late), and a short connection (a 5 MB download on loopback takes 0.2 s) has closed its
sockets before its first block is read, so its owner can no longer be found. A small
immediate-mode handle per adapter sees only TCP SYNs and asks the usage lookup about the
flow while its sockets exist. UDP is not watched here: it has no "first packet" bit for
BPF to select, and a UDP flood would cost a Python call per datagram.
"""

from __future__ import annotations

import logging
import os
import threading

from apppaccap.dissect.decode import decode
from apppaccap.usage.counting import HandleReaders
from apppaccap.usage.counting import dispatch_until

log = logging.getLogger(__name__)

# The client's SYN (not the SYN-ACK: the flow is asked about in its originator's
# orientation, so on loopback the client's owner comes first), IPv4 and IPv6 without
# extension headers (flags at byte 40 + 13)
BPF = ("(ip and tcp and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn) or "
       "(ip6 and ip6[6] == 6 and ip6[53] & 0x12 == 2)")
SNAPLEN = 128
BUFFER_BYTES = 1 << 20  # immediate mode: frames of snaplen bytes, ~4,000 of them
NICE = -10


def open_syn_handle(adapter: str):
    import pcap  # lazily: only capturing needs libpcap loaded
    h = pcap.pcap(name=adapter, snaplen=SNAPLEN, promisc=False, immediate=True,
                  timestamp_in_ns=True, buffer_size=BUFFER_BYTES, timeout_ms=1)
    h.setfilter(BPF)
    h.setnonblock(True)
    return h


class FlowStarts(HandleReaders):
    """Reads the SYN handles; `on_syn(key5)` must not block."""

    opener = staticmethod(open_syn_handle)
    thread_name, missing = "usage-syn", "flow starts"

    def __init__(self, on_syn):
        super().__init__()
        self.on_syn = on_syn

    def _run(self, handle, stop) -> None:
        # A higher CFS weight (not real time: nothing spins here, and idle it costs
        # nothing): on a loaded machine a normal thread woke 0.1 s after the SYN, after
        # a short download had closed its sockets.
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        except (AttributeError, OSError):
            pass
        linktype = handle.datalink()
        on_syn = self.on_syn

        def on_packet(_ts, pkt):
            d = decode(linktype, bytes(pkt))
            if d.src is not None and d.proto == 6 and not d.fragment:
                on_syn((6, d.src, d.sport, d.dst, d.dport))

        dispatch_until(handle, on_packet, stop, "a SYN frame")
