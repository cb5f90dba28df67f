"""The extract_* actions: the flag, paging, writing under hostile names, deleting,
truncation, clean-up with the capture, and the service's bounded memory."""

from __future__ import annotations

import collections
import gzip
import hashlib
import os
import tracemalloc
import unicodedata
from concurrent.futures import Future

import pytest

from apppaccap.extract.service import ExtractHandle
from tests.helpers import corpus
from tests.helpers.app import ingest
from tests.helpers.extraction import body_of
from tests.helpers.extraction import extract
from tests.helpers.extraction import write_synthetic_pcap

GET = "wellformed/http_get_file_download.pcap"   # one 4705-byte file
MULTI = "wellformed/http_bro_org_multi_object.pcap"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_flag_is_off_by_default_and_persisted(live, live_ajax):
    assert live_ajax.ok("settings_get_by_key", key_name="extract_enabled") == "0"
    capture_id = ingest(live, live_ajax, corpus.path(GET))
    page = live_ajax.ok("extract_query", capture_id=capture_id)
    assert page == {"Version": 1, "CaptureId": capture_id, "LastId": 0, "More": False,
                    "Streams": []}
    assert live_ajax.ok("extract_enable") == 0
    assert live_ajax.ok("settings_get_by_key", key_name="extract_enabled") == "1"
    capture_id = ingest(live, live_ajax, corpus.path(GET))
    (s,) = live_ajax.ok("extract_query", capture_id=capture_id)["Streams"]
    assert s["FileName"] == "CHANGES.bro-aux.txt" and s["Size"] == 4705 and s["Complete"]
    assert s["Protocol"] == "http" and s["ConnectionId"] == 1 and s["MimeType"] == "text/plain"
    assert s["Time"] > 116444736000000000       # FILETIME after 1970
    conns = live_ajax.ok("capture_list_conns", capture_id=capture_id)
    assert s["ConnectionId"] in [c["ConnectionId"] for c in conns]
    assert live_ajax.ok("extract_disable") == 0
    assert live_ajax.ok("settings_get_by_key", key_name="extract_enabled") == "0"
    capture_id = ingest(live, live_ajax, corpus.path(GET))
    assert live_ajax.ok("extract_query", capture_id=capture_id)["Streams"] == []


def test_query_pages(live, live_ajax):
    live_ajax.ok("extract_enable")
    capture_id = ingest(live, live_ajax, corpus.path(MULTI))
    everything = live_ajax.ok("extract_query", capture_id=capture_id, limit=10000)
    assert not everything["More"] and len(everything["Streams"]) == 31
    ids, last = [], 0
    while True:
        page = live_ajax.ok("extract_query", capture_id=capture_id, last_id=last, limit=7)
        assert len(page["Streams"]) <= 7
        ids += [s["StreamId"] for s in page["Streams"]]
        last = page["LastId"]
        if not page["More"]:
            break
    assert ids == [s["StreamId"] for s in everything["Streams"]] == sorted(ids)
    assert live_ajax.ok("extract_query", capture_id=capture_id, last_id=ids[-1]) == {
        "Version": 1, "CaptureId": capture_id, "LastId": ids[-1], "More": False, "Streams": []}
    (hole,) = [s for s in everything["Streams"] if not s["Complete"]]
    assert hole["MissingBytes"] == 7240 and hole["Uri"].endswith("jquery.cycle.all.min.js")


def test_errors_name_the_parameter(live, live_ajax):
    live_ajax.ok("extract_enable")
    capture_id = ingest(live, live_ajax, corpus.path(GET))
    cases = [
        ("extract_query", {"capture_id": 999}, 6, "capture_id:"),
        ("extract_query", {}, 4, "capture_id: required"),
        ("extract_query", {"capture_id": capture_id, "limit": 0}, 4, "limit:"),
        ("extract_query", {"capture_id": "x"}, 4, "capture_id:"),
        ("extract_file_write", {"capture_id": 999, "stream_id": 1}, 6, "capture_id:"),
        ("extract_file_write", {"capture_id": capture_id, "stream_id": 2}, 6, "stream_id:"),
        ("extract_file_write", {"capture_id": capture_id}, 4, "stream_id: required"),
        ("extract_file_list", {"capture_id": 999}, 6, "capture_id:"),
        ("extract_file_clear", {"capture_id": 999}, 6, "capture_id:"),
        ("extract_file_delete", {"capture_id": 999}, 6, "capture_id:"),
        ("extract_file_delete", {"capture_id": capture_id, "file_id": 5}, 6, "file_id:"),
        ("extract_file_delete", {"capture_id": capture_id, "file_id": -1}, 4, "file_id:"),
    ]
    for name, params, code, text in cases:
        body = live_ajax(name, **params)
        assert body["ErrorCode"] == code and body["ReturnValue"].startswith(text), (name, body)


def test_write_list_delete_clear(live, live_ajax):
    live_ajax.ok("extract_enable")
    capture_id = ingest(live, live_ajax, corpus.path(MULTI))
    streams = [s for s in live_ajax.ok("extract_query", capture_id=capture_id)["Streams"]
               if s["Complete"]][:4]
    files = [live_ajax.ok("extract_file_write", capture_id=capture_id, stream_id=s["StreamId"])
             for s in streams]
    for s, f in zip(streams, files):
        assert f["CaptureId"] == capture_id and f["StreamId"] == s["StreamId"]
        assert f["Size"] == s["Size"] and f["Sha256"] == s["Sha256"]
        assert f["MimeType"] == s["MimeType"] and f["FileName"] == os.path.basename(f["Path"])
        with open(f["Path"], "rb") as fh:
            assert sha(fh.read()) == s["Sha256"]
    # writing a stream again returns the file already written
    again = live_ajax.ok("extract_file_write", capture_id=capture_id,
                         stream_id=streams[0]["StreamId"])
    assert again == files[0]
    assert live_ajax.ok("extract_file_list", capture_id=capture_id) == files
    assert live_ajax.ok("extract_file_delete", capture_id=capture_id,
                        file_id=files[1]["FileId"]) == 1
    assert not os.path.exists(files[1]["Path"])
    assert live_ajax.ok("extract_file_list", capture_id=capture_id) == \
        [files[0], files[2], files[3]]
    assert live_ajax("extract_file_delete", capture_id=capture_id,
                     file_id=files[1]["FileId"])["ErrorCode"] == 6
    os.remove(files[3]["Path"])                   # gone behind our back: no longer listed
    assert live_ajax.ok("extract_file_list", capture_id=capture_id) == [files[0], files[2]]
    assert live_ajax.ok("extract_file_clear", capture_id=capture_id) == 2
    assert live_ajax.ok("extract_file_list", capture_id=capture_id) == []
    assert live_ajax.ok("extract_file_clear", capture_id=capture_id) == 0
    # the streams stay; written again they get a new FileId
    f = live_ajax.ok("extract_file_write", capture_id=capture_id,
                     stream_id=streams[0]["StreamId"])
    assert f["FileId"] > files[-1]["FileId"] and f["Sha256"] == streams[0]["Sha256"]
    assert live_ajax.ok("extract_file_delete", capture_id=capture_id, file_id=0) == 1
    assert live_ajax.ok("extract_file_delete", capture_id=capture_id) == 0


HOSTILE = [
    b'attachment; filename="../../etc/passwd"',
    b'attachment; filename="..\\\\..\\\\x"',                 # quoted-string: ..\..\x
    b"attachment; filename=..\\..\\y",
    b'attachment; filename="' + b"A" * 10_000 + b'.txt"',
    b'attachment; filename="evil\x01\x1b[31m\x7fname.txt"',
    b"attachment; filename*=UTF-8''%0D%0Acrlf%00nul.txt",
    b"attachment; filename*=UTF-8''invoice%E2%80%AEtxt.exe",
    b"attachment; filename*=UTF-8''%EF%BC%8F%EF%BC%8Eetc%EF%BC%8Fshadow",  # fullwidth "/.etc/"
    b'attachment; filename="."',
    b'attachment; filename=".."',
    b'attachment; filename="/"',
    b'attachment; filename="CON.txt"',
    b'attachment; filename="same.txt"',
    b'attachment; filename="same.txt"',
    b'attachment; filename="same.txt"',
]


def _hostile_pcap(path):
    convs = []
    for i, disposition in enumerate(HOSTILE):
        body = b"body number %d\n" % i
        convs.append([(True, b"GET /f%d HTTP/1.1\r\nHost: evil.test\r\n\r\n" % i),
                      (False, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Disposition: "
                       % len(body) + disposition + b"\r\n\r\n" + body)])
    write_synthetic_pcap(str(path), convs)


def test_hostile_names_stay_in_the_capture_folder(live, live_ajax, tmp_path):
    _hostile_pcap(tmp_path / "evil.pcap")
    live_ajax.ok("extract_enable")
    capture_id = ingest(live, live_ajax, tmp_path / "evil.pcap")
    streams = live_ajax.ok("extract_query", capture_id=capture_id)["Streams"]
    assert len(streams) == len(HOSTILE)
    assert any(s["OriginalName"] == "../../etc/passwd" for s in streams)
    folder = os.path.realpath(os.path.join(live.config.data_dir, "extracted", str(capture_id)))
    paths = []
    for s in streams:
        f = live_ajax.ok("extract_file_write", capture_id=capture_id, stream_id=s["StreamId"])
        name = f["FileName"]
        assert os.path.dirname(os.path.realpath(f["Path"])) == folder, f
        assert os.path.basename(f["Path"]) == name and name not in ("", ".", "..")
        assert not name.startswith((".", "-", "~")) and "/" not in name and "\\" not in name
        assert len(name.encode()) <= 255
        assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in name), repr(name)
        assert name.split(".")[0].lower() != "con"
        with open(f["Path"], "rb") as fh:
            assert fh.read() == b"body number %d\n" % int(s["Uri"][2:])
        paths.append(f["Path"])
    assert len(set(paths)) == len(HOSTILE)
    names = sorted(os.path.basename(p) for p in paths)
    assert {"same.txt", "same-2.txt", "same-3.txt"} <= set(names)
    assert sorted(os.listdir(folder)) == names          # nothing else, nothing elsewhere
    assert os.listdir(os.path.join(live.config.data_dir, "extracted")) == [str(capture_id)]


def test_large_file_is_truncated_at_the_setting(live, live_ajax, tmp_path):
    live_ajax.ok("extract_enable")
    live_ajax.ok("settings_set", key_name="extract_max_file_bytes", value="1000")
    capture_id = ingest(live, live_ajax, corpus.path(GET))
    (s,) = live_ajax.ok("extract_query", capture_id=capture_id)["Streams"]
    assert s["Size"] == 1000 and s["Truncated"] and not s["Complete"]
    f = live_ajax.ok("extract_file_write", capture_id=capture_id, stream_id=s["StreamId"])
    with open(f["Path"], "rb") as fh:
        data = fh.read()
    assert len(data) == 1000 and sha(data) == s["Sha256"] == f["Sha256"]
    (full,) = extract(corpus.path(GET), tmp_path / "engine")
    assert body_of(full)[:1000] == data and full.size == 4705


def test_capture_delete_removes_spool_and_extracted_files(live, live_ajax):
    live_ajax.ok("extract_enable")
    capture_id = ingest(live, live_ajax, corpus.path(GET))
    data_dir = live.config.data_dir
    spool = os.path.join(data_dir, "extract-spool", str(capture_id))
    assert len(os.listdir(spool)) == 1
    f = live_ajax.ok("extract_file_write", capture_id=capture_id, stream_id=1)
    live_ajax.ok("capture_delete", capture_id=capture_id)
    assert not os.path.exists(spool) and not os.path.exists(f["Path"])
    assert not os.path.exists(os.path.join(data_dir, "extracted", str(capture_id)))
    assert live.catalog.read("SELECT * FROM extracted_files") == []
    assert live_ajax("extract_file_list", capture_id=capture_id)["ErrorCode"] == 6


def test_flush_extracted_keeps_the_streams(live, live_ajax):
    live_ajax.ok("extract_enable")
    capture_id = ingest(live, live_ajax, corpus.path(GET))
    f = live_ajax.ok("extract_file_write", capture_id=capture_id, stream_id=1)
    assert live_ajax.ok("apc_flush", flags=0x20) == 0
    assert not os.path.exists(f["Path"])
    assert live_ajax.ok("extract_file_list", capture_id=capture_id) == []
    again = live_ajax.ok("extract_file_write", capture_id=capture_id, stream_id=1)
    assert again["Sha256"] == f["Sha256"] and os.path.exists(again["Path"])


def test_spool_removed_behind_our_back_is_an_io_error(live, live_ajax):
    live_ajax.ok("extract_enable")
    capture_id = ingest(live, live_ajax, corpus.path(GET))
    spool = os.path.join(live.config.data_dir, "extract-spool", str(capture_id))
    for name in os.listdir(spool):
        os.remove(os.path.join(spool, name))
    body = live_ajax("extract_file_write", capture_id=capture_id, stream_id=1)
    assert body["ErrorCode"] == 11 and body["ReturnValue"].startswith("stream_id:")


# -- the service without the API: close on FIN/RST, idle expiry, bounded memory -----------

class _FakeDb:
    def __init__(self):
        self.rows = []

    def submit(self, fn):
        class Conn:
            def executemany(_, sql, rows):
                self.rows.extend(rows)
        fut = Future()
        fut.set_result(fn(Conn()))
        return fut


Pkt = collections.namedtuple("Pkt", "src sport dst dport tcp_seq tcp_ack tcp_flags payload_off "
                                    "payload_len l4_off")
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


class _Feed:
    """Feeds one synthetic connection to ExtractHandle.on_tcp like the Recorder does."""

    def __init__(self, handle, conn_id, cport=40000, ts=1_000_000_000):
        self.h, self.id, self.cport, self.ts = handle, conn_id, cport, ts
        self.seq = {True: 1001, False: 5001}
        self.send(True, b"", SYN, seq=1000)
        self.send(False, b"", SYN | ACK, seq=5000)

    def send(self, client, payload, flags=ACK, seq=None):
        self.ts += 1000
        src, dst = (("10.0.0.1", self.cport), ("10.0.0.2", 80))[::1 if client else -1]
        s = self.seq[client] if seq is None else seq
        d = Pkt(src[0], src[1], dst[0], dst[1], s & 0xFFFFFFFF, 0, flags, 0, len(payload), 34)
        self.h.on_tcp(self.id, self.ts, d, payload)
        if seq is None:
            self.seq[client] += len(payload) + (1 if flags & FIN else 0)


def test_connection_closed_on_fins_and_rst(tmp_path):
    h = ExtractHandle(_FakeDb(), str(tmp_path / "spool"))
    a = _Feed(h, 1)
    a.send(True, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    a.send(False, b"HTTP/1.1 200 OK\r\n\r\nread until close")
    a.send(False, b"", FIN | ACK)
    assert h.files == 1 and h.extractor.stats()["connections"] == 1
    a.send(True, b"", FIN | ACK)                 # FINs both ways: forgotten now, not at the end
    assert h.extractor.stats()["connections"] == 0
    a.send(False, b"")                           # the last ACK does not reopen it
    assert h.extractor.stats()["connections"] == 0
    b = _Feed(h, 2, cport=40001)
    b.send(True, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    b.send(False, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
    b.send(True, b"", RST)
    assert h.files == 2 and h.extractor.stats()["connections"] == 0
    h.write_rows()
    rows = h.db.rows
    assert [(r[0], r[6], r[7]) for r in rows] == [(1, 16, 1), (2, 5, 0)]   # conn, size, complete


def test_idle_connections_expire(tmp_path):
    h = ExtractHandle(_FakeDb(), str(tmp_path / "spool"))
    a = _Feed(h, 1)
    a.send(True, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    a.send(False, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    b = _Feed(h, 2, cport=40001, ts=a.ts + 601 * 10**9)
    b.send(True, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert h.files == 1 and h.extractor.stats()["connections"] == 1
    h.close()
    assert len(h.db.rows) == 1


def test_memory_stays_bounded_for_a_large_transfer(tmp_path):
    h = ExtractHandle(_FakeDb(), str(tmp_path / "spool"), max_file_bytes=16 << 20)
    total = 48 << 20
    a = _Feed(h, 1)
    a.send(True, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    a.send(False, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
    chunk = os.urandom(65000)
    tracemalloc.start()
    try:
        for _ in range(total // len(chunk)):
            a.send(False, chunk)
        a.send(False, chunk[:total % len(chunk)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    a.send(False, b"", FIN | ACK)
    a.send(True, b"", FIN | ACK)
    assert peak < 2 << 20, f"peak {peak} bytes while feeding {total} bytes"
    h.close()
    (row,) = h.db.rows
    assert row[6] == 16 << 20 and row[7] == 0 and row[8] == 1       # size, complete, truncated
    assert os.path.getsize(os.path.join(str(tmp_path / "spool"), row[-1])) == 16 << 20


@pytest.mark.parametrize("name", ["extract_enable", "extract_disable"])
def test_flag_actions_work_without_the_capture_engine(ajax, name):
    assert ajax.ok(name) == 0


def _spooled(data_dir: str, capture_id: int) -> int:
    folder = os.path.join(data_dir, "extract-spool", str(capture_id))
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))


def test_gzip_bombs_cannot_fill_the_disk_through_the_spool(live, live_ajax, tmp_path):
    # An attacker's review: keep-alive responses of ~1 KB of gzip that each decode to the
    # largest body allowed spooled 1000x what was on the wire, for as long as the capture
    # lives. Now the capture's spool grows at most 64x its TCP bytes beyond one full body.
    mib, n = 1 << 20, 48
    bomb = gzip.compress(b"\0" * mib)
    get = b"GET /z HTTP/1.1\r\nHost: x\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb)
    write_synthetic_pcap(str(tmp_path / "bombs.pcap"),
                         [[(True, get * n), (False, (resp + bomb) * n)]])
    wire = n * (len(get) + len(resp) + len(bomb))
    live_ajax.ok("extract_enable")
    live_ajax.ok("settings_set", key_name="extract_max_file_bytes", value=str(mib))
    capture_id = ingest(live, live_ajax, tmp_path / "bombs.pcap")
    spooled = _spooled(live.config.data_dir, capture_id)
    assert spooled <= mib + 4096 + 64 * wire, f"{spooled} bytes spooled from {wire} on the wire"
    streams = live_ajax.ok("extract_query", capture_id=capture_id)["Streams"]
    assert len(streams) == n                    # every response still found and recorded
    first = streams[0]
    assert first["Size"] == mib and first["Complete"] and first["Sha256"] == sha(b"\0" * mib)
    whole = sum(s["Complete"] for s in streams)
    assert whole <= 1 + 64 * wire // mib and streams[whole - 1]["Complete"]
    assert all(s["Truncated"] and not s["Complete"] for s in streams[whole:])
    assert sum(s["Size"] for s in streams) == spooled
    f = live_ajax.ok("extract_file_write", capture_id=capture_id, stream_id=first["StreamId"])
    assert f["Size"] == mib                     # what was stored before the bound stays whole


def test_reassembled_connections_are_bounded(tmp_path):
    # 60,000 connections that open and fall silent (spoofed SYNs cost the sender nothing)
    # used to keep ~2.5 KB of state each until 600 s of capture time had passed.
    h = ExtractHandle(_FakeDb(), str(tmp_path / "spool"))
    a = _Feed(h, 1)
    a.send(True, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    a.send(False, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    for i in range(2, 60_002):
        _Feed(h, i, cport=i % 60_000 + 1024, ts=a.ts + i)
    assert h.extractor.stats()["connections"] <= 50_000
    # the least recently active went first: its open body is finished, incomplete
    assert h.files == 1 and h.stats()["evicted"] == 60_001 - 50_000
    h.write_rows()
    (row,) = h.db.rows
    assert (row[0], row[6], row[7], row[9]) == (1, 7, 0, 93)   # conn, size, complete, missing
