"""Generate docs/API.md from the action registry: `python -m apppaccap.docs > docs/API.md`."""

from __future__ import annotations

from apppaccap.api import endpoints  # noqa: F401 - registers every action
from apppaccap.api.registry import REGISTRY
from apppaccap.settings import TABLE as SETTINGS
from apppaccap.wire import DataType

_KINDS = {int: "int", str: "string", bool: "bool (0/1)", float: "number", list: "list"}


def render() -> str:
    lines = ["# AppPacCap API", "",
             "Generated from the action registry by `make docs`; a test fails when stale.",
             "Every call is `POST /ajax` with `action` (and a token - body field `token`, header",
             "`X-AppPacCap-Token` or cookie `apppaccap_token` - when the caller must log in;",
             "see SECURITY.md).",
             "Text parameters must be valid Unicode without NUL characters, and numbers must lie",
             "in the range their type column shows; anything else is MALFORMED_REQUEST.", "",
             "Every answer is HTTP 200 carrying the envelope",
             '`{"Version": 1, "ErrorCode": int, "DataType": int, "ReturnValue": ...}`. With',
             "DATA_TYPE_JSON the ReturnValue is the JSON value itself, not a string. An error has",
             "DataType STRING and a ReturnValue naming the parameter and the problem (`capture_id:",
             "no capture 42`); a server fault is GENERIC_ERROR with a log id, never a traceback.",
             'Objects start with `"Version": 1` and use PascalCase keys; times are UTC FILETIME',
             "(100-ns ticks since 1601-01-01); packet bytes are lowercase hex. An action with",
             "`last_id` returns the items whose id is greater, at most `limit` of them (default",
             "1000, at most 10000); stream objects add `LastId` and `More`, the list-returning",
             "actions end with a page shorter than `limit`. The numeric constants (error codes,",
             "data types, capture types, states and flags, command states, flush bits) are served",
             "by the `apppaccap` action under `Constants` and as `/constants.js`.", "",
             "Time ranges: every action that takes `start_dtg`/`end_dtg` also takes",
             "`relative_time`, a whole number and a unit - `s`, `m`, `h`, `d` or `w`, as in",
             "`30s`, `15m`, `24h`, `7d` - meaning from that long before now up to now. It cannot",
             "be combined with `start_dtg`/`end_dtg`; any other text is MALFORMED_REQUEST with a",
             "message saying what is expected.", ""]
    lines += [f"- [`{n}`](#{n})" for n in sorted(REGISTRY.endpoints)]
    for name in sorted(REGISTRY.endpoints):
        act = REGISTRY.endpoints[name]
        body = [ln for ln in act.doc.splitlines()[1:] if not ln.strip().startswith("- ")]
        lines += ["", f"## {name}", "", act.summary]
        text = "\n".join(body).strip()
        if text:
            lines += ["", text]
        lines += ["", f"Returns: DATA_TYPE_{DataType(act.returns).name}"
                  + ("; callable without a token" if act.public else ""), ""]
        if act.params:
            lines += ["| parameter | type | required | description |", "|---|---|---|---|"]
            for p in act.params:
                kind = _KINDS.get(p.kind, "file upload")
                if p.bounds is not None:
                    kind += f", {p.bounds.describe()}"
                req = "yes" if p.required else f"no (default `{p.default!r}`)"
                lines.append(f"| `{p.name}` | {kind} | {req} | {p.doc} |")
        if act.aliases:
            lines += ["", "Aliases: " + ", ".join(f"`{a}` = `{t}`" for a, t in act.aliases.items())]
    lines += _settings()
    return "\n".join(lines) + "\n"


def _settings() -> list[str]:
    """The settings table (apppaccap/settings.py), as settings_describe returns it."""
    lines = ["", "# Settings", "",
             "What `settings_get_all` lists with its default when never set, `settings_set`",
             "checks, and the service reads (`settings_describe` returns the same table with",
             "each current value). Other names are free-form user settings: any text.", "",
             "| setting | type | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "(empty)"
        lines.append(f"| `{s.name}` | {s.type} | {default} | {s.doc} |")
    return lines


if __name__ == "__main__":
    print(render(), end="")
