"""Untyped AST → typed conditions: resolve every field, check each operator against the
field's type and parse every literal. After this a filter is valid for any capture.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as _field

from apppaccap.search import values
from apppaccap.search.fields import FIELDS
from apppaccap.search.fields import Field
from apppaccap.search.fields import lookup
from apppaccap.search.lexer import FilterError
from apppaccap.search.lexer import Token
from apppaccap.search.parser import And
from apppaccap.search.parser import Not
from apppaccap.search.parser import Or
from apppaccap.search.parser import Relation
from apppaccap.search.parser import Xor
from apppaccap.search.parser import parse

COMPARE = ("eq", "ne", "all_eq", "any_ne", "gt", "ge", "lt", "le")
ORDERING = ("gt", "ge", "lt", "le")


@dataclass
class Cond:
    """One typed test on one field.

    op None: the field exists (with `mask`: some occurrence has a mask bit set);
    COMPARE ops: `values` = [typed value] (or `other` = a second field);
    "in": `values` = [(low, high)] ranges; "contains": [bytes or str]; "matches": [re].
    IP values are (low, high, canonical text or None) — an address or a CIDR block.
    """

    field: Field
    op: str | None
    values: list = _field(default_factory=list)
    mask: int | None = None
    other: Field | None = None
    pos: int = 0


@dataclass
class Filter:
    """A checked filter: the text, the typed tree and the fields it uses."""

    text: str
    tree: object
    fields: set

    def __str__(self):
        return self.text


def parse_filter(text: str) -> Filter:
    """Parse and type-check a filter; raises FilterError (message + position)."""
    if len(text) > 20000:
        raise FilterError("filter is longer than 20000 characters", 20000)
    used: set = set()
    tree = _check(parse(text), used)
    return Filter(text, tree, used)


def _check(node, used):
    if isinstance(node, (Or, And, Xor)):
        return type(node)([_check(n, used) for n in node.items])
    if isinstance(node, Not):
        return Not(_check(node.item, used))
    assert isinstance(node, Relation)
    f = lookup(node.field.text, node.field.pos)
    used.add(f.name)
    mask = None
    if node.mask is not None:
        if f.type != values.UINT:
            raise FilterError(f"{f.name} ({f.type}) cannot be used with '&' (bitwise and)",
                              node.mask.pos)
        if node.op not in (None, *COMPARE):
            raise FilterError(f"'&' cannot be combined with {node.op}", node.pos)
        mask = values.parse_uint(node.mask, min(f.bits, 63))
    if node.op is None:
        return Cond(f, None, [], mask, None, node.pos)
    if node.op in COMPARE:
        return _compare(f, node, mask, used)
    if node.op == "in":
        if f.type in (values.PROTO, values.BYTES):
            raise FilterError(f"{f.name} is a {f.type}; use contains or matches", node.pos)
        return Cond(f, "in", [_range(f, item) for item in node.rhs], None, None, node.pos)
    if node.op == "contains":
        if f.type in (values.PROTO, values.BYTES) and f.ranges is not None:
            return Cond(f, "contains", [values.parse_bytes(node.rhs)], None, None, node.pos)
        if f.type == values.STRING:
            return Cond(f, "contains", [values.text_of(node.rhs)], None, None, node.pos)
        raise FilterError(f"{f.name} (type={f.type}) cannot participate in contains "
                          "comparison", node.field.pos)
    # matches
    if f.type in (values.PROTO, values.BYTES) and f.ranges is not None:
        return Cond(f, "matches", [values.parse_regex(node.rhs, text=False)], None, None, node.pos)
    if f.type == values.STRING:
        return Cond(f, "matches", [values.parse_regex(node.rhs, text=True)], None, None, node.pos)
    raise FilterError(f"{f.name} (type={f.type}) cannot participate in matches comparison",
                      node.field.pos)


def _compare(f: Field, node: Relation, mask, used) -> Cond:
    if f.type in (values.PROTO, values.BYTES):
        raise FilterError(f"{f.name} is a {f.type}: test it alone, or use contains/matches",
                          node.pos)
    rhs: Token = node.rhs
    if rhs.kind == "WORD" and rhs.text in FIELDS:
        other = FIELDS[rhs.text]
        if mask is not None:
            raise FilterError("'&' cannot be combined with a field on the right", rhs.pos)
        if _family(other.type) != _family(f.type):
            raise FilterError(f"{f.name} ({f.type}) and {other.name} ({other.type}) cannot be "
                              "compared", rhs.pos)
        used.add(other.name)
        return Cond(f, node.op, [], None, other, node.pos)
    if node.op in ORDERING and f.type not in values.ORDERED:
        raise FilterError(f"{f.name} ({f.type}) cannot be compared with {node.op}", node.pos)
    value = _value(f, rhs, mask is not None)
    return Cond(f, node.op, [value], mask, None, node.pos)


def _family(t):
    return "int" if t in (values.UINT, values.BOOL) else t


def _value(f: Field, tok: Token, masked: bool = False):
    t = f.type
    if t == values.UINT:
        return values.parse_uint(tok, 63 if masked else f.bits)  # SQLite integers are signed
    if t == values.BOOL:
        return values.parse_bool(tok)
    if t == values.IPV4:
        return values.parse_ip(tok, 4)
    if t == values.IPV6:
        return values.parse_ip(tok, 6)
    if t == values.ETHER:
        return values.parse_ether(tok)
    if t == values.STRING:
        return values.parse_string(tok)
    if t == values.ABSTIME:
        return values.parse_abstime(tok)
    if t == values.RELTIME:
        return values.parse_reltime(tok)
    raise FilterError(f"{f.name} ({t}) cannot be compared", tok.pos)  # pragma: no cover


def _range(f: Field, item) -> tuple:
    """A set member → (low, high) in the field's value space (IP: integers)."""
    if isinstance(item, tuple):
        if f.type in (values.BOOL, values.ETHER):
            raise FilterError(f"ranges are not supported for {f.type} fields", item[0].pos)
        lo, hi = _value(f, item[0]), _value(f, item[1])
        if f.type in (values.IPV4, values.IPV6):
            lo, hi = lo[0], hi[1]
        if lo > hi:
            raise FilterError("range has its upper end below its lower end", item[1].pos)
        return lo, hi
    v = _value(f, item)
    if f.type in (values.IPV4, values.IPV6):
        return v[0], v[1]
    return v, v
