"""Reading a request body for the door: bounded before anything is parsed, strict UTF-8,
JSON depth checked without recursion.

The limits are applied before a byte is buffered: a declared Content-Length over the limit
is refused unread, and a chunked body is read in pieces until it passes the limit. Every
failure is a Malformed error naming `body`.
"""

from __future__ import annotations

import json
import re
import urllib.parse

from apppaccap.errors import Malformed

MAX_JSON_DEPTH = 32      # the deepest any action's parameters go is 2
MAX_FORM_FIELDS = 10000
_READ_CHUNK = 64 << 10

# A JSON string, or an unterminated one running to the end of the body. Matching the
# unterminated case too keeps the scan linear: a pattern that may fail would be retried
# from every later quote (quadratic on a body of escaped quotes).
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_BRACKETS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def declared_length(value: str | None) -> int | None:
    """Content-Length as an int; None when absent (chunked or no body)."""
    if value is None:
        return None
    if not value.strip().isdigit():
        raise Malformed("body: Content-Length is not a number")
    return int(value.strip())


def too_large(limit: int, setting: str) -> Malformed:
    return Malformed(f"body: larger than {setting} ({limit} bytes)")


def read_limited(stream, limit: int, setting: str) -> bytes:
    """Read the whole body, refusing it as soon as it passes `limit` bytes."""
    parts, total = [], 0
    while True:
        chunk = stream.read(min(_READ_CHUNK, limit + 1 - total))
        if not chunk:
            return b"".join(parts)
        total += len(chunk)
        if total > limit:
            raise too_large(limit, setting)
        parts.append(chunk)


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed(f"body: not valid UTF-8 (byte {exc.start})") from None


def json_too_deep(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Does this JSON nest deeper than `limit` (or have brackets that never pair up)?

    No recursion and no per-byte Python loop: strings are cut out, the brackets kept, and
    innermost pairs removed `limit` times; anything left is deeper than `limit`.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", data).translate(_BRACKETS, _NOT_BRACKETS)
    for _ in range(limit):
        shorter = brackets.replace(b"()", b"")
        if not shorter:
            return False
        brackets = shorter
    return True


def parse_json(data: bytes) -> dict:
    text = _text(data)
    if json_too_deep(data):
        raise Malformed(f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(text or "{}")
    except (ValueError, RecursionError) as exc:
        raise Malformed(f"body: not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(value, dict):
        raise Malformed("body: JSON body must be an object")
    return value


def parse_form(data: bytes) -> dict:
    """application/x-www-form-urlencoded; `key[]` and repeated keys become lists."""
    try:
        pairs = urllib.parse.parse_qsl(_text(data), keep_blank_values=True, encoding="utf-8",
                                       errors="strict", max_num_fields=MAX_FORM_FIELDS)
    except UnicodeDecodeError as exc:
        raise Malformed(f"body: a form field is not valid UTF-8 (byte {exc.start})") from None
    except ValueError:
        raise Malformed(f"body: more than {MAX_FORM_FIELDS} form fields") from None
    return form_dict(pairs)


def form_dict(pairs) -> dict:
    """[(key, value)...] → {key: value or [values]} (jQuery's `key[]` is a list)."""
    grouped: dict[str, list] = {}
    for key, value in pairs:
        grouped.setdefault(key, []).append(value)
    raw = {}
    for key, values in grouped.items():
        listed = key.endswith("[]")
        raw[key[:-2] if listed else key] = values if listed or len(values) > 1 else values[0]
    return raw


def looks_like_json(mimetype: str, data: bytes) -> bool:
    """JSON by type, or (scripts that send no type) by its first character."""
    return mimetype == "application/json" or (
        mimetype != "application/x-www-form-urlencoded" and data.lstrip()[:1] == b"{")
