"""The pcapng half of CaptureReader (a mixin): sections of either byte order, interface
blocks with their time resolutions, enhanced/simple/obsolete packet blocks and options.
See reader.py for the decisions on damaged files."""

from __future__ import annotations

import struct

from apppaccap.pcap.records import BOMS
from apppaccap.pcap.records import I64
from apppaccap.pcap.records import NS_PER_SECOND
from apppaccap.pcap.records import QUIET_BLOCKS
from apppaccap.pcap.records import SHB_TYPE
from apppaccap.pcap.records import Interface
from apppaccap.pcap.records import Record
from apppaccap.pcap.records import option_text
from apppaccap.pcap.records import position
from apppaccap.pcap.records import shb_version


class PcapngReading:
    """Methods CaptureReader uses for pcapng files (state lives on the reader)."""

    def _iter_pcapng(self, tuples, finish=True):
        buf, size = self._mm, self.size
        state = getattr(self, "_png", None)  # where an earlier pass stopped (see finally)
        if state is None:
            conv = []  # per file-wide interface: (linktype, mult, div, offset_ns, snaplen)
            local = []  # this section's interface ids -> file-wide ids
            e, last_ts, section = "<", 0, -1
        else:
            conv, local, e, last_ts, section = state
        hdr, u32, epb = (struct.Struct(e + f).unpack_from for f in ("II", "I", "5I"))
        off, n = self.bytes_done, self.packets  # resumes where the reader is
        try:
            while off < size:
                if off + 12 > size:
                    self.error = (f"truncated block header {position(off, n)}: file ends "
                                  f"{size - off} bytes into a block header")
                    break
                btype, blen = hdr(buf, off)
                if btype == SHB_TYPE:  # a section (re)sets byte order and interface numbering
                    e = BOMS.get(struct.unpack_from("<I", buf, off + 8)[0])
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
                    self.error = (f"truncated block {position(off, n)}: file ends {size - off} "
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
                        self.error = (f"packet block {position(off, n)} names interface {if_id}, "
                                      f"but the section has {len(local)}")
                        break
                    if caplen > blen - 32:
                        self.error = (f"absurd caplen {caplen} {position(off, n)}: larger than its "
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
                    elif btype == SHB_TYPE:
                        version = shb_version(buf, off, e) if blen >= 28 else "(too short)"
                        if version is not None:
                            self.error = (f"section header at byte {off}: unknown SHB "
                                          f"version {version}")
                            break
                        local, section = [], section + 1
                        for code, raw in self._options(buf, off + 24, end - 4, e, "SHB"):
                            if code == 1:
                                self.section_comments.append(option_text(raw))
                    elif btype not in QUIET_BLOCKS:
                        self._warn("block", f"skipped block of unknown type 0x{btype:08x} "
                                            f"at byte {off}")
                    self.bytes_done = off = end
                    continue
                if not -I64 <= ts < I64:
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
            self._png = (conv, local, e, last_ts, section)
            if finish:
                self._finish()

    def pcapng_section(self):
        """(big_endian, interfaces) of the section being read, each interface as the
        compiled scanner takes it: (file-wide id, linktype, mult, div, offset ns, snaplen,
        ns per tick of its exported EPBs)."""
        conv, local, e, _last_ts, section = self._png
        mark = (section, len(local))  # interfaces only grow within a section
        cached = getattr(self, "_section_cache", None)
        if cached is not None and cached[0] == mark:
            return cached[1]
        out = []
        for gi in local:
            linktype, mult, div, tsoff, snaplen = conv[gi]
            if mult >= 1 << 64 or div >= 1 << 64:
                div = 0  # beyond the scanner's 64-bit arithmetic: Python reads its packets
            tps = self.interfaces[gi].ticks_per_second
            out.append((gi, linktype, mult, div, tsoff, snaplen, 1 if tps > 1_000_000 else 1000))
        self._section_cache = (mark, (e == ">", tuple(out)))
        return self._section_cache[1]

    def pcapng_advance(self, last_ts: int) -> None:
        """Packets were read past the reader (bytes_done/packets moved): keep the time an
        SPB would borrow."""
        conv, local, e, _old, section = self._png
        self._png = (conv, local, e, last_ts, section)

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
                comments.append(option_text(raw))
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
                name = option_text(raw)
            elif code == 3:
                description = option_text(raw)
            elif code == 9 and raw:  # if_tsresol: MSB clear 10^-v s per tick, set 2^-v
                tps = 2 ** (raw[0] & 0x7F) if raw[0] & 0x80 else 10 ** raw[0]
            elif code == 14 and len(raw) == 8:
                (tsoffset,) = struct.unpack(e + "q", raw)
        # ts_ns = ticks * mult // div + offset: exact (floored, as Wireshark) for 2^-n too
        mult, div = (NS_PER_SECOND // tps, 1) if NS_PER_SECOND % tps == 0 else (NS_PER_SECOND, tps)
        local.append(len(self.interfaces))
        conv.append((linktype, mult, div, tsoffset * NS_PER_SECOND, snaplen))
        self.interfaces.append(Interface(linktype, snaplen, tps, tsoffset, name, description,
                                         section))

    # ----------------------------------------------------------------- lifetime
