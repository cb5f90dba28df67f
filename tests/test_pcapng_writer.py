"""PcapngWriter output read back by our reader, python-pcapng, tshark and capinfos."""

from __future__ import annotations

import io
import struct
import subprocess
from pathlib import Path

import pytest
from pcapng import FileScanner
from pcapng import blocks

from apppaccap.pcap.pcapng_writer import PcapngWriter
from apppaccap.pcap.pcapng_writer import process_comment
from apppaccap.pcap.reader import CaptureReader
from tests.helpers import corpus
from tests.helpers import tshark

# python-pcapng warns about its own untyped if_tsresol option whenever it touches one
pytestmark = pytest.mark.filterwarnings("ignore:Field type should not be:DeprecationWarning")

WELLFORMED = corpus.files("wellformed/")

ETH = (
    bytes.fromhex(
        "0011223344550a0b0c0d0e0f08004500002400010000401100007f0000017f000001d431003500100000"
    )
    + b"payload!"
)
CURL = process_comment(1234, "/usr/bin/curl", "curl -s http://127.0.0.1:18080/", 5678)
# (if_id, ts_ns, data, origlen, comment, flags, pid, tid)
PACKETS = [
    (0, 1_700_000_000_123_456_789, ETH, None, CURL, 2, 1234, 5678),
    (1, 1_700_000_000_123_456_789, b"\x00\x04" + ETH[2:], 1500, None, 1, None, None),
    (2, 1_700_000_001_000_000_001, ETH[14:], None, "héllo ✓ — unicode", None, None, None),
    (0, 1_700_000_002_000_000_000, ETH[:13], None, None, None, 7, None),
    (3, 1_700_000_003_999_999_999, b"", 0, None, None, None, 99),
    (0, 1_700_000_004_000_000_000, ETH[:61], 61, "x" * 70_000, 0xFFFFFFFF, 0, 0),
]


def write_sample(fileobj):
    with PcapngWriter(fileobj, comment="AppPacCap export\nsecond line") as writer:
        assert writer.add_interface(1, "eth0", snaplen=65535) == 0
        assert writer.add_interface(113, "any", tsresol_ns=False, description="cooked") == 1
        assert writer.add_interface(101) == 2
        assert writer.add_interface(0, "lo0", snaplen=262144) == 3
        for if_id, ts, data, origlen, comment, flags, pid, tid in PACKETS:
            writer.write_packet(
                if_id, ts, data, origlen, comment=comment, flags=flags, pid=pid, tid=tid
            )
    return writer


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample.pcapng"
    with open(path, "wb") as f:
        write_sample(f)
    return path


def test_reads_back_with_capture_reader(sample):
    with CaptureReader(str(sample)) as reader:
        records = list(reader)
    assert reader.error is None and reader.warnings == []
    assert reader.section_comments == ["AppPacCap export\nsecond line"]
    assert [
        (i.name, i.linktype, i.tsresol_ns, i.snaplen, i.description) for i in reader.interfaces
    ] == [
        ("eth0", 1, 1, 65535, None),
        ("any", 113, 1000, 0, "cooked"),
        (None, 101, 1, 0, None),
        ("lo0", 0, 1, 262144, None),
    ]
    assert len(records) == len(PACKETS)
    for rec, (if_id, ts, data, origlen, _comment, flags, pid, tid) in zip(records, PACKETS):
        assert rec.iface == if_id
        assert rec.data == data and rec.caplen == len(data)
        assert rec.origlen == (len(data) if origlen is None else origlen)
        # interface 1 has µs timestamps: floored to the microsecond
        assert rec.ts_ns == (ts // 1000 * 1000 if if_id == 1 else ts)
        assert rec.flags == flags
        # a missing half of epb_processid_threadid is written as 0 ("unknown")
        assert (rec.pid, rec.tid) == (
            (None, None) if pid is None and tid is None else (pid or 0, tid or 0)
        )
    assert [r.comment for r in records[:5]] == [CURL, None, "héllo ✓ — unicode", None, None]
    assert records[5].comment == "x" * 0xFFFC  # an option holds at most 64 KiB


def test_reads_back_with_python_pcapng(sample):
    with open(sample, "rb") as f:
        found = list(FileScanner(f))
    shb, idbs, epbs = found[0], found[1:5], found[5:]
    assert isinstance(shb, blocks.SectionHeader)
    assert shb.options["shb_userappl"] == "AppPacCap"
    assert shb.options["opt_comment"] == "AppPacCap export\nsecond line"
    assert [(b.link_type, b.options.get("if_name"), b.options["if_tsresol"]) for b in idbs] == [
        (1, "eth0", b"\x09"),
        (113, "any", b"\x06"),
        (101, None, b"\x09"),
        (0, "lo0", b"\x09"),
    ]
    assert all(isinstance(b, blocks.EnhancedPacket) for b in epbs) and len(epbs) == len(PACKETS)
    first = epbs[0]
    assert first.interface_id == 0 and first.packet_data == ETH and first.packet_len == len(ETH)
    assert (first.timestamp_high << 32 | first.timestamp_low) == 1_700_000_000_123_456_789
    assert first.options["opt_comment"] == CURL
    assert first.options["epb_flags"].inout == "outbound"
    assert first.options[8] == struct.pack("<II", 1234, 5678)
    assert (epbs[1].timestamp_high << 32 | epbs[1].timestamp_low) == 1_700_000_000_123_456
    assert epbs[1].packet_len == 1500 and epbs[1].options["epb_flags"].inout == "inbound"
    assert epbs[2].options["opt_comment"] == "héllo ✓ — unicode"
    assert epbs[4].packet_data == b"" and epbs[4].options[8] == struct.pack("<II", 0, 99)


def test_tshark_and_capinfos_accept_it(sample):
    rows = tshark.fields(
        sample, "frame.time_epoch", "frame.len", "frame.comment", "frame.interface_id"
    )
    # tshark 4.0 prints a multi-line comment with each newline escaped as a literal "\n"
    assert rows[:5] == [
        [
            "1700000000.123456789",
            str(len(ETH)),
            "PID: 1234\\nCmd: /usr/bin/curl\\nArgs: curl -s http://127.0.0.1:18080/"
            "\\nThreadId: 5678",
            "0",
        ],
        ["1700000000.123456000", "1500", "", "1"],
        ["1700000001.000000001", str(len(ETH) - 14), "héllo ✓ — unicode", "2"],
        ["1700000002.000000000", "13", "", "0"],
        ["1700000003.999999999", "0", "", "3"],
    ]
    assert rows[5][2] == "x" * 0xFFFC
    # the comment is filterable (docs/DECISIONS.md: process labels in exported pcapng)
    assert tshark.frames(sample, 'frame.comment contains "Cmd: /usr/bin/curl"') == [1]
    info = subprocess.run(["capinfos", str(sample)], capture_output=True, text=True)
    assert info.returncode == 0 and "error" not in info.stderr.lower(), info.stderr
    assert "Number of packets:   6" in info.stdout
    assert "Capture application: AppPacCap" in info.stdout
    assert "Number of interfaces in file: 4" in info.stdout


def test_process_comment_convention():
    assert process_comment(1234, "/usr/bin/curl", "curl http://x/") == (
        "PID: 1234\nCmd: /usr/bin/curl\nArgs: curl http://x/"
    )
    assert process_comment(1, None, None, thread_id=5678) == "PID: 1\nCmd: \nArgs: \nThreadId: 5678"


def test_write_packets_is_byte_identical_to_write_packet():
    one, bulk = io.BytesIO(), io.BytesIO()
    write_sample(one)
    with PcapngWriter(bulk, comment="AppPacCap export\nsecond line") as writer:
        writer.add_interface(1, "eth0", snaplen=65535)
        writer.add_interface(113, "any", tsresol_ns=False, description="cooked")
        writer.add_interface(101)
        writer.add_interface(0, "lo0", snaplen=262144)
        assert writer.write_packets(iter(PACKETS)) == len(PACKETS) == writer.packets
    assert bulk.getvalue() == one.getvalue()


def test_buffering_order_partial_writes_and_close(tmp_path):
    class Trickle(io.RawIOBase):
        """A raw file that accepts at most 1000 bytes per write, like a pipe might."""

        def __init__(self):
            self.data = bytearray()

        def writable(self):
            return True

        def write(self, b):
            self.data += bytes(b[:1000])
            return min(len(b), 1000)

    out = Trickle()
    writer = PcapngWriter(out)
    writer.add_interface(1, "a")
    writer.write_packets([(0, i, ETH * 40, None, None, None, None, None) for i in range(600)])
    writer.add_interface(101, "b")  # must land after the buffered packets of interface 0
    writer.write_packet(1, 5, ETH[14:], comment="late")
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write_packet(0, 1, ETH)
    path = tmp_path / "trickle.pcapng"
    path.write_bytes(out.data)
    with CaptureReader(str(path)) as reader:
        records = list(reader)
    assert reader.error is None
    assert len(records) == 601 and records[-1].iface == 1 and records[-1].comment == "late"
    assert [r.ts_ns for r in records[:3]] == [0, 1, 2] and records[599].data == ETH * 40
    assert [i.name for i in reader.interfaces] == ["a", "b"]


def test_out_of_range_values_raise_valueerror_and_keep_earlier_packets():
    out = io.BytesIO()
    writer = PcapngWriter(out)
    ns, us = writer.add_interface(1), writer.add_interface(1, tsresol_ns=False)
    far = 18446744073204_126329000  # the keylog corpus file's 1.8e22 ns timestamps
    writer.write_packet(us, far, ETH)  # fits as microseconds
    with pytest.raises(ValueError, match="ts_ns=18446744073204126329000"):
        writer.write_packet(ns, far, ETH)
    with pytest.raises(ValueError, match="interface 0"):
        writer.write_packets(
            [
                (ns, 1, ETH, None, None, None, None, None),
                (ns, far, ETH, None, None, None, None, None),
            ]
        )
    assert writer.packets == 2
    writer.close()
    path_records = list(FileScanner(io.BytesIO(out.getvalue())))[3:]
    assert [b.packet_data for b in path_records] == [ETH, ETH]


def test_fcs_bits_of_a_pcap_linktype_become_if_fcslen():
    out = io.BytesIO()
    with PcapngWriter(out) as writer:
        writer.add_interface(0x24000001, "eth-fcs")  # FCS present, 2 x 16 bits
    idb = list(FileScanner(io.BytesIO(out.getvalue())))[1]
    assert idb.link_type == 1 and idb.options["if_fcslen"] == 4


def _copy(src: Path, dst: Path) -> None:
    """Read a capture with CaptureReader and write every packet with PcapngWriter."""
    with CaptureReader(str(src)) as reader, open(dst, "wb") as out:
        writer = PcapngWriter(out, comment=f"copy of {src.name}")
        ids = {}
        for rec in reader:
            if rec.iface not in ids:
                iface = reader.interfaces[rec.iface]
                # keep µs interfaces µs: the keylog file's ~1.8e22 ns timestamps only fit
                # a 64-bit tick counter in microseconds
                ids[rec.iface] = writer.add_interface(
                    iface.linktype,
                    iface.name,
                    snaplen=iface.snaplen,
                    tsresol_ns=iface.tsresol_ns != 1000,
                    description=iface.description,
                )
            writer.write_packet(
                ids[rec.iface],
                rec.ts_ns,
                rec.data,
                rec.origlen,
                comment=rec.comment,
                flags=rec.flags,
                pid=rec.pid,
                tid=rec.tid,
            )
        writer.close()
        assert reader.error is None


@pytest.mark.parametrize("name", WELLFORMED)
def test_roundtrip_wellformed_corpus(name, tmp_path):
    src, dst = Path(corpus.path(name)), tmp_path / "copy.pcapng"
    _copy(src, dst)
    original = [list(r.values()) for r in tshark.packets(src)]
    copied = tshark.fields(dst, *tshark.FRAME_FIELDS, md5=True)
    assert len(copied) == len(original) > 0
    for i, (a, b) in enumerate(zip(original, copied)):
        if a[0] == "":
            # a Simple Packet Block has no timestamp; the copy carries the previous packet's
            assert b[0] == (copied[i - 1][0] if i else "0.000000000"), i
            a, b = a[1:], b[1:]
        assert a == b, (i, a, b)
    assert subprocess.run(["capinfos", str(dst)], capture_output=True).returncode == 0
