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
                req = ("yes" if p.required else "no" if p.default is None
                       else f"no (default `{p.default!r}`)")
                lines.append(f"| `{p.name}` | {kind} | {req} | {p.doc} |")
        if act.aliases:
            lines += ["", "Aliases: " + ", ".join(f"`{a}` = `{t}`" for a, t in act.aliases.items())]
    lines += _doors()
    lines += _settings()
    return "\n".join(lines) + "\n"


def _doors() -> list[str]:
    """The doors beside /ajax: credentials in headers, the /ws stream, /metrics."""
    from apppaccap.web import feeds
    from apppaccap.web import metrics
    from apppaccap.web import stream
    from apppaccap.web import wsbuffers
    iv = ", ".join(f"{k} {lo}..{hi}" for k, (lo, hi) in feeds.INTERVAL_MS.items())
    return [
        "", "# Authentication forms", "",
        "For a caller that must log in (SECURITY.md, Who may call), `/ajax`, `/ws`,",
        "`/download/...` and `/metrics` accept, besides the `token` body field (`/ajax` only),",
        "the `X-AppPacCap-Token` header and the `apppaccap_token` cookie:",
        "",
        "- `Authorization: Bearer <token>`: a token from `login`, of the same local account.",
        "- `Authorization: Basic <base64 user:password>` (`curl -u user:pass`): checked like",
        "  `login` (same users, same pool); a wrong password is INVALID_CREDENTIALS and counts",
        "  toward the same doubling delay as a failed `login` (a call inside the delay is",
        "  BUSY). No token is made; the server never sends `WWW-Authenticate`. Each request",
        "  runs a password check (scrypt: tens of milliseconds, at most 4 at once, BUSY",
        "  beyond): a script making many calls logs in once and sends the token as Bearer.",
        "- Any other scheme is MALFORMED_REQUEST. A token in a URL is never read (downloads",
        "  and /metrics refuse such a request).",
        "",
        "Callers that need no login (root and the local group on loopback with",
        "authentication off) are not asked, and their Authorization header is not read.",
        "",
        "# GET /ws (WebSocket stream)", "",
        "A WebSocket behind the same Host/Origin checks and caller rules as `/ajax`; refused",
        "callers get HTTP 403 before the upgrade. A caller that must log in and sent no",
        "credentials in headers sends `{\"token\": \"...\"}` as its first message (answer",
        "`{\"type\": \"authenticated\"}`) within "
        f"{stream.AUTH_SECONDS} s. The token is checked again every {stream.RECHECK_SECONDS} s:",
        "after `logout` or a timeout the socket gets an error message and is closed; a stream",
        "opened with Basic credentials ends the same way when the user's password is set again",
        "or the user is removed (INVALID_CREDENTIALS).",
        "",
        "Client messages (JSON objects, at most "
        f"{stream.MAX_MESSAGE // 1024} KiB):",
        "",
        "- `{\"subscribe\": \"flows\" | \"packets\" | \"capture\" | \"usage\" | \"alerts\","
        " \"capture_id\": N,"
        " \"filter\": \"...\", \"interval_ms\": 1000}`",
        "  → `{\"type\": \"subscribed\", \"subscription\": id, \"subscribe\": kind,"
        " \"interval_ms\": n}`.",
        f"  `capture_id` for flows, packets and capture; `interval_ms` ({iv}; default 1000);",
        "  `filter` a display filter (the search language; packets and flows only); packets",
        "  also take `last_id` (default: only packets written after subscribing); alerts",
        "  take `last_id` (an AlertEventId; default: only events stored after subscribing)",
        "  and `alert_id` (one alert's events; default every alert's). At most",
        f"  {stream.MAX_SUBSCRIPTIONS} subscriptions per socket.",
        "- `{\"unsubscribe\": id}` → `{\"type\": \"unsubscribed\", \"subscription\": id}`.",
        "- `{\"ping\": any}` → `{\"type\": \"pong\", \"ping\": any}`.",
        "",
        "Server messages carry `type` and, for a subscription, `subscription`:",
        "",
        "- `flows`: `CaptureId`, `Connections` - the CONNECTION objects (exactly as",
        "  `capture_list_conns` returns them: both directions' packets and bytes, FirstTime,",
        "  LastTime, State, process, thread) that are new or changed since the last message,",
        f"  at most {feeds.FLOWS_PER_MESSAGE} per message. A connection that closes is sent",
        "  with its final counters; a table `ConnectionId → CONNECTION` kept from these",
        "  messages equals `capture_list_conns`. With a filter, a connection joins the feed",
        "  once one of its packets written after subscribing matches, and from then on each",
        "  of its changes is sent. Hostnames learnt later arrive within "
        f"{int(feeds.FULL_SECONDS)} s.",
        f"  A feed follows at most {feeds.MAX_TRACKED:,} connections (with a filter: that",
        "  many selected); beyond, the subscription ends with BUSY, decided before more than",
        "  that many rows are read (use a filter or `capture_list_conns`).",
        "- `packets`: `CaptureId`, `LastId`, `More`, `Packets` - PACKETSTREAM items (PACKET",
        "  objects as `capture_stream` returns them, without Data) in PacketId order, "
        f"at most {feeds.PACKETS_PER_MESSAGE}",
        "  per message.",
        "- `capture`: `Capture` - the CAPTURE object (`capture_get_details`) of each",
        "  interval in which it changed (its counters: a capture header); after the capture",
        "  ends, its last object and `end`.",
        "- `usage`: `Usage` - the `usage_now` object (`seconds` 1-60, default 1, and `group` "
        "path | process may be given in the subscription, as to usage_now).",
        "- `alerts`: `LastId`, `Events` - the ALERTEVENT objects (exactly as `alert_events`",
        "  returns them) stored since the last message, oldest first, at most "
        f"{feeds.EVENTS_PER_MESSAGE} per",
        "  message; each interval reads the catalog for events after the last one sent,",
        f"  at most {feeds.EVENT_PAGES_PER_TICK} messages: a longer history (`last_id`) follows"
        " over the next",
        "  intervals, in order.",
        "- `end`: the capture is no longer active (flows: after one last full comparison);",
        "  the subscription is gone.",
        "- `dropped`: `dropped` - items (packets, connection updates, usage messages, alert",
        "  events) that",
        "  were not sent because the consumer did not read fast enough: the per-socket queue",
        f"  holds at most {wsbuffers.QUEUE_BYTES >> 20} MiB / {wsbuffers.QUEUE_MESSAGES} messages.",
        "  It precedes the next message of that subscription. A packets feed then continues",
        "  from the newest packet; a flows feed sends every connection not sent again; an",
        "  alerts feed continues after the lost events (`alert_events` with `last_id` has them).",
        "- `error`: `ErrorCode`, `message` (and `subscription` when one ended with it).",
        "",
        "Each local account (root excepted) may hold `max_streams_per_caller` sockets; the",
        f"server pings every {stream.PING_SECONDS} s and closes a socket that does not answer.",
        "",
        "# GET /metrics (Prometheus)", "",
        "The Prometheus text format, for the same callers as `/ajax`; 404 when the setting",
        "`metrics_enabled` is 0. Read at scrape time:",
        "",
        "- `apppaccap_capture_{packets,bytes,dropped,attributed,unknown}_total{capture_id}`",
        "  per live capture; `apppaccap_capture_queue_packets` and",
        "  `apppaccap_capture_writer_queue` (queue depths); `apppaccap_active_captures`.",
        "- `apppaccap_program_bytes_total{program,direction}` from usage accounting (the first",
        f"  {metrics.TOP_PROGRAMS} program names get their own series, the rest",
        "  `program=\"other\"`); `apppaccap_usage_enabled`.",
        "- `apppaccap_commands{state}`, `apppaccap_searches{state}`; `process_*` (resident",
        "  memory, CPU, open files) of the service.",
    ]


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
