"""Triggers, actions and their links in the catalog: validation, rows and API objects.

Everything here works on the catalog alone, so the trigger_* / action_* actions answer
even when the watcher is not running; the watcher re-reads the tables on `reload()`.

An action with no links is system-wide (it runs for every trigger). Removing a trigger,
or clearing its actions, therefore also removes the actions that belonged to that
trigger alone: left behind without links they would silently turn system-wide and start
running (programs!) for every other trigger.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shlex
import threading
import weakref

from apppaccap.api.envelope import Malformed
from apppaccap.api.envelope import NotFound
from apppaccap.capture.bpf import filter_bytes
from apppaccap.capture.bpf import filter_text
from apppaccap.capture.manager import FLAG_CHILDREN
from apppaccap.capture.manager import FLAG_RESOLVE_IPS
from apppaccap.capture.manager import FLAG_THREAD
from apppaccap.filetime import from_ns
from apppaccap.filetime import now_ns
from apppaccap.store.catalog import MIGRATIONS

ON_START = 1
EXECUTE, EXPORT = 1, 2
TRIGGER_TYPES = {ON_START: "TRIGGER_TYPE_ON_START"}
ACTION_TYPES = {EXECUTE: "ACTION_TYPE_EXECUTE", EXPORT: "ACTION_TYPE_EXPORT"}
# A trigger knows no thread id, so CAPTURE_FLAG_THREAD_CAPTURE cannot apply.
TRIGGER_FLAGS = FLAG_RESOLVE_IPS | FLAG_CHILDREN
MAX_NAME = 256
MAX_PARAMS = 8192

_SCHEMA = MIGRATIONS[4]
_ready: weakref.WeakSet = weakref.WeakSet()
_ready_lock = threading.Lock()


def ensure_schema(catalog) -> None:
    """Create the tables when a data directory predates them (its migration step 5 was
    the placeholder); idempotent and cheap after the first call per catalog."""
    with _ready_lock:
        if catalog in _ready:
            return

        def create(conn):
            for stmt in _SCHEMA.split(";\n"):
                if stmt.strip():
                    conn.execute(stmt)
        catalog.write(create)
        _ready.add(catalog)


# -- validation -------------------------------------------------------------------------

def check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise Malformed("name: required")
    if len(name) > MAX_NAME or not name.isprintable():
        raise Malformed(f"name: must be 1-{MAX_NAME} printable characters")
    return name


def _absolute(path: str) -> str:
    if not path.strip():
        raise Malformed("path: required")
    if "\x00" in path or not os.path.isabs(path):
        raise Malformed(f"path: must be an absolute path, got {path[:200]!r}")
    return os.path.normpath(path)


# Directories of programs for everyone. A trigger on one of them, or on a directory that
# holds one (/usr, /), would stop every program the host starts in ptrace until a capture
# of it runs, and capture each: the host slows to a crawl and fills the disk.
SHARED_PROGRAM_DIRS = (
    "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
    "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32",
    "/usr/libexec", "/usr/games", "/usr/local/bin", "/usr/local/sbin", "/usr/local/lib",
    "/usr/local/libexec", "/usr/local/games", "/snap/bin", "/var/lib/snapd/snap/bin",
    "/var/lib/flatpak/exports/bin", "/nix/store", "/run/current-system/sw/bin",
)
MIN_DIR_DEPTH = 2  # /opt/app, /home/alice: a top-level directory (/, /home, /opt) is refused


def shared_program_dirs() -> set[str]:
    """The directories above as they resolve here, plus every directory on this service's
    PATH (programs the host runs by name live there)."""
    dirs = set(SHARED_PROGRAM_DIRS)
    dirs.update(d for d in os.environ.get("PATH", "").split(os.pathsep) if os.path.isabs(d))
    return {os.path.normpath(d) for d in dirs} | {os.path.realpath(d) for d in dirs}


def over_broad(directory: str) -> str | None:
    """Why a directory trigger would watch too much (None when it is fine).

    Both the path as given and its real path are judged: the watcher compares real paths,
    so a symlink to / is /.
    """
    for path in dict.fromkeys((os.path.normpath(directory), os.path.realpath(directory))):
        parts = [p for p in path.split(os.sep) if p]
        if len(parts) < MIN_DIR_DEPTH:
            return (f"{path!r} is a top-level directory: a trigger directory needs at least "
                    f"{MIN_DIR_DEPTH} levels (such as /opt/app)")
        for shared in sorted(shared_program_dirs()):
            if shared == path or shared.startswith(path.rstrip(os.sep) + os.sep):
                what = "is" if shared == path else f"contains {shared!r},"
                return (f"{path!r} {what} a shared program directory (a system directory or "
                        "one on the service's PATH): the trigger would hold every program "
                        "started there; name the program, or a directory of its own")
    return None


def check_trigger_path(path: str) -> str:
    """An executable file (exact match) or a directory (any executable below it) that is
    not an over-broad root (see over_broad)."""
    path = _absolute(path)
    if os.path.isdir(path):
        why = over_broad(path)
        if why:
            raise Malformed(f"path: {why}")
        return path
    if not os.path.exists(path):
        raise Malformed(f"path: {path[:200]!r} does not exist")
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise Malformed(f"path: {path[:200]!r} is neither an executable file nor a directory")
    return path


def check_trigger_type(trigger_type: int) -> int:
    if trigger_type not in TRIGGER_TYPES:
        raise Malformed(f"trigger_type: unknown trigger type {trigger_type} "
                        f"(TRIGGER_TYPE_ON_START = {ON_START})")
    return trigger_type


def check_flags(flags: int) -> int:
    if flags < 0 or flags & ~TRIGGER_FLAGS:
        extra = flags & ~TRIGGER_FLAGS if flags >= 0 else flags
        why = " (CAPTURE_FLAG_THREAD_CAPTURE needs a thread id; a trigger has none)" \
            if flags > 0 and flags & FLAG_THREAD else ""
        raise Malformed(f"flags: unsupported bits 0x{extra:x}{why}; allowed "
                        f"CAPTURE_FLAG_RESOLVE_IPS | CAPTURE_FLAG_CHILD_PROCESSES "
                        f"(0x{TRIGGER_FLAGS:x})")
    return flags


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


_libpcap = None


def _pcap_lib():
    global _libpcap
    if _libpcap is None:
        name = ctypes.util.find_library("pcap") or ctypes.util.find_library("wpcap")
        if not name:
            _libpcap = False
            return False
        lib = ctypes.CDLL(name)
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram),
                                     ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32]
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        _libpcap = lib
    return _libpcap


def check_filter(bpf: str) -> str:
    """Compile the BPF filter now (Ethernet link type) so a typo is reported at
    trigger_add with libpcap's own message instead of at the first firing."""
    bpf = filter_text(bpf)  # valid Unicode, no NUL, bounded: what C receives whole
    if not bpf:
        return ""
    lib = _pcap_lib()
    if not lib:
        return bpf  # no libpcap to ask: the capture start reports it
    handle = lib.pcap_open_dead(1, 262144)  # DLT_EN10MB
    if not handle:
        return bpf
    try:
        prog = _BpfProgram()
        if lib.pcap_compile(handle, ctypes.byref(prog), filter_bytes(bpf), 1, 0xFFFFFFFF) != 0:
            msg = (lib.pcap_geterr(handle) or b"bad filter").decode("utf-8", "replace")
            raise Malformed(f"filter: {msg}")
        lib.pcap_freecode(ctypes.byref(prog))
    finally:
        lib.pcap_close(handle)
    return bpf


def check_action(action_type: int, path: str, params: str) -> tuple[int, str, str]:
    """Validate an action's type, path and params together; returns them normalised."""
    if action_type not in ACTION_TYPES:
        raise Malformed(f"action_type: unknown action type {action_type} "
                        f"(ACTION_TYPE_EXECUTE = {EXECUTE}, ACTION_TYPE_EXPORT = {EXPORT})")
    path = _absolute(path)
    if len(params) > MAX_PARAMS or "\x00" in params:
        raise Malformed(f"params: at most {MAX_PARAMS} characters, no NUL")
    if action_type == EXECUTE:
        if not os.path.exists(path):
            raise Malformed(f"path: program {path[:200]!r} does not exist")
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            raise Malformed(f"path: {path[:200]!r} is not an executable file")
        try:
            shlex.split(params)
        except ValueError as exc:
            raise Malformed(f"params: cannot split like a shell would: {exc}") from None
    else:
        if not os.path.isdir(path):
            raise Malformed(f"path: {path[:200]!r} is not an existing directory "
                            "(ACTION_TYPE_EXPORT writes its file into this directory)")
        if not os.access(path, os.W_OK):
            raise Malformed(f"path: directory {path[:200]!r} is not writable")
        if params.strip():
            raise Malformed("params: ACTION_TYPE_EXPORT takes no params")
        params = ""
    return action_type, path, params


def positive_id(name: str, value: int) -> int:
    if value <= 0:
        raise Malformed(f"{name}: must be a positive id, got {value}")
    return value


# -- rows -------------------------------------------------------------------------------

def trigger_row(catalog, trigger_id: int):
    positive_id("trigger_id", trigger_id)
    ensure_schema(catalog)
    row = catalog.one("SELECT * FROM triggers WHERE id = ?", (trigger_id,))
    if row is None:
        raise NotFound(f"trigger_id: no trigger {trigger_id}")
    return row


def action_row(catalog, action_id: int):
    positive_id("action_id", action_id)
    ensure_schema(catalog)
    row = catalog.one("SELECT * FROM actions WHERE id = ?", (action_id,))
    if row is None:
        raise NotFound(f"action_id: no action {action_id}")
    return row


def trigger_object(catalog, row) -> dict:
    ids = [r[0] for r in catalog.read(
        "SELECT action_id FROM trigger_actions WHERE trigger_id = ? ORDER BY action_id",
        (row["id"],))]
    return {"Version": 1, "TriggerId": row["id"], "Name": row["name"],
            "TriggerType": row["type"], "Path": row["path"], "Filter": row["filter"],
            "Flags": row["flags"], "ActionIds": ids, "FireCount": row["fire_count"],
            "LastFired": from_ns(row["last_fired"]),
            "LastCaptureId": row["last_capture_id"] or 0, "LastError": row["last_error"]}


def action_object(catalog, row) -> dict:
    ids = [r[0] for r in catalog.read(
        "SELECT trigger_id FROM trigger_actions WHERE action_id = ? ORDER BY trigger_id",
        (row["id"],))]
    return {"Version": 1, "ActionId": row["id"], "Name": row["name"],
            "ActionType": row["type"], "Path": row["path"], "Params": row["params"],
            "TriggerIds": ids}


def list_triggers(catalog) -> list:
    ensure_schema(catalog)
    return [trigger_object(catalog, r) for r in
            catalog.read("SELECT * FROM triggers ORDER BY id")]


def list_actions(catalog, trigger_id: int | None = None) -> list:
    """Every action, or those linked to one trigger."""
    ensure_schema(catalog)
    if trigger_id is None:
        rows = catalog.read("SELECT * FROM actions ORDER BY id")
    else:
        rows = catalog.read("SELECT a.* FROM actions a JOIN trigger_actions l ON "
                            "l.action_id = a.id WHERE l.trigger_id = ? ORDER BY a.id",
                            (trigger_id,))
    return [action_object(catalog, r) for r in rows]


def actions_to_run(catalog, trigger_id: int) -> list:
    """Rows of the actions a firing of `trigger_id` runs: its own plus the system-wide ones."""
    ensure_schema(catalog)
    return catalog.read(
        "SELECT * FROM actions a WHERE a.id IN (SELECT action_id FROM trigger_actions "
        "WHERE trigger_id = ?) OR NOT EXISTS (SELECT 1 FROM trigger_actions l "
        "WHERE l.action_id = a.id) ORDER BY a.id", (trigger_id,))


def trigger_rows(catalog) -> list:
    ensure_schema(catalog)
    return catalog.read("SELECT * FROM triggers ORDER BY id")


# -- changes (each one transaction) -----------------------------------------------------

def add_trigger(catalog, name, trigger_type, path, bpf, flags) -> int:
    ensure_schema(catalog)
    return catalog.execute(
        "INSERT INTO triggers(name, type, path, filter, flags, created) VALUES (?,?,?,?,?,?)",
        (name, trigger_type, path, bpf, flags, now_ns()))


def update(catalog, table: str, row_id: int, fields: dict) -> None:
    if fields:
        cols = ", ".join(f"{k} = ?" for k in fields)
        catalog.execute(f"UPDATE {table} SET {cols} WHERE id = ?", (*fields.values(), row_id))


def _orphans_removed(conn, trigger_id: int) -> None:
    """Drop the trigger's links, and the actions that had no other trigger (see module doc)."""
    conn.execute(
        "DELETE FROM actions WHERE id IN (SELECT action_id FROM trigger_actions "
        "WHERE trigger_id = ?) AND id NOT IN (SELECT action_id FROM trigger_actions "
        "WHERE trigger_id != ?)", (trigger_id, trigger_id))
    conn.execute("DELETE FROM trigger_actions WHERE trigger_id = ?", (trigger_id,))


def remove_trigger(catalog, trigger_id: int) -> None:
    def run(conn):
        _orphans_removed(conn, trigger_id)
        conn.execute("DELETE FROM triggers WHERE id = ?", (trigger_id,))
    catalog.write(run)


def clear_trigger_actions(catalog, trigger_id: int) -> None:
    catalog.write(lambda conn: _orphans_removed(conn, trigger_id))


def link(catalog, trigger_id: int, action_id: int) -> None:
    catalog.execute("INSERT OR IGNORE INTO trigger_actions VALUES (?, ?)",
                    (trigger_id, action_id))


def clear_action_triggers(catalog, action_id: int) -> None:
    catalog.execute("DELETE FROM trigger_actions WHERE action_id = ?", (action_id,))


def add_action(catalog, name, action_type, path, params, trigger_id: int) -> int:
    ensure_schema(catalog)

    def run(conn):
        action_id = conn.execute(
            "INSERT INTO actions(name, type, path, params, created) VALUES (?,?,?,?,?)",
            (name, action_type, path, params, now_ns())).lastrowid
        if trigger_id:
            conn.execute("INSERT INTO trigger_actions VALUES (?, ?)", (trigger_id, action_id))
        return action_id
    return catalog.write(run)


def remove_action(catalog, action_id: int) -> None:
    def run(conn):
        conn.execute("DELETE FROM trigger_actions WHERE action_id = ?", (action_id,))
        conn.execute("DELETE FROM actions WHERE id = ?", (action_id,))
    catalog.write(run)


def record_firing(catalog, trigger_id: int, capture_id: int | None, error: str = ""):
    """Count a firing (or remember why it failed); asynchronous: called while a program
    is held paused, so it must not wait for the writer."""
    if capture_id:
        sql, args = ("UPDATE triggers SET fire_count = fire_count + 1, last_fired = ?, "
                     "last_capture_id = ?, last_error = '' WHERE id = ?",
                     (now_ns(), capture_id, trigger_id))
    else:
        sql, args = "UPDATE triggers SET last_error = ? WHERE id = ?", (error[:500], trigger_id)
    return catalog.submit(lambda conn: conn.execute(sql, args))
