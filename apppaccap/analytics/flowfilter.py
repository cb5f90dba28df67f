"""The display-filter language restricted to what a connection row (or a usage-accounting
row) can answer: one test per flow, not per packet.

A group-by is answered from connection rows and per-minute counters, which know a flow's
addresses, ports, protocol and program but nothing of its packets' bytes or headers. So
only these fields are accepted, each with the meaning it has for a flow:

- `ip.addr`, `ipv6.addr`: either end's address (addresses or CIDR blocks; `==`, `!=`, `in`);
- `ip.src`/`ip.dst` are refused: a flow has packets in both directions;
- `tcp.port`, `udp.port`: either end's port of a TCP or UDP flow; `tcp`, `udp`, `icmp`
  alone: the flow's protocol; `ip.proto`: the protocol number;
- `proc.name`, `proc.path`, `proc.pid`, `proc.id`: the owning program;
- `app.proto`, `app.name`, `app.category`: nDPI's labels of a capture's connection
  (absent on usage-accounting rows, which are not labelled);
- `and`, `or`, `xor`, `not`.

Anything else is MALFORMED naming the field and the fields that work. The result is a
Python predicate over a flow record (analytics/groupby.py: Flow); both sources (capture
connection rows, usage rows) go through the same test. Its `terms` (the comparisons it
makes per flow, at most MAX_FILTER_TERMS) is what it costs the group-by's work budget per
flow; a set (`in {...}`) is one comparison, a binary search however many values it lists.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from bisect import bisect_right

from apppaccap.errors import Malformed
from apppaccap.search import FilterError
from apppaccap.search import parse_filter
from apppaccap.search.parser import And
from apppaccap.search.parser import Not
from apppaccap.search.parser import Or
from apppaccap.search.parser import Xor

ACCEPTED = ("ip.addr", "ipv6.addr", "tcp.port", "udp.port", "tcp", "udp", "icmp", "ip.proto",
            "proc.name", "proc.path", "proc.pid", "proc.id", "app.proto", "app.name",
            "app.category")
# Each comparison is tested on every flow in Python (~1-2 us each): 869 `ip.addr == x or ...`
# (under the 20,000-character cap) took 29 s over 20,000 connections. A filter a person
# writes compares a handful of fields, and a list of values belongs in one set (one
# comparison); 64 leaves room for generated filters while keeping a filter's cost a small
# multiple of reading the rows (analytics/groupby.py MAX_WORK).
MAX_FILTER_TERMS = 64
_PROTO = {"tcp": 6, "udp": 17, "icmp": 1}
_CMP = {"eq": lambda a, b: a == b, "all_eq": lambda a, b: a == b,
        "ne": lambda a, b: a != b, "any_ne": lambda a, b: a != b,
        "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
        "lt": lambda a, b: a < b, "le": lambda a, b: a <= b}


def flow_predicate(text: str):
    """A predicate over Flow records, or None for a blank filter (every flow); its `terms`
    attribute is the number of comparisons it makes per flow."""
    if not text.strip():
        return None
    try:
        flt = parse_filter(text)
    except FilterError as err:
        raise Malformed(err.api_message) from None
    terms = _terms(flt.tree)
    if terms > MAX_FILTER_TERMS:
        raise Malformed(f"filter: {terms} comparisons, at most {MAX_FILTER_TERMS} (each is "
                        "tested on every connection); list many values in one set instead, "
                        "as in ip.addr in {10.0.0.1 10.0.0.2} or tcp.port in {80 443}")
    pred = _node(flt.tree)
    pred.terms = terms
    return pred


def _terms(n) -> int:
    if isinstance(n, (And, Or, Xor)):
        return sum(_terms(i) for i in n.items)
    if isinstance(n, Not):
        return 1 + _terms(n.item)  # a call per flow too: `!!!...` must not come free
    return 1


def _refuse(name: str, why: str = ""):
    raise Malformed(f"filter: {name} cannot be answered from connection counters{why}; "
                    f"the fields that can: {', '.join(ACCEPTED)}")


def _node(n):
    if isinstance(n, (And, Or, Xor)):
        items = [_node(i) for i in n.items]
        if isinstance(n, And):
            return lambda f: all(t(f) for t in items)
        if isinstance(n, Or):
            return lambda f: any(t(f) for t in items)
        return lambda f: sum(1 for t in items if t(f)) % 2 == 1
    if isinstance(n, Not):
        inner = _node(n.item)
        return lambda f: not inner(f)
    return _cond(n)


def _cond(c):
    name = c.field.name
    if name not in ACCEPTED:
        _refuse(name, " (a flow has packets both ways)" if name in ("ip.src", "ip.dst",
                                                                    "ipv6.src", "ipv6.dst",
                                                                    "tcp.srcport",
                                                                    "tcp.dstport",
                                                                    "udp.srcport",
                                                                    "udp.dstport") else "")
    if c.other is not None or c.mask is not None:
        _refuse(name, " (only a field compared with a value)")
    if name in _PROTO:
        if c.op is not None:
            _refuse(name, " (a protocol alone: tcp, udp, icmp)")
        want = _PROTO[name]
        return lambda f: f.proto == want
    if c.op is None:
        return _exists(name)
    get = _getter(name)
    if name in ("ip.addr", "ipv6.addr"):
        return _ip_cond(c, get)
    if c.op in _CMP:
        op, v = _CMP[c.op], c.values[0]
        if c.op in ("ne", "any_ne") and name in ("tcp.port", "udp.port"):
            # Wireshark's != on a two-ended field: some end differs (any_ne)
            return lambda f: any(op(x, v) for x in get(f))
        if c.op == "all_eq":
            return lambda f: bool(get(f)) and all(op(x, v) for x in get(f))
        return lambda f: any(op(x, v) for x in get(f))
    if c.op == "in":
        inside = _within(c.values)
        return lambda f: any(inside(x) for x in get(f))
    if c.op in ("contains", "matches") and name in ("proc.name", "proc.path", "app.proto",
                                                    "app.name", "app.category"):
        if c.op == "contains":
            needle = c.values[0]
            return lambda f: any(needle in x for x in get(f))
        rx: re.Pattern = c.values[0]
        return lambda f: any(rx.search(x) for x in get(f))
    _refuse(name, f" with {c.op}")
    return None


def _ip_cond(c, get):
    """Addresses compare as integers (a value is a (low, high, text) block: CIDR works)."""
    if c.op == "in":
        ranges = c.values
    elif c.op in ("eq", "all_eq", "ne", "any_ne"):
        ranges = [(c.values[0][0], c.values[0][1])]
    else:
        _refuse(c.field.name, f" with {c.op}")
    inside = _within(ranges)
    if c.op in ("ne", "any_ne"):
        return lambda f: any(not inside(x) for x in get(f))
    if c.op == "all_eq":
        return lambda f: bool(get(f)) and all(inside(x) for x in get(f))
    return lambda f: any(inside(x) for x in get(f))


def _within(ranges):
    """x lies in one of the (low, high) ranges: a binary search over them sorted and
    merged, so a set of a thousand values costs what one comparison does."""
    merged: list = []
    for lo, hi in sorted(r[:2] for r in ranges if r[0] <= r[1]):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    lows = [m[0] for m in merged]

    def inside(x) -> bool:
        i = bisect_right(lows, x) - 1
        return i >= 0 and x <= merged[i][1]
    return inside


@functools.lru_cache(maxsize=65536)
def _ip_int(text, version: int):
    """An address as an integer when it is of that IP version, else None."""
    if not text:
        return None
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        return None
    return int(a) if a.version == version else None


def _exists(name):
    if name in ("ip.addr", "ipv6.addr"):
        v6 = name == "ipv6.addr"
        return lambda f: bool(f.remote_ip) and (":" in f.remote_ip) == v6
    if name in ("tcp.port", "udp.port"):
        want = 6 if name == "tcp.port" else 17
        return lambda f: f.proto == want
    return lambda f: bool(_getter(name)(f))


def _getter(name: str):
    if name in ("ip.addr", "ipv6.addr"):
        version = 6 if name == "ipv6.addr" else 4
        return lambda f: [n for n in (_ip_int(f.local_ip, version), _ip_int(f.remote_ip, version))
                          if n is not None]
    if name in ("tcp.port", "udp.port"):
        want = 6 if name == "tcp.port" else 17
        return lambda f: ([p for p in (f.local_port, f.remote_port) if p is not None]
                          if f.proto == want else [])
    if name == "ip.proto":
        return lambda f: [f.proto]
    attr = {"proc.name": "name", "proc.path": "path", "proc.pid": "pid",
            "proc.id": "process_id", "app.proto": "app_proto", "app.name": "app",
            "app.category": "category"}[name]
    return lambda f: [getattr(f, attr)] if getattr(f, attr) not in (None, "") else []
