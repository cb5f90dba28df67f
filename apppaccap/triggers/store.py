"""Triggers, actions and their links: validation and API objects.

Everything here works on the catalog alone, so the trigger_* / action_* actions answer
even when the watcher is not running; the watcher re-reads the tables on `reload()`.
The rows themselves are store/triggers.py's (why removing a trigger removes its own
actions is said there).
"""

from __future__ import annotations

import os
import shlex

from apppaccap.capture.bpf import compile_check
from apppaccap.errors import InvalidPermissions
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.filetime import from_ns
from apppaccap.safefs.programs import untrusted
from apppaccap.store import triggers as trigger_table
from apppaccap.wire import ActionType
from apppaccap.wire import CaptureFlag
from apppaccap.wire import TriggerType

TRIGGER_TYPES = frozenset(TriggerType)
ACTION_TYPES = frozenset(ActionType)
# A trigger knows no thread id, so CAPTURE_FLAG_THREAD_CAPTURE cannot apply.
TRIGGER_FLAGS = CaptureFlag.RESOLVE_IPS | CaptureFlag.CHILD_PROCESSES
MAX_NAME = 256
MAX_PARAMS = 8192

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
                        f"(TRIGGER_TYPE_ON_START = {TriggerType.ON_START:d})")
    return trigger_type


def check_flags(flags: int) -> int:
    if flags < 0 or flags & ~TRIGGER_FLAGS:
        extra = flags & ~TRIGGER_FLAGS if flags >= 0 else flags
        why = " (CAPTURE_FLAG_THREAD_CAPTURE needs a thread id; a trigger has none)" \
            if flags > 0 and flags & CaptureFlag.THREAD_CAPTURE else ""
        raise Malformed(f"flags: unsupported bits 0x{extra:x}{why}; allowed "
                        f"CAPTURE_FLAG_RESOLVE_IPS | CAPTURE_FLAG_CHILD_PROCESSES "
                        f"(0x{TRIGGER_FLAGS:x})")
    return flags


def check_filter(bpf: str) -> str:
    """Compile the BPF filter now (Ethernet link type) so a typo is reported at
    trigger_add with libpcap's own message instead of at the first firing."""
    return compile_check(bpf)


def check_action(action_type: int, path: str, params: str) -> tuple[int, str, str]:
    """Validate an action's type, path and params together; returns them normalised."""
    if action_type not in ACTION_TYPES:
        raise Malformed(f"action_type: unknown action type {action_type} "
                        f"(ACTION_TYPE_EXECUTE = {ActionType.EXECUTE:d}, "
                        f"ACTION_TYPE_EXPORT = {ActionType.EXPORT:d})")
    path = _absolute(path)
    if len(params) > MAX_PARAMS or "\x00" in params:
        raise Malformed(f"params: at most {MAX_PARAMS} characters, no NUL")
    if action_type == ActionType.EXECUTE:
        if not os.path.exists(path):
            raise Malformed(f"path: program {path[:200]!r} does not exist")
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            raise Malformed(f"path: {path[:200]!r} is not an executable file")
        why = untrusted(path)
        if why is not None:
            raise InvalidPermissions(f"path: not run as root: {why[:300]}")
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


# -- rows as API objects ----------------------------------------------------------------

def trigger_row(catalog, trigger_id: int):
    positive_id("trigger_id", trigger_id)
    row = trigger_table.get_trigger(catalog, trigger_id)
    if row is None:
        raise NotFound(f"trigger_id: no trigger {trigger_id}")
    return row


def action_row(catalog, action_id: int):
    positive_id("action_id", action_id)
    row = trigger_table.get_action(catalog, action_id)
    if row is None:
        raise NotFound(f"action_id: no action {action_id}")
    return row


def trigger_object(catalog, row) -> dict:
    ids = trigger_table.action_ids(catalog, row["id"])
    return {"Version": 1, "TriggerId": row["id"], "Name": row["name"],
            "TriggerType": row["type"], "Path": row["path"], "Filter": row["filter"],
            "Flags": row["flags"], "ActionIds": ids, "FireCount": row["fire_count"],
            "LastFired": from_ns(row["last_fired"]),
            "LastCaptureId": row["last_capture_id"] or 0, "LastError": row["last_error"]}


def action_object(catalog, row) -> dict:
    ids = trigger_table.trigger_ids(catalog, row["id"])
    return {"Version": 1, "ActionId": row["id"], "Name": row["name"],
            "ActionType": row["type"], "Path": row["path"], "Params": row["params"],
            "TriggerIds": ids}


def list_triggers(catalog) -> list:
    return [trigger_object(catalog, r) for r in trigger_table.all_triggers(catalog)]


def list_actions(catalog, trigger_id: int | None = None) -> list:
    """Every action, or those linked to one trigger."""
    return [action_object(catalog, r) for r in trigger_table.all_actions(catalog, trigger_id)]
