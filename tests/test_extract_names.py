"""Content sniffing, Content-Disposition parsing and safe_name()."""

import gzip
import unicodedata

import pytest

from apppaccap.extract import safe_name
from apppaccap.extract import sniff
from apppaccap.extract.mime import content_coding
from apppaccap.extract.mime import disposition_filename


@pytest.mark.parametrize("head, mime", [
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "image/png"),
    (b"\xff\xd8\xff\xe0\0\x10JFIF", "image/jpeg"),
    (b"GIF89a\x01\0", "image/gif"),
    (b"%PDF-1.7\n", "application/pdf"),
    (b"PK\x03\x04\x14\0", "application/zip"),
    (gzip.compress(b"x", mtime=0), "application/gzip"),
    (b"MZ\x90\0", "application/x-msdownload"),
    (b"\x7fELF\x02\x01", "application/x-executable"),
    (b"RIFF\0\0\0\0WEBPVP8 ", "image/webp"),
    (b"\0\0\0\x18ftypmp42", "video/mp4"),
    (b"  <!DOCTYPE html><html>", "text/html"),
    (b"<HTML><BODY>", "text/html"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg">', "image/svg+xml"),
    (b'<?xml version="1.0"?><rss>', "application/xml"),
    (b'{"a": [1, 2]}', "application/json"),
    (b"[1,2,3]", "application/json"),
    (b"\xef\xbb\xbfplain with BOM", "text/plain"),
    (b"just some text\nwith lines\n", "text/plain"),
    ("caf\u00e9 \u2603".encode(), "text/plain"),
    (b"\0\x01\x02\x03binary junk", None),
    (b"", None),
])
def test_sniff(head, mime):
    assert sniff(head) == mime


def test_sniff_text_cut_inside_a_utf8_sequence():
    data = ("x" * 4095 + "\u00e9").encode()     # the 2-byte char straddles the window
    assert sniff(data) == "text/plain"


@pytest.mark.parametrize("value, name", [
    ('attachment; filename="a b.txt"', "a b.txt"),
    ("attachment; filename=plain.bin", "plain.bin"),
    ('attachment; filename="quo\\"te.txt"', 'quo"te.txt'),
    ("attachment; filename*=UTF-8''%E2%82%AC%20rates.txt", "\u20ac rates.txt"),
    ("attachment; filename*=iso-8859-1'en'%A3%20rates.txt", "\u00a3 rates.txt"),
    ('attachment; filename="x.txt"; filename*=UTF-8\'\'y.txt', "y.txt"),
    ('attachment; filename="../../etc/passwd"', "../../etc/passwd"),
    ("inline", None),
    ("", None),
])
def test_disposition_filename(value, name):
    assert disposition_filename(value) == name


def test_disposition_raw_utf8_bytes():
    # Browsers send raw UTF-8 in quoted filenames; headers are decoded as Latin-1.
    value = 'attachment; filename="r\u00e9sum\u00e9.pdf"'.encode().decode("latin-1")
    assert disposition_filename(value) == "r\u00e9sum\u00e9.pdf"


def test_content_coding():
    assert content_coding("") is None
    assert content_coding("identity") is None
    assert content_coding(" GZip ") == "gzip"
    assert content_coding("gzip, br") == "gzip, br"


HOSTILE = [
    "../../etc/passwd", "..\\..\\windows\\system32\\cmd.exe", "/absolute/path.txt",
    "C:\\boot.ini", "..", ".", "...", "", None, " ", ".bashrc", "-rf", "~root",
    "a\x00b.txt", "line\nbreak.txt", "tab\there", "\x1b[31mred\x1b[0m.txt",
    "exe\u202etxt.pdf", "\u200bzero-width", "fullwidth\uff0f..\uff0fslash",
    "CON", "con.txt", "LPT1.doc", "aux ", "name. . .", "x" * 1000, "\u00e9" * 300 + ".jpeg",
    "a" * 300 + "." + "b" * 40, "%2e%2e%2fescaped", "semi;colon|pipe*star?.txt",
    b"bytes/../name.bin", "\ud800lone-surrogate",
]


@pytest.mark.parametrize("raw", HOSTILE)
def test_safe_name_hostile(raw):
    out = safe_name(raw)
    assert out and isinstance(out, str)
    assert "/" not in out and "\\" not in out and ".." not in out
    assert out not in (".", "..")
    assert not out.startswith((".", "-", "~", " "))
    assert not out.endswith((".", " "))
    assert all(unicodedata.category(ch) not in ("Cc", "Cf", "Cs") for ch in out)
    assert len(out.encode("utf-8")) <= 128
    assert out.split(".")[0].lower() not in ("con", "prn", "aux", "nul", "lpt1", "com1")


@pytest.mark.parametrize("raw, expected", [
    ("report.pdf", "report.pdf"),
    ("../../etc/passwd", "passwd"),
    ("..\\..\\x.exe", "x.exe"),
    ("..", "object"),
    ("", "object"),
    ("r\u00e9sum\u00e9 2024.txt", "r\u00e9sum\u00e9 2024.txt"),
    ("con.txt", "_con.txt"),
    (".htaccess", "htaccess"),
])
def test_safe_name_examples(raw, expected):
    assert safe_name(raw) == expected


def test_safe_name_keeps_extension_when_shortening():
    out = safe_name("x" * 500 + ".tar.gz", max_bytes=64)
    assert out.endswith(".gz") and len(out.encode()) <= 64
    out = safe_name("\u00e9" * 500 + ".png")
    assert out.endswith(".png") and len(out.encode()) <= 128
    out.encode("utf-8")     # no broken multi-byte sequence
