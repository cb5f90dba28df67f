"""Python tests for typed conditions — Wireshark's any/all semantics over occurrences.

`value_test(cond)` tests ONE occurrence value; the compiler uses it to resolve a condition
over a capture's dictionaries (IPs, processes, connections). `python_test(cond)` tests a
candidate packet (a View, see scan.py) from its decoded bytes.
"""

from __future__ import annotations

import operator

from apppaccap.search.values import BYTES
from apppaccap.search.values import IPV4
from apppaccap.search.values import IPV6
from apppaccap.search.values import PROTO
from apppaccap.search.values import ip_int

ALL_OPS = frozenset(("ne", "all_eq"))  # every occurrence must pass; the others need one
_OPS = {"eq": operator.eq, "ne": operator.ne, "all_eq": operator.eq, "any_ne": operator.ne,
        "gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}


def value_test(c):
    """fn(occurrence value) → bool for condition `c` (field existence assumed)."""
    op, vals, mask = c.op, c.values, c.mask
    if op is None:
        if mask is None:
            return lambda x: True
        return lambda x: (x & mask) != 0
    if op == "contains":
        needle = vals[0]
        return lambda x: needle in x
    if op == "matches":
        search = vals[0].search
        return lambda x: search(x) is not None
    if c.field.type in (IPV4, IPV6):
        return _ip_test(op, vals)
    if op == "in":
        ranges = tuple(vals)
        return lambda x: any(lo <= x <= hi for lo, hi in ranges)
    fn, v = _OPS[op], vals[0]
    if mask is not None:
        return lambda x: fn(x & mask, v)
    return lambda x: fn(x, v)


def _ip_test(op, vals):
    """Address tests on stored text: a value is a (low, high) block, so an address equals
    a CIDR block when it lies inside it, and orders against its ends."""
    if op == "in":
        ranges = tuple(vals)
        return lambda x: any(lo <= ip_int(x) <= hi for lo, hi in ranges)
    lo, hi = vals[0][0], vals[0][1]
    return {
        "eq": lambda x: lo <= ip_int(x) <= hi,
        "all_eq": lambda x: lo <= ip_int(x) <= hi,
        "ne": lambda x: not lo <= ip_int(x) <= hi,
        "any_ne": lambda x: not lo <= ip_int(x) <= hi,
        "gt": lambda x: ip_int(x) > hi,
        "ge": lambda x: ip_int(x) >= lo,
        "lt": lambda x: ip_int(x) < lo,
        "le": lambda x: ip_int(x) <= hi,
    }[op]


def python_test(c):
    """fn(view) → bool: condition `c` on a candidate packet, from its bytes and row."""
    f = c.field
    get = f.py
    if f.type in (PROTO, BYTES):
        ranges = f.ranges
        if c.op == "contains":
            needle = c.values[0]
            if f.name == "frame":
                return lambda v: v.find(needle, 0, v.caplen)
            # every range lies inside the frame: a miss there is a miss everywhere
            return lambda v: v.find(needle, 0, v.caplen) and any(
                v.find(needle, s, e) for s, e in ranges(v))
        if c.op == "matches":
            search = c.values[0].search
            return lambda v: any(search(v.slice(s, e)) is not None for s, e in ranges(v))
        return lambda v: bool(get(v))
    if c.other is not None:
        return _pair_test(c)
    test = value_test(c)
    if c.op in ALL_OPS:
        def every(v):
            occ = get(v)
            return bool(occ) and all(test(x) for x in occ)
        return every

    def some(v):
        for x in get(v):
            if test(x):
                return True
        return False
    return some


def _pair_test(c):
    """field OP field: any pair (all pairs for != and ===), as Wireshark compares them."""
    fn = _OPS[c.op]
    a_get, b_get = c.field.py, c.other.py
    conv = ip_int if c.field.type in (IPV4, IPV6) else (lambda x: x)
    agg = all if c.op in ALL_OPS else any

    def test(v):
        a, b = [conv(x) for x in a_get(v)], [conv(x) for x in b_get(v)]
        return bool(a and b) and agg(fn(x, y) for x in a for y in b)
    return test
