"""What the capture file readers yield and share: records, interfaces, limits, errors."""

from __future__ import annotations

import struct

MAX_CAPLEN = 256 << 20  # beyond this a length field is garbage, not a packet
I64 = 1 << 63  # pcapng ticks can exceed signed 64-bit ns (year 2262): worth a warning
NS_PER_SECOND = 1_000_000_000
WARN_EACH = 5
SHB_TYPE = 0x0A0D0D0A  # palindromic: reads the same in either byte order
BOMS = {0x1A2B3C4D: "<", 0x4D3C2B1A: ">"}  # the SHB byte-order magic read little-endian
# first 4 bytes read little-endian -> (format, byte order, ns per fraction unit, header size)
PCAP_MAGICS = {
    0xA1B2C3D4: ("pcap", "<", 1000, 16), 0xD4C3B2A1: ("pcap", ">", 1000, 16),
    0xA1B23C4D: ("pcap-ns", "<", 1, 16), 0x4D3CB2A1: ("pcap-ns", ">", 1, 16),
    0xA1B2CD34: ("pcap-modified", "<", 1000, 24), 0x34CDB2A1: ("pcap-modified", ">", 1000, 24),
}
# skipped without a warning: NRB, ISB, systemd journal, DSB, custom blocks
QUIET_BLOCKS = {4, 5, 9, 0x0A, 0x0BAD, 0x40000BAD}


class NotACaptureError(ValueError):
    """The file is not a pcap/pcapng file we can read at all."""


class Interface:
    """One capture interface (pcap: the single file-wide one; pcapng: one per IDB).

    ``linktype`` is the raw stored value (a pcap header's FCS bits included);
    ``tsresol_ns`` is ns per tick, 0 when a tick is not a whole number of ns
    (then see ``ticks_per_second``); ``tsoffset`` is pcapng's if_tsoffset in seconds.
    """

    __slots__ = ("name", "linktype", "tsresol_ns", "snaplen", "description",
                 "ticks_per_second", "tsoffset", "section")

    def __init__(self, linktype, snaplen, ticks_per_second=1_000_000, tsoffset=0,
                 name=None, description=None, section=0):
        self.name, self.description, self.section = name, description, section
        self.linktype, self.snaplen = linktype, snaplen
        self.ticks_per_second, self.tsoffset = ticks_per_second, tsoffset
        whole = NS_PER_SECOND % ticks_per_second == 0
        self.tsresol_ns = NS_PER_SECOND // ticks_per_second if whole else 0


class Record:
    """One packet record; ``iface`` indexes ``CaptureReader.interfaces``.

    ``comment``, ``pid``/``tid`` (epb_processid_threadid) and ``flags`` (epb_flags;
    direction = flags & 3: 1 inbound, 2 outbound) come from pcapng options, else None.
    """

    __slots__ = ("ts_ns", "caplen", "origlen", "linktype", "iface", "data",
                 "comment", "pid", "tid", "flags")

    def __init__(self, ts_ns, caplen, origlen, linktype, iface, data,
                 comment=None, pid=None, tid=None, flags=None):
        # one assignment per line: a tuple assignment costs ~8 % of the read loop
        self.ts_ns = ts_ns
        self.caplen = caplen
        self.origlen = origlen
        self.linktype = linktype
        self.iface = iface
        self.data = data
        self.comment = comment
        self.pid = pid
        self.tid = tid
        self.flags = flags

    def __repr__(self):
        return (f"Record(ts_ns={self.ts_ns}, caplen={self.caplen}, origlen={self.origlen}, "
                f"iface={self.iface}, linktype={self.linktype})")


def option_text(raw):
    # some writers NUL-terminate strings, some leave garbage after the NUL (the
    # keylog corpus file does); tshark shows the text up to the first NUL, as we do
    return raw.partition(b"\0")[0].decode("utf-8", "replace")


def position(off, n):
    return f"at byte {off} (packet {n + 1})"


def shb_version(buf, off, e):
    """None if the section header's version is one we read, else "major.minor"."""
    major, minor = struct.unpack_from(e + "HH", buf, off + 12)
    return None if major == 1 and minor in (0, 2) else f"{major}.{minor}"
