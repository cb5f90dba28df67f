"""Ingest of the real corpus, bad input, uploads, and the export round trip through tshark."""

import io
import os

import pytest

from tests.helpers import corpus
from tests.helpers import tshark


def ingest(live, ajax, path):
    cmd = ajax.ok("pcap_ingest_file", path=path)
    assert cmd["Type"] == "INGEST" and cmd["State"] in (1, 2, 3)
    return live.jobs.wait(cmd["CommandUid"])


@pytest.mark.parametrize("rel", corpus.files("wellformed/"))
def test_wellformed_file_ingests_with_capinfos_count(live, live_ajax, rel):
    done = ingest(live, live_ajax, corpus.path(rel))
    assert done["State"] == 3, done
    capture_id = int(done["Result"])
    cap = live_ajax.ok("capture_get_details", capture_id=capture_id)
    assert cap["Type"] == 4 and cap["State"] == 2
    assert cap["SourceFile"] == os.path.abspath(corpus.path(rel))
    assert cap["PacketCount"] == int(corpus.row(rel)["packets"])
    assert capture_id in [c["CaptureId"] for c in live_ajax.ok("capture_list_completed")]
    page = live_ajax.ok("capture_read", capture_id=capture_id, limit=10000)
    assert len(page["Packets"]) == cap["PacketCount"] and not page["More"]
    tcp = int(corpus.row(rel)["tcp_conversations"])
    udp = int(corpus.row(rel)["udp_conversations"])
    conns = live_ajax.ok("capture_list_conns", capture_id=capture_id, limit=10000)
    # tshark's conversation count is the oracle for TCP/UDP connections
    assert len([c for c in conns if c["Protocol"] == 6]) == tcp, rel
    assert len([c for c in conns if c["Protocol"] == 17]) == udp, rel


def test_ingested_database_has_bulk_pages_and_a_live_one_keeps_the_default(live, live_ajax,
                                                                          tmp_path):
    import sqlite3

    from apppaccap.store.capturedb import BULK_PAGE_SIZE
    from apppaccap.store.capturedb import CaptureDb
    from apppaccap.store.capturedb import capture_path

    def page_size(path):
        with sqlite3.connect(path) as conn:
            return conn.execute("PRAGMA page_size").fetchone()[0]

    done = ingest(live, live_ajax, corpus.path(corpus.files("wellformed/")[0]))
    assert done["State"] == 3, done
    assert page_size(capture_path(live.config.data_dir, int(done["Result"]))) == BULK_PAGE_SIZE
    # a database made without it (live captures), and one opened again with another size
    plain = CaptureDb(str(tmp_path), 1)
    plain.close()
    again = CaptureDb(str(tmp_path), 1, page_size=BULK_PAGE_SIZE)
    again.close()
    assert page_size(plain.path) == page_size(":memory:") != BULK_PAGE_SIZE


@pytest.mark.parametrize("rel", corpus.files("malformed/"))
def test_malformed_file_is_survived(live, live_ajax, rel):
    body = live_ajax("pcap_ingest_file", path=corpus.path(rel))
    if body["ErrorCode"] == 4:            # not a capture at all: refused up front, by name
        assert body["ReturnValue"].startswith("path:")
        return
    assert body["ErrorCode"] == 0, body
    done = live.jobs.wait(body["ReturnValue"]["CommandUid"])
    assert done["State"] in (3, 4)
    if done["State"] == 4:
        assert done["Message"], "a failed ingest must say why"
    assert live_ajax.ok("apppaccap")["AppPacCap"]  # the server still answers


def test_truncated_file_keeps_packets_before_damage(live, live_ajax):
    done = ingest(live, live_ajax, corpus.path("malformed/derived__http_get_cut_mid_packet.pcap"))
    assert done["State"] == 3
    cap = live_ajax.ok("capture_get_details", capture_id=int(done["Result"]))
    assert cap["PacketCount"] == 6 and "stopped early" in cap["Message"]


def test_bad_paths(live_ajax, tmp_path):
    # outside the ingest roots: INVALID_PERMISSIONS, whatever the file (test_fs_boundary.py)
    assert live_ajax("pcap_ingest_file", path="/no/such/file.pcap")["ErrorCode"] == 8
    # inside them (tmp_path is one here): precise answers
    assert live_ajax("pcap_ingest_file", path=str(tmp_path / "no-such.pcap"))["ErrorCode"] == 6
    assert live_ajax("pcap_ingest_file", path=str(tmp_path))["ErrorCode"] == 4
    text = tmp_path / "notes.txt"
    text.write_text("this is not a capture file at all\n")
    r = live_ajax("pcap_ingest_file", path=str(text))
    assert r["ErrorCode"] == 4 and r["ReturnValue"] == "path: not a pcap or pcapng file"
    assert live_ajax("pcap_ingest_file", path="")["ErrorCode"] == 4


def test_upload_is_ingested_under_its_name(live, live_ajax):
    path = corpus.path("wellformed/icmp_5_pings.pcap")
    with open(path, "rb") as fh:
        resp = live_ajax.client.post("/ajax", data={"action": "pcap_ingest_post",
                                                    "file": (io.BytesIO(fh.read()), "pings.pcap")},
                                     content_type="multipart/form-data")
    cmd = resp.get_json()["ReturnValue"]
    done = live.jobs.wait(cmd["CommandUid"])
    cap = live_ajax.ok("capture_get_details", capture_id=int(done["Result"]))
    assert cap["SourceFile"] == "pings.pcap" and cap["PacketCount"] == 10
    assert os.listdir(os.path.join(live.config.data_dir, "uploads")) == []


def test_upload_limit(live, live_ajax):
    live_ajax.ok("settings_set", key_name="upload_max_bytes", value="100")
    resp = live_ajax.client.post("/ajax", data={"action": "pcap_ingest_post",
                                                "file": (io.BytesIO(b"x" * 1000), "big.pcap")},
                                 content_type="multipart/form-data")
    body = resp.get_json()
    assert body["ErrorCode"] == 4 and "upload limit" in body["ReturnValue"]
    assert live_ajax("pcap_ingest_post")["ErrorCode"] == 4


@pytest.mark.parametrize("rel", ["wellformed/http_get_file_download.pcap",
                                 "wellformed/pcapng_11_interfaces_mixed_linktypes.pcapng",
                                 "wellformed/nanosec_bigendian_http.pcap",
                                 "wellformed/linux_sll2_icmp_arp.pcap",
                                 "wellformed/pcapng_2if_comments_keylog.pcapng"])
def test_export_round_trip_identical_in_tshark(live, live_ajax, tmp_path, rel):
    src = corpus.path(rel)
    capture_id = int(ingest(live, live_ajax, src)["Result"])
    out = str(tmp_path / "out.pcapng")
    cmd = live_ajax.ok("capture_export", capture_id=capture_id, path=out)
    done = live.jobs.wait(cmd["CommandUid"])
    assert done["State"] == 3 and done["Result"] == out
    fields = ("frame.time_epoch", "frame.len", "frame.cap_len", "frame.protocols")
    assert tshark.fields(out, *fields) == tshark.fields(src, *fields)
    # packet bytes identical
    assert tshark.run(out, "-x", damaged_ok=True) == tshark.run(src, "-x", damaged_ok=True)


def test_export_paths_and_files(live, live_ajax, tmp_path):
    capture_id = int(ingest(live, live_ajax, corpus.path("wellformed/icmp_5_pings.pcap"))
                     ["Result"])
    assert live_ajax("capture_export", capture_id=capture_id,
                     path="relative.pcapng")["ErrorCode"] == 4
    assert live_ajax("capture_export", capture_id=capture_id,
                     path="/no/such/dir/x.pcapng")["ErrorCode"] == 8  # outside the export roots
    assert live_ajax("capture_export", capture_id=capture_id,
                     path=str(tmp_path / "no" / "x.pcapng"))["ErrorCode"] == 4
    assert live_ajax("capture_export", capture_id=capture_id,
                     path=str(tmp_path / "export"))["ErrorCode"] == 4  # a directory
    assert live_ajax("capture_export", capture_id=9999)["ErrorCode"] == 6
    done = live.jobs.wait(live_ajax.ok("capture_export", capture_id=capture_id)["CommandUid"])
    name = os.path.basename(done["Result"])
    assert os.path.dirname(done["Result"]) == live.config.export_dir
    files = live_ajax.ok("export_list")
    assert [f["FileName"] for f in files] == [name] and files[0]["Size"] > 0
    for bad in ("../catalog.db", "/etc/passwd", "..", "a/b.pcapng"):
        assert live_ajax("export_delete", filename=bad)["ErrorCode"] == 4
    assert live_ajax("export_delete", filename="nope.pcapng")["ErrorCode"] == 6
    assert live_ajax.ok("export_delete", filename=name) == 1
    assert live_ajax.ok("export_list") == []


def test_commands(live, live_ajax):
    cmd = live_ajax.ok("pcap_ingest_file", path=corpus.path("wellformed/icmp_5_pings.pcap"))
    live.jobs.wait(cmd["CommandUid"])
    got = live_ajax.ok("command_query", command_uid=cmd["CommandUid"])
    assert got["State"] == 3 and got["Progress"] == 100 and got["Finished"] >= got["Started"] > 0
    assert cmd["CommandUid"] in [c["CommandUid"] for c in live_ajax.ok("command_list")]
    live_ajax.ok("command_delete", command_uid=cmd["CommandUid"])
    assert live_ajax("command_query", command_uid=cmd["CommandUid"])["ErrorCode"] == 6
    assert live_ajax("command_delete", command_uid="nope")["ErrorCode"] == 6


def test_connection_hostnames_come_from_dns_answers_in_the_capture(live, live_ajax):
    done = ingest(live, live_ajax, corpus.path("wellformed/rawip_mixed_v4v6.pcap"))
    conns = live_ajax.ok("capture_list_conns", capture_id=int(done["Result"]))
    named = {(c["RemoteIp"], c["Hostname"]) for c in conns if c["Hostname"]}
    # the A records of the DNS responses earlier in the same file (tshark: dns.a)
    answers = {tuple(row) for row in tshark.fields(
        corpus.path("wellformed/rawip_mixed_v4v6.pcap"), "dns.a", "dns.resp.name")
        if row[0]}
    assert ("82.102.152.19", "a1363.dscg.akamai.net") in named
    for ip, name in named:
        assert any(ip in a[0].split(",") and name in a[1].split(",") for a in answers), (ip, name)


def _copy_out(sidefile, db, regions, out):
    copier = sidefile.SideCopier(db)
    try:
        with open(out, "wb") as fh:
            for at, size in regions:
                copier.copy(fh.fileno(), at, size)
    finally:
        copier.close()
    return out.read_bytes()


@pytest.mark.parametrize("compiled", [True, False])
def test_side_file_written_and_copied_direct(tmp_path, monkeypatch, compiled):
    """Ingested bytes bypass the page cache (docs/DECISIONS.md): each region starts on
    DIRECT_ALIGN, padded with zeros that nobody reads; export copies the regions back
    byte for byte. The same with the compiled writer (copy and padding without the GIL)
    and without it."""
    from apppaccap.store import sidefile

    if not compiled:
        monkeypatch.setattr(sidefile, "write_slices", None)
    db = str(tmp_path / "1.db")
    # the second region's padding lands where the first, longer one left non-zero bytes
    first, second = os.urandom(3 * sidefile.READ_CHUNK + 777), bytearray(os.urandom(1000))
    side = sidefile.SideFile(db)
    try:
        assert side.direct  # ext4 and tmpfs take O_DIRECT
        regions, at = [], side.end()
        for blob in (first, second):
            regions.append((at, len(blob)))
            side.write_all(blob)
            at += side.span(len(blob))
            assert side.end() == at and at % sidefile.DIRECT_ALIGN == 0
    finally:
        side.close()
    raw = (tmp_path / "1.bytes").read_bytes()
    assert raw[:len(first)] == first and not any(raw[len(first):regions[1][0]])
    assert raw[regions[1][0]:regions[1][0] + 1000] == second and not any(raw[-3096:])
    assert _copy_out(sidefile, db, regions, tmp_path / "out") == first + second


def test_side_file_without_direct_io_writes_small_slices(tmp_path, monkeypatch):
    """Where the file system refuses O_DIRECT the bytes go through the page cache in
    writes of at most WRITE_SLICE (large writes were cached in large folios, up to ~4x
    the kernel CPU on our machines), unpadded, and export copies them by the kernel."""
    from apppaccap.store import sidefile

    assert sidefile.WRITE_SLICE <= 64 << 10
    monkeypatch.setattr(sidefile, "_set_direct", lambda fd, on: False)
    sizes = []
    real_write = os.write

    def write(fd, data):
        sizes.append(len(data))
        return real_write(fd, data)

    first, second = os.urandom(5 * sidefile.WRITE_SLICE // 2), bytearray(os.urandom(1000))
    for compiled in (True, False):  # the compiled loop, then os.write per slice
        if not compiled:
            monkeypatch.setattr(sidefile, "write_slices", None)
            monkeypatch.setattr(sidefile.os, "write", write)
        db = str(tmp_path / f"{compiled}.db")
        side = sidefile.SideFile(db)
        try:
            assert not side.direct and side.span(1000) == 1000
            side.write_all(first)
            side.write_all(second)
        finally:
            side.close()
        written = list(sizes)
        regions = [(0, len(first)), (len(first), len(second))]
        assert _copy_out(sidefile, db, regions, tmp_path / "out") == first + second
    assert written == [sidefile.WRITE_SLICE, sidefile.WRITE_SLICE, sidefile.WRITE_SLICE // 2,
                       1000]


def test_compiled_slice_writer_reports_errors(tmp_path):
    """A failed write(2) is an OSError with its errno (disk full fails the ingest with
    IO_ERROR, store/bulkwriter.py), not a crash or a silent short write."""
    import errno

    from apppaccap.store.sidefile import write_slices

    fd = os.open(tmp_path / "ro", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError) as err:
            write_slices(fd, b"x" * 10, 4)
        assert err.value.errno == errno.EBADF
    finally:
        os.close(fd)
    with pytest.raises(ValueError):
        write_slices(1, b"", 0)
    # through a staging buffer: the padded size holds the data and fits the buffer
    stage = bytearray(8)
    for size in (3, 9):
        with pytest.raises(ValueError):
            write_slices(1, b"data", 4, stage, size)
    with pytest.raises(BufferError):
        write_slices(1, b"data", 4, b"read-only", 8)
    out = tmp_path / "staged"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        write_slices(fd, b"data", 3, bytearray(b"x" * 8), 6)
    finally:
        os.close(fd)
    assert out.read_bytes() == b"data\0\0"
