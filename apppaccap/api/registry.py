"""The endpoint registry: the only door for input.

An endpoint (what the wire calls an "action": `action=capture_list`) is a function
`name(ctx, *, param: type = default, ...)`; its wire name is the function's name. The
validator turns the raw request (form or JSON) into typed keyword arguments and reports
*every* problem in one
MALFORMED_REQUEST, naming each parameter.

Because every value passes here, this is also where hostile values stop: text that is
not valid Unicode (JSON can carry lone surrogates such as "\\ud800") or that holds a NUL
(C libraries such as libpcap would see a shorter string), and numbers outside what
the parameter means. A number parameter's range comes from `Annotated[int, Bounds(..)]`
on the handler, or else from WIRE_BOUNDS by its wire name: an id is an id everywhere.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import threading
import types
import typing
from dataclasses import dataclass
from dataclasses import field
from typing import Annotated

from apppaccap.errors import Malformed
from apppaccap.errors import NoPage

log = logging.getLogger(__name__)
MAX_WARNINGS = 20        # unknown parameters listed in one answer
MAX_LOGGED_UNKNOWN = 1000  # (action, name) pairs remembered for log-once


class Upload:
    """Type marker for a multipart file part (pcap_ingest_post)."""


@dataclass(frozen=True)
class Bounds:
    """The inclusive range of a number parameter; `meaning` says what it is, for messages."""

    low: int | float
    high: int | float
    meaning: str

    def check(self, value) -> None:
        if not self.low <= value <= self.high:
            raise ValueError(f"{_short(value)} is out of range: {self.meaning}")

    def describe(self) -> str:
        """The range for docs/API.md."""
        if self.high == INT64_MAX:
            return f">= {self.low}"
        if self.high == 0xFFFFFFFF:
            return f"{self.low}..0xffffffff"
        return f"{self.low}..{self.high}"


INT64_MAX = (1 << 63) - 1
FILETIME_9999 = 2650467743999999999  # 9999-12-31 23:59:59.9999999 UTC, the last FILETIME
ID = Bounds(0, INT64_MAX, "an id is 0 or more")
# Process and thread ids are pid_t (signed 32-bit); 0 means "none" where it is optional.
SYSTEM_ID = Bounds(0, (1 << 31) - 1, "a process or thread id is 1 to 2147483647 (0 = none)")
FILETIME = Bounds(0, FILETIME_9999, "a UTC FILETIME is 0 to 2650467743999999999 (year 9999)")
FLAGS = Bounds(0, 0xFFFFFFFF, "flags are a 32-bit mask, 0 to 0xffffffff")
PAGE = Bounds(1, 10000, "a page holds 1 to 10000 items")

# Ranges by wire name (Annotated[...] on a handler overrides them). Every int or float
# parameter must have one: tests/test_hostile_inputs.py checks it.
WIRE_BOUNDS = {
    "pid": SYSTEM_ID,
    "thread_id": SYSTEM_ID,
    "limit": PAGE,
    "flags": FLAGS,
    "start_dtg": FILETIME,
    "end_dtg": FILETIME,
    "port": Bounds(0, 65535, "a port is 0 to 65535"),
    "protocol": Bounds(0, 255, "an IP protocol number is 0 to 255"),
    "trigger_type": Bounds(0, 255, "a trigger type is a small number (TRIGGER_TYPE_*)"),
    "action_type": Bounds(0, 255, "an action type is a small number (ACTION_TYPE_*)"),
    "lat": Bounds(-90.0, 90.0, "a latitude is -90 to 90"),
    "lng": Bounds(-180.0, 180.0, "a longitude is -180 to 180"),
    "overwrite": Bounds(0, 1, "0 (refuse an existing file) or 1 (replace it)"),
}


def wire_bounds(name: str, kind: type) -> Bounds | None:
    """The range a parameter has by its name: `*_id` parameters are ids."""
    if kind not in (int, float):
        return None
    if name in WIRE_BOUNDS:
        return WIRE_BOUNDS[name]
    if name.endswith("_id"):
        return ID
    return None


@dataclass
class Param:
    name: str
    kind: type  # int, float, str, bool, list, Upload
    required: bool
    default: object
    doc: str = ""
    bounds: Bounds | None = None  # int and float parameters


@dataclass
class Endpoint:
    name: str
    func: typing.Callable
    returns: int
    summary: str
    doc: str
    params: list[Param]
    aliases: dict[str, str] = field(default_factory=dict)
    public: bool = False  # callable without a token (apppaccap, login)

    def unknown(self, raw: dict) -> list[str]:
        """Names in `raw` this endpoint does not read (`x[]` is jQuery's form of `x`)."""
        known = {p.name for p in self.params} | set(self.aliases)
        return [k for k in raw if (k[:-2] if k.endswith("[]") else k) not in known]

    def bind(self, raw: dict) -> dict:
        """Validate raw wire values (str / list[str] / JSON scalars) into kwargs."""
        problems, kwargs = [], {}
        for alias, target in self.aliases.items():
            if alias in raw and target not in raw:
                raw[target] = raw[alias]
        for p in self.params:
            value = raw.get(p.name, raw.get(p.name + "[]"))
            if value is None or (value == "" and p.kind is not str and p.kind is not list):
                if p.required:
                    problems.append(f"{p.name}: required")
                continue
            try:
                kwargs[p.name] = _convert(p, value)
            except ValueError as exc:
                problems.append(f"{p.name}: {exc}")
        if problems:
            raise Malformed("; ".join(problems))
        return kwargs


def _short(value) -> str:
    if isinstance(value, int) and value.bit_length() > 128:
        sign = "negative " if value < 0 else ""  # str() refuses beyond 4300 digits
        return f"a {sign}{value.bit_length()}-bit number"
    text = str(value)
    return text if len(text) <= 40 else text[:40] + "..."


def check_text(text: str) -> str:
    """Refuse text a C library or an encoder would choke on; returns it unchanged.

    A lone surrogate (U+D800-U+DFFF) cannot be encoded as UTF-8: libpcap, SQLite and the
    file system all need UTF-8. A NUL ends a C string early, so `tcp\\0 and port 1`
    would silently become `tcp`.
    """
    nul = text.find("\x00")  # C-speed scans: parameters may be megabytes long
    if nul >= 0:
        raise ValueError(f"contains a NUL character at position {nul}")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # only surrogates fail to encode
            raise ValueError(f"is not valid Unicode: a lone surrogate "
                             f"U+{ord(text[exc.start]):04X} at position {exc.start}") from None
    return text


def _scalar(value):
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError("expected one value, got a list")
        return value[0]
    return value


_INT64 = Bounds(-(1 << 63), INT64_MAX, "an integer is a signed 64-bit number")


def _kind_name(value) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _to_text(value) -> str:
    if isinstance(value, (dict, list)) or value is None:
        raise ValueError(f"expected a string, got {_kind_name(value)}")
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) and value.bit_length() > 128:
        raise ValueError(f"expected a string, got {_short(value)}")
    return check_text(str(value))


def _to_bool(value) -> bool:
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (0/1), got {_short(value)!r}")


def _to_int(value) -> int:
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise ValueError(f"expected an integer, got {_short(value)}")
    if isinstance(value, (int, float)):
        return int(value)
    try:
        return int(str(value).strip(), 0)  # 0x.. flags are common
    except ValueError:  # also more digits than Python converts (int_max_str_digits)
        raise ValueError(f"expected an integer, got {_short(value)!r}") from None


def _to_float(value) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected a number, got {_short(value)!r}") from None
    if f != f or f in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return f


def _convert(p: Param, value):
    if p.kind is Upload:
        if not hasattr(value, "stream"):
            raise ValueError("expected a multipart file upload")
        return value
    if p.kind is list:
        items = value if isinstance(value, list) else [value]
        out = []
        for item in items:
            if not isinstance(item, (str, int)) or isinstance(item, bool):
                raise ValueError(f"expected names, got {_kind_name(item)}")
            out.extend(s.strip() for s in check_text(str(item)).split(",") if s.strip())
        return out
    value = _scalar(value)
    if p.kind is str:
        return _to_text(value)
    if isinstance(value, (dict, list)) or value is None:
        raise ValueError(f"expected one value, got {_kind_name(value)}")
    if p.kind is bool:
        return _to_bool(value)
    if p.kind is int:
        n = _to_int(value)
        (p.bounds or _INT64).check(n)
        return n
    if p.kind is float:
        f = _to_float(value)
        if p.bounds is not None:
            p.bounds.check(f)
        return f
    raise TypeError(f"unsupported parameter type {p.kind}")


class Registry:
    """Endpoints by wire name. Duplicate names fail at import time."""

    def __init__(self):
        self.endpoints: dict[str, Endpoint] = {}
        self._logged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def endpoint(self, returns: int, *, aliases: dict | None = None, public: bool = False,
                 paged: tuple[str, str] | None = None):
        """`paged=(IdKey, ItemsKey)`: a list action that pages like the `last_id` actions
        (see `paged_list`); the function itself returns the whole list."""
        def register(func):
            name = func.__name__
            if name in self.endpoints:
                raise RuntimeError(f"endpoint {name} registered twice")
            act = _describe(func, returns, aliases or {}, public)
            if paged is not None:
                act = _paged(act, *paged)
            self.endpoints[name] = act
            return func

        return register

    def warnings(self, act: Endpoint, raw: dict) -> list[str]:
        """The `Warnings` of an answer: one line per unknown parameter (never an error:
        jQuery clients add fields of their own), each logged once per (action, name)."""
        out = []
        for name in act.unknown(raw)[:MAX_WARNINGS]:
            shown = name[:60]
            # the shown (cut) name: a megabyte-long field name must not cost difflib seconds
            close = difflib.get_close_matches(shown, [p.name for p in act.params], n=1,
                                              cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            out.append(f"{shown}: unknown parameter of {act.name}, ignored{hint}")
            with self._lock:
                first = (act.name, shown) not in self._logged
                if first and len(self._logged) < MAX_LOGGED_UNKNOWN:
                    self._logged.add((act.name, shown))
            if first:
                log.warning("action %s: unknown parameter %r ignored%s", act.name, shown, hint)
        return out

    def get(self, name: str) -> Endpoint:
        try:
            return self.endpoints[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.endpoints, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise NoPage(f"action: unknown action {name[:60]!r}{hint}") from None


def paged_list(items: list, id_key: str, items_key: str, last_id: int | None,
               limit: int | None):
    """The reference's whole list without last_id (cut to `limit` when given); with it, a
    page {LastId, More, items_key: [...]} of the items whose id_key > last_id, by id."""
    if last_id is None:
        return items if limit is None else items[:limit]
    limit = limit or 1000
    rest = sorted((x for x in items if x[id_key] > last_id), key=lambda x: x[id_key])
    page = rest[:limit]
    return {"Version": 1, "LastId": page[-1][id_key] if page else last_id,
            "More": len(rest) > limit, items_key: page}


def _paged(act: Endpoint, id_key: str, items_key: str) -> Endpoint:
    """`act` with last_id and limit parameters, paging the list it returns."""
    inner = act.func

    def func(ctx, *, last_id=None, limit=None, **kwargs):
        return paged_list(inner(ctx, **kwargs), id_key, items_key, last_id, limit)
    params = act.params + [
        Param("last_id", int, False, None, f"return items with {id_key} > last_id, as a page "
              f"{{LastId, More, {items_key}}}; without it the whole list", ID),
        Param("limit", int, False, None, "page size, 1-10000 (default 1000 with last_id)", PAGE)]
    return Endpoint(act.name, func, act.returns, act.summary, act.doc, params, act.aliases,
                    act.public)


def _describe(func, returns, aliases, public) -> Endpoint:
    hints = typing.get_type_hints(func, include_extras=True)
    doc = inspect.getdoc(func) or ""
    if not doc:
        raise RuntimeError(f"endpoint {func.__name__} needs a docstring")
    param_docs = _param_docs(doc)
    params = []
    for name, prm in inspect.signature(func).parameters.items():
        if prm.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue  # ctx
        kind, bounds = _kind_of(hints.get(name, str))
        required = prm.default is inspect.Parameter.empty
        params.append(Param(name, kind, required, None if required else prm.default,
                            param_docs.get(name, ""), bounds or wire_bounds(name, kind)))
    summary = doc.split("\n", 1)[0]
    return Endpoint(func.__name__, func, returns, summary, doc, params, aliases, public)


def _kind_of(hint) -> tuple[type, Bounds | None]:
    """(wire kind, declared Bounds) of an annotation: list[str] → list, `X | None` → X,
    Annotated[int, Bounds(..)] → int with those bounds."""
    if typing.get_origin(hint) in (typing.Union, getattr(types, "UnionType", ())):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    bounds = None
    if typing.get_origin(hint) is Annotated:
        bounds = next((m for m in hint.__metadata__ if isinstance(m, Bounds)), None)
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is list:
        hint = list
    return hint, bounds


def _param_docs(doc: str) -> dict:
    """`name: text` lines of the docstring document parameters."""
    out = {}
    for line in doc.splitlines():
        line = line.strip()
        if line.startswith("- ") and ":" in line:
            key, _, text = line[2:].partition(":")
            out[key.strip()] = text.strip()
    return out


REGISTRY = Registry()
endpoint = REGISTRY.endpoint
