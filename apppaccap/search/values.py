"""Literal values of the filter language, parsed for the type of the field they meet.

Each parser takes the token (WORD or STRING) and returns the typed value or raises
FilterError at the token's position with a message in tshark's spirit
("70000" too big for this field, maximum 65535).
"""

from __future__ import annotations

import calendar
import datetime as _dt
import re
import socket
from decimal import Decimal
from decimal import InvalidOperation

import re2

from apppaccap.search.lexer import FilterError
from apppaccap.search.lexer import Token

# Field types
UINT, BOOL, IPV4, IPV6, ETHER, STRING, ABSTIME, RELTIME, PROTO, BYTES = (
    "unsigned integer", "boolean", "IPv4 address", "IPv6 address", "Ethernet address",
    "character string", "date and time", "time offset", "protocol", "byte sequence")
ORDERED = frozenset((UINT, BOOL, IPV4, IPV6, ETHER, STRING, ABSTIME, RELTIME))


def text_of(tok: Token) -> str:
    """A token's literal text: the decoded string for STRING, the word otherwise."""
    if tok.kind == "STRING":
        return tok.value.decode("utf-8", "replace")
    return tok.text


def parse_uint(tok: Token, bits: int) -> int:
    s = text_of(tok).strip()
    try:
        if re.fullmatch(r"0[0-7]+", s):
            n = int(s, 8)  # Wireshark (like C) reads a leading 0 as octal
        else:
            n = int(s, 0)
    except ValueError:
        raise FilterError(f"{s[:40]!r} is not a valid number", tok.pos) from None
    if n < 0:
        raise FilterError(f"{s[:40]!r} is negative; this field is unsigned", tok.pos)
    top = (1 << bits) - 1
    if n > top:
        raise FilterError(f"{s[:40]!r} too big for this field, maximum {top}", tok.pos)
    return n


def parse_bool(tok: Token) -> int:
    s = text_of(tok).strip()
    if s.lower() in ("true", "false"):
        return 1 if s.lower() == "true" else 0
    try:
        return 1 if int(s, 0) else 0  # tshark: any non-zero number means true
    except ValueError:
        raise FilterError(f"{s[:40]!r} is not a boolean (use 1/0 or True/False)",
                          tok.pos) from None


def ip_int(text: str) -> int:
    """Address text (as stored) → integer; IPv4 and IPv6 alike."""
    if ":" in text:
        return int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    return int.from_bytes(socket.inet_aton(text), "big")


def parse_ip(tok: Token, version: int) -> tuple[int, int, str | None]:
    """Address or CIDR → (low, high, canonical text of a single address or None)."""
    s = text_of(tok).strip()
    addr, slash, plen = s.partition("/")
    family, width = (socket.AF_INET, 32) if version == 4 else (socket.AF_INET6, 128)
    what = "IPv4" if version == 4 else "IPv6"
    try:
        if version == 4 and addr.count(".") != 3:
            raise OSError
        packed = socket.inet_pton(family, addr)
    except OSError:
        raise FilterError(f"{s[:60]!r} is not a valid {what} address", tok.pos) from None
    value = int.from_bytes(packed, "big")
    if not slash:
        return value, value, socket.inet_ntop(family, packed)
    if not plen.isdigit() or not 0 <= int(plen) <= width:
        raise FilterError(f"{s[:60]!r}: prefix length must be 0-{width}", tok.pos)
    host = width - int(plen)
    low = value >> host << host
    return low, low | ((1 << host) - 1), None


_MAC = re.compile(r"([0-9a-f]{2})[:.-]?([0-9a-f]{2})[:.-]?([0-9a-f]{2})[:.-]?"
                  r"([0-9a-f]{2})[:.-]?([0-9a-f]{2})[:.-]?([0-9a-f]{2})")


def parse_ether(tok: Token) -> str:
    """aa:bb:cc:dd:ee:ff, aa-bb-…, aabb.ccdd.eeff → the stored text form (lowercase, colons)."""
    s = text_of(tok).strip().lower()
    m = _MAC.fullmatch(s)
    if m is None or len(set(re.findall(r"[:.-]", s))) > 1:
        raise FilterError(f"{s[:40]!r} is not a valid Ethernet address", tok.pos)
    return ":".join(m.groups())


def parse_bytes(tok: Token) -> bytes:
    """A string's bytes, or hex bytes separated by ':', '-' or '.' (47:45:54)."""
    if tok.kind == "STRING":
        return tok.value
    s = tok.text
    parts = re.split(r"[:.-]", s)
    if all(re.fullmatch(r"[0-9a-fA-F]{2}", p) for p in parts):
        return bytes(int(p, 16) for p in parts)
    if re.fullmatch(r"0x[0-9a-fA-F]{2}", s):
        return bytes([int(s, 16)])
    raise FilterError(f"{s[:40]!r} is not a byte sequence (use \"text\" or hex like 47:45:54)",
                      tok.pos)


def parse_string(tok: Token) -> str:
    return text_of(tok)


_ISO = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})"
                  r"(?:[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
                  r"\s*(Z|UTC|[+-]\d{2}:?\d{2})?", re.I)
_CLASSIC = re.compile(r"([A-Za-z]{3}) +(\d{1,2}), *(\d{4})(?: +(\d{1,2}):(\d{2})(?::(\d{2})"
                      r"(?:[.,](\d{1,9}))?)?)?\s*(Z|UTC|[+-]\d{2}:?\d{2})?", re.I)
_MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m}


def parse_abstime(tok: Token) -> int:
    """An absolute time → ns since the epoch. Local time unless Z, UTC or ±hh:mm is given
    (tshark reads "2026-11-23 10:00" as local time too)."""
    if tok.kind != "STRING":
        raise FilterError(f"{tok.text[:40]!r} is not a valid absolute time; quote it, e.g. "
                          '"2026-11-23 10:00:00" or "Nov 23, 2026 10:00:00"', tok.pos)
    s = text_of(tok).strip()
    m = _ISO.fullmatch(s)
    if m:
        year, month, day = int(m[1]), int(m[2]), int(m[3])
    else:
        m = _CLASSIC.fullmatch(s)
        if not m or m[1].lower() not in _MONTHS:
            raise FilterError(f"{s[:60]!r} is not a valid absolute time. Example: "
                              '"2011-07-04 12:34:56" or "Jul 4, 2011 12:34:56.123"', tok.pos)
        year, month, day = int(m[3]), _MONTHS[m[1].lower()], int(m[2])
    hour, minute, sec = int(m[4] or 0), int(m[5] or 0), int(m[6] or 0)
    frac = (m[7] or "").ljust(9, "0")
    try:
        naive = _dt.datetime(year, month, day, hour, minute, sec)
    except ValueError as exc:
        raise FilterError(f"{s[:60]!r}: {exc}", tok.pos) from None
    zone = (m[8] or "").upper()
    if zone in ("Z", "UTC"):
        seconds = calendar.timegm(naive.timetuple())
    elif zone:
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        offset = sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
        seconds = calendar.timegm(naive.timetuple()) - offset
    else:
        try:
            seconds = int(naive.timestamp())  # naive = local time, as tshark reads it
        except (OverflowError, OSError, ValueError):
            raise FilterError(f"{s[:60]!r} is out of range", tok.pos) from None
    ns = seconds * 1_000_000_000 + int(frac)
    if not -(1 << 63) <= ns < 1 << 63:
        raise FilterError(f"{s[:60]!r} is out of range (1678-2262)", tok.pos)
    return ns


def parse_reltime(tok: Token) -> int:
    """Seconds (a decimal number, as tshark's time offsets) → ns."""
    s = text_of(tok).strip()
    if tok.kind == "STRING":
        raise FilterError(f"time offsets are numbers of seconds, not strings: {s[:40]!r}",
                          tok.pos)
    try:
        value = Decimal(s)
        if not value.is_finite():
            raise InvalidOperation
    except InvalidOperation:
        raise FilterError(f"{s[:40]!r} is not a valid number of seconds", tok.pos) from None
    ns = int(value * 1_000_000_000)
    if abs(ns) >= 1 << 63:
        raise FilterError(f"{s[:40]!r} is out of range", tok.pos)
    return ns


MAX_REGEX_PROGRAM = 1000  # RE2 instructions; see Regex


class Regex:
    """A `matches` pattern run by RE2: time linear in the subject, whatever the pattern.

    Python's `re` backtracks: `(a+)+$` over 30 bytes of "a" runs for minutes, holding
    the GIL the whole time, and packet bytes come from anyone who can send traffic to the
    host. RE2 never backtracks and releases the GIL while it matches, so a search cannot
    freeze the service and its cancellation is noticed between packets. The price: no
    backreferences or lookaround (refused when the filter is checked). Its cost per byte
    still grows with the compiled program, hence MAX_REGEX_PROGRAM (a 1000-instruction
    program takes ~1 s over a 256 KiB frame in the worst case; real patterns use < 100).

    Packet bytes are matched as Latin-1 (one byte, one character), as Wireshark's PCRE2
    does without UTF mode; text fields (names, paths) as UTF-8.
    """

    __slots__ = ("pattern", "_search", "_text")

    def __init__(self, pattern, *, text: bool):
        options = re2.Options()
        options.log_errors = False     # errors are ours to report, not stderr's
        options.case_sensitive = False  # Wireshark: case-insensitive unless (?-i)
        options.never_capture = True   # only "is there a match": no submatch work
        if not text:
            options.encoding = re2.Options.Encoding.LATIN1
        compiled = re2.compile(pattern, options)
        if compiled.programsize > MAX_REGEX_PROGRAM:
            raise ValueError(f"too complex for a packet search ({compiled.programsize} RE2 "
                             f"instructions, at most {MAX_REGEX_PROGRAM})")
        self.pattern, self._text = pattern, text
        self._search = compiled.search

    def search(self, subject):
        """A match object, or None; subject: bytes, memoryview or (text fields) str."""
        if isinstance(subject, str):
            # names read from the system may hold surrogate escapes: pass them as bytes
            subject = subject.encode("utf-8", "surrogatepass")
        return self._search(subject)


def parse_regex(tok: Token, *, text: bool) -> Regex:
    """`matches` pattern: RE2 syntax (PCRE-like), case-insensitive by default as in
    Wireshark; (?-i) makes it (or a group) case-sensitive. Bytes pattern for packet data."""
    if tok.kind != "STRING":
        raise FilterError("matches needs a quoted regular expression", tok.pos)
    raw: bytes = tok.value
    try:
        return Regex(raw.decode("utf-8", "replace") if text else raw, text=text)
    except re2.error as exc:
        raise FilterError(f"invalid regular expression: {_re2_message(exc)}", tok.pos) from None
    except ValueError as exc:
        raise FilterError(f"regular expression {exc}", tok.pos) from None


_RE2_LACKS = (  # (what RE2 says, the PCRE feature behind it)
    (r"invalid escape sequence: \\[1-9]|invalid perl operator: \(\?P$|"
     r"invalid escape sequence: \\[kg]", "backreferences are not supported"),
    (r"invalid perl operator: \(\?<?[=!]", "lookahead and lookbehind are not supported"),
    (r"invalid perl operator: \(\?>|bad repetition operator: [*+?]\+",
     "atomic groups and possessive quantifiers are not supported"),
    (r"invalid escape sequence: \\Z", "write \\z for the end of the data"),
)


def _re2_message(exc) -> str:
    """RE2's complaint, with the PCRE feature it lacks named."""
    arg = exc.args[0] if exc.args else ""
    message = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
    for said, why in _RE2_LACKS:
        if re.search(said, message):
            return f"{message} ({why}: matches runs on RE2, which guarantees linear time)"
    return message
