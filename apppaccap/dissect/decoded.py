"""What decode() returns: a named tuple of the packet's header fields, with the Ethernet
addresses and the one-line summary computed only when somebody reads them."""

from __future__ import annotations

from collections import namedtuple

from apppaccap.dissect.summary import describe

_FIELDS = ("l3 proto src dst sport dport tcp_flags tcp_seq tcp_ack ttl vlan icmp_type icmp_code "
           "payload_off payload_len fragment linktype l3_off l4_off note data")
_Base = namedtuple("_Base", _FIELDS, defaults=(0, 0, None, None, 0, 0, 0, 0, 0, 0, None, None,
                                                 None, 0, 0, False, 0, -1, -1, None, b""))


class Decoded(_Base):
    """Result of :func:`decode` (a named tuple; read it by attribute).

    Beyond the contract fields it carries ``linktype`` (masked), ``l3_off`` / ``l4_off``
    (offsets of the network and transport headers, -1 when absent), ``note`` (why decoding
    stopped early or what was odd, else None) and ``data`` (the packet bytes, kept so that
    ``eth_src``, ``eth_dst`` and ``summary`` can be computed when read; so a result keeps a
    memoryview passed as ``data`` alive, and ``summary`` is rebuilt on each read).
    """

    __slots__ = ()

    @property
    def eth_src(self):
        """Source MAC ("aa:bb:..") for Ethernet, or the SLL/SLL2 link-layer address when 6 bytes."""
        return mac_text(self.linktype, self.data, True)

    @property
    def eth_dst(self):
        """Destination MAC for Ethernet; None for other link types."""
        return mac_text(self.linktype, self.data, False)

    @property
    def summary(self):
        """One-line description, like Wireshark's Info column."""
        try:
            return describe(self)
        except Exception as exc:  # last resort: a summary must never break a listing
            return f"{len(self.data)} bytes (summary failed: {type(exc).__name__})"

    def __repr__(self):
        return f"<Decoded {self.summary!r}>"


def mac_text(lt, data, source):
    """A link-layer address as "aa:bb:..": Ethernet source or destination, or the SLL/SLL2
    sender address when it is 6 bytes long; None otherwise."""
    n = len(data)
    if lt == 1 and n >= 12:
        return (data[6:12] if source else data[0:6]).hex(":")
    if not source:
        return None
    if lt == 113 and n >= 16 and data[4:6] == b"\x00\x06":
        return data[6:12].hex(":")
    if lt == 276 and n >= 20 and data[11] == 6:
        return data[12:18].hex(":")
    return None
