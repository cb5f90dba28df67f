"""HTTP extraction through the whole engine, with synthetic connections."""

import gzip
import hashlib
import os
import random
import zlib

from tests.helpers.extraction import ACK
from tests.helpers.extraction import FIN
from tests.helpers.extraction import SynthConn
from tests.helpers.extraction import body_of
from tests.helpers.extraction import new_extractor

BODY = random.Random(1).randbytes(8000) + b"some compressible text\n" * 500
GET = b"GET /dir/file.bin HTTP/1.1\r\nHost: example.test\r\n\r\n"


def resp(body, *headers, status=b"200 OK"):
    head = b"HTTP/1.1 " + status + b"\r\n" + b"".join(h + b"\r\n" for h in headers)
    return head + b"\r\n" + body


def cl(body, *headers, **kw):
    return resp(body, b"Content-Length: %d" % len(body), *headers, **kw)


def chunked(body, sizes=(1000, 7, 4096), ext=b"", trailers=b""):
    out, pos, i = [], 0, 0
    while pos < len(body):
        n = sizes[i % len(sizes)]
        out.append(b"%x%s\r\n" % (n if pos + n <= len(body) else len(body) - pos, ext)
                   + body[pos:pos + n] + b"\r\n")
        pos += n
        i += 1
    return b"".join(out) + b"0\r\n" + trailers + b"\r\n"


def one(tmp_path, server_bytes, request=GET, mss=1460, **kw):
    ex, sink = new_extractor(tmp_path, **kw)
    c = SynthConn(ex)
    c.client(request)
    c.server(server_bytes, mss)
    c.close()
    return sink.events


def test_content_length_download(tmp_path):
    (ev,) = one(tmp_path, cl(BODY, b"Content-Type: application/octet-stream"))
    assert body_of(ev) == BODY
    assert ev.sha256 == hashlib.sha256(BODY).hexdigest()
    assert (ev.protocol, ev.direction, ev.file_name) == ("http", "download", "file.bin")
    assert (ev.size, ev.complete, ev.missing_bytes) == (len(BODY), True, 0)
    assert (ev.uri, ev.host, ev.status, ev.method) == ("/dir/file.bin", "example.test", 200, "GET")
    assert ev.mime_type == "application/octet-stream" and ev.conn_id == 1
    assert os.path.dirname(ev.spool_path) == str(tmp_path / "spool")


def test_chunked_with_extensions_and_trailers(tmp_path):
    data = chunked(BODY, ext=b';name="v";x=1', trailers=b"X-Checksum: abc\r\nX-Other: 1\r\n")
    ev, nxt = one(tmp_path, resp(data, b"Transfer-Encoding: chunked") + cl(b"next"), mss=333)
    assert body_of(ev) == BODY and ev.complete and ev.declared_size is None
    assert body_of(nxt) == b"next" and nxt.uri is None     # no request for it


def test_chunked_then_next_response_on_keep_alive(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = SynthConn(ex)
    c.client(GET + GET.replace(b"file.bin", b"two.txt"))
    c.server(resp(chunked(BODY[:5000]), b"Transfer-Encoding: chunked"))
    c.server(cl(b"second body"))
    c.close()
    assert [(e.file_name, body_of(e)) for e in sink.events] == [
        ("file.bin", BODY[:5000]), ("two.txt", b"second body")]
    assert [e.depth for e in sink.events] == [1, 2]


def test_gzip_body_decoded(tmp_path):
    data = gzip.compress(BODY)
    (ev,) = one(tmp_path, cl(data, b"Content-Encoding: gzip", b"Content-Type: text/plain"), mss=500)
    assert body_of(ev) == BODY and ev.size == len(BODY) and ev.complete
    assert ev.content_encoding == "gzip" and ev.declared_size == len(data)


def test_gzip_chunked(tmp_path):
    data = chunked(gzip.compress(BODY * 3), sizes=(100, 3000))
    (ev,) = one(tmp_path, resp(data, b"Transfer-Encoding: chunked", b"Content-Encoding: x-gzip"))
    assert body_of(ev) == BODY * 3 and ev.complete


def test_deflate_zlib_wrapped(tmp_path):
    (ev,) = one(tmp_path, cl(zlib.compress(BODY), b"Content-Encoding: deflate"), mss=1)
    assert body_of(ev) == BODY and ev.complete


def test_deflate_raw(tmp_path):
    co = zlib.compressobj(wbits=-15)
    data = co.compress(BODY) + co.flush()
    (ev,) = one(tmp_path, cl(data, b"Content-Encoding: deflate"))
    assert body_of(ev) == BODY and ev.complete


def test_mislabelled_encoding_kept_as_sent(tmp_path):
    (ev,) = one(tmp_path, cl(b"plain text, not gzip", b"Content-Encoding: gzip"))
    assert body_of(ev) == b"plain text, not gzip"


def test_truncated_gzip_stream_is_incomplete(tmp_path):
    data = gzip.compress(BODY)[:-200]
    (ev,) = one(tmp_path, cl(data, b"Content-Encoding: gzip"))
    assert not ev.complete and BODY.startswith(body_of(ev))


def test_gzip_bomb_is_capped(tmp_path):
    bomb = gzip.compress(b"\0" * (20 << 20))
    (ev,) = one(tmp_path, cl(bomb, b"Content-Encoding: gzip"), max_file_bytes=1 << 20)
    assert ev.size == 1 << 20 and ev.truncated and not ev.complete


def test_pipelining_three_responses_in_one_segment(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = SynthConn(ex)
    reqs = b"".join(GET.replace(b"file.bin", n) for n in (b"a.txt", b"b.txt", b"c.txt"))
    c.client(reqs, mss=len(reqs))
    middle = resp(chunked(b"BBBBB", sizes=(2,)), b"Transfer-Encoding: chunked")
    blob = cl(b"AAA") + middle + cl(b"C")
    c.server(blob, mss=len(blob))
    c.close()
    assert [(e.file_name, body_of(e)) for e in sink.events] == [
        ("a.txt", b"AAA"), ("b.txt", b"BBBBB"), ("c.txt", b"C")]


def test_no_body_for_head_1xx_204_304(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = SynthConn(ex)
    c.client(b"HEAD /h HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\nGET /m HTTP/1.1\r\n\r\n"
             b"GET /last HTTP/1.1\r\n\r\n")
    c.server(resp(b"", b"Content-Length: 999")            # HEAD: length of what GET would give
             + resp(b"", status=b"100 Continue")
             + resp(b"", b"Content-Length: 5", status=b"204 No Content")
             + resp(b"", b"Content-Length: 5", status=b"304 Not Modified")
             + cl(b"final"))
    c.close()
    assert [(e.uri, body_of(e)) for e in sink.events] == [("/last", b"final")]


def test_post_upload_is_a_file(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = SynthConn(ex)
    c.client(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n"
             b"Content-Disposition: attachment; filename=\"report.pdf\"\r\n\r\n"
             + b"%PDF-" + BODY[:4995])
    c.server(cl(b"ok", b"Content-Type: text/plain"))
    c.close()
    up, down = sink.events
    assert (up.direction, up.file_name, up.method) == ("upload", "report.pdf", "POST")
    assert up.size == 5000
    assert up.mime_type == "application/pdf" == up.sniffed_mime  # no Content-Type: sniffed
    assert (down.direction, body_of(down), down.mime_type) == ("download", b"ok", "text/plain")


def test_read_until_close(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = SynthConn(ex)
    c.client(GET)
    c.server(b"HTTP/1.0 200 OK\r\nContent-Type: image/png\r\n\r\n" + BODY)
    assert sink.events == []
    c.fin(False)                     # server FIN ends the body
    (ev,) = sink.events
    assert body_of(ev) == BODY and ev.complete


def test_read_until_close_without_fin_is_incomplete(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = SynthConn(ex)
    c.client(GET)
    c.server(b"HTTP/1.0 200 OK\r\n\r\n" + BODY)
    ex.flush()                       # capture ended mid-transfer
    (ev,) = sink.events
    assert body_of(ev) == BODY and not ev.complete


def test_gap_makes_body_incomplete_and_counts_missing(tmp_path):
    ex, sink = new_extractor(tmp_path, max_stream_buffer=4000)
    c = SynthConn(ex)
    c.client(GET)
    segs = c.segments(False, cl(BODY) + cl(b"after the gap"), 1000)
    lost = segs.pop(5)
    for seq, p in segs:
        c.feed(False, seq, p)
    c.close()
    first, second = sink.events
    assert not first.complete and first.missing_bytes == len(lost[1])
    assert first.size == len(BODY) - 1000
    assert (second.complete, body_of(second)) == (True, b"after the gap")


def test_short_body_at_close(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = SynthConn(ex)
    c.client(GET)
    c.server(resp(BODY[:1000], b"Content-Length: 3000"))
    c.close()
    (ev,) = sink.events
    assert (ev.complete, ev.size, ev.missing_bytes, ev.declared_size) == (False, 1000, 2000, 3000)


def test_truncation_at_max_file_bytes(tmp_path):
    ev, nxt = one(tmp_path, cl(BODY) + cl(b"next"), max_file_bytes=4096)
    assert body_of(nxt) == b"next"
    assert ev.size == 4096 and ev.truncated and not ev.complete
    assert body_of(ev) == BODY[:4096] and ev.sha256 == hashlib.sha256(BODY[:4096]).hexdigest()


def test_out_of_order_and_retransmitted_segments(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = SynthConn(ex)
    c.client(GET)
    segs = c.segments(False, cl(BODY), 700)
    segs = segs[:3] + segs[5:9] + segs[3:5] + segs[2:4] + segs[9:]
    for seq, p in segs:
        c.feed(False, seq, p)
    c.close()
    (ev,) = sink.events
    assert body_of(ev) == BODY and ev.complete


def test_content_disposition_kept_raw(tmp_path):
    (ev,) = one(tmp_path, cl(b"x", b'Content-Disposition: attachment; filename="../../etc/passwd"'))
    assert ev.file_name == "../../etc/passwd"


def test_content_disposition_ext_value_preferred(tmp_path):
    cd = (b"Content-Disposition: attachment; filename=\"fallback.txt\"; "
          b"filename*=UTF-8''r%C3%A9sum%C3%A9.txt")
    (ev,) = one(tmp_path, cl(b"x", cd))
    assert ev.file_name == "résumé.txt"


def test_file_name_fallbacks(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = SynthConn(ex)
    c.client(b"GET /a/b%20c.txt?x=1 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    c.server(cl(b"1") + cl(b"2"))
    c.close()
    assert [e.file_name for e in sink.events] == ["b c.txt", "object"]
    assert sink.events[0].host == "10.0.0.2:80"    # no Host header: server address


def test_mime_sniffed_when_undeclared(tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + BODY[:100]
    (ev,) = one(tmp_path, cl(png, b"Content-Type: text/html"))
    assert (ev.mime_type, ev.sniffed_mime) == ("text/html", "image/png")


def test_timestamp_is_first_body_byte(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = SynthConn(ex)
    c.client(GET)
    c.server(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
    ts_before = c.ts
    c.server(b"body")
    c.close()
    assert sink.events[0].ts_ns == ts_before + 1000


def test_mid_stream_pickup_with_roles_reversed(tmp_path):
    ex, sink = new_extractor(tmp_path)
    # No handshake and the server's packet comes first: it is taken as the "client".
    c = SynthConn(ex, handshake=False)
    c.feed(False, 5000, b"", ACK)
    c.client(GET)
    c.server(cl(b"picked up"))
    c.close()
    (ev,) = sink.events
    assert (ev.direction, body_of(ev), ev.uri) == ("download", b"picked up", "/dir/file.bin")


def test_non_http_connection_ignored(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = SynthConn(ex)
    c.server(b"SSH-2.0-OpenSSH_9.0\r\n")
    c.client(b"SSH-2.0-client\r\n")
    for _ in range(5):
        c.client(os.urandom(1000))
    assert ex._conns[1].ignored and ex._conns[1].c2s is None
    c.client(GET)                    # too late: the connection is ignored
    c.server(cl(b"x"))
    c.close()
    assert sink.events == []


def test_upgrade_stops_parsing(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = SynthConn(ex)
    c.client(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    c.server(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    c.server(cl(b"websocket frames are not HTTP"))
    c.close()
    assert sink.events == []


def test_resync_after_lost_response_pairs_by_ack(tmp_path):
    """A gap swallows a whole response: the next one is paired by its ACK."""
    ex, sink = new_extractor(tmp_path, max_stream_buffer=100)
    c = SynthConn(ex)
    req1, req2 = GET.replace(b"file.bin", b"one"), GET.replace(b"file.bin", b"two")
    c.client(req1)
    lost = c.segments(False, cl(b"first"), 1460)
    c.client(req2)
    (seq, p), = c.segments(False, cl(b"second"), 1460)
    c.feed(False, seq, p, ACK, ack=c.seq[True])     # acks both requests
    c.close()
    (ev,) = sink.events
    assert (ev.uri, body_of(ev)) == ("/dir/two", b"second")
    assert lost


def test_close_conn_twice_and_unknown_conn(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = SynthConn(ex)
    c.client(GET)
    c.server(cl(b"x"))
    c.close()
    ex.close_conn(1)
    ex.close_conn(99)
    ex.flush()
    assert len(sink.events) == 1


def test_fin_flag_value_matches_engine():
    from apppaccap.extract import engine
    assert (engine.FIN, engine.ACK) == (FIN, ACK)


def test_gzip_multi_member_and_trailing_junk(tmp_path):
    data = gzip.compress(BODY[:3000]) + gzip.compress(BODY[3000:]) + b"\0\0junk"
    (ev,) = one(tmp_path, cl(data, b"Content-Encoding: gzip"), mss=700)
    assert body_of(ev) == BODY and ev.complete


def test_gap_in_gzip_body(tmp_path):
    data = gzip.compress(os.urandom(30_000))
    ex, sink = new_extractor(tmp_path, max_stream_buffer=2000)
    c = SynthConn(ex)
    c.client(GET)
    segs = c.segments(False, cl(data, b"Content-Encoding: gzip"), 1000)
    del segs[10]
    for seq, p in segs:
        c.feed(False, seq, p)
    c.close()
    (ev,) = sink.events
    # Nothing after the hole can be decoded: the hole and everything after it
    # count as missing (in encoded bytes); what came before is kept, decoded.
    head = len(cl(data, b"Content-Encoding: gzip")) - len(data)
    assert not ev.complete and ev.missing_bytes == len(data) - (10_000 - head)
    assert 0 < ev.size <= 30_000


def test_memory_stays_bounded_for_a_large_transfer(tmp_path):
    import tracemalloc

    size = 30 << 20
    pattern = random.Random(2).randbytes(1 << 16)
    ex, sink = new_extractor(tmp_path)
    c = SynthConn(ex)
    c.client(GET)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
    c.server(head)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        seq, sent, prev = c.seq[False], 0, None
        while sent < size:
            n = min(1460, size - sent)
            off = sent % len(pattern)
            seg = (pattern + pattern)[off:off + n] if off + n > len(pattern) else \
                pattern[off:off + n]
            if prev is None and (sent // 1460) % 10 == 3:
                prev = (seq, seg)               # hold back: arrives after the next one
            else:
                c.feed(False, seq, seg)
                if prev is not None:
                    c.feed(False, *prev)
                    prev = None
            seq += n
            sent += n
        if prev is not None:
            c.feed(False, *prev)
        c.seq[False] = seq
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    c.close()
    (ev,) = sink.events
    assert ev.size == size and ev.complete
    assert os.path.getsize(ev.spool_path) == size
    assert peak < 1 << 20, f"engine held {peak} bytes"


def test_spool_total_is_capped_for_plain_bodies_too(tmp_path):
    # 40 bodies just under the per-file limit: each alone is fine, together they passed
    # any bound; the capture's spool holds 16 full-size files at most (spool file's
    # block included), later bodies are cut and marked, the connection goes on.
    limit, body = 64 << 10, random.Random(3).randbytes(60_000)
    ex, sink = new_extractor(tmp_path, max_file_bytes=limit,
                             max_capture_bytes=16 * (limit + 4096))
    c = SynthConn(ex)
    c.client(GET * 40)
    c.server(cl(body) * 40)
    c.close()
    assert len(sink.events) == 40
    spooled = sum(os.path.getsize(e.spool_path) for e in sink.events if e.spool_path)
    assert spooled <= 16 * (limit + 4096), f"{spooled} bytes spooled"
    kept = [e for e in sink.events if e.complete]
    assert kept == sink.events[:len(kept)] and all(body_of(e) == body for e in kept)
    assert all(e.truncated and not e.complete for e in sink.events[len(kept):])
    assert ex.stats()["spool_full"]


def test_plain_traffic_earns_its_spool(tmp_path):
    # Beyond the first full body the spool may grow 64x the TCP bytes seen: bodies sent
    # as they are (or compressed 4-20x, as text and JSON are) never reach that.
    body = random.Random(4).randbytes(100_000)
    text = b"log line number 1234567 with some text\n" * 2000
    ex, sink = new_extractor(tmp_path, max_file_bytes=1 << 20)
    c = SynthConn(ex)
    c.client(GET * 60)
    c.server((cl(body) + cl(gzip.compress(text), b"Content-Encoding: gzip")) * 30)
    c.close()
    assert len(sink.events) == 60 and all(e.complete for e in sink.events)
    assert not ex.stats()["spool_full"]


def test_bytes_waiting_behind_holes_are_bounded_across_connections(tmp_path):
    # An attacker's review: spoofed connections, each with a 1-byte hole followed by
    # ~1 MiB out of order (just under the per-direction bound), held it all: RSS grew by
    # ~1 MiB per connection. Now all of an Extractor's connections together hold at
    # most MAX_HELD_BYTES; past it the directions holding the most stop waiting: the
    # hole becomes missing bytes of the body, the bytes behind it are delivered.
    import tracemalloc

    size, conns = 1_000_000, 64
    pattern = random.Random(5).randbytes(1 << 16) * 2
    ex, sink = new_extractor(tmp_path)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(conns):
            c = SynthConn(ex, conn_id=i + 1, client=(f"10.0.1.{i + 1}", 40000 + i))
            c.client(GET)
            c.server(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            seq = c.seq[False]
            for off in range(1, size, 1460):     # byte 0 of the body never comes
                n = min(1460, size - off)
                c.feed(False, seq + off, pattern[off % 65536:off % 65536 + n])
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert held < 40 << 20, f"{held} bytes held for {conns} connections"
    from apppaccap.extract.engine import MAX_HELD_BYTES
    stats = ex.stats()
    assert stats["held_bytes"] <= MAX_HELD_BYTES and stats["released"] >= conns // 2
    released = list(sink.events)     # finished as soon as their hole was given up
    assert len(released) >= conns // 2
    ex.flush()
    assert len(sink.events) == conns
    for ev in sink.events:
        assert (ev.size, ev.missing_bytes, ev.complete) == (size - 1, 1, False)
    assert ex.stats()["missing_bytes"] == conns and ex.stats()["held_bytes"] == 0


def test_bodies_cut_to_nothing_cost_no_spool_file(tmp_path):
    # An attacker's review: once the spool budget is spent, 60,000 pipelined 1-byte
    # responses still made 60,000 spool files. They are recorded (a row each), with no file.
    limit = 64 << 10
    ex, sink = new_extractor(tmp_path, max_file_bytes=limit, max_capture_bytes=limit + 4096)
    c = SynthConn(ex)
    c.client(GET * 3001)
    c.server(cl(random.Random(5).randbytes(limit)) + cl(b"x") * 3000)
    c.close()
    assert len(sink.events) == 3001 and sink.events[0].complete
    files = os.listdir(tmp_path / "spool")
    assert len(files) <= 2, f"{len(files)} spool files"
    assert all(e.truncated and not e.spool_path for e in sink.events[2:])
    assert ex.stats()["unspooled"] >= 2999
