"""The action registry: the only door for input.

An action is a function `name(ctx, *, param: type = default, ...)`; its wire
name is the function's name. The validator turns the raw request (form or
JSON) into typed keyword arguments and reports *every* problem in one
MALFORMED_REQUEST, naming each parameter.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from dataclasses import dataclass
from dataclasses import field

from apppaccap.api.envelope import Malformed
from apppaccap.api.envelope import NoPage

STRING, INT, JSON, HEX = 1, 2, 3, 4


class Upload:
    """Type marker for a multipart file part (pcap_ingest_post)."""


@dataclass
class Param:
    name: str
    kind: type  # int, float, str, bool, list, Upload
    required: bool
    default: object
    doc: str = ""


@dataclass
class Action:
    name: str
    func: typing.Callable
    returns: int
    summary: str
    doc: str
    params: list[Param]
    aliases: dict[str, str] = field(default_factory=dict)
    public: bool = False  # callable without a token (apppaccap, login)

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


def _scalar(value):
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError("expected one value, got a list")
        return value[0]
    return value


def _convert(p: Param, value):
    if p.kind is Upload:
        if not hasattr(value, "stream"):
            raise ValueError("expected a multipart file upload")
        return value
    if p.kind is list:
        items = value if isinstance(value, list) else [value]
        out = []
        for item in items:
            if not isinstance(item, (str, int)):
                raise ValueError(f"expected names, got {type(item).__name__}")
            out.extend(s.strip() for s in str(item).split(",") if s.strip())
        return out
    value = _scalar(value)
    if p.kind is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ValueError("expected a string")
        if isinstance(value, bool):
            return "1" if value else "0"
        return str(value)
    if p.kind is bool:
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean (0/1), got {str(value)[:40]!r}")
    if p.kind is int:
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, (int, float)):
            n = int(value)
        else:
            try:
                n = int(str(value).strip(), 0)  # 0x.. flags are common
            except ValueError:
                raise ValueError(f"expected an integer, got {str(value)[:40]!r}") from None
        if not -(2**63) <= n < 2**63:
            raise ValueError("integer out of range")
        return n
    if p.kind is float:
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {str(value)[:40]!r}") from None
        if f != f or f in (float("inf"), float("-inf")):
            raise ValueError("expected a finite number")
        return f
    raise TypeError(f"unsupported parameter type {p.kind}")


class Registry:
    """Actions by wire name. Duplicate names fail at import time."""

    def __init__(self):
        self.actions: dict[str, Action] = {}

    def action(self, returns: int, *, aliases: dict | None = None, public: bool = False):
        def register(func):
            name = func.__name__
            if name in self.actions:
                raise RuntimeError(f"action {name} registered twice")
            self.actions[name] = _describe(func, returns, aliases or {}, public)
            return func

        return register

    def get(self, name: str) -> Action:
        try:
            return self.actions[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.actions, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise NoPage(f"action: unknown action {name[:60]!r}{hint}") from None


def _describe(func, returns, aliases, public) -> Action:
    hints = typing.get_type_hints(func)
    doc = inspect.getdoc(func) or ""
    if not doc:
        raise RuntimeError(f"action {func.__name__} needs a docstring")
    param_docs = _param_docs(doc)
    params = []
    for name, prm in inspect.signature(func).parameters.items():
        if prm.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue  # ctx
        kind = hints.get(name, str)
        if typing.get_origin(kind) is list:
            kind = list
        elif typing.get_origin(kind) in (typing.Union, getattr(__import__("types"), "UnionType", ())):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        required = prm.default is inspect.Parameter.empty
        params.append(Param(name, kind, required, None if required else prm.default,
                            param_docs.get(name, "")))
    summary = doc.split("\n", 1)[0]
    return Action(func.__name__, func, returns, summary, doc, params, aliases, public)


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
action = REGISTRY.action
