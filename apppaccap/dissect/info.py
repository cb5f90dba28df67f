"""The Info column: a Wireshark-like summary of a packet's application layer.

"GET /path HTTP/1.1", "HTTP/1.1 200 OK", "Standard query 0x1a2b A example.com",
"Client Hello (SNI=example.com)"; "" when the packet carries no application layer we
read (the transport summary is the reader's business). Computed from the bytes of one
packet, no reassembly: cheap enough for every packet of a page.
"""

from __future__ import annotations

from apppaccap.dissect import dns
from apppaccap.dissect import http
from apppaccap.dissect import tls

DNS_PORTS = (53, 5353, 5355)


def info(dec) -> str:
    """Info of a decode() result ("" when none); never raises."""
    try:
        return _info(dec)
    except Exception:  # an Info must never break a listing
        return ""


def _info(d) -> str:
    if d.src is None or d.proto not in (6, 17) or d.l4_off < 0 or d.payload_off <= d.l4_off:
        return ""
    if d.payload_len <= 0 or d.fragment or not (d.sport or d.dport):
        return ""
    payload = d.data[d.payload_off:d.payload_off + d.payload_len]
    if d.sport in DNS_PORTS or d.dport in DNS_PORTS:
        text = dns.info(payload[2:] if d.proto == 6 else payload)
        if text:
            return text
    if d.proto != 6:
        return ""
    return http.info(payload) or tls.info(payload)
