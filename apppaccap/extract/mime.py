"""MIME-level helpers: content sniffing, content codings, Content-Disposition.

Content sniffing from the first bytes of an extracted body:

Zeek and libmagic match signatures over a beginning-of-file buffer; we do the
same with a short, ordered table of magic numbers covering what actually shows
up in captures, then fall back to cheap text heuristics (HTML, XML, JSON,
plain text).  The callers keep the first :data:`SNIFF_BYTES` bytes of every
body, so nothing here may need more than that.
"""

from __future__ import annotations

import re
import zlib
from urllib.parse import unquote

SNIFF_BYTES = 4096
_CD_EXT = re.compile(r"filename\*\s*=\s*([^;]+)", re.I)
_CD_PLAIN = re.compile(r'filename(?!\*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))', re.I)

# (offset, magic, mime).  Order matters: longer / more specific first.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"PK\x03\x04", "application/zip"),
    (0, b"PK\x05\x06", "application/zip"),  # empty archive
    (0, b"\x1f\x8b", "application/gzip"),
    (0, b"BZh", "application/x-bzip2"),
    (0, b"\xfd7zXZ\x00", "application/x-xz"),
    (0, b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (0, b"Rar!\x1a\x07", "application/vnd.rar"),
    (0, b"\x28\xb5\x2f\xfd", "application/zstd"),
    (0, b"MZ", "application/x-msdownload"),
    (0, b"\x7fELF", "application/x-executable"),
    (0, b"\xca\xfe\xba\xbe", "application/java-vm"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "application/x-ole-storage"),
    (0, b"BM", "image/bmp"),
    (0, b"\x00\x00\x01\x00", "image/vnd.microsoft.icon"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"wOFF", "font/woff"),
    (0, b"wOF2", "font/woff2"),
    (0, b"OggS", "audio/ogg"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"fLaC", "audio/flac"),
    (0, b"\x1aE\xdf\xa3", "video/webm"),
    (0, b"\x00asm", "application/wasm"),
    (4, b"ftyp", "video/mp4"),
    (8, b"WEBP", "image/webp"),
    (8, b"WAVE", "audio/wav"),
    (8, b"AVI ", "video/x-msvideo"),
)

_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<title",
                b"<iframe", b"<table", b"<div", b"<meta", b"<link", b"<style", b"<!--")

# Bytes that never appear in text files (NUL and most C0 controls).
_BINARY_BYTES = bytes(c for c in range(32) if c not in (8, 9, 10, 12, 13, 27))


def sniff(first_bytes: bytes) -> str | None:
    """Guess a MIME type from the start of a body.

    ``first_bytes`` should be the first few KiB of the decoded body (only the
    first :data:`SNIFF_BYTES` are looked at).  Returns ``None`` for empty input
    or when the data looks binary but matches no known signature.
    """
    head = bytes(first_bytes[:SNIFF_BYTES])
    if not head:
        return None
    for off, magic, mime in _MAGIC:
        if head.startswith(magic, off):
            if mime == "image/webp" and not head.startswith(b"RIFF"):
                continue
            if mime in ("audio/wav", "video/x-msvideo") and not head.startswith(b"RIFF"):
                continue
            return mime
    return _sniff_text(head)


def _sniff_text(head: bytes) -> str | None:
    """Classify text-looking data; ``None`` if it looks binary."""
    if head.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        # A byte-order mark is a strong hint of text; look past a UTF-8 one.
        if head.startswith(b"\xef\xbb\xbf"):
            head = head[3:]
        else:
            return "text/plain"
    stripped = head.lstrip()
    low = stripped[:64].lower()
    if low.startswith(b"<?xml"):
        return "image/svg+xml" if b"<svg" in stripped[:1024].lower() else "application/xml"
    if low.startswith(b"<svg"):
        return "image/svg+xml"
    if low.startswith(_HTML_STARTS):
        return "text/html"
    if head.translate(None, _BINARY_BYTES) != head:
        return None
    if stripped[:1] in (b"{", b"[") and _looks_json(stripped):
        return "application/json"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte sequence cut by the sniff window is still text.
        if exc.start < len(head) - 3:
            return None
    return "text/plain"


def _looks_json(text: bytes) -> bool:
    """Cheap JSON check: the opening bracket is followed by a JSON token."""
    rest = text[1:].lstrip()
    if not rest:
        return True
    return rest[:1] in b'"{[]}-0123456789tfn'


def content_coding(value: str) -> str | None:
    """Normalised Content-Encoding list ("gzip", "gzip, br"...), None if identity."""
    codings = [c.strip().lower() for c in value.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    return ", ".join(codings) or None


def disposition_filename(value: str) -> str | None:
    """File name from a Content-Disposition value (``filename*`` preferred)."""
    if not value:
        return None
    m = _CD_EXT.search(value)
    if m:
        parts = m.group(1).strip().strip('"').split("'", 2)
        if len(parts) == 3:
            charset = parts[0] or "utf-8"
            try:
                return unquote(parts[2], encoding=charset, errors="replace")
            except LookupError:
                return unquote(parts[2], errors="replace")
    m = _CD_PLAIN.search(value)
    if not m:
        return None
    name = re.sub(r"\\(.)", r"\1", m.group(1)) if m.group(1) is not None else m.group(2).strip()
    try:
        # Header bytes were decoded as Latin-1; most servers really send UTF-8.
        name = name.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass
    return name or None


def uri_file_name(uri: str | None) -> str:
    """Last path segment of a request URI (percent-decoded), else ``object``."""
    if not uri:
        return "object"
    path = uri.split("#", 1)[0].split("?", 1)[0]
    if "://" in path:
        rest = path.split("://", 1)[1]
        path = rest[rest.find("/"):] if "/" in rest else ""
    seg = unquote(path.rsplit("/", 1)[-1], errors="replace")
    return seg or "object"


class Decoder:
    """Incremental gzip / deflate decoding into a Body.

    Output per call is capped at the body's remaining room, so a compression
    bomb cannot allocate more than ``max_file_bytes``.  If the very first bytes
    do not decode, the server lied about the encoding and the body is stored
    as sent.  Concatenated gzip members are all decoded; other bytes after the
    end of the compressed stream are ignored, never handed to zlib (which keeps
    them in ``unused_data``, copying all of them again for each packet: megabytes
    of them froze the capture's thread for minutes).  After a gap the stream
    cannot be decoded any further; the rest is counted as missing.
    """

    __slots__ = ("kind", "d", "broken", "pend", "out_seen", "ended")

    def __init__(self, kind: str):
        self.kind = kind
        self.d = None
        self.broken = False
        self.pend = b""         # first raw bytes, kept until something decodes
        self.out_seen = False
        self.ended = False      # the compressed stream is over: the rest is ignored

    def feed(self, raw, body) -> None:
        """Decode ``raw`` encoded bytes into ``body``."""
        if self.broken:
            body.gap(len(raw))
            return
        if body.truncated or self.ended:
            return
        if self.kind is None:   # fell back to identity
            body.write(raw)
            return
        if self.d is None:
            self.pend += bytes(raw)
            if self.kind == "deflate" and len(self.pend) < 2:
                return
            wbits = 31          # gzip
            if self.kind == "deflate":
                # RFC 9110 says zlib-wrapped, but many servers send raw deflate.
                b0, b1 = self.pend[0], self.pend[1]
                wbits = 15 if (b0 & 0x0F) == 8 and ((b0 << 8) | b1) % 31 == 0 else -15
            self.d = zlib.decompressobj(wbits)
            raw = self.pend
        elif not self.out_seen and len(self.pend) < 65536:
            self.pend += bytes(raw)
        try:
            out = self.d.decompress(raw, body.room() + 1)
        except zlib.error:
            if not self.out_seen:
                self.kind = None        # not really encoded: keep the bytes as sent
                body.write(self.pend)
            else:
                self.broken = True
                body.gap(len(raw))
            self.pend = b""
            return
        self._out(out, body)
        while self.d.eof and self.d.unused_data.startswith(b"\x1f\x8b") and self.kind != "deflate":
            rest = self.d.unused_data   # another gzip member follows
            self.d = zlib.decompressobj(31)
            try:
                self._out(self.d.decompress(rest, body.room() + 1), body)
            except zlib.error:
                self.broken = True
                body.gap(len(rest))
        # over, unless what follows may yet begin another gzip member (fewer than 2 bytes)
        if self.d.eof and (self.kind == "deflate" or len(self.d.unused_data) >= 2):
            self.ended = True

    def _out(self, out: bytes, body) -> None:
        if out:
            if not self.out_seen:
                self.out_seen = True
                self.pend = b""
            body.write(out)

    def finish(self, body) -> bool:
        """Flush; True when the encoded stream ended properly."""
        if self.broken:
            return False
        if self.kind is None:
            return True
        if self.d is None:
            return not self.pend
        if body.truncated:  # cut: what zlib still holds stays encoded (a bomb's rest was
            return True     # decoded whole here, 147 MB for 65 KB, only to be dropped)
        try:
            body.write(self.d.flush())
        except zlib.error:
            return False
        return self.d.eof or body.truncated
