"""The filter language's connection-level fields compiled to a ClickHouse condition with
bound parameters (`%(pN)s`, escaped by clickhouse-driver: 18.16 has no server-side
parameters).

The same parser and checker as every search (search/), the same fields as a group-by
(analytics/flowfilter.py's ACCEPTED) plus `thread.id`, with the meanings flowfilter gives
them: either end's address or port, the owning program, nDPI's labels. A field that a
connection row cannot answer is MALFORMED with the same message as stats_group_by's.
`host` is not a field of the language: fleet actions take it as a parameter.
"""

from __future__ import annotations

from apppaccap.analytics.flowfilter import ACCEPTED as FLOW_FIELDS
from apppaccap.errors import Malformed
from apppaccap.search import FilterError
from apppaccap.search import parse_filter
from apppaccap.search.parser import And
from apppaccap.search.parser import Not
from apppaccap.search.parser import Or
from apppaccap.search.parser import Xor

ACCEPTED = (*FLOW_FIELDS, "thread.id")
_PROTO = {"tcp": 6, "udp": 17, "icmp": 1}
_OPS = {"eq": "=", "all_eq": "=", "ne": "!=", "any_ne": "!=", "gt": ">", "ge": ">=",
        "lt": "<", "le": "<="}
# field → (column, "is present" condition)
_COLUMNS = {"proc.name": ("proc_name", "proc_name != ''"),
            "proc.path": ("proc_path", "proc_path != ''"),
            "proc.pid": ("pid", "process_id != 0"), "proc.id": ("process_id", "process_id != 0"),
            "thread.id": ("tid", "tid != 0"), "app.proto": ("app_proto", "app_proto != ''"),
            "app.name": ("app", "app != ''"), "app.category": ("category", "category != ''"),
            "ip.proto": ("proto", "1")}
_TWO_ENDED = ("ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "tcp.srcport", "tcp.dstport",
              "udp.srcport", "udp.dstport")


def compile_filter(text: str) -> tuple[str, dict]:
    """(condition, parameters); ("1", {}) for a blank filter."""
    if not text.strip():
        return "1", {}
    try:
        flt = parse_filter(text)
    except FilterError as err:
        raise Malformed(err.api_message) from None
    params: dict = {}
    return _node(flt.tree, params), params


def _bind(params: dict, value) -> str:
    name = f"p{len(params)}"
    params[name] = value
    return f"%({name})s"


def _refuse(name: str, why: str = ""):
    raise Malformed(f"filter: {name} cannot be answered from connection counters{why}; "
                    f"the fields that can: {', '.join(ACCEPTED)}")


def _node(n, params) -> str:
    if isinstance(n, (And, Or)):
        joiner = " AND " if isinstance(n, And) else " OR "
        return "(" + joiner.join(_node(i, params) for i in n.items) + ")"
    if isinstance(n, Xor):
        # modulo(), not %: a literal % would be read as a bound parameter's marker
        return ("(modulo(" + " + ".join(f"({_node(i, params)})" for i in n.items)
                + ", 2) = 1)")
    if isinstance(n, Not):
        return f"(NOT {_node(n.item, params)})"
    return _cond(n, params)


def _cond(c, params) -> str:
    name = c.field.name
    if name not in ACCEPTED:
        _refuse(name, " (a flow has packets both ways)" if name in _TWO_ENDED else "")
    if c.other is not None or c.mask is not None:
        _refuse(name, " (only a field compared with a value)")
    if name in _PROTO:
        if c.op is not None:
            _refuse(name, " (a protocol alone: tcp, udp, icmp)")
        return f"proto = {_PROTO[name]}"
    if name in ("ip.addr", "ipv6.addr"):
        return _ip(c, params)
    if name in ("tcp.port", "udp.port"):
        return _port(c, params)
    column, present = _COLUMNS[name]
    if c.op is None:
        return present
    if c.op in _OPS:
        return f"({present} AND {column} {_OPS[c.op]} {_bind(params, c.values[0])})"
    if c.op == "in":
        return f"({present} AND ({_ranges(column, c.values, params)}))"
    if c.op == "contains" and column in ("proc_name", "proc_path", "app_proto", "app",
                                         "category"):
        return f"position({column}, {_bind(params, c.values[0])}) > 0"
    if c.op == "matches" and column in ("proc_name", "proc_path", "app_proto", "app",
                                        "category"):
        # RE2 on both sides; the language's patterns are case-insensitive unless (?-i)
        return f"match({column}, {_bind(params, '(?i)' + c.values[0].pattern)})"
    _refuse(name, f" with {c.op}")
    return ""


def _ranges(column: str, ranges, params) -> str:
    return " OR ".join(f"{column} BETWEEN {_bind(params, lo)} AND {_bind(params, hi)}"
                       for lo, hi in ranges)


def _port(c, params) -> str:
    proto = 6 if c.field.name == "tcp.port" else 17
    ends = ("local_port", "remote_port")
    if c.op is None:
        return f"proto = {proto}"
    if c.op == "in":
        test = " OR ".join(f"({_ranges(e, c.values, params)})" for e in ends)
    elif c.op in _OPS:
        v = _bind(params, c.values[0])
        tests = [f"{e} {_OPS[c.op]} {v}" for e in ends]
        test = " AND ".join(tests) if c.op == "all_eq" else " OR ".join(tests)
    else:
        _refuse(c.field.name, f" with {c.op}")
    return f"(proto = {proto} AND ({test}))"


def _ip(c, params) -> str:
    """Addresses compare as numbers (IPv4: UInt32 columns) or as 32 hex digits (IPv6: text
    of one length sorts as the number), so a CIDR block is a range."""
    v6 = c.field.name == "ipv6.addr"
    ends = ("local_ip6", "remote_ip6") if v6 else ("local_ip4", "remote_ip4")
    present = [f"{e} != ''" if v6 else f"{e} != 0" for e in ends]
    if c.op is None:
        return f"({' OR '.join(present)})"
    if c.op == "in":
        ranges = [(lo, hi) for lo, hi, *_ in c.values]
    elif c.op in ("eq", "all_eq", "ne", "any_ne"):
        ranges = [c.values[0][:2]]
    else:
        _refuse(c.field.name, f" with {c.op}")
    if v6:
        ranges = [(f"{lo:032x}", f"{hi:032x}") for lo, hi in ranges]
    inside = [f"({_ranges(e, ranges, params)})" for e in ends]
    if c.op in ("ne", "any_ne"):
        tests = [f"({p} AND NOT {i})" for p, i in zip(present, inside)]
        return "(" + " OR ".join(tests) + ")"
    tests = [f"({p} AND {i})" for p, i in zip(present, inside)]
    return "(" + (" AND " if c.op == "all_eq" else " OR ").join(tests) + ")"
