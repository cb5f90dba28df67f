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
             "(100-ns ticks since 1601-01-01); packet bytes are lowercase hex.", "",
             "Paging: an action with `last_id` returns the items whose id is greater, at most",
             "`limit` of them (default page size 1000, at most 10000), with `LastId` (the last",
             "id returned; the next call's last_id) and `More` (false on the last page). A client",
             "of the reference that sends no `last_id` gets the reference's answer:",
             "`capture_list_conns`, `capture_get_processes` and `capture_query_ip` return a",
             "plain list, and `capture_conn_stream` / `capture_thread_stream` their packets,",
             "of up to 10000 items (the default page size without `last_id`; `limit` lowers it).",
             "", "Unknown parameters are not an error (jQuery clients add their own fields): the",
             "answer is as usual and lists each in `Warnings` (`\"captur_id: unknown parameter",
             "of capture_read, ignored (did you mean capture_id?)\"`); the server logs each",
             "(action, name) once. `Warnings` is absent when every parameter is known.", "",
             "PACKET objects (capture_read, capture_stream, capture_get_packet,",
             "capture_conn_stream, capture_thread_stream) and search results carry `Summary`",
             "(a one-line description down to the transport) and `Info`, Wireshark's Info",
             "column for the application layer, read from that packet alone: `GET /path",
             "HTTP/1.1`, `HTTP/1.1 200 OK`, `Standard query 0x1a2b A example.com`, `Standard",
             "query response 0x1a2b A example.com A 192.0.2.1`, `Client Hello",
             "(SNI=example.com)`, `Server Hello, Certificate, Server Hello Done`; \"\" when the",
             "packet carries no HTTP head, DNS message or complete TLS record.", "",
             "The numeric constants (error codes,",
             "data types, capture types, states and flags, command states, flush bits) are served",
             "by the `apppaccap` action under `Constants` and as `/constants.js`.", ""]
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
                req = ("yes" if p.required else "no" if p.default is None
                       else f"no (default `{p.default!r}`)")
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
