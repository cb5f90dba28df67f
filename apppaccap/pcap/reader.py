"""Read every capture file we ingest: pcap (µs, ns, "modified") and pcapng.

One pass over a memory-mapped file with ``struct.unpack_from``, yielding slotted
:class:`Record` objects (or, from ``iter_batches(tuples=True)``, tuples in the same
field order for ``executemany``): ~1.2 M records/s on the 2-core build box
(benchmarks/pcapfile.py).  The link layer is never decoded.  Damage never raises
from iteration: reading stops at the first record that cannot be trusted, after
yielding every record before it, and ``error`` says where and why; oddities that do
not stop reading go to ``warnings`` (each kind listed ``WARN_EACH`` times, then counted).

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

from apppaccap.pcap.pcapng_reader import PcapngReading
from apppaccap.pcap.records import BOMS
from apppaccap.pcap.records import MAX_CAPLEN
from apppaccap.pcap.records import NS_PER_SECOND
from apppaccap.pcap.records import PCAP_MAGICS
from apppaccap.pcap.records import SHB_TYPE
from apppaccap.pcap.records import WARN_EACH
from apppaccap.pcap.records import Interface
from apppaccap.pcap.records import NotACaptureError
from apppaccap.pcap.records import Record
from apppaccap.pcap.records import shb_version


class CaptureReader(PcapngReading):
    """Iterate the packet records of a pcap or pcapng file, surviving damage.

    ``for rec in reader`` and ``iter_batches`` continue one shared pass (like a
    file object); ``interfaces`` grows as pcapng IDBs are read; ``packets`` and
    ``bytes_done`` (of ``size``) tell the progress.
    """

    def __init__(self, path: str, fileobj=None):
        """`fileobj`: the file already opened (binary, positioned anywhere), e.g. by the
        checks of safefs.open_regular; it is closed with the reader."""
        self.path = path
        self.format = ""
        self.interfaces: list[Interface] = []
        self.section_comments: list[str] = []
        self.error: str | None = None
        self.warnings: list[str] = []
        self.bytes_done = self.packets = 0
        self._released = 0  # bytes of the map handed back (release_read_pages)
        self._warn_counts: dict[str, int] = {}
        self._gen = self._gen_tuples = self._mm = None
        self._file = fileobj if fileobj is not None else open(path, "rb")
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
        if magic == SHB_TYPE:
            self.format = "pcapng"
            if size < 28:
                return f"only {size} bytes, too short for a pcapng section header"
            e = BOMS.get(struct.unpack_from("<I", buf, 8)[0])
            if e is None:
                return "pcapng section header has a bad byte-order magic"
            version = shb_version(buf, 0, e)
            return version and f"pcapng: unknown SHB version {version}"
        if magic not in PCAP_MAGICS:
            hint = " (gzip-compressed: decompress it first)" if buf[:2] == b"\x1f\x8b" else ""
            return f"unknown magic 0x{buf[:4].hex()}{hint}"
        self.format, self._e, self._unit, self._rhl = PCAP_MAGICS[magic]
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
        self.interfaces.append(Interface(linktype, snaplen, NS_PER_SECOND // self._unit))
        self.bytes_done = 24
        return None

    def _warn(self, kind, msg):
        n = self._warn_counts[kind] = self._warn_counts.get(kind, 0) + 1
        if n <= WARN_EACH:
            self.warnings.append(msg)

    def _finish(self):
        # summarise the warnings that were cut off, so the list stays short on big files
        for kind, n in self._warn_counts.items():
            if n > WARN_EACH:
                self.warnings.append(f"... and {n - WARN_EACH} more '{kind}' warnings")
                self._warn_counts[kind] = WARN_EACH

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
        while True:
            batch = list(islice(gen, n))
            if not batch:
                return
            yield batch
            self.release_read_pages()

    def release_read_pages(self) -> None:
        """Hand the pages already read (up to bytes_done) back to the page cache, so a
        large file does not count against our resident memory: records are copies and
        the pass goes one way. Done every 32 MiB."""
        done = self.bytes_done // mmap.PAGESIZE * mmap.PAGESIZE
        if done - self._released >= 32 << 20 and hasattr(self._mm, "madvise"):
            self._mm.madvise(mmap.MADV_DONTNEED, self._released, done - self._released)
            self._released = done

    def mapping(self):
        """(mmap, size) of the file, for a caller that walks it itself."""
        return self._mm, self.size

    def pcap_layout(self):
        """(mmap, size, big_endian, ns per fraction unit, record header length, snaplen,
        linktype) of a classic pcap file: what the compiled scanner needs."""
        first = self.interfaces[0]
        return (self._mm, self.size, self._e == ">", self._unit, self._rhl, first.snaplen,
                first.linktype)

    def next_record(self):
        """The next record as a tuple (see iter_batches), or None at the end or at damage
        (``error`` says which); for a caller that walks the file itself and hands the
        reader the records it will not read (``bytes_done``/``packets`` say where)."""
        body = self._iter_pcapng if self.format == "pcapng" else self._iter_pcap
        gen = body(True, finish=False)
        try:
            return next(gen, None)
        finally:
            gen.close()

    def finish(self):
        """Done walking the file: summarise the cut-off warnings."""
        self._finish()

    def _iter_pcap(self, tuples, finish=True):
        buf, size, rhl, unit = self._mm, self.size, self._rhl, self._unit
        linktype, snaplen = self.interfaces[0].linktype, self.interfaces[0].snaplen or MAX_CAPLEN
        limit = NS_PER_SECOND // unit  # first invalid value of the fraction-of-second field
        unpack = struct.Struct(self._e + "IIII").unpack_from
        off, n = max(24, self.bytes_done), self.packets  # resumes where the reader is
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
                    yield (sec * NS_PER_SECOND + frac * unit, caplen, origlen, linktype, 0, data,
                           None, None, None, None)
                else:
                    yield Record(sec * NS_PER_SECOND + frac * unit, caplen, origlen, linktype, 0,
                                 data)
        finally:
            if finish:
                self._finish()

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
