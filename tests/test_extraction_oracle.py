"""Oracle for the product's file extraction: what `extract_file_write` writes against
``tshark --export-objects http``.

1. Corpus: every capture of MANIFEST.tsv with http_objects > 0 is ingested through
   the real API path (pcap_ingest_file with extraction enabled); every found HTTP
   stream is written with extract_file_write and the SHA-256 of the written files
   is compared with tshark's export.

   * Captures without lost segments (7 of the 9): the same multiset of SHA-256,
     every stream Complete.
   * Captures with lost segments (http_bro_org_multi_object, http_large_mixed_2k_packets):
     the documented differences of the engine (tests/test_extract_oracle.py, points
     1-3) are asserted on the whole capture: every complete file of ours is exported
     by tshark byte for byte; no body we mark incomplete is exported by tshark; every
     object tshark exports that we lack is a headerless fragment contained in one
     single TCP payload. In addition the product path must find exactly what the pure
     engine finds on the same file (same SHA-256 / completeness multiset), so the
     engine's per-connection oracle carries over.

2. Live: a threaded HTTP server on loopback serves a plain (Content-Length), a chunked
   and a gzip-encoded body; curl downloads them while a live system capture on `lo`
   (extraction on) and a tcpdump run. The written files' SHA-256 equal the SHA-256 of
   the decoded bodies the server sent, and tshark's export of the tcpdump capture has
   the same objects.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import http.server
import os
import shutil
import subprocess
import threading
import types

import pytest

from tests.helpers import corpus
from tests.helpers.app import ingest
from tests.helpers.extraction import check_gapped_stream
from tests.helpers.extraction import extract
from tests.helpers.extraction import tcp_packets
from tests.helpers.live import Tcpdump
from tests.helpers.live import page_through
from tests.helpers.tshark import http_objects

GAPPED = {"wellformed/http_bro_org_multi_object.pcap",
          "wellformed/http_large_mixed_2k_packets.pcap"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def all_streams(ajax, capture_id: int) -> list:
    return page_through(ajax, "extract_query", "Streams", limit=100, capture_id=capture_id)


def write_all(ajax, capture_id: int, streams: list, data_dir: str) -> list:
    """extract_file_write every stream; (stream, file, bytes written) triples."""
    folder = os.path.realpath(os.path.join(data_dir, "extracted", str(capture_id)))
    out = []
    for s in streams:
        f = ajax.ok("extract_file_write", capture_id=capture_id, stream_id=s["StreamId"])
        assert os.path.dirname(os.path.realpath(f["Path"])) == folder
        with open(f["Path"], "rb") as fh:
            data = fh.read()
        assert len(data) == f["Size"] == s["Size"]
        assert sha(data) == f["Sha256"] == s["Sha256"]
        out.append((s, f, data))
    return out


@pytest.mark.parametrize("rel", corpus.http_files())
def test_corpus_extraction_matches_tshark(live, live_ajax, tmp_path, rel):
    path = corpus.path(rel)
    expected = corpus.count(corpus.row(rel), "http_objects")
    live_ajax.ok("extract_enable")
    capture_id = ingest(live, live_ajax, path)
    streams = [s for s in all_streams(live_ajax, capture_id) if s["Protocol"] == "http"]
    written = write_all(live_ajax, capture_id, streams, live.config.data_dir)
    t_counts, t_blobs = http_objects(path, tmp_path / "tshark")
    assert sum(t_counts.values()) == expected
    ours = collections.Counter(sha(data) for _, _, data in written)
    # The product path finds exactly what the pure engine finds.
    engine = [e for e in extract(path, tmp_path / "engine") if e.protocol == "http"]
    assert collections.Counter((s["Sha256"], s["Complete"]) for s in streams) == \
        collections.Counter((e.sha256, e.complete) for e in engine)
    if rel not in GAPPED:
        assert ours == t_counts
        assert all(s["Complete"] for s in streams)
        return
    events = [types.SimpleNamespace(sha256=s["Sha256"], complete=s["Complete"],
                                    missing_bytes=s["MissingBytes"], truncated=s["Truncated"])
              for s in streams]
    payloads = [p[9] for p in tcp_packets(path) if p[9]]
    fragments, incomplete = check_gapped_stream(events, t_counts, t_blobs, payloads)
    complete = sum(1 for s in streams if s["Complete"])
    assert fragments + complete == expected
    assert fragments + incomplete > 0           # the holes do show
    print(f"{rel}: tshark {expected}, ours {len(streams)} ({incomplete} incomplete), "
          f"tshark-only fragments {fragments}")


# -- live ---------------------------------------------------------------------------------

PLAIN = os.urandom(150_000)
CHUNKED = os.urandom(70_000) + b"chunked text\n" * 20_000
GZIP_TEXT = b"".join(b"line %d of a gzip-encoded text body\n" % i for i in range(30_000))
BODIES = {"/plain": PLAIN, "/chunked": CHUNKED, "/gzip": GZIP_TEXT}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        body = BODIES.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 7777):
                part = body[i:i + 7777]
                self.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path == "/gzip":
            body = gzip.compress(body)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def body_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
def test_live_downloads_match_bodies_and_tshark(live, live_ajax, body_server, tmp_path):
    port = body_server
    bpf = f"tcp port {port}"
    live_ajax.ok("extract_enable")
    dump = Tcpdump("lo", bpf, str(tmp_path / "ref.pcap"))
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter=bpf)
    try:
        base = f"http://127.0.0.1:{port}"
        # one keep-alive connection for all three, then each on its own connection
        subprocess.run(["curl", "-sS", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                        f"{base}/plain", f"{base}/chunked", f"{base}/gzip"],
                       check=True, timeout=30)
        for p in BODIES:
            subprocess.run(["curl", "-sS", "-o", "/dev/null", f"{base}{p}"], check=True,
                           timeout=30)
    finally:
        dump.stop()
        live_ajax.ok("capture_stop_system", capture_id=cap["CaptureId"])
    capture_id = cap["CaptureId"]
    streams = all_streams(live_ajax, capture_id)
    written = write_all(live_ajax, capture_id, streams, live.config.data_dir)
    want = collections.Counter(sha(b) for b in BODIES.values() for _ in range(2))
    assert collections.Counter(sha(d) for _, _, d in written) == want
    assert all(s["Complete"] and s["Protocol"] == "http" and s["Direction"] == "download"
               for s in streams)
    by_uri = collections.Counter((s["Uri"], s["ContentEncoding"]) for s in streams)
    assert by_uri == {("/plain", ""): 2, ("/chunked", ""): 2, ("/gzip", "gzip"): 2}
    t_counts, _ = http_objects(tmp_path / "ref.pcap", tmp_path / "tshark")
    assert t_counts == want
