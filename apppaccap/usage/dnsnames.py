"""Hostnames for usage accounting, from the DNS answers the host receives.

The counting handles cut packets at 128 bytes, which cuts most DNS answers, so each adapter
gets a second, small handle filtered to DNS ("udp port 53 or tcp port 53") with a snaplen
that keeps whole messages. An A/AAAA answer maps the address to the name that was asked
(the question's name, not the CNAME target the record may carry). The map is bounded
(LRU); the recorder writes what it learnt with its minute rows (store/usage.py).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from apppaccap.dissect.dns import dns_answers
from apppaccap.dissect.dns import dns_query_name
from apppaccap.usage.counting import LINKS
from apppaccap.usage.counting import HandleReaders
from apppaccap.usage.counting import dispatch_until

log = logging.getLogger(__name__)

BPF = "udp port 53 or tcp port 53"
SNAPLEN = 4096 + 128  # an EDNS answer of 4096 bytes and its headers
BUFFER_BYTES = 1 << 20  # DNS is a trickle next to the traffic it names
MAX_NAMES = 20_000


def open_dns_handle(adapter: str):
    import pcap  # lazily: only capturing needs libpcap loaded
    h = pcap.pcap(name=adapter, snaplen=SNAPLEN, promisc=False, immediate=False,
                  timestamp_in_ns=True, buffer_size=BUFFER_BYTES, timeout_ms=50)
    h.setfilter(BPF)
    h.setnonblock(True)
    return h


def dns_payload(linktype: int, pkt: bytes):
    """The DNS message of a frame from port 53 (UDP, or one TCP segment holding a whole
    length-prefixed message), or None."""
    link = LINKS.get(linktype)
    if link is None:
        return None
    type_at, off = link
    if type_at is None:
        version = pkt[0] >> 4 if pkt else 0
    else:
        etype = int.from_bytes(pkt[type_at:type_at + 2], "big")
        if etype == 0x8100 and type_at == 12:
            etype = int.from_bytes(pkt[16:18], "big")
            off += 4
        version = 4 if etype == 0x0800 else 6 if etype == 0x86DD else 0
    if version == 4 and len(pkt) >= off + 20:
        proto, l4 = pkt[off + 9], off + (pkt[off] & 15) * 4
        if int.from_bytes(pkt[off + 6:off + 8], "big") & 0x3FFF:
            return None  # a fragment: the message is not whole here
    elif version == 6 and len(pkt) >= off + 40:
        proto, l4 = pkt[off + 6], off + 40
    else:
        return None
    if len(pkt) < l4 + 8 or int.from_bytes(pkt[l4:l4 + 2], "big") != 53:
        return None  # only answers: they come from port 53
    if proto == 17:
        return pkt[l4 + 8:]
    if proto == 6 and len(pkt) >= l4 + 20:
        data = pkt[l4 + (pkt[l4 + 12] >> 4) * 4:]
        if len(data) >= 2 and int.from_bytes(data[:2], "big") == len(data) - 2:
            return data[2:]
    return None


class DnsNames(HandleReaders):
    """ip → hostname learnt from DNS answers; `take_new()` hands over what changed."""

    opener = staticmethod(open_dns_handle)
    thread_name, missing = "usage-dns", "DNS answers"

    def __init__(self, max_names: int = MAX_NAMES):
        super().__init__()
        self.names: OrderedDict[str, str] = OrderedDict()
        self.max_names = max_names
        self.new: dict[str, str] = {}
        self.lock = threading.Lock()

    def learn(self, payload) -> int:
        pairs = dns_answers(payload)
        if not pairs:
            return 0
        asked = dns_query_name(payload)
        with self.lock:
            for rr_name, ip in pairs:
                name = asked or rr_name
                self.names[ip] = name
                self.names.move_to_end(ip)
                self.new[ip] = name
            while len(self.names) > self.max_names:
                self.names.popitem(last=False)
        return len(pairs)

    def get(self, ip: str) -> str:
        return self.names.get(ip, "")

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.names)

    def take_new(self) -> dict:
        with self.lock:
            new, self.new = self.new, {}
        return new

    def seed(self, known: dict) -> None:
        """Names from disk (the newest last), so a restart still names old remotes."""
        with self.lock:
            for ip, name in known.items():
                self.names.setdefault(ip, name)

    # -- the handles ------------------------------------------------------------------------
    def _run(self, handle, stop) -> None:
        linktype = handle.datalink()

        def on_packet(_ts, pkt):
            payload = dns_payload(linktype, pkt)
            if payload is not None:
                self.learn(payload)

        dispatch_until(handle, on_packet, stop, "a DNS answer")
