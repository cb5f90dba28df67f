"""Filter text → tokens, each with its 0-based position (for SEARCHSYNTAX.Position).

Wireshark's lexer treats any run of "word" characters as one unparsed literal and
decides later whether it is a field, a number, an address or a MAC. We do the same:
`tcp.port`, `10.0.0.0/8`, `fe80::1`, `aa:bb:cc:dd:ee:ff` and `0x02` are all WORD
tokens; the checker gives them a meaning from the field they are compared with.
"""

from __future__ import annotations

from dataclasses import dataclass


class FilterError(ValueError):
    """A filter that cannot be used: `message` says why, `position` where (0-based)."""

    def __init__(self, message: str, position: int):
        super().__init__(f"{message} (at position {position})")
        self.message = message
        self.position = position

    @property
    def api_message(self) -> str:
        """The text of MALFORMED_REQUEST and of SEARCHSYNTAX.Error (one wording everywhere)."""
        return f"filter: {self.message} (at position {self.position})"


@dataclass(frozen=True)
class Token:
    kind: str    # see KINDS
    text: str    # the source text (for STRING: the decoded value, as bytes in `value`)
    pos: int
    value: object = None


# Comparison operators by spelling → canonical name (Wireshark 4 meanings):
# == any_eq, != all_ne, === all_eq, !== / ~= any_ne.
COMPARISONS = {
    "==": "eq", "eq": "eq", "any_eq": "eq",
    "!=": "ne", "ne": "ne", "all_ne": "ne",
    "===": "all_eq", "all_eq": "all_eq",
    "!==": "any_ne", "~=": "any_ne", "any_ne": "any_ne",
    ">": "gt", "gt": "gt", ">=": "ge", "ge": "ge",
    "<": "lt", "lt": "lt", "<=": "le", "le": "le",
}
KEYWORDS = {
    "and": "AND", "or": "OR", "xor": "XOR", "not": "NOT", "in": "IN",
    "contains": "CONTAINS", "matches": "MATCHES", "bitwise_and": "BITAND",
}
_SYMBOLS = [  # longest first
    ("===", "CMP"), ("!==", "CMP"), ("==", "CMP"), ("!=", "CMP"), ("~=", "CMP"),
    (">=", "CMP"), ("<=", "CMP"), ("&&", "AND"), ("||", "OR"), ("^^", "XOR"),
    ("..", "DOTDOT"), (">", "CMP"), ("<", "CMP"), ("!", "NOT"), ("&", "BITAND"),
    ("~", "MATCHES"), ("(", "LPAREN"), (")", "RPAREN"), ("{", "LBRACE"), ("}", "RBRACE"),
    (",", "COMMA"),
]
_UNSUPPORTED = {
    "[": "slices (field[i:j]) are not supported",
    "#": "layer operators (field#n) are not supported",
    "$": "field references ($field) are not supported",
    "@": "raw field values (@field) are not supported",
    "+": "arithmetic is not supported", "*": "arithmetic is not supported",
    "%": "arithmetic is not supported", "|": "use || (or) for a logical or",
    "=": "use == for equality",
}
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-:/.")
_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92,
                   '"': 34, "'": 39}


def tokenize(text: str) -> list[Token]:
    """Split a filter into tokens; the last one is EOF. Raises FilterError."""
    out: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c == '"' or (c in "rR" and text.startswith('"', i + 1)):
            tok, i = _string(text, i)
            out.append(tok)
            continue
        if c in _WORD and not text.startswith("..", i):
            j = i
            while j < n and text[j] in _WORD and not text.startswith("..", j):
                j += 1
            word = text[i:j]
            if text.startswith("(", j) and word.isidentifier():
                raise FilterError(f"functions such as {word}() are not supported", i)
            kind = KEYWORDS.get(word)
            if kind is None and word in COMPARISONS:
                kind = "CMP"
            out.append(Token(kind or "WORD", word, i,
                             COMPARISONS.get(word) if kind == "CMP" else None))
            i = j
            continue
        for sym, kind in _SYMBOLS:
            if text.startswith(sym, i):
                out.append(Token(kind, sym, i, COMPARISONS.get(sym) if kind == "CMP" else None))
                i += len(sym)
                break
        else:
            hint = _UNSUPPORTED.get(c)
            raise FilterError(hint or f"unexpected character {c!r}", i)
    out.append(Token("EOF", "", n))
    return out


def _string(text: str, start: int) -> tuple[Token, int]:
    """A "..." string with Wireshark's escapes (or r"..." raw); its value is bytes."""
    raw = text[start] in "rR"
    i = start + (2 if raw else 1)
    buf = bytearray()
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return Token("STRING", text[start:i + 1], start, bytes(buf)), i + 1
        if c == "\\" and raw:
            # raw strings keep backslashes but \" still does not end the string
            buf += b"\\"
            if text.startswith('"', i + 1):
                buf += b'"'
                i += 2
                continue
            i += 1
            continue
        if c == "\\":
            i = _escape(text, i, buf)
            continue
        buf += c.encode("utf-8")
        i += 1
    raise FilterError("unterminated string (missing closing \")", start)


def _escape(text: str, i: int, buf: bytearray) -> int:
    """Append the escape at text[i] (a backslash) to buf; return the index after it."""
    if i + 1 >= len(text):
        raise FilterError("backslash at the end of a string", i)
    e = text[i + 1]
    if e in _SIMPLE_ESCAPES:
        buf.append(_SIMPLE_ESCAPES[e])
        return i + 2
    if e == "x":
        digits = _take(text, i + 2, 2, "0123456789abcdefABCDEF")
        if not digits:
            raise FilterError("\\x needs one or two hex digits", i)
        buf.append(int(digits, 16))
        return i + 2 + len(digits)
    if e in "01234567":
        digits = _take(text, i + 1, 3, "01234567")
        value = int(digits, 8)
        if value > 255:
            raise FilterError(f"octal escape \\{digits} is larger than a byte", i)
        buf.append(value)
        return i + 1 + len(digits)
    if e in "uU":
        width = 4 if e == "u" else 8
        digits = _take(text, i + 2, width, "0123456789abcdefABCDEF")
        if len(digits) != width:
            raise FilterError(f"\\{e} needs {width} hex digits", i)
        try:
            buf += chr(int(digits, 16)).encode("utf-8")
        except (ValueError, OverflowError):
            raise FilterError(f"\\{e}{digits} is not a valid code point", i) from None
        return i + 2 + width
    raise FilterError(f"unknown escape \\{e} in string", i)


def _take(text: str, i: int, most: int, allowed: str) -> str:
    j = i
    while j < len(text) and j - i < most and text[j] in allowed:
        j += 1
    return text[i:j]
