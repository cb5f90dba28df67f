"""trigger_* and action_*: programs captured from their start, actions run when they end.

A TRIGGER_TYPE_ON_START trigger watches an executable (exact match on the process's
executable, symlinks resolved) or a directory (any executable below it). Each start of a
matching program gets a process capture with the trigger's filter and flags; when the
program exits the capture completes and the trigger's actions plus every system-wide
action (one with no TriggerIds) run as COMMANDs.
"""

from __future__ import annotations

from apppaccap.api.registry import endpoint
from apppaccap.ingest import export
from apppaccap.store import triggers as trigger_table
from apppaccap.triggers import store
from apppaccap.wire import ActionType
from apppaccap.wire import DataType


def _changed(ctx) -> None:
    """Tell a running watcher to re-read the triggers."""
    if ctx.triggers is not None:
        ctx.triggers.reload()


# -- triggers -----------------------------------------------------------------------------

@endpoint(DataType.JSON)
def trigger_add(ctx, *, name: str, trigger_type: int, path: str, filter: str = "",
                flags: int = 0) -> dict:
    """Add a trigger: capture every start of a program (or of any program below a directory).

    Returns the new TRIGGER (the reference returns ERROR_SUCCESS; the object tells the
    client its TriggerId, and clients that ignore it lose nothing). Every value is checked
    before anything is stored. Actions linked to the trigger and all system-wide actions
    run when a captured program exits (its capture completes trigger_stop_grace_ms later,
    default 750, so the last FIN/ACKs are in). While one firing's actions are queued or
    running, a later firing of the same trigger keeps its capture but skips its actions
    (LastError says so), and all triggers' firings together have at most a quarter of
    max_queued_commands: a program started in a loop never fills the command queue.
    On Linux each matching program is held in a ptrace stop, invisible to its parent,
    from its exec (stopped well under 1 ms after it) until its capture runs (typically
    50-300 ms; at most trigger_pause_max_ms), so its first packet is captured; setting
    trigger_pause=0 turns holding off. Each process fires once (FireCount, LastFired,
    LastCaptureId; LastError when a capture failed).
    - name: the trigger's name (1-256 printable characters)
    - trigger_type: TRIGGER_TYPE_ON_START (1)
    - path: absolute path of an executable (exact match) or a directory (any program below)
    - filter: BPF filter (tcpdump syntax) of its captures, checked now; empty = everything
    - flags: CAPTURE_FLAG_RESOLVE_IPS | CAPTURE_FLAG_CHILD_PROCESSES (children follow)
    """
    name = store.check_name(name)
    store.check_trigger_type(trigger_type)
    path = store.check_trigger_path(path)
    bpf = store.check_filter(filter)
    store.check_flags(flags)
    trigger_id = trigger_table.add_trigger(ctx.catalog, name, trigger_type, path, bpf, flags)
    _changed(ctx)
    return store.trigger_object(ctx.catalog, store.trigger_row(ctx.catalog, trigger_id))


@endpoint(DataType.INT)
def trigger_mod(ctx, *, trigger_id: int, filter: str | None = None, flags: int | None = None,
                name: str | None = None, path: str | None = None) -> int:
    """Change a trigger; parameters left out keep their value.

    Captures already started keep the settings they started with.
    - trigger_id: the trigger
    - filter: new BPF capture filter; blank or empty clears it (left out: unchanged)
    - flags: new flags, CAPTURE_FLAG_RESOLVE_IPS | CAPTURE_FLAG_CHILD_PROCESSES
    - name: new name
    - path: new executable or directory (absolute)
    """
    store.trigger_row(ctx.catalog, trigger_id)
    fields = {}
    if name is not None:
        fields["name"] = store.check_name(name)
    if path is not None:
        fields["path"] = store.check_trigger_path(path)
    if filter is not None:
        fields["filter"] = store.check_filter(filter)
    if flags is not None:
        fields["flags"] = store.check_flags(flags)
    trigger_table.update_trigger(ctx.catalog, trigger_id, fields)
    _changed(ctx)
    return 0


@endpoint(DataType.INT)
def trigger_remove(ctx, *, trigger_id: int) -> int:
    """Delete a trigger: it fires no more (a capture it already started still completes).

    Actions that belonged to this trigger alone are deleted with it - left without any
    trigger they would otherwise turn system-wide and run for every other trigger.
    Actions also linked to other triggers only lose this link.
    - trigger_id: the trigger
    """
    store.trigger_row(ctx.catalog, trigger_id)
    trigger_table.remove_trigger(ctx.catalog, trigger_id)
    _changed(ctx)
    return 0


@endpoint(DataType.JSON, paged=("TriggerId", "Triggers"))
def trigger_list(ctx) -> list:
    """Every trigger (TRIGGER list), with FireCount, LastFired, LastCaptureId and LastError."""
    return store.list_triggers(ctx.catalog)


@endpoint(DataType.JSON, paged=("ActionId", "Actions"))
def trigger_get_actions(ctx, *, trigger_id: int) -> list:
    """The actions linked to a trigger (ACTION list); system-wide actions run too but are
    not listed here (action_list shows them with empty TriggerIds).

    - trigger_id: the trigger
    """
    store.trigger_row(ctx.catalog, trigger_id)
    return store.list_actions(ctx.catalog, trigger_id)


@endpoint(DataType.INT)
def trigger_set_action(ctx, *, trigger_id: int, action_id: int) -> int:
    """Link an action to a trigger (a system-wide action becomes this trigger's).

    - trigger_id: the trigger
    - action_id: the action to run when the trigger's capture completes
    """
    store.trigger_row(ctx.catalog, trigger_id)
    store.action_row(ctx.catalog, action_id)
    trigger_table.link(ctx.catalog, trigger_id, action_id)
    return 0


@endpoint(DataType.INT)
def trigger_clear_actions(ctx, *, trigger_id: int) -> int:
    """Unlink every action from a trigger; the actions themselves stay (action_remove
    deletes one).

    As in the reference, an action left with no trigger is system wide: it runs for
    every trigger. Remove the actions first if that is not what you want (trigger_remove
    does: it deletes the actions that belonged to that trigger alone).
    - trigger_id: the trigger
    """
    store.trigger_row(ctx.catalog, trigger_id)
    trigger_table.clear_trigger_actions(ctx.catalog, trigger_id)
    return 0


# -- actions ------------------------------------------------------------------------------

@endpoint(DataType.JSON)
def action_add(ctx, *, name: str, action_type: int, path: str, params: str = "",
               trigger_id: int = 0) -> dict:
    """Add an action, run when a trigger's capture completes.

    Returns the new ACTION (as the reference does). ACTION_TYPE_EXPORT writes the capture
    as pcapng into the directory `path`; its COMMAND's Result is the file. ACTION_TYPE_EXECUTE
    runs the program `path` with `params` split like a shell would (no shell involved),
    after the firing's exports; `{capture_id}`, `{pid}`, `{process_name}` and
    `{export_file}` (the file an EXPORT action of the same firing wrote, else empty) are
    substituted in each argument (they are also in its environment as APPPACCAP_CAPTURE_ID,
    APPPACCAP_PID, APPPACCAP_PROCESS_NAME, APPPACCAP_EXPORT_FILE). A value that would begin
    an argument with "-" (any account may name its process so) is not run as an option: the
    run fails, unless the placeholder comes after a "--" argument. The program, and every
    directory to it, must be owned by root and writable by no other account (else
    INVALID_PERMISSIONS, and a run fails): another account could replace it. It runs in its own
    directory with the service's privileges and is killed, with its process group, after
    the setting action_timeout (seconds, default 60); its COMMAND's Result is
    `{"ExitCode": n, "Output": "first 4 KB of stdout+stderr"}`. Programs started by
    actions never set off triggers themselves.
    - name: the action's name (1-256 printable characters)
    - action_type: ACTION_TYPE_EXECUTE (1) or ACTION_TYPE_EXPORT (2)
    - path: EXECUTE: an executable only root can change; EXPORT: an existing writable directory
    - params: EXECUTE only: the program's arguments, shell-quoted, with placeholders
    - trigger_id: run only for this trigger; 0 or left out = system wide (every trigger)
    """
    name = store.check_name(name)
    if action_type == ActionType.EXPORT:
        export.check_export_dir(ctx, path)  # the export roots first: no oracle outside them
    action_type, path, params = store.check_action(action_type, path, params)
    if trigger_id:
        store.trigger_row(ctx.catalog, trigger_id)  # negative ids: MALFORMED there
    action_id = trigger_table.add_action(ctx.catalog, name, action_type, path, params, trigger_id)
    return store.action_object(ctx.catalog, store.action_row(ctx.catalog, action_id))


@endpoint(DataType.INT)
def action_mod(ctx, *, action_id: int, name: str | None = None,
               action_type: int | None = None, path: str | None = None,
               params: str | None = None) -> int:
    """Change an action; parameters left out keep their value (the result is checked as a whole).

    - action_id: the action
    - name: new name
    - action_type: new type, ACTION_TYPE_EXECUTE (1) or ACTION_TYPE_EXPORT (2)
    - path: new program (EXECUTE) or directory (EXPORT), absolute
    - params: new arguments (EXECUTE); blank clears them
    """
    row = store.action_row(ctx.catalog, action_id)
    fields = {}
    if name is not None:
        fields["name"] = store.check_name(name)
    new_type = row["type"] if action_type is None else action_type
    new_path = row["path"] if path is None else path
    new_params = row["params"] if params is None else params
    if action_type is not None and action_type != row["type"] and params is None:
        new_params = ""  # an EXECUTE's arguments mean nothing to an EXPORT (and back)
    if new_type == ActionType.EXPORT:
        export.check_export_dir(ctx, new_path)  # the export roots first: no oracle outside
    new_type, new_path, new_params = store.check_action(new_type, new_path, new_params)
    fields.update(type=new_type, path=new_path, params=new_params)
    trigger_table.update_action(ctx.catalog, action_id, fields)
    return 0


@endpoint(DataType.INT)
def action_remove(ctx, *, action_id: int) -> int:
    """Delete an action and its links to triggers.

    - action_id: the action
    """
    store.action_row(ctx.catalog, action_id)
    trigger_table.remove_action(ctx.catalog, action_id)
    return 0


@endpoint(DataType.JSON, paged=("ActionId", "Actions"))
def action_list(ctx) -> list:
    """Every action (ACTION list); empty TriggerIds = system wide."""
    return store.list_actions(ctx.catalog)


@endpoint(DataType.INT)
def action_set_trigger(ctx, *, action_id: int, trigger_id: int = 0) -> int:
    """Add a trigger to an action's triggers, or make the action system-wide again.

    - action_id: the action
    - trigger_id: the trigger to add; 0 or left out clears its triggers (system wide again)
    """
    store.action_row(ctx.catalog, action_id)
    if trigger_id == 0:
        trigger_table.clear_action_triggers(ctx.catalog, action_id)
        return 0
    store.trigger_row(ctx.catalog, trigger_id)
    trigger_table.link(ctx.catalog, trigger_id, action_id)
    return 0


@endpoint(DataType.INT)
def action_clear_triggers(ctx, *, action_id: int) -> int:
    """Clear an action's triggers: it becomes system wide (runs for every trigger).

    - action_id: the action
    """
    store.action_row(ctx.catalog, action_id)
    trigger_table.clear_action_triggers(ctx.catalog, action_id)
    return 0
