"""User settings: string key → string value in catalog.db, with documented defaults."""

from __future__ import annotations

DEFAULTS = {
    "theme": "default",
    "token_timeout": "1800",          # seconds of idle time before a token expires
    "upload_max_bytes": str(2 << 30),  # pcap_ingest_post size limit
    "geoip_db": "",                    # path of a GeoLite2-City.mmdb; empty = no geolocation
    # exports are 0600; "1" = 0640 with the group of the export root they are written
    # below (chgrp that directory to the group that may read them)
    "export_group_read": "0",
    "extract_enabled": "0",
    "extract_max_file_bytes": str(64 << 20),
    "action_timeout": "60",           # seconds an EXECUTE action may run before it is killed
    "trigger_pause": "1",             # hold a trigger's program (ptrace) until its capture runs
    "trigger_stop_grace_ms": "750",   # capture kept after the program exits (last FIN/ACKs)
    "trigger_pause_max_ms": "3000",   # longest a program is held while its capture starts
    "trigger_poll_ms": "500",         # process poll period where there is no proc connector
    # bytes kept free in the data directory (file .space-reserve) and given back when the
    # disk fills, so a capture stopped by "disk full" can still record why; 0 = none
    "disk_reserve_bytes": str(1 << 20),
    # The door (web/app.py, web/callers.py): local accounts in this group (and root) need no token
    # when authentication is off; every other local account logs in.
    "local_group": "apppaccap",
    "max_request_bytes": str(16 << 20),   # largest non-upload /ajax body (JSON or form)
    # largest body read before the caller is known (login required, no token in the
    # X-AppPacCap-Token header or the apppaccap_token cookie); logins are far smaller
    "max_unauthenticated_bytes": "65536",
    # Caps, so that requests cannot exhaust the host (each refused start answers BUSY and
    # names the setting): a live capture holds a 32 MiB kernel ring per adapter, a search
    # a CPU, a command a worker queue slot.
    "max_active_captures": "16",      # live captures at once (trigger captures included)
    "max_active_searches": "4",       # searches queued or running at once
    "max_queued_commands": "64",      # commands (ingest, export, action runs) queued or running
}

# Settings that must be positive integers (settings_set refuses anything else).
POSITIVE_INTEGERS = ("token_timeout", "upload_max_bytes", "extract_max_file_bytes",
                     "max_request_bytes", "max_unauthenticated_bytes",
                     "max_active_captures", "max_active_searches", "max_queued_commands")


# Serve-time configuration, not settings: what the root service may read and write for its
# callers is decided by whoever starts it (apppaccap serve --export-root/--ingest-root), never
# through the API (settings_set refuses these names).
SERVE_ONLY = {"export_roots": "--export-root", "ingest_roots": "--ingest-root"}


class Settings:
    """Reads hit the catalog (cheap); writes go through its writer thread."""

    def __init__(self, catalog):
        self.catalog = catalog

    def get(self, key: str) -> str | None:
        row = self.catalog.one("SELECT value FROM settings WHERE key = ?", (key,))
        if row is not None:
            return row[0]
        return DEFAULTS.get(key)

    def get_int(self, key: str, fallback: int) -> int:
        try:
            return int(self.get(key) or fallback)
        except ValueError:
            return fallback

    def all(self) -> dict:
        values = dict(DEFAULTS)
        values.update({r[0]: r[1] for r in self.catalog.read("SELECT key, value FROM settings")})
        return values

    def set(self, key: str, value: str) -> None:
        self.catalog.execute(
            "INSERT INTO settings(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def clear(self) -> None:
        self.catalog.execute("DELETE FROM settings")
