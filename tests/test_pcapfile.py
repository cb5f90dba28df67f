"""CaptureReader against the real corpus, tshark/capinfos and hand-built damage."""

from __future__ import annotations

import functools
import hashlib
import os
import random
import subprocess
from pathlib import Path

import pytest
from pcapng import FileWriter
from pcapng import blocks

from apppaccap.pcap.reader import CaptureReader
from apppaccap.pcap.reader import NotACaptureError
from tests.helpers import corpus
from tests.helpers import tshark
from tests.helpers.pcapfiles import EPB_TYPE
from tests.helpers.pcapfiles import OPT_COMMENT
from tests.helpers.pcapfiles import block
from tests.helpers.pcapfiles import epb
from tests.helpers.pcapfiles import idb
from tests.helpers.pcapfiles import option
from tests.helpers.pcapfiles import pcap_header
from tests.helpers.pcapfiles import pcap_record
from tests.helpers.pcapfiles import shb

WELLFORMED = corpus.files("wellformed/")
MALFORMED = corpus.files("malformed/")


def epoch_ns(text: str) -> int:
    """tshark prints frame.time_epoch as <seconds>.<9-digit nanoseconds>: read both as ints."""
    sec, _, frac = text.partition(".")
    assert len(frac) == 9, text
    ns = int(sec.lstrip("-")) * 10**9 + int(frac)
    return -ns if sec.startswith("-") else ns


@functools.cache
def tshark_packets(path: str) -> list[dict]:
    """tshark's view of every packet of a file, damaged or not."""
    return tshark.packets(path, damaged_ok=True)


def read_all(path) -> tuple[CaptureReader, list]:
    with CaptureReader(str(path)) as reader:
        return reader, list(reader)


def assert_matches_tshark(path: str, records, skip_time=()):
    rows = tshark_packets(path)
    assert len(records) == len(rows)
    for i, (rec, row) in enumerate(zip(records, rows)):
        assert rec.origlen == int(row["frame.len"]), i
        assert rec.caplen == int(row["frame.cap_len"]) == len(rec.data), i
        assert hashlib.md5(rec.data).hexdigest() == row["frame.md5_hash"], i
        if row["frame.time_epoch"] and i not in skip_time:  # SPBs have no time in tshark
            assert rec.ts_ns == epoch_ns(row["frame.time_epoch"]), i


# ------------------------------------------------------------------ well-formed corpus
@pytest.mark.parametrize("name", WELLFORMED)
def test_wellformed_count_matches_manifest(name):
    reader, records = read_all(corpus.path(name))
    assert len(records) == reader.packets == int(corpus.row(name)["packets"])
    assert reader.error is None
    if name == "wellformed/pcapng_2if_comments_keylog.pcapng":
        # interface 1's packets sit at ~1.8e22 ns (tshark: 18446744073204.126329000)
        assert reader.warnings == [
            f"packet {n}: timestamp {records[n - 1].ts_ns} ns does not fit 64 bits"
            for n in range(60, 65)
        ] + ["... and 95 more 'ts-range' warnings"]
        assert records[59].ts_ns == 18446744073204_126329000
    else:
        assert reader.warnings == []
    assert reader.bytes_done == reader.size == os.path.getsize(corpus.path(name))


@pytest.mark.parametrize("name", WELLFORMED)
def test_wellformed_records_match_tshark(name):
    _reader, records = read_all(corpus.path(name))
    assert_matches_tshark(corpus.path(name), records)


def test_formats_are_detected():
    fmt = {
        name: CaptureReader(corpus.path(name)).format
        for name in (
            "wellformed/http_get_file_download.pcap",
            "wellformed/smb1_dssetup_bigendian.pcap",
            "wellformed/nanosec_bigendian_http.pcap",
            "wellformed/nanosec_le_http_to_ssh.pcap",
            "wellformed/pcapng_http_image.pcapng",
            "malformed/rusticata__modified-format.pcap",
        )
    }
    assert list(fmt.values()) == ["pcap", "pcap", "pcap-ns", "pcap-ns", "pcapng", "pcap-modified"]


def test_pcapng_packet_comments_read_back():
    path = Path(corpus.path("wellformed/pcapng_2if_comments_keylog.pcapng"))
    reader, records = read_all(path)
    comments = [r.comment for r in records]
    assert comments[:59] == [None] * 59
    assert comments[59:] == [f"Packet #{i}" for i in range(1, 101)]
    assert comments == [row["frame.comment"] or None for row in tshark_packets(str(path))]
    assert reader.section_comments[0].startswith("CLIENT_RANDOM E39B5BF4903C6868")
    assert [(i.name, i.linktype, i.tsresol_ns) for i in reader.interfaces] == [
        ("lo", 1, 1),
        (None, 113, 1000),
    ]
    assert {r.iface for r in records[59:]} == {1} and records[59].linktype == 113


def test_multi_section_mixed_endian():
    path = Path(corpus.path("wellformed/pcapng_gen_test202_multi_section_mixed_endian.pcapng"))
    reader, records = read_all(path)
    assert reader.section_comments == ["test202 SHB-0", "test202 SHB-1", "test202 SHB-2"]
    assert [(i.name, i.section, i.linktype, i.snaplen) for i in reader.interfaces] == [
        ("eth0", 0, 1, 96),
        ("null1", 0, 0, 0),
        ("silly ethernet interface 2", 1, 1, 128),
        ("eth0", 2, 1, 96),
        ("null1", 2, 0, 0),
    ]
    # file-wide interface ids: section 2's interface 1 is index 4
    assert [r.iface for r in records] == [0, 0, 1, 2, 2, 2, 2, 4]
    assert [r.linktype for r in records] == [1, 1, 0, 1, 1, 1, 1, 0]
    # records 3 and 5 are Simple Packet Blocks: caplen cut to the IDB snaplen,
    # timestamp taken from the previous packet (tshark shows none)
    assert [(r.caplen, r.origlen) for r in records[3:7]] == [(128, 314), (128, 342)] * 2
    assert records[3].ts_ns == records[2].ts_ns == 1340954905301858000
    assert records[5].ts_ns == records[4].ts_ns == 1340954905298858000
    assert_matches_tshark(str(path), records)


def test_ns_and_us_interfaces_match_tshark_exactly():
    path = Path(corpus.path("wellformed/pcapng_multi_interface_ns_us.pcapng"))
    reader, records = read_all(path)
    assert [i.tsresol_ns for i in reader.interfaces] == [1, 1000]
    assert [r.ts_ns for r in records] == [
        1767663089500330493,
        1767663089514291940,
        1767663437111897000,
        1767663437126460000,
        1767663437128303000,
        1767663437140942000,
    ]
    assert [r.ts_ns for r in records] == [
        epoch_ns(row["frame.time_epoch"]) for row in tshark_packets(str(path))
    ]


@pytest.mark.filterwarnings("ignore:Field type should not be:DeprecationWarning")
def test_power_of_two_resolution_tsoffset_and_picoseconds(tmp_path):
    path = tmp_path / "res.pcapng"
    shb = blocks.SectionHeader(endianness=">", options={"shb_userappl": "test"})
    bin20 = shb.new_member(
        blocks.InterfaceDescription,
        link_type=1,
        options={"if_tsresol": b"\x94", "if_tsoffset": -1000},
    )
    pico = shb.new_member(
        blocks.InterfaceDescription, link_type=101, options={"if_tsresol": b"\x0c"}
    )
    with open(path, "wb") as f:
        writer = FileWriter(f, shb)
        for iface, ticks in ((bin20, (1_700_000_000 << 20) + 123457), (pico, 1700000000123456789)):
            writer.write_block(
                shb.new_member(
                    blocks.EnhancedPacket,
                    interface_id=iface.interface_id,
                    packet_data=b"\x45" * 20,
                    timestamp_high=ticks >> 32,
                    timestamp_low=ticks & 0xFFFFFFFF,
                    options={"opt_comment": "two\nlines", "epb_flags": 1},
                )
            )
    reader, records = read_all(path)
    # 123457 / 2**20 s = 117737770.08 ns, floored as Wireshark does; offset in seconds
    assert [r.ts_ns for r in records] == [1_699_999_000_117_737_770, 1_700_000_000_123_456]
    assert [r.ts_ns for r in records] == [
        epoch_ns(row["frame.time_epoch"]) for row in tshark_packets(str(path))
    ]
    assert [i.ticks_per_second for i in reader.interfaces] == [2**20, 10**12]
    assert [(r.comment, r.flags, r.pid) for r in records] == [("two\nlines", 1, None)] * 2


# ------------------------------------------------------------------ malformed corpus
# expected packets per file (None = NotACaptureError) and a fragment of `error`
EXPECTED_MALFORMED = {
    "derived__http_get_cut_mid_packet.pcap": (6, "truncated packet record at byte 2120 (packet 7)"),
    "derived__pcapng_multi_interface_cut_mid_block.pcapng": (
        3,
        "truncated block at byte 828 (packet 4)",
    ),
    "libpcap__linktype-reserved-field-not-zero.pcap": (0, None),
    "libpcap__pcap-invalid-version-1.pcap": (None, "major version 1 unsupported"),
    "libpcap__pcap-invalid-version-2.pcap": (1, None),
    "libpcap__pcapng-invalid-vers-1.pcapng": (None, "unknown SHB version 0.1"),
    "libpcap__pcapng-invalid-vers-2.pcapng": (None, "unknown SHB version 1.1"),
    "libpcap__shb-option-too-long.pcapng": (0, "corrupt block at byte 0: trailing length"),
    # tshark refuses these link types; libpcap/tcpdump reads the same counts as we do
    "tcpdump__dsa.pcap": (8, None),
    "tcpdump__hoobr_juniper3.pcap": (1, None),
    "tcpdump__juniper_monitor_invalid_cookie_length.pcap": (1, None),
    "tcpdump__vtp_asan.pcap": (5, None),
}
TSHARK_REFUSES = {
    "libpcap__linktype-reserved-field-not-zero.pcap",
    "libpcap__shb-option-too-long.pcapng",
    "tcpdump__dsa.pcap",
    "tcpdump__hoobr_juniper3.pcap",
    "tcpdump__vtp_asan.pcap",
    "tcpdump__juniper_monitor_invalid_cookie_length.pcap",
}
BAD_TIMESTAMPS = {
    "tcpdump__atm-oam-loopback-print-overrun.pcap",
    "tcpdump__timestamp_invalid_micro.pcap",
    "tcpdump__timestamp_invalid_nano.pcap",
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_file_is_survived(name):
    path = Path(corpus.path(name))
    short = name.split("/", 1)[1]
    manifest_count = corpus.row(name)["packets"]
    expected, error = EXPECTED_MALFORMED.get(short) or (int(manifest_count), None)
    if expected is None:
        with pytest.raises(NotACaptureError, match=error):
            CaptureReader(str(path))
        return
    reader, records = read_all(path)
    assert len(records) == expected
    if error is None:
        assert reader.error is None
    else:
        assert error in reader.error
    if short not in TSHARK_REFUSES:
        assert len(records) == int(manifest_count)  # = capinfos -c -M
        skip = range(len(records)) if short in BAD_TIMESTAMPS else ()
        if short != "tcpdump__atm-oam-loopback-print-overrun.pcap":  # see the SunATM test
            assert_matches_tshark(str(path), records, skip_time=skip)


def test_truncated_pcap_keeps_packets_before_the_cut():
    cut = Path(corpus.path("malformed/derived__http_get_cut_mid_packet.pcap"))
    info = subprocess.run(["capinfos", "-c", "-M", str(cut)], capture_output=True, text=True)
    assert "An error occurred after reading 6 packets" in info.stderr
    reader, records = read_all(cut)
    assert reader.error == (
        "truncated packet record at byte 2120 (packet 7): "
        "file ends 880 bytes into a 1530-byte record"
    )
    _full_reader, full = read_all(corpus.path("wellformed/http_get_file_download.pcap"))
    assert [(r.ts_ns, r.data) for r in records] == [(r.ts_ns, r.data) for r in full[:6]]
    assert reader.bytes_done == 2120 and reader.packets == 6


def test_truncated_pcapng_keeps_packets_before_the_cut():
    reader, records = read_all(
        corpus.path("malformed/derived__pcapng_multi_interface_cut_mid_block.pcapng")
    )
    assert reader.error == (
        "truncated block at byte 828 (packet 4): file ends 172 bytes "
        "into a 200-byte block of type 0x6"
    )
    _full_reader, full = read_all(corpus.path("wellformed/pcapng_multi_interface_ns_us.pcapng"))
    assert [(r.ts_ns, r.iface, r.data) for r in records] == [
        (r.ts_ns, r.iface, r.data) for r in full[:3]
    ]


def test_out_of_range_timestamp_fields_are_added_and_warned():
    reader, records = read_all(corpus.path("malformed/tcpdump__timestamp_invalid_micro.pcap"))
    # raw (sec, usec): (1418145369, 999999), (1418145370, 1000000), (1418145370, 2147483648)
    assert [r.ts_ns for r in records] == [
        1418145369_999999000,
        1418145371_000000000,
        1418145370_000000000 + 2147483648_000,
    ]
    assert reader.warnings == [
        "packet 2: fraction-of-second field 1000000 out of range",
        "packet 3: fraction-of-second field 2147483648 out of range",
    ]


def test_link_layer_pseudo_headers_stay_in_the_data():
    # tshark strips SunATM's 4-byte pseudo-header from len/cap_len; we keep the
    # record as stored and leave the link layer to the decoder
    path = Path(corpus.path("malformed/tcpdump__atm-oam-loopback-print-overrun.pcap"))
    _reader, (rec,) = read_all(path)
    (row,) = tshark_packets(str(path))
    assert rec.linktype == 123
    assert (rec.origlen - 4, rec.caplen - 4) == (int(row["frame.len"]), int(row["frame.cap_len"]))
    assert hashlib.md5(rec.data[4:]).hexdigest() == row["frame.md5_hash"]


def test_repeated_warnings_are_capped():
    reader, records = read_all(corpus.path("malformed/tcpdump__q933-heapoverflow-2.pcap"))
    assert len(records) == 17 and all(r.caplen > 9 for r in records)
    assert reader.warnings[0] == "packet 1: caplen 86 > snaplen 9"
    assert len(reader.warnings) == 6
    assert reader.warnings[-1] == "... and 12 more 'snaplen' warnings"


def test_modified_pcap_records():
    reader, records = read_all(corpus.path("malformed/rusticata__modified-format.pcap"))
    (rec,) = records
    assert (rec.ts_ns, rec.caplen, rec.origlen) == (1712763541_734807000, 98, 98)
    assert rec.data[12:16] == b"\x08\x00\x45\x00" and len(rec.data) == 98
    assert reader.interfaces[0].linktype == 1


def test_unknown_linktype_bits_are_kept_raw():
    reader, records = read_all(corpus.path("malformed/tcpdump__hoobr_juniper3.pcap"))
    assert reader.interfaces[0].linktype == records[0].linktype == 0x30000084


# ------------------------------------------------------------------ not a capture
@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"\x0a\x0d", "only 2 bytes"),
        (b"hello, this is text\n" * 3, "unknown magic 0x68656c6c"),
        (Path("/bin/ls").read_bytes()[:4096], "unknown magic 0x7f454c46"),
        (b"\x1f\x8b\x08\x00" + bytes(60), "gzip-compressed"),
        (pcap_header(snaplen=65535)[:20], "too short for a pcap file header"),
        (pcap_header(snaplen=65535, version=(3, 0)), "major version 3 unsupported"),
        (shb(byte_order_magic=0x12345678), "bad byte-order magic"),
    ],
)
def test_not_a_capture(tmp_path, content, message):
    path = tmp_path / "file"
    path.write_bytes(content)
    with pytest.raises(NotACaptureError, match=message) as exc:
        CaptureReader(str(path))
    assert str(exc.value).startswith("not a capture file: ")


def test_missing_file_raises_filenotfound(tmp_path):
    with pytest.raises(FileNotFoundError):
        CaptureReader(str(tmp_path / "missing.pcap"))


# ------------------------------------------------------------------ hand-built damage
def _pcap(*records):
    """A classic pcap: (second, data, caplen field or None for len(data)) records."""
    return pcap_header(snaplen=65535) + b"".join(
        pcap_record(sec * 1_000_000_000, data, caplen=caplen) for sec, data, caplen in records)


def _pcapng(*blocks):
    return shb() + idb(1) + b"".join(blocks)


def test_absurd_caplen_stops_with_error(tmp_path):
    path = tmp_path / "absurd.pcap"
    path.write_bytes(_pcap((1, b"a" * 60, None), (2, b"b" * 60, 300 << 20)))
    reader, records = read_all(path)
    assert [r.data for r in records] == [b"a" * 60]
    assert reader.error == "absurd caplen 314572800 at byte 100 (packet 2)"


def test_truncated_record_header(tmp_path):
    path = tmp_path / "hdr.pcap"
    path.write_bytes(_pcap((1, b"a" * 60, None)) + b"\x01\x02\x03")
    reader, records = read_all(path)
    assert len(records) == 1
    assert reader.error == (
        "truncated record header at byte 100 (packet 2): file ends 3 bytes into a 16-byte header"
    )


def test_pcapng_damage(tmp_path):
    good = epb(0, 1_000_000, b"x" * 61)
    cases = {
        "trailer": (
            good + good[:-4] + b"\0\0\0\0",
            "corrupt block at byte 144: trailing length 0 != leading length 96",
        ),
        "caplen": (
            good + epb(0, 0, b"y" * 8, caplen=999, origlen=999),
            "absurd caplen 999 at byte 144 (packet 2): larger than its 40-byte block",
        ),
        "iface": (good + epb(3, 5, b"z"), "names interface 3, but the section has 1"),
        "length": (
            good + block(EPB_TYPE, bytes(4), length=13),
            "corrupt block at byte 144: block length 13",
        ),
    }
    for name, (tail, error) in cases.items():
        path = tmp_path / f"{name}.pcapng"
        path.write_bytes(_pcapng(tail))
        reader, records = read_all(path)
        assert [(r.ts_ns, r.data) for r in records] == [(1_000_000_000, b"x" * 61)], name
        assert error in reader.error, (name, reader.error)


def test_pcapng_unknown_block_is_skipped_with_warning(tmp_path):
    path = tmp_path / "unknown.pcapng"
    path.write_bytes(_pcapng(epb(0, 1, b"a"), block(0x77, b"junk"), epb(0, 2, b"b")))
    reader, records = read_all(path)
    assert [r.data for r in records] == [b"a", b"b"]
    assert reader.error is None
    assert reader.warnings == ["skipped block of unknown type 0x00000077 at byte 84"]


def test_pcapng_bad_option_keeps_packet(tmp_path):
    bad_option = option(OPT_COMMENT, b"oops", length=200)
    path = tmp_path / "opt.pcapng"
    path.write_bytes(_pcapng(epb(0, 7, b"abcd", options=bad_option)))
    reader, records = read_all(path)
    assert [(r.data, r.comment) for r in records] == [(b"abcd", None)]
    assert "option 1 of length 200 runs past its block" in reader.warnings[0]


# ------------------------------------------------------------------ API behaviour
def test_batches_and_tuples_agree_with_records():
    path = corpus.path("wellformed/pcapng_2if_comments_keylog.pcapng")
    _reader, records = read_all(path)
    with CaptureReader(path) as reader:
        batches = list(reader.iter_batches(50, tuples=True))
    assert [len(b) for b in batches] == [50, 50, 50, 9]
    flat = [t for b in batches for t in b]
    fields = (
        "ts_ns",
        "caplen",
        "origlen",
        "linktype",
        "iface",
        "data",
        "comment",
        "pid",
        "tid",
        "flags",
    )
    assert flat == [tuple(getattr(r, f) for f in fields) for r in records]
    with CaptureReader(path) as reader:
        assert [len(b) for b in reader.iter_batches(100)] == [100, 59]


def test_iteration_is_one_pass_and_close_is_safe():
    path = corpus.path("wellformed/http_get_file_download.pcap")
    reader = CaptureReader(path)
    first = [next(iter(reader)) for _ in range(3)]
    assert reader.packets == 3 and reader.bytes_done < reader.size
    rest = list(reader)
    assert len(first) + len(rest) == 14 and first[0].ts_ns < rest[0].ts_ns
    with pytest.raises(RuntimeError):
        reader.iter_batches(10, tuples=True).__next__()
    reader.close()
    reader.close()
    with CaptureReader(path) as reader2:
        next(iter(reader2))
    assert list(reader2) == []  # closed mid-way: iteration just ends


def test_random_damage_never_raises_from_iteration(tmp_path):
    """Byte flips and cuts of small corpus files: open may refuse, iteration never raises."""
    rng = random.Random(7)
    sources = [
        Path(corpus.path(name))
        for name in WELLFORMED + MALFORMED
        if int(corpus.row(name)["size_bytes"]) < 70_000
    ]
    path = tmp_path / "mutant"
    stopped = 0
    for _ in range(1500):
        data = bytearray(rng.choice(sources).read_bytes())
        for _ in range(rng.randint(1, 8)):
            if rng.random() < 0.8 and data:
                at = rng.randrange(len(data))
                data[at : at + 4] = rng.randbytes(rng.choice((1, 4)))
            else:
                del data[rng.randrange(len(data) + 1) :]
        path.write_bytes(data)
        try:
            reader = CaptureReader(str(path))
        except NotACaptureError:
            continue
        with reader:
            count = sum(1 for _ in reader)
        assert count == reader.packets
        stopped += reader.error is not None
    assert stopped > 100  # the damage was real enough to stop many files
