"""Typed filter + one capture's Scope → a Plan: SQL over `packets` with bound parameters,
and, only when some test needs the packet bytes, a Python predicate for the candidates.

Each node compiles to a Part: `sql` (exact SQL, or None when SQL cannot decide), `sup`
(SQL that holds for every packet the node may match: the candidate filter) and `py` (exact
Python test of a candidate). A node whose children are all exact stays SQL; in a mixed
node the exact children become 0/1 columns of the candidate query that Python reads.
SQL NULL only ever appears as "false" in monotone positions; NOT and XOR coalesce it.
Values always travel as parameters; only integers from the capture's own tables (its
interface ids) are written into the SQL text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from dataclasses import field as _field

from apppaccap.search import fields
from apppaccap.search import predicates
from apppaccap.search.checker import Cond
from apppaccap.search.checker import Filter
from apppaccap.search.parser import And
from apppaccap.search.parser import Not
from apppaccap.search.parser import Or
from apppaccap.search.parser import Xor
from apppaccap.search.values import IPV6

PUSHDOWN_SHARE = 0.3   # use the connections index when the flows hold ≤ 30 % of the packets
_INLINE_SET = 64        # larger key sets travel as one JSON parameter (json_each)
_SQL_OPS = {"eq": "=", "ne": "!=", "all_eq": "=", "any_ne": "!=", "gt": ">", "ge": ">=",
            "lt": "<", "le": "<="}


@dataclass
class Part:
    sql: tuple | None          # (text, params) exact, or None
    sup: tuple                 # (text, params) superset
    py: object = None          # view → bool; None while the node is exact SQL
    ids: tuple | None = None   # (first, last): the node is exactly this packet-id range
    needle: bytes | None = None  # a byte search: only packets whose frame holds it can match


@dataclass
class Plan:
    """How to find a filter's packets in one capture."""

    where: str
    params: list
    select: list = _field(default_factory=list)    # 0/1 columns the Python test reads
    select_params: list = _field(default_factory=list)
    py: object = None                              # None: `where` is exact
    empty: bool = False                            # nothing can match (skip the capture)
    ids: tuple | None = None                       # (first, last) id bounds from time tests
    needle: bytes | None = None                    # every match's frame contains these bytes

    @property
    def exact(self) -> bool:
        return self.py is None


TRUE, FALSE = ("1", []), ("0", [])


def compile_plan(flt: Filter | None, scope, time_range=None) -> Plan:
    """Plan for `flt` (None = every packet) in `scope`, within (start_ns, end_ns) if given."""
    c = _Compiler(scope)
    parts = []
    if flt is not None:
        root = flt.tree
        parts = [c.node(n) for n in (root.items if isinstance(root, And) else [root])]
    if time_range is not None:
        parts.append(c.time_bounds(*time_range))
    exact = [p.sql for p in parts if p.sql is not None]
    rest = [p for p in parts if p.sql is None]
    where = _join("AND", exact + [p.sup for p in rest]) if parts else TRUE
    py = None
    if rest:
        tests = [c.materialize(p) for p in rest]
        py = tests[0] if len(tests) == 1 else (lambda v, t=tuple(tests): all(f(v) for f in t))
    ids = None
    for p in parts:  # time tests at the top level bound the ids to scan
        if p.ids is not None:
            lo, hi = p.ids
            ids = (lo, hi) if ids is None else (max(ids[0], lo), min(ids[1], hi))
    # one byte search beside exact SQL: scan the blocks for it, test only the packets hit
    needle = rest[0].needle if len(rest) == 1 and not c.select else None
    return Plan(where[0], where[1], c.select, c.select_params, py, where[0] == "0", ids, needle)


def _join(word: str, items: list) -> tuple:
    absorbing, neutral = ("0", "1") if word == "AND" else ("1", "0")
    texts, params = [], []
    for text, ps in items:
        if text == absorbing:
            return absorbing, []
        if text == neutral:
            continue
        texts.append(f"({text})")
        params.extend(ps)
    if not texts:
        return neutral, []
    return f" {word} ".join(texts), params


class _Compiler:
    def __init__(self, scope):
        self.scope = scope
        self.select: list = []
        self.select_params: list = []

    # -- tree ---------------------------------------------------------------------
    def node(self, n) -> Part:
        if isinstance(n, Cond):
            return self.leaf(n)
        if isinstance(n, Not):
            p = self.node(n.item)
            if p.sql is not None:
                s = p.sql
                return _exact(("0", []) if s == TRUE else ("1", []) if s == FALSE else
                              (f"NOT coalesce(({s[0]}), 0)", s[1]))
            inner = self.materialize(p)
            return Part(None, TRUE, lambda v: not inner(v))
        parts = [self.node(i) for i in n.items]
        if all(p.sql is not None for p in parts):
            if isinstance(n, Xor):
                texts = [f"coalesce(({p.sql[0]}), 0)" for p in parts]
                return _exact(("(" + " + ".join(texts) + ") % 2 = 1",
                               [x for p in parts for x in p.sql[1]]))
            return _exact(_join("AND" if isinstance(n, And) else "OR", [p.sql for p in parts]))
        tests = [self.materialize(p) for p in parts]
        # SQL-decided children first: they are cheap and short-circuit the byte tests
        tests.sort(key=lambda t: not getattr(t, "is_column", False))
        if isinstance(n, And):
            sup = _join("AND", [p.sql or p.sup for p in parts])
            return Part(None, sup, lambda v, t=tuple(tests): all(f(v) for f in t))
        if isinstance(n, Or):
            sup = _join("OR", [p.sql or p.sup for p in parts])
            return Part(None, sup, lambda v, t=tuple(tests): any(f(v) for f in t))
        return Part(None, TRUE, lambda v, t=tuple(tests): sum(map(bool, (f(v) for f in t))) % 2
                    == 1)

    def materialize(self, p: Part):
        """A Python test for a Part: exact SQL parts become a 0/1 column of the query."""
        if p.py is not None:
            return p.py
        text, params = p.sql
        if text in ("0", "1"):
            const = text == "1"
            return lambda v: const
        index = len(self.select)
        self.select.append(f"coalesce(({text}), 0)")
        self.select_params.extend(params)

        def column(v, i=index):
            return v.extra[i]
        column.is_column = True
        return column

    # -- leaves -------------------------------------------------------------------
    def leaf(self, c: Cond) -> Part:
        f, scope = c.field, self.scope
        form = f.sql
        usable = (form is not None and not scope.force_python
                  and all(col in scope.columns for col in getattr(form, "needs", ())))
        if c.other is not None:
            usable = usable and _pairable(f, c, scope) and _pairable(c.other, c, scope)
        if usable and c.op in ("contains", "matches") and \
                not isinstance(form, (fields.Proc, fields.App)):
            usable = False
        if usable and isinstance(form, fields.Time) and c.other is None:
            return self.time_leaf(c, form)
        if usable:
            sql = self.sql_leaf(c, form)
            if sql is not None:
                return _exact(sql)
        part = Part(None, self.guard(f) or TRUE, predicates.python_test(c))
        if c.op == "contains" and f.ranges is not None and c.values[0]:
            part.needle = c.values[0]
        return part

    def guard(self, f) -> tuple | None:
        """The field's SQL guard for this scope; None if it names columns the capture lacks."""
        text = f.guard.replace("{eth}", self.scope.eth_ifaces)
        words = set(text.replace("(", " ").replace(")", " ").split())
        if (words & fields.OPTIONAL_COLUMNS) - self.scope.columns:
            return None
        return (text, []) if text != "1" else TRUE

    def sql_leaf(self, c: Cond, form) -> tuple | None:
        g = self.guard(c.field)
        if g is None:
            return None  # evaluate from the bytes instead
        if isinstance(form, fields.Exists):
            return g
        if isinstance(form, fields.Const):
            ok = predicates.value_test(c)(getattr(self.scope, form.attr))
            return TRUE if ok else FALSE
        if isinstance(form, fields.Time):
            return None  # handled in leaf(): it may bound the ids
        if isinstance(form, fields.Proc):
            keys = [k for k, row in self.scope.processes().items()
                    if row.get(form.attr) is not None and predicates.value_test(c)(row[form.attr])]
            return _in("process_id", keys)
        if isinstance(form, fields.App):
            test = predicates.value_test(c)
            keys = [cid for cid, labels in self.scope.app_labels().items()
                    if labels[form.attr] is not None and test(labels[form.attr])]
            return _in("conn_id", keys)
        if isinstance(form, fields.Stream):
            test = predicates.value_test(c)
            keys = [cid for rank, cid in enumerate(self.scope.stream_ids(form.proto))
                    if test(rank)]
            return _join("AND", [_in("conn_id", keys), g])
        if c.other is not None:
            return self.pair_leaf(c, g)
        if isinstance(form, (fields.Ip, fields.Port)) and c.op is not None:
            pushed = self.pushdown(c, form, g)
            if pushed is not None:
                return pushed
        return _join("AND", [g, self.column_test(c, form.exprs)])

    def column_test(self, c: Cond, exprs) -> tuple:
        """The test on the field's occurrence expressions, with Wireshark's any/all."""
        if c.op is None:
            if c.mask is None:
                return TRUE
            return _join("OR", [(f"({e} & ?) != 0", [c.mask]) for e in exprs])
        if isinstance(c.field.sql, fields.Ip):
            return self.ip_test(c, exprs)
        if c.mask is not None:
            exprs = [f"({e} & {int(c.mask)})" for e in exprs]
        if c.op == "in":
            singles = [lo for lo, hi in c.values if lo == hi]
            spans = [(lo, hi) for lo, hi in c.values if lo != hi]
            tests = []
            for e in exprs:
                if singles:
                    tests.append(_in(e, singles))
                tests += [(f"{e} BETWEEN ? AND ?", [lo, hi]) for lo, hi in spans]
            return _join("OR", tests)
        op = _SQL_OPS[c.op]
        tests = [(f"{e} {op} ?", [c.values[0]]) for e in exprs]
        return _join("AND" if c.op in predicates.ALL_OPS else "OR", tests)

    def ip_test(self, c: Cond, exprs) -> tuple:
        """IP columns hold text: equality to one address compares text; CIDR blocks, ranges
        and orderings are resolved over the capture's IP dictionary into a set of texts."""
        if c.op in ("eq", "ne", "all_eq", "any_ne") and c.values[0][2] is not None:
            op = _SQL_OPS[c.op]
            tests = [(f"{e} {op} ?", [c.values[0][2]]) for e in exprs]
        else:
            keys = self.ip_keys(c)
            tests = [_in(e, keys) for e in exprs]
        return _join("AND" if c.op in predicates.ALL_OPS else "OR", tests)

    def ip_keys(self, c: Cond) -> list[str]:
        test = predicates.value_test(c)
        v6 = c.field.type == IPV6
        out = []
        for text in self.scope.ips():
            if (":" in text) == v6:
                try:
                    if test(text):
                        out.append(text)
                except OSError:  # not an address (a name someone stored): never matches
                    pass
        return out

    def pushdown(self, c: Cond, form, g) -> tuple | None:
        """Answer an IP/port test from the connections table when it selects few packets:
        `conn_id IN (…)` is served by the packets_conn index instead of a full scan."""
        if isinstance(form, fields.Ip) and not form.conn:
            return None
        scope = self.scope
        test = predicates.value_test(c)
        agg = all if (len(form.exprs) > 1 and c.op in predicates.ALL_OPS) else any
        if isinstance(form, fields.Ip):
            # the capture's few hundred distinct addresses, tested once, not 2 per flow
            good = frozenset(self.ip_keys(c))
            side_ok = good.__contains__
            ends = (2, 4)
        else:
            def side_ok(x):
                return x is not None and test(x)
            ends = (3, 5)
        keys, packets = [], 0
        for row in scope.connections():
            if isinstance(form, fields.Port) and row[1] != form.proto:
                continue
            if agg(side_ok(row[i]) for i in ends):
                keys.append(row[0])
                packets += row[6] or 0
        if packets > PUSHDOWN_SHARE * max(scope.packets, 1):
            return None  # a plain scan is cheaper than that many index lookups
        flows = _in("conn_id", keys)
        if len(form.exprs) == 1:  # directional field: the flow has it on one side at least
            flows = _join("AND", [flows, self.column_test(c, form.exprs)])
        if isinstance(form, fields.Port):
            return _join("AND", [flows, g])
        rest = _join("AND", [("conn_id IS NULL", []), g, self.column_test(c, form.exprs)])
        return _join("OR", [flows, rest])

    def pair_leaf(self, c: Cond, g) -> tuple | None:
        g2 = self.guard(c.other)
        if g2 is None:
            return None
        op = _SQL_OPS[c.op]
        tests = [(f"{a} {op} {b}", []) for a in c.field.sql.exprs for b in c.other.sql.exprs]
        return _join("AND", [g, g2, _join("AND" if c.op in predicates.ALL_OPS else "OR", tests)])

    def time_leaf(self, c: Cond, form) -> Part:
        base = self.scope.first_ts if form.kind == "relative" else 0

        def at(ns):  # ts is a signed 64-bit column: a bound beyond it is its end
            return max(-(1 << 63), min((1 << 63) - 1, ns))
        if c.op == "in":
            ranges = [(at(lo + base), at(hi + base)) for lo, hi in c.values]
        elif c.op in ("gt", "ge", "lt", "le", "eq"):
            v = c.values[0] + base
            ranges = [{"gt": (at(v + 1), None), "ge": (at(v), None), "lt": (None, at(v - 1)),
                       "le": (None, at(v)), "eq": (at(v), at(v))}[c.op]]
        else:
            op = _SQL_OPS.get(c.op)
            return _exact((f"ts {op} ?", [at(c.values[0] + base)]) if op else TRUE)
        if len(ranges) == 1:
            return self.time_bounds(*ranges[0])
        return _exact(_join("OR", [self.time_bounds(lo, hi).sql for lo, hi in ranges]))

    def time_bounds(self, lo, hi) -> Part:
        """lo <= ts <= hi (None = open) — as an id range when ts follows the id."""
        scope = self.scope
        if scope.ts_sorted():
            first = scope.first_id_at(lo) if lo is not None else scope.min_id
            last = scope.first_id_at(hi, after=True) - 1 if hi is not None else scope.max_id
            if first > last:
                return _exact(FALSE)
            part = _exact(("id BETWEEN ? AND ?", [first, last]))
            part.ids = (first, last)
            return part
        texts = [("ts >= ?", [lo])] if lo is not None else []
        texts += [("ts <= ?", [hi])] if hi is not None else []
        return _exact(_join("AND", texts))


def _exact(sql: tuple) -> Part:
    return Part(sql, sql, None)


def _pairable(f, c: Cond, scope) -> bool:
    form = f.sql
    if not isinstance(form, fields.Col) or scope.force_python:
        return False
    if any(col not in scope.columns for col in form.needs):
        return False
    if isinstance(form, fields.Ip) and c.op not in ("eq", "ne", "all_eq", "any_ne"):
        return False  # text order is not address order
    return True


def _in(expr: str, keys: list) -> tuple:
    """`expr IN keys` with the keys bound: inline for a few, one JSON array for many."""
    if not keys:
        return FALSE
    if len(keys) <= _INLINE_SET:
        return f"{expr} IN ({','.join('?' * len(keys))})", list(keys)
    return f"{expr} IN (SELECT value FROM json_each(?))", [json.dumps(list(keys))]

