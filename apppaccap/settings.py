"""Settings: the table of every setting the service reads (name, type, default, doc, check).

Values are strings in catalog.db (store/settings.py keeps them); a setting never set reads
as its default here. Every reader of a known setting goes through `Settings.get`,
`get_int` or `get_bool`, whose fallback is this table's default, never a second literal
(tests/test_settings.py checks that every name read in the package is in the table).
settings_set checks a value against its setting's `check`. Names not in the table are
free-form user settings (a theme's own, for instance): any text, default none.
"""

from __future__ import annotations

import os
import re
import threading
import urllib.parse
import weakref
from dataclasses import dataclass
from typing import Callable

from apppaccap.store import settings as setting_rows

# A theme is a plain folder name: `/` redirects to it, so it must never be a path or a URL.
_THEME_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


def is_theme_name(value: object) -> bool:
    return isinstance(value, str) and _THEME_NAME.fullmatch(value) is not None


def list_themes(root: str) -> list[str]:
    """Folders of the themes directory that can be served (plain names only)."""
    if not os.path.isdir(root):
        return []
    return sorted(d for d in os.listdir(root)
                  if is_theme_name(d) and os.path.isdir(os.path.join(root, d)))


# -- checks: (value, config) → None, or ValueError (malformed) / LookupError (not there) --


def _integer(text: str) -> int | None:
    """ASCII digits only ("²" is a digit to str.isdigit), at most 18 of them."""
    text = text.strip()
    if text.isascii() and text.isdigit() and len(text) <= 18:
        return int(text)
    return None


def positive_integer(value: str, _config=None) -> None:
    number = _integer(value)
    if number is None or number <= 0:
        raise ValueError("must be a positive integer")


def non_negative_integer(value: str, _config=None) -> None:
    if _integer(value) is None:
        raise ValueError("must be an integer, 0 or more")


def zero_or_one(value: str, _config=None) -> None:
    if value not in ("0", "1"):
        raise ValueError("must be 0 or 1")


def absolute_path_or_empty(value: str, _config=None) -> None:
    if value and not os.path.isabs(value):
        raise ValueError("must be an absolute path, or empty")


def installed_theme(value: str, config=None) -> None:
    """`/` redirects to the theme: only the folder name of an installed theme is taken."""
    if not is_theme_name(value):
        raise ValueError("must be the folder name of a theme (letters, digits, '.', '_', "
                         "'-'; not starting with '.')")
    if config is not None:
        installed = list_themes(config.themes_dir)
        if value not in installed:
            raise LookupError(f"no theme {value!r} in the themes directory "
                              f"(installed: {', '.join(installed) or 'none'})")


def attribution_choice(value: str, _config=None) -> None:
    if value not in ("auto", "ebpf", "socket-table"):
        raise ValueError("must be auto, ebpf or socket-table")


def any_text(value: str, _config=None) -> None:
    return None


def clickhouse_url_or_empty(value: str, _config=None) -> None:
    """fleet_url: ClickHouse's native protocol (docs/FLEET.md says why not HTTP)."""
    if not value:
        return
    parts = urllib.parse.urlsplit(value)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("clickhouse", "clickhouses") or not parts.hostname or not port_ok:
        raise ValueError("must be empty or clickhouse://[user[:password]@]host[:port][/database]"
                         " (ClickHouse's native protocol, port 9000 by default)")


def sensor_list(value: str, _config=None) -> None:
    for item in value.split(","):
        if not item.strip():
            continue
        name, sep, url = item.strip().partition("=")
        parts = urllib.parse.urlsplit(url.strip())
        if (not sep or not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", name.strip())
                or parts.scheme not in ("http", "https") or not parts.hostname):
            raise ValueError("must be NAME=http://HOST:PORT items, comma-separated (NAME as "
                             "the sensor's fleet_host)")


def user_password_or_empty(value: str, _config=None) -> None:
    if value and ":" not in value:
        raise ValueError("must be USER:PASSWORD, or empty")


def plain_name_or_empty(value: str, _config=None) -> None:
    if value and not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", value):
        raise ValueError("must be letters, digits, '_', '.' and '-' only (at most 128), or empty")


@dataclass(frozen=True)
class Setting:
    name: str
    type: str        # what the text holds: int, bool (0/1), str, path, theme
    default: str
    doc: str
    check: Callable = any_text


TABLE = (
    Setting("theme", "theme", "default", "The theme `/` redirects to: the folder name of an "
            "installed theme.", installed_theme),
    Setting("token_timeout", "int", "1800", "Seconds of idle time before a login token "
            "expires.", positive_integer),
    Setting("upload_max_bytes", "int", str(2 << 30), "Largest file pcap_ingest_post takes, in "
            "bytes.", positive_integer),
    Setting("geoip_db", "path", "", "Path of a GeoLite2/GeoIP2 City database (.mmdb) for "
            "geolocation; empty = no geolocation.", absolute_path_or_empty),
    Setting("export_group_read", "bool", "0", "Exports are 0600; 1 = 0640 with the group of "
            "the export root they are written below (chgrp that directory to the group that "
            "may read them).", zero_or_one),
    Setting("extract_enabled", "bool", "0", "Find files in the TCP streams of captures and "
            "ingests started from now on (extract_enable / extract_disable set it).",
            zero_or_one),
    Setting("app_labels_enabled", "bool", "1", "Label connections of captures and ingests "
            "started from now on with nDPI's application protocol, application and category "
            "(needs Debian's libndpi4.2; without it connections stay unlabelled).", zero_or_one),
    Setting("extract_max_file_bytes", "int", str(64 << 20), "Largest body kept per extracted "
            "file, in bytes (longer ones are cut and marked Truncated).", positive_integer),
    Setting("extract_max_capture_bytes", "int", str(4 << 30), "Most bytes one capture's "
            "extracted files take in all, in bytes; past one full body also at most 64 "
            "bytes per byte of TCP payload seen (a decompression bomb), later bodies are "
            "cut and marked Truncated.", positive_integer),
    Setting("action_timeout", "int", "60", "Seconds an ACTION_TYPE_EXECUTE action may run "
            "before it is killed.", positive_integer),
    Setting("trigger_pause", "bool", "1", "Hold a trigger's program (ptrace) until its "
            "capture runs, so its first packets are captured.", zero_or_one),
    Setting("trigger_stop_grace_ms", "int", "750", "Milliseconds a trigger's capture goes on "
            "after its program exits (the last FIN/ACKs).", non_negative_integer),
    Setting("trigger_pause_max_ms", "int", "3000", "Longest a trigger's program is held while "
            "its capture starts, in milliseconds (at least 50).", positive_integer),
    Setting("trigger_poll_ms", "int", "500", "Process poll period where there is no proc "
            "connector, in milliseconds (at least 50).", positive_integer),
    Setting("disk_reserve_bytes", "int", str(1 << 20), "Bytes kept free in the data "
            "directory (file .space-reserve) and given back when the disk fills, so a capture "
            "stopped by \"disk full\" can still record why; 0 = none.", non_negative_integer),
    Setting("max_request_bytes", "int", str(16 << 20), "Largest /ajax body that is not an "
            "upload (JSON or form), in bytes (at least 65536).", positive_integer),
    Setting("max_unauthenticated_bytes", "int", "65536", "Largest body read before the caller "
            "is known (login required, no token in the X-AppPacCap-Token header or the "
            "apppaccap_token cookie), in bytes (at least 4096).", positive_integer),
    # Caps, so that requests cannot exhaust the host (each refused start answers BUSY and
    # names the setting): a live capture holds a 32 MiB kernel ring per adapter, a search
    # a CPU, a command a worker queue slot.
    Setting("max_active_captures", "int", "16", "Live captures at once (trigger captures "
            "included); one more start answers BUSY.", positive_integer),
    Setting("max_active_searches", "int", "4", "Searches queued or running at once; one more "
            "answers BUSY.", positive_integer),
    Setting("max_queued_commands", "int", "64", "Commands (ingest, export, action runs) "
            "queued or running at once; one more answers BUSY.", positive_integer),
    # Connections (web/server): each is a thread, and connecting needs no login. One
    # account (root excepted; callers the kernel cannot name share one quota) holds at most
    # max_connections_per_caller at once.
    Setting("max_connections_per_caller", "int", "64", "Connections one local account (or all "
            "callers from other hosts together) may hold open at once; root is never refused.",
            positive_integer),
    # /ws (web/stream.py): each socket is a long-lived thread besides its connection
    Setting("max_streams_per_caller", "int", "4", "WebSocket streams (/ws) one local account "
            "(or all callers from other hosts together) may hold open at once; root is never "
            "refused.", positive_integer),
    Setting("metrics_enabled", "bool", "1", "Serve Prometheus metrics at GET /metrics (same "
            "callers as /ajax); 0 answers 404.", zero_or_one),
    Setting("request_idle_seconds", "int", "30", "A connection that sends nothing for this "
            "many seconds is closed.", positive_integer),
    Setting("attribution_backend", "str", "auto", "Who names each packet's process and "
            "thread: ebpf (the kernel, at send and receive time), socket-table (sock_diag and "
            "/proc after the packet) or auto (eBPF when it loads, else the socket table). "
            "Read when the first capture starts (docs/ATTRIBUTION.md).", attribution_choice),
    Setting("attribution_hold_ms", "int", "50", "Milliseconds a capture holds a new flow's "
            "packets while its owner is being resolved, so a late answer still labels them "
            "(docs/INTERNALS.md, Attribution).", non_negative_integer),
    Setting("usage_enabled", "bool", "1", "Usage accounting: count bytes per program and "
            "remote endpoint on every up adapter (no packets stored; usage_* actions); "
            "takes effect within a second.", zero_or_one),
    Setting("usage_minute_days", "int", "7", "Days usage accounting keeps per-minute rows; "
            "older ones are rolled up to one row per hour.", positive_integer),
    Setting("usage_retention_days", "int", "90", "Days usage accounting keeps its rows at "
            "all.", positive_integer),
    # The fleet (docs/FLEET.md): this sensor ships connections, usage minutes and alert
    # events to ClickHouse from its database readers, never from the capture path.
    Setting("fleet_url", "str", "", "ClickHouse to ship this sensor's connections, usage "
            "minutes and alert events to, e.g. clickhouse://127.0.0.1:9000/apppaccap (native "
            "protocol); empty = no fleet.", clickhouse_url_or_empty),
    Setting("fleet_host", "str", "", "This sensor's name in the fleet; empty = the host "
            "name.", plain_name_or_empty),
    Setting("fleet_cluster", "str", "", "The ClickHouse cluster (remote_servers) the fleet's "
            "*_all Distributed tables span; empty = one server, no Distributed tables.",
            plain_name_or_empty),
    Setting("fleet_spool_bytes", "int", str(256 << 20), "Bytes of batches kept on disk while "
            "ClickHouse is unreachable; beyond it the oldest are dropped and counted.",
            positive_integer),
    Setting("fleet_sensors", "str", "", "Where fleet_fetch_packets asks each sensor for "
            "packets: NAME=http://HOST:PORT items (NAME its fleet_host), comma-separated.",
            sensor_list),
    Setting("fleet_sensor_credentials", "str", "", "USER:PASSWORD sent (HTTP Basic) to the "
            "sensors of fleet_sensors, and to no other address; empty = none (sensors that "
            "need no login from this server).", user_password_or_empty),
    Setting("fleet_ttl_days", "int", "30", "Days of fleet rows ClickHouse keeps (older day "
            "partitions are dropped by the sensors).", positive_integer),
)
SETTINGS = {s.name: s for s in TABLE}
DEFAULTS = {s.name: s.default for s in TABLE}

# Serve-time configuration, not settings: what the root service may read and write for its
# callers is decided by whoever starts it (apppaccap serve --export-root/--ingest-root), never
# through the API (settings_set refuses these names).
SERVE_ONLY = {"export_roots": "--export-root DIR", "ingest_roots": "--ingest-root DIR",
              "local_group": "--local-group NAME"}

_TRUE, _FALSE = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


def check(key: str, value: str, config=None) -> None:
    """ValueError (with why) when setting `key` does not take `value`; LookupError when it
    names something that is not there (a theme). Names not in the table take any text."""
    setting = SETTINGS.get(key)
    if setting is not None:
        setting.check(value, config)


class _Known:
    """Values read from one catalog, shared by every Settings on it."""

    def __init__(self):
        self.values: dict[str, str | None] = {}


# Every request read two or three settings (body and connection limits), each a catalog
# query: a tenth of a request's time under load (benchmarks/api_load.py). Values are kept
# per catalog until a write through Settings (set, clear) replaces them.
_KNOWN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_KNOWN_LOCK = threading.Lock()


def _known(catalog) -> _Known:
    with _KNOWN_LOCK:
        known = _KNOWN.get(catalog)
        if known is None:
            known = _KNOWN[catalog] = _Known()
        return known


class Settings:
    """Reads hit the catalog once (then its kept value); writes go through its writer
    thread and forget what was kept."""

    def __init__(self, catalog):
        self.catalog = catalog

    def get(self, key: str) -> str | None:
        values = _known(self.catalog).values  # a write replaces it: a read that raced
        try:                                  # the write keeps its value in the old one
            value = values[key]
        except KeyError:
            value = values[key] = setting_rows.get(self.catalog, key)
        return DEFAULTS.get(key) if value is None else value

    def get_int(self, key: str) -> int:
        """An integer setting; its default when the stored text is not a number."""
        default = int(DEFAULTS[key])
        try:
            return int(self.get(key) or default)
        except ValueError:
            return default

    def get_bool(self, key: str) -> bool:
        """A 0/1 setting (older versions stored on/off and true/false too); its default when
        the stored text is none of these."""
        value = (self.get(key) or "").strip().lower()
        if value in _TRUE or value in _FALSE:
            return value in _TRUE
        return DEFAULTS[key] == "1"

    def all(self) -> dict:
        values = dict(DEFAULTS)
        values.update(setting_rows.all_values(self.catalog))
        return values

    def set(self, key: str, value: str) -> None:
        try:
            setting_rows.put(self.catalog, key, value)
        finally:
            _known(self.catalog).values = {}

    def clear(self) -> None:
        try:
            setting_rows.clear(self.catalog)
        finally:
            _known(self.catalog).values = {}
