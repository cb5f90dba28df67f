"""Read every capture file we ingest: pcap (µs, ns, "modified") and pcapng.

One pass over a memory-mapped file with ``struct.unpack_from``, yielding slotted
:class:`Record` objects (or, from ``iter_batches(tuples=True)``, tuples in the same
field order for ``executemany``): ~1.2 M records/s on the 2-core build box
(benchmarks/pcapfile.py).  The link layer is never decoded.  Damage never raises
from iteration: reading stops at the first record that cannot be trusted, after
yielding every record before it, and ``error`` says where and why; oddities that do
not stop reading go to ``warnings`` (each kind listed ``_WARN_EACH`` times, then counted).

Decisions (checked against ``capinfos -c -M``, tshark 4.0 and tcpdump on the corpus):

- Link types tshark refuses (Juniper 164, DSA 284, MFR 182, FCS bits as in
  0x30000084) are read with their raw value; tcpdump agrees on the counts.
  Reserved link-type bits (0x00300000): a warning.  Pseudo-headers stay in
  ``data`` (tshark strips SunATM's 4 bytes from the lengths).
- pcap major version != 2, and pcapng SHB versions other than 1.0/1.2 (as Wireshark)
  are NotACaptureError (a later section's: a stop with ``error``); pcap minor != 4
  is a warning.
- Stops: a trailing block length unlike the leading one, a packet naming a missing
  interface, caplen > 256 MiB or beyond its block (tshark stops too).  An option
  overrunning its block only drops that block's remaining options, with a warning
  (tshark gives up on the file).  Option strings end at their first NUL (as tshark).
- Timestamp fractions out of range (µs >= 1e6, ns >= 1e9) are added arithmetically
  with a warning; tshark prints them unnormalised ("1418145370.1000000000").
  caplen > snaplen or > origlen: yielded with a warning.
- pcapng timestamps are exact ints even past signed 64-bit ns (the keylog corpus
  file has 100 packets at ~1.8e22 ns, as tshark shows): a "ts-range" warning each.
- Simple Packet Blocks have no timestamp: they take the previous packet's (0 if
  none) to keep a store's time range sane; tshark shows none.  Their caplen is
  min(origlen, snaplen of interface 0, room in the block).
- pcapng interface ids are file-wide: section 2's interface 0 gets the next index
  (tshark 4.0 reuses the section-local id).
- NRB, ISB, DSB, custom and journal blocks are skipped quietly, unknown types with a
  warning; tshark 4.0 lists custom blocks as frames, capinfos and we do not.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from itertools import islice

__all__ = ["NotACaptureError", "Interface", "Record", "CaptureReader"]

MAX_CAPLEN = 256 << 20  # beyond this a length field is garbage, not a packet
_I64 = 1 << 63  # pcapng ticks can exceed signed 64-bit ns (year 2262): worth a warning
_NS = 1_000_000_000
_WARN_EACH = 5
_SHB = 0x0A0D0D0A  # palindromic: reads the same in either byte order
_BOMS = {0x1A2B3C4D: "<", 0x4D3C2B1A: ">"}  # the SHB byte-order magic read little-endian
# first 4 bytes read little-endian -> (format, byte order, ns per fraction unit, header size)
_PCAP_MAGICS = {
    0xA1B2C3D4: ("pcap", "<", 1000, 16), 0xD4C3B2A1: ("pcap", ">", 1000, 16),
    0xA1B23C4D: ("pcap-ns", "<", 1, 16), 0x4D3CB2A1: ("pcap-ns", ">", 1, 16),
    0xA1B2CD34: ("pcap-modified", "<", 1000, 24), 0x34CDB2A1: ("pcap-modified", ">", 1000, 24),
}
# skipped without a warning: NRB, ISB, systemd journal, DSB, custom blocks
_QUIET_BLOCKS = {4, 5, 9, 0x0A, 0x0BAD, 0x40000BAD}


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
        whole = _NS % ticks_per_second == 0
        self.tsresol_ns = _NS // ticks_per_second if whole else 0


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


def _text(raw):
    # some writers NUL-terminate strings, some leave garbage after the NUL (the
    # keylog corpus file does); tshark shows the text up to the first NUL, as we do
    return raw.partition(b"\0")[0].decode("utf-8", "replace")


def _at(off, n):
    return f"at byte {off} (packet {n + 1})"


def _shb_version(buf, off, e):
    """None if the section header's version is one we read, else "major.minor"."""
    major, minor = struct.unpack_from(e + "HH", buf, off + 12)
    return None if major == 1 and minor in (0, 2) else f"{major}.{minor}"


class CaptureReader:
    """Iterate the packet records of a pcap or pcapng file, surviving damage.

    ``for rec in reader`` and ``iter_batches`` continue one shared pass (like a
    file object); ``interfaces`` grows as pcapng IDBs are read; ``packets`` and
    ``bytes_done`` (of ``size``) tell the progress.
    """

    def __init__(self, path: str):
        self.path = path
        self.format = ""
        self.interfaces: list[Interface] = []
        self.section_comments: list[str] = []
        self.error: str | None = None
        self.warnings: list[str] = []
        self.bytes_done = self.packets = 0
        self._warn_counts: dict[str, int] = {}
        self._gen = self._gen_tuples = self._mm = None
        self._file = open(path, "rb")
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self):
        problem = self._check_header()
        if problem:
            raise NotACaptureError(f"not a capture file: {problem}")

    def _check_header(self):
        """Map the file and read its header; return why it is not a capture, or None."""
        size = self.size
        if size < 4:
            return f"only {size} bytes" if size else "empty file"
        self._mm = buf = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(buf, "madvise"):  # one forward pass: let the kernel read ahead
            buf.madvise(mmap.MADV_SEQUENTIAL)
        (magic,) = struct.unpack_from("<I", buf, 0)
        if magic == _SHB:
            self.format = "pcapng"
            if size < 28:
                return f"only {size} bytes, too short for a pcapng section header"
            e = _BOMS.get(struct.unpack_from("<I", buf, 8)[0])
            if e is None:
                return "pcapng section header has a bad byte-order magic"
            version = _shb_version(buf, 0, e)
            return version and f"pcapng: unknown SHB version {version}"
        if magic not in _PCAP_MAGICS:
            hint = " (gzip-compressed: decompress it first)" if buf[:2] == b"\x1f\x8b" else ""
            return f"unknown magic 0x{buf[:4].hex()}{hint}"
        self.format, self._e, self._unit, self._rhl = _PCAP_MAGICS[magic]
        if size < 24:
            return f"only {size} bytes, too short for a pcap file header"
        major, minor, _zone, _sigfigs, snaplen, linktype = struct.unpack_from(
            self._e + "HHiIII", buf, 4)
        if major != 2:
            return f"pcap: major version {major} unsupported"
        if minor != 4:
            self._warn("version", f"non-standard pcap version {major}.{minor}")
        if linktype & 0x03FF0000:
            self._warn("linktype", f"reserved link-type bits are set (0x{linktype:08x})")
        if snaplen > MAX_CAPLEN:
            self._warn("snaplen", f"implausible snaplen {snaplen} in the file header (ignored)")
        self.interfaces.append(Interface(linktype, snaplen, _NS // self._unit))
        self.bytes_done = 24
        return None

    def _warn(self, kind, msg):
        n = self._warn_counts[kind] = self._warn_counts.get(kind, 0) + 1
        if n <= _WARN_EACH:
            self.warnings.append(msg)

    def _finish(self):
        # summarise the warnings that were cut off, so the list stays short on big files
        for kind, n in self._warn_counts.items():
            if n > _WARN_EACH:
                self.warnings.append(f"... and {n - _WARN_EACH} more '{kind}' warnings")
                self._warn_counts[kind] = _WARN_EACH

    # ----------------------------------------------------------------- iteration
    def _records(self, tuples):
        if self._gen is None:
            self._gen_tuples = tuples
            body = self._iter_pcapng if self.format == "pcapng" else self._iter_pcap
            self._gen = body(tuples) if self._mm is not None else iter(())
        elif self._gen_tuples != tuples:
            raise RuntimeError("this reader is already being iterated in the other mode")
        return self._gen

    def __iter__(self) -> Iterator[Record]:
        return self._records(False)

    def iter_batches(self, n: int = 1024, *, tuples: bool = False):
        """Yield lists of up to ``n`` records; ``tuples=True`` gives plain tuples
        ``(ts_ns, caplen, origlen, linktype, iface, data, comment, pid, tid, flags)``.

        Batches of about a thousand were measured fastest: bigger ones fall out of
        the CPU cache.
        """
        gen = self._records(tuples)
        released = 0
        while True:
            batch = list(islice(gen, n))
            if not batch:
                return
            yield batch
            # Records are copies: hand the pages already read back to the page cache so a
            # large file does not count against our resident memory (one forward pass).
            done = self.bytes_done // mmap.PAGESIZE * mmap.PAGESIZE
            if done - released >= 32 << 20 and hasattr(self._mm, "madvise"):
                self._mm.madvise(mmap.MADV_DONTNEED, released, done - released)
                released = done

    def _iter_pcap(self, tuples):
        buf, size, rhl, unit = self._mm, self.size, self._rhl, self._unit
        linktype, snaplen = self.interfaces[0].linktype, self.interfaces[0].snaplen or MAX_CAPLEN
        limit = _NS // unit  # first invalid value of the fraction-of-second field
        unpack = struct.Struct(self._e + "IIII").unpack_from
        off, n = 24, 0
        try:
            while off < size:
                if off + rhl > size:
                    self.error = (f"truncated record header at byte {off} (packet {n + 1}): "
                                  f"file ends {size - off} bytes into a {rhl}-byte header")
                    break
                sec, frac, caplen, origlen = unpack(buf, off)
                end = off + rhl + caplen
                if end > size or caplen > MAX_CAPLEN:
                    self.error = (
                        f"absurd caplen {caplen} at byte {off} (packet {n + 1})"
                        if caplen > MAX_CAPLEN else
                        f"truncated packet record at byte {off} (packet {n + 1}): file ends "
                        f"{size - off} bytes into a {rhl + caplen}-byte record")
                    break
                if frac >= limit:
                    self._warn("timestamp", f"packet {n + 1}: fraction-of-second field {frac} "
                                            "out of range")
                if caplen > snaplen:
                    self._warn("snaplen", f"packet {n + 1}: caplen {caplen} > snaplen {snaplen}")
                if caplen > origlen:
                    self._warn("origlen", f"packet {n + 1}: caplen {caplen} > origlen {origlen}")
                data = buf[end - caplen:end]
                n += 1
                self.packets = n
                self.bytes_done = off = end
                if tuples:
                    yield (sec * _NS + frac * unit, caplen, origlen, linktype, 0, data,
                           None, None, None, None)
                else:
                    yield Record(sec * _NS + frac * unit, caplen, origlen, linktype, 0, data)
        finally:
            self._finish()

    def _iter_pcapng(self, tuples):
        buf, size = self._mm, self.size
        conv = []  # per file-wide interface: (linktype, mult, div, offset_ns, snaplen)
        local = []  # this section's interface ids -> file-wide ids
        e = "<"
        hdr = struct.Struct("<II").unpack_from
        u32 = epb = None  # set by the first section header, which _open checked is there
        off, n, last_ts, section = 0, 0, 0, -1
        try:
            while off < size:
                if off + 12 > size:
                    self.error = (f"truncated block header {_at(off, n)}: file ends "
                                  f"{size - off} bytes into a block header")
                    break
                btype, blen = hdr(buf, off)
                if btype == _SHB:  # a section (re)sets byte order and interface numbering
                    e = _BOMS.get(struct.unpack_from("<I", buf, off + 8)[0])
                    if e is None:
                        self.error = f"section header at byte {off} has a bad byte-order magic"
                        break
                    hdr, u32, epb = (struct.Struct(e + f).unpack_from for f in ("II", "I", "5I"))
                    btype, blen = hdr(buf, off)
                end = off + blen
                if blen < 12 or blen & 3:
                    self.error = f"corrupt block at byte {off}: block length {blen}"
                    break
                if end > size:
                    self.error = (f"truncated block {_at(off, n)}: file ends {size - off} "
                                  f"bytes into a {blen}-byte block of type 0x{btype:x}")
                    break
                if u32(buf, end - 4)[0] != blen:
                    self.error = (f"corrupt block at byte {off}: trailing length "
                                  f"{u32(buf, end - 4)[0]} != leading length {blen}")
                    break
                if btype == 6 or btype == 2:  # EPB, or the obsolete Packet Block
                    if blen < 32:
                        self.error = f"corrupt packet block at byte {off}: block length {blen}"
                        break
                    if_id, hi, lo, caplen, origlen = epb(buf, off + 8)
                    if btype == 2:  # u16 interface id + u16 drop count
                        if_id = if_id & 0xFFFF if e == "<" else if_id >> 16
                    if if_id >= len(local):
                        self.error = (f"packet block {_at(off, n)} names interface {if_id}, "
                                      f"but the section has {len(local)}")
                        break
                    if caplen > blen - 32:
                        self.error = (f"absurd caplen {caplen} {_at(off, n)}: larger than its "
                                      f"{blen}-byte block")
                        break
                    gi = local[if_id]
                    linktype, mult, div, tsoff, snaplen = conv[gi]
                    ticks = hi << 32 | lo
                    ts = (ticks * mult if div == 1 else ticks * mult // div) + tsoff
                    data_end = off + 28 + caplen
                    comment = pid = tid = flags = None
                    if data_end + (-caplen & 3) < end - 4:
                        comment, pid, tid, flags = self._packet_options(
                            buf, data_end + (-caplen & 3), end - 4, e, n + 1)
                elif btype == 3:  # SPB: no interface id, no timestamp (see Decisions)
                    if not local or blen < 16:
                        self.error = f"simple packet block at byte {off} without an interface"
                        break
                    gi = local[0]
                    linktype, _m, _d, _o, snaplen = conv[gi]
                    (origlen,) = u32(buf, off + 8)
                    caplen = min(origlen, snaplen or origlen, blen - 16)
                    data_end = off + 12 + caplen
                    ts, comment, pid, tid, flags = last_ts, None, None, None, None
                else:
                    if btype == 1:
                        self._read_idb(buf, off, end, e, conv, local, section)
                    elif btype == _SHB:
                        version = _shb_version(buf, off, e) if blen >= 28 else "(too short)"
                        if version is not None:
                            self.error = (f"section header at byte {off}: unknown SHB "
                                          f"version {version}")
                            break
                        local, section = [], section + 1
                        for code, raw in self._options(buf, off + 24, end - 4, e, "SHB"):
                            if code == 1:
                                self.section_comments.append(_text(raw))
                    elif btype not in _QUIET_BLOCKS:
                        self._warn("block", f"skipped block of unknown type 0x{btype:08x} "
                                            f"at byte {off}")
                    self.bytes_done = off = end
                    continue
                if not -_I64 <= ts < _I64:
                    self._warn("ts-range", f"packet {n + 1}: timestamp {ts} ns does not fit "
                                           "64 bits")
                if caplen > snaplen > 0:
                    self._warn("snaplen", f"packet {n + 1}: caplen {caplen} > snaplen {snaplen}")
                if caplen > origlen:
                    self._warn("origlen", f"packet {n + 1}: caplen {caplen} > origlen {origlen}")
                data = buf[data_end - caplen:data_end]
                n += 1
                last_ts = ts
                self.packets = n
                self.bytes_done = off = end
                if tuples:
                    yield (ts, caplen, origlen, linktype, gi, data, comment, pid, tid, flags)
                else:
                    yield Record(ts, caplen, origlen, linktype, gi, data, comment, pid, tid, flags)
        finally:
            self._finish()

    def _options(self, buf, start, end, e, what):
        """pcapng options in buf[start:end] as [(code, bytes)]; an overrun is a warning."""
        out = []
        head = struct.Struct(e + "HH").unpack_from
        while start + 4 <= end:
            code, length = head(buf, start)
            if code == 0:
                break
            if start + 4 + length > end:
                self._warn("option", f"{what} at byte {start}: option {code} of length {length} "
                                     "runs past its block; rest of its options ignored")
                break
            out.append((code, buf[start + 4:start + 4 + length]))
            start += 4 + ((length + 3) & ~3)
        return out

    def _packet_options(self, buf, start, end, e, number):
        comments, pid, tid, flags = [], None, None, None
        for code, raw in self._options(buf, start, end, e, f"packet {number}"):
            if code == 1:
                comments.append(_text(raw))
            elif code == 2 and len(raw) == 4:
                (flags,) = struct.unpack(e + "I", raw)
            elif code == 8 and len(raw) == 8:
                pid, tid = struct.unpack(e + "II", raw)
        return ("\n".join(comments) if comments else None), pid, tid, flags

    def _read_idb(self, buf, off, end, e, conv, local, section):
        if end - off < 20:
            self._warn("block", f"interface block at byte {off} too short; skipped")
            return
        linktype, _reserved, snaplen = struct.unpack_from(e + "HHI", buf, off + 8)
        name = description = None
        tps, tsoffset = 1_000_000, 0
        for code, raw in self._options(buf, off + 16, end - 4, e, "interface block"):
            if code == 2:
                name = _text(raw)
            elif code == 3:
                description = _text(raw)
            elif code == 9 and raw:  # if_tsresol: MSB clear 10^-v s per tick, set 2^-v
                tps = 2 ** (raw[0] & 0x7F) if raw[0] & 0x80 else 10 ** raw[0]
            elif code == 14 and len(raw) == 8:
                (tsoffset,) = struct.unpack(e + "q", raw)
        # ts_ns = ticks * mult // div + offset: exact (floored, as Wireshark) for 2^-n too
        mult, div = (_NS // tps, 1) if _NS % tps == 0 else (_NS, tps)
        local.append(len(self.interfaces))
        conv.append((linktype, mult, div, tsoffset * _NS, snaplen))
        self.interfaces.append(Interface(linktype, snaplen, tps, tsoffset, name, description,
                                         section))

    # ----------------------------------------------------------------- lifetime
    def close(self):
        """Stop any iteration and release the file (safe to call twice)."""
        if self._gen is not None:
            self._gen.close()
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
