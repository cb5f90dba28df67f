"""The filter language without a capture: tokens, precedence, values, errors and positions."""

import pytest

from apppaccap.search import FilterError
from apppaccap.search import parse_filter
from apppaccap.search.checker import Cond
from apppaccap.search.fields import FIELDS
from apppaccap.search.lexer import tokenize
from apppaccap.search.parser import And
from apppaccap.search.parser import Not
from apppaccap.search.parser import Or
from apppaccap.search.parser import Xor
from apppaccap.search.values import parse_abstime


def shape(node):
    """A compact picture of a typed tree: ('and', [...]) / field names."""
    if isinstance(node, Cond):
        return node.field.name
    if isinstance(node, Not):
        return ("not", shape(node.item))
    kind = {And: "and", Or: "or", Xor: "xor"}[type(node)]
    return (kind, [shape(i) for i in node.items])


def test_tokens_keep_positions():
    toks = tokenize('ip.addr==10.0.0.0/8&&!tcp contains "a\\x41"')
    assert [(t.kind, t.text, t.pos) for t in toks[:6]] == [
        ("WORD", "ip.addr", 0), ("CMP", "==", 7), ("WORD", "10.0.0.0/8", 9), ("AND", "&&", 19),
        ("NOT", "!", 21), ("WORD", "tcp", 22)]
    assert toks[7].kind == "STRING" and toks[7].value == b"aA"


@pytest.mark.parametrize("text,expected", [
    ("tcp || udp && arp", ("or", ["tcp", ("and", ["udp", "arp"])])),
    ("tcp && udp || arp", ("or", [("and", ["tcp", "udp"]), "arp"])),
    ("not tcp and udp", ("and", [("not", "tcp"), "udp"])),
    ("!(tcp or udp)", ("not", ("or", ["tcp", "udp"]))),
    ("tcp or udp xor arp and icmp", ("or", ["tcp", ("xor", ["udp", ("and", ["arp", "icmp"])])])),
    ("tcp.port not in {80}", ("not", "tcp.port")),
])
def test_precedence_is_wiresharks(text, expected):
    assert shape(parse_filter(text).tree) == expected


def test_values_are_typed_by_field():
    c = parse_filter("ip.src == 10.1.0.0/16").tree
    assert c.op == "eq" and c.values == [(0x0A010000, 0x0A01FFFF, None)]
    c = parse_filter("ip.src == 10.1.2.3").tree
    assert c.values == [(0x0A010203, 0x0A010203, "10.1.2.3")]
    assert parse_filter("ipv6.addr == 2001:DB8:0::1").tree.values[0][2] == "2001:db8::1"
    assert parse_filter("tcp.port in {80, 8000..8099}").tree.values == [(80, 80), (8000, 8099)]
    assert parse_filter("tcp.port in {80 443}").tree.values == [(80, 80), (443, 443)]
    assert parse_filter("udp.port == 065").tree.values == [53]            # octal, as C
    assert parse_filter("tcp.flags & 0x12 == 0x12").tree.mask == 0x12
    assert parse_filter("tcp.flags.syn == True").tree.values == [1]
    assert parse_filter("tcp.flags.syn == 2").tree.values == [1]          # non-zero is true
    assert parse_filter("eth.src == 00-1A-2b-3c-4d-5e").tree.values == ["00:1a:2b:3c:4d:5e"]
    assert parse_filter("eth.src == 001a.2b3c.4d5e").tree.values == ["00:1a:2b:3c:4d:5e"]
    assert parse_filter("frame contains 47:45:54").tree.values == [b"GET"]
    assert parse_filter('frame contains "\\x00\\101\\u00e9"').tree.values == [b"\x00A\xc3\xa9"]
    assert parse_filter('proc.name == r"a\\b"').tree.values == ["a\\b"]
    assert parse_filter("dns.qry.name == example.com").tree.values == ["example.com"]
    assert parse_filter("frame.time_epoch > 1.5").tree.values == [1_500_000_000]
    c = parse_filter("ip.src == ip.dst").tree
    assert c.other is FIELDS["ip.dst"] and c.values == []


def test_matches_is_case_insensitive_unless_asked():
    assert parse_filter('frame matches "get"').tree.values[0].search(b"GET /")
    assert not parse_filter('frame matches "(?-i)get"').tree.values[0].search(b"GET /")


def test_times_read_as_local_unless_zoned(monkeypatch):
    import time
    tok = tokenize('"2026-01-02 03:04:05.5Z"')[0]
    assert parse_abstime(tok) == 1_767_323_045_500_000_000
    tok = tokenize('"Jan 2, 2026 04:04:05.5 +01:00"')[0]
    assert parse_abstime(tok) == 1_767_323_045_500_000_000
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        tok = tokenize('"2026-01-01 22:04:05"')[0]  # EST = UTC-5
        assert parse_abstime(tok) == 1_767_323_045_000_000_000
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize("text,message,position", [
    ("ip.sorc == 1.2.3.4", "unknown field 'ip.sorc' (did you mean ip.src, ipv6.src?)", 0),
    ("tcp.port == 70000", "'70000' too big for this field, maximum 65535", 12),
    ("tcp.port == -1", "'-1' is negative; this field is unsigned", 12),
    ("ip.src == 10.0.0.300", "'10.0.0.300' is not a valid IPv4 address", 10),
    ("ip.src == 10.0.0.0/33", "'10.0.0.0/33': prefix length must be 0-32", 10),
    ("tcp.port ==", "expected a value after '==', found end of filter", 11),
    ("(tcp", "missing ')' for the '(' at position 0", 4),
    ("tcp)", "unbalanced ')'", 3),
    ("tcp udp", "'udp' was unexpected here (expected an operator such as == or contains)", 4),
    ("ip.src contains 1", "ip.src (type=IPv4 address) cannot participate in contains comparison",
     0),
    ("tcp.port matches \"x\"", "tcp.port (type=unsigned integer) cannot participate in matches "
     "comparison", 0),
    ("len(ip.src) > 2", "functions such as len() are not supported", 0),
    ("eth.src[0:3] == 00:11:22", "slices (field[i:j]) are not supported", 7),
    ("ip.addr#2 == 1.2.3.4", "layer operators (field#n) are not supported", 7),
    ("tcp.port = 80", "use == for equality", 9),
    ('frame contains "abc', 'unterminated string (missing closing ")', 15),
    ('frame matches "(x"', "invalid regular expression: missing ): (x", 14),
    ('frame matches "(a)\\\\1"', "invalid regular expression: invalid escape sequence: \\1 "
     "(backreferences are not supported: matches runs on RE2, which guarantees linear time)",
     14),
    ('frame matches "a(?=b)"', "invalid regular expression: invalid perl operator: (?= "
     "(lookahead and lookbehind are not supported: matches runs on RE2, which guarantees "
     "linear time)", 14),
    ("tcp.port in {}", "empty set", 13),
    ("tcp.port in {90..80}", "range has its upper end below its lower end", 17),
    ("tcp == 1", "tcp is a protocol: test it alone, or use contains/matches", 4),
    ('frame.time > 5', "'5' is not a valid absolute time; quote it, e.g. \"2026-11-23 10:00:00\" "
     'or "Nov 23, 2026 10:00:00"', 13),
    ("ip.src == tcp.port", "ip.src (IPv4 address) and tcp.port (unsigned integer) cannot be "
     "compared", 10),
    ("ip.src & 0xff", "ip.src (IPv4 address) cannot be used with '&' (bitwise and)", 9),
    ("", "empty filter", 0),
    ("tcp or", "filter ends where a field name was expected", 6),
])
def test_errors_name_the_problem_and_position(text, message, position):
    with pytest.raises(FilterError) as info:
        parse_filter(text)
    assert info.value.message == message
    assert info.value.position == position
    assert info.value.api_message == f"filter: {message} (at position {position})"


def test_nesting_is_bounded():
    with pytest.raises(FilterError, match="nested too deeply"):
        parse_filter("(" * 200 + "tcp" + ")" * 200)
    assert shape(parse_filter("(" * 50 + "tcp" + ")" * 50).tree) == "tcp"
    # `!` nests too: 2,000 of them hit the interpreter's recursion limit (an internal error)
    with pytest.raises(FilterError, match="'not' repeated too many times"):
        parse_filter("!" * 2000 + "tcp")
    with pytest.raises(FilterError, match="'not' repeated too many times"):
        parse_filter("(" * 60 + "!" * 60 + "tcp" + ")" * 60)
    assert parse_filter("!" * 40 + "tcp")


def test_every_field_documented_in_filters_md():
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "docs", "FILTERS.md")
    text = open(path).read()
    for name in FIELDS:
        short = name.rsplit(".", 1)[-1]
        assert f"`{name}`" in text or (name.startswith("tcp.flags.") and f"`.{short}`" in text), \
            name
        # and every documented example is itself a valid filter
        parse_filter(FIELDS[name].example)


def test_values_stay_inside_sqlite_integers():
    with pytest.raises(FilterError, match="out of range"):
        parse_filter('frame.time > "9999-01-01 00:00:00Z"')
    with pytest.raises(FilterError, match="too big for this field, maximum 9223372036854775807"):
        parse_filter("tcp.flags & 0x12 == 0xffffffffffffffff")
    assert parse_filter("frame.time_relative > 9000000000").tree.values == [9 * 10**18]
