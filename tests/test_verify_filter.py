"""capture_verify_filter: libpcap compiles the filter; its reason is text a person reads.
tcpdump (same libpcap, `tcpdump -d`) is the oracle for which filters compile."""

from __future__ import annotations

import shutil
import subprocess

import pytest

VALID = ["", "   ", "tcp port 80", " host 127.0.0.1 and not udp ", "ip6", "vlan and tcp",
         "tcp[tcpflags] & tcp-syn != 0", "ether host 00:11:22:33:44:55",
         "net 10.0.0.0/8 or portrange 1000-2000", "icmp or arp", "len > 100"]
INVALID = {"tcp port": "syntax error", "port 99999": "99999", "host 999.1.1.1": "999.1.1.1",
           "foo bar": "syntax error", "tcp and (": "syntax error",
           "ether host zz": "zz", "vlan 5000": "5000", "net 10.0.0.0/99": "mask length",
           "tcp[tcpflags] & ": "syntax error", "x" * 9000: "longer than 8192 characters",
           "proto \u00e9t\u00e9": "syntax error"}


def readable(text: str) -> None:
    assert text and text.isprintable() and text == text.strip()
    for bad in ("b'", 'b"', "\\x", "PCAP_", "Malformed", "Error(", "\n"):
        assert bad not in text, text


def tcpdump_compiles(expr: str) -> bool:
    proc = subprocess.run(["tcpdump", "-d", "-i", "lo", expr], capture_output=True,
                          timeout=30)
    return proc.returncode == 0


@pytest.mark.parametrize("expr", VALID)
def test_valid(ajax, expr):
    r = ajax.ok("capture_verify_filter", filter=expr)
    assert r == {"Version": 1, "Valid": True, "Filter": expr.strip(), "Error": ""}
    if expr.strip() and shutil.which("tcpdump"):
        assert tcpdump_compiles(expr)


def test_no_filter_is_valid(ajax):
    assert ajax.ok("capture_verify_filter")["Valid"] is True


@pytest.mark.parametrize("expr", sorted(INVALID))
def test_invalid_says_why_in_words(ajax, expr):
    r = ajax.ok("capture_verify_filter", filter=expr)
    assert r["Valid"] is False and r["Filter"] == expr.strip()
    readable(r["Error"])
    assert INVALID[expr] in r["Error"]
    if len(expr) < 100 and shutil.which("tcpdump"):
        assert not tcpdump_compiles(expr)


def test_the_capture_start_agrees(live, live_ajax):
    """What verify calls invalid, a capture start refuses with the same reason."""
    r = live_ajax.ok("capture_verify_filter", filter="port 99999")
    body = live_ajax("capture_start_system", filter="port 99999", adapter="lo")
    assert body["ErrorCode"] != 0 and r["Error"] in str(body["ReturnValue"])


@pytest.mark.parametrize("expr", ["tcp\x00 and port 1", "tcp \ud800"])
def test_text_c_cannot_take_is_refused_by_the_door(ajax, expr):
    body = ajax.client.post("/ajax", json={"action": "capture_verify_filter", "filter": expr})
    answer = body.get_json()
    assert answer["ErrorCode"] != 0
    readable(str(answer["ReturnValue"]))
