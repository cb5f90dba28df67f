"""Capture files written and read by the tests, independently of the product's own reader
and writer (apppaccap's are what the tests check).

Writing: classic pcap (little-endian, micro- or nanosecond) and pcapng (one section, its
interfaces, Enhanced Packet Blocks with an optional comment), whole or a piece at a time
so that a test can damage what it builds. Reading: classic pcap in both byte orders,
nanosecond and Kuznetzov's modified records; pcapng SHB/IDB/EPB/SPB with per-interface
link type and `if_tsresol`.
"""

from __future__ import annotations

import struct

PCAP_MAGIC = 0xA1B2C3D4       # microsecond timestamps
PCAP_MAGIC_NS = 0xA1B23C4D    # nanosecond timestamps
SHB_TYPE = 0x0A0D0D0A
BYTE_ORDER_MAGIC = 0x1A2B3C4D
IDB_TYPE = 1
EPB_TYPE = 6
OPT_COMMENT = 1
END_OF_OPTIONS = bytes(4)

# ---- classic pcap ------------------------------------------------------------------------


def pcap_header(linktype: int = 1, snaplen: int = 262144, nsec: bool = False,
                version: tuple[int, int] = (2, 4)) -> bytes:
    magic = PCAP_MAGIC_NS if nsec else PCAP_MAGIC
    return struct.pack("<IHHiIII", magic, *version, 0, 0, snaplen, linktype)


def pcap_record(ts_ns: int, data: bytes, nsec: bool = False, caplen: int | None = None,
                origlen: int | None = None) -> bytes:
    """One record; `caplen`/`origlen` default to len(data) (a test may make either lie)."""
    sec, ns = divmod(ts_ns, 1_000_000_000)
    frac = ns if nsec else ns // 1000
    return struct.pack("<IIII", sec, frac, len(data) if caplen is None else caplen,
                       len(data) if origlen is None else origlen) + data


def write_pcap(path, frames, linktype: int = 1, snaplen: int = 262144,
               nsec: bool = False) -> int:
    """A classic pcap of `frames`, (ts_ns, bytes) each; returns how many."""
    n = 0
    with open(path, "wb") as fh:
        fh.write(pcap_header(linktype, snaplen, nsec))
        for ts_ns, data in frames:
            fh.write(pcap_record(ts_ns, data, nsec))
            n += 1
    return n


# ---- pcapng ------------------------------------------------------------------------------


def block(btype: int, body: bytes, length: int | None = None) -> bytes:
    """A pcapng block: type, total length, the body padded to 32 bits, total length.
    `length` makes both length fields lie."""
    body += bytes(-len(body) & 3)
    size = len(body) + 12 if length is None else length
    return struct.pack("<II", btype, size) + body + struct.pack("<I", size)


def shb(byte_order_magic: int = BYTE_ORDER_MAGIC) -> bytes:
    """A Section Header Block, version 1.0, section length unknown."""
    return block(SHB_TYPE, struct.pack("<IHHq", byte_order_magic, 1, 0, -1))


def idb(linktype: int, snaplen: int = 0) -> bytes:
    """An Interface Description Block without options (microsecond timestamps)."""
    return block(IDB_TYPE, struct.pack("<HHI", linktype, 0, snaplen))


def option(code: int, value: bytes, length: int | None = None) -> bytes:
    """One option, padded; `length` makes its length field lie."""
    size = len(value) if length is None else length
    return struct.pack("<HH", code, size) + value + bytes(-len(value) & 3)


def epb(if_id: int, ticks: int, data: bytes, caplen: int | None = None,
        origlen: int | None = None, comment: str | None = None, options: bytes = b"") -> bytes:
    """An Enhanced Packet Block; `ticks` in the interface's resolution (µs by default)."""
    if comment is not None:
        options = option(OPT_COMMENT, comment.encode()) + options + END_OF_OPTIONS
    head = struct.pack("<IIIII", if_id, ticks >> 32, ticks & 0xFFFFFFFF,
                       len(data) if caplen is None else caplen,
                       len(data) if origlen is None else origlen)
    return block(EPB_TYPE, head + data + bytes(-len(data) & 3) + options)


def write_pcapng(path, packets, linktypes=(1,)) -> None:
    """One section with an interface per link type; packets are (iface, ticks, data,
    origlen or None, comment or None)."""
    with open(path, "wb") as fh:
        fh.write(shb() + b"".join(idb(lt) for lt in linktypes))
        for iface, ticks, data, origlen, comment in packets:
            fh.write(epb(iface, ticks, data, origlen=origlen, comment=comment))


# ---- reading -----------------------------------------------------------------------------

PCAP_MAGICS = {  # first four bytes -> (byte order, record header size, ns per fraction)
    b"\xd4\xc3\xb2\xa1": ("<", 16, 1000),
    b"\xa1\xb2\xc3\xd4": (">", 16, 1000),  # microseconds
    b"\x4d\x3c\xb2\xa1": ("<", 16, 1),
    b"\xa1\xb2\x3c\x4d": (">", 16, 1),  # nanoseconds
    b"\x34\xcd\xb2\xa1": ("<", 24, 1000),
    b"\xa1\xb2\xcd\x34": (">", 24, 1000),  # Kuznetzov modified pcap
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


def read_pcap(path):
    """(link type field, [(ts_ns, packet bytes)]) of a classic pcap file, or None for
    anything else. Reads until the data runs out (a last record cut short yields its
    partial bytes) or a caplen above 16 MiB."""
    with open(path, "rb") as f:
        buf = f.read()
    if buf[:4] not in PCAP_MAGICS:
        return None
    order, rec, mult = PCAP_MAGICS[buf[:4]]
    if len(buf) < 24:
        return 0, []
    linktype = struct.unpack_from(order + "I", buf, 20)[0]
    packets, pos = [], 24
    while pos + rec <= len(buf):
        sec, frac, caplen = struct.unpack_from(order + "III", buf, pos)
        pos += rec
        if caplen > 0x1000000:
            break
        packets.append((sec * 1_000_000_000 + frac * mult, buf[pos:pos + caplen]))
        pos += caplen
    return linktype, packets


def read_frames(path):
    """Yield (linktype, ts_ns, frame bytes) from a pcap or pcapng file."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == PCAPNG_MAGIC:
        with open(path, "rb") as f:
            yield from _pcapng(f.read())
        return
    classic = read_pcap(path)
    if classic is None:
        raise ValueError(f"not a capture file: {path}")
    linktype, packets = classic
    for ts_ns, frame in packets:
        yield linktype & 0x0FFFFFFF, ts_ns, frame


def _pcapng(data):
    pos = 0
    endian = "<"
    ifaces = []
    while pos + 12 <= len(data):
        btype = struct.unpack(endian + "I", data[pos:pos + 4])[0]
        if data[pos:pos + 4] == PCAPNG_MAGIC:
            endian = "<" if data[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            btype = SHB_TYPE
            ifaces = []
        blen = struct.unpack(endian + "I", data[pos + 4:pos + 8])[0]
        if blen < 12:
            break
        body = data[pos + 8:pos + blen - 4]
        if btype == IDB_TYPE:
            lt = struct.unpack(endian + "H", body[:2])[0]
            ifaces.append((lt, _tsresol(body[8:], endian)))
        elif btype == EPB_TYPE:
            iface, hi, lo, caplen = struct.unpack(endian + "IIII", body[:16])
            lt, res = ifaces[iface]
            ts = (hi << 32) | lo
            yield lt, ts * 1_000_000_000 // res, body[20:20 + caplen]
        elif btype == 3 and ifaces:
            lt, _ = ifaces[0]
            yield lt, 0, body[4:]
        pos += blen


def _tsresol(opts, endian):
    pos = 0
    while pos + 4 <= len(opts):
        code, length = struct.unpack(endian + "HH", opts[pos:pos + 4])
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = opts[pos + 4]
            return 2 ** (v & 0x7F) if v & 0x80 else 10 ** v
        pos += 4 + ((length + 3) & ~3)
    return 1_000_000
