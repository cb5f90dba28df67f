"""Bytes after the end of a gzip body (extract/mime.py Decoder): ignored, and never handed
to zlib, which kept them all and copied them again for each packet (an attacker's review:
29 MB of them took 211 s on the capture's thread)."""

from __future__ import annotations

import gzip

from apppaccap.extract.engine import Body
from apppaccap.extract.mime import Decoder

TEXT = b"the body itself\n" * 64


def _decode(tmp_path, encoded: bytes, mss: int = 1460):
    body = Body(lambda *_a: None, str(tmp_path), 1 << 20, {})
    dec = Decoder("gzip")
    held = 0
    for i in range(0, len(encoded), mss):
        dec.feed(encoded[i:i + mss], body)
        held = max(held, len(dec.d.unused_data) if dec.d is not None else 0)
    return dec, body, held


def test_bytes_after_the_stream_are_not_kept(tmp_path):
    dec, body, held = _decode(tmp_path, gzip.compress(TEXT) + b"\x00junk" * 600_000)
    assert held < 2 * 1460   # at most what came with the stream's last packet
    assert dec.finish(body) and body.size == len(TEXT) and not body.truncated


def test_members_that_follow_are_still_decoded(tmp_path):
    # a second member whose magic is split across packets: the one byte before it waits
    first = gzip.compress(TEXT)
    encoded = first + gzip.compress(b"second member\n")
    dec, body, _held = _decode(tmp_path, encoded, mss=len(first) + 1)
    assert dec.finish(body) and body.size == len(TEXT) + len(b"second member\n")


def test_a_cut_body_is_not_decoded_to_its_end_when_it_finishes(tmp_path):
    # 64 MiB of zeros gzip to ~65 KB: the body stops at its limit, and finishing it must
    # not decode the rest in memory (flush() decoded all that zlib still held)
    import tracemalloc
    bomb = gzip.compress(bytes(64 << 20))
    body = Body(lambda *_a: None, str(tmp_path), 1 << 20, {})
    dec = Decoder("gzip")
    dec.feed(bomb, body)
    assert body.truncated and body.size == 1 << 20
    tracemalloc.start()
    try:
        assert dec.finish(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak
