"""Answers whose JSON was built before the envelope: pages of packets and connections.

A page of 1,000 PACKET objects built as Python dicts and then encoded cost ~14 ms of the
interpreter per answer, and with 20 pollers and a capture running those answers queued for
one interpreter lock (README: API under load). SQLite builds such a page's JSON in one
step with the lock released (api/fastpages.py); `Encoded` carries that text to the door,
and `dumps` splices it into the envelope unchanged.
"""

from __future__ import annotations

import json


class Encoded:
    """A JSON value already encoded (`text` is one JSON value)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def value(self):
        """The decoded value (in-process callers and tests)."""
        return json.loads(self.text)


def _holds_encoded(obj) -> bool:
    if isinstance(obj, Encoded):
        return True
    return isinstance(obj, dict) and any(_holds_encoded(v) for v in obj.values())


def dumps(obj) -> str:
    """json.dumps(obj, default=str), with Encoded values (in dicts) copied as they are."""
    if isinstance(obj, Encoded):
        return obj.text
    if not _holds_encoded(obj):
        return json.dumps(obj, default=str)
    return "{" + ", ".join(f"{json.dumps(str(k))}: {dumps(v)}" for k, v in obj.items()) + "}"


def decoded(obj):
    """obj with every Encoded value decoded: what the wire's JSON parses to."""
    if isinstance(obj, Encoded):
        return obj.value()
    if isinstance(obj, dict):
        return {k: decoded(v) for k, v in obj.items()}
    return obj
