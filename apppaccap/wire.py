"""Every numeric constant of the wire protocol, once.

The API's objects and parameters carry these numbers (docs/API.md); `CONSTANTS` - what the
`apppaccap` action serves under `Constants` and what /constants.js declares - is derived
from the enums below, so a value exists in one place only.

Flags are IntEnums too, not IntFlags: `~` of an IntFlag inverts only the named bits
(`~CaptureFlag.ALL` would be 0), while the checks here need plain integer arithmetic
(`flags & ~allowed` must keep every unknown bit). `A | B` of two members is a plain int.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """The envelope's ErrorCode (ERROR_SERVE_*)."""

    SUCCESS = 0
    GENERIC_ERROR = 1
    NO_TOKEN = 2
    NO_PAGE = 3
    MALFORMED_REQUEST = 4
    SESSION_TIMEOUT = 5
    NOT_FOUND = 6
    BUSY = 7
    INVALID_PERMISSIONS = 8
    INVALID_CREDENTIALS = 9
    UNSUPPORTED = 10
    IO_ERROR = 11
    INVALID_LICENSE = 12


ERROR_SUCCESS = 0  # what an INT ReturnValue says when all went well


class DataType(IntEnum):
    """The envelope's DataType: how to read ReturnValue."""

    STRING = 1
    INT = 2
    INTEGER = 2  # the reference's other spelling of INT
    JSON = 3
    HEX = 4


class CaptureFlag(IntEnum):
    """Bits of a capture's (and a trigger's) Flags."""

    RESOLVE_IPS = 0x1
    THREAD_CAPTURE = 0x2
    CHILD_PROCESSES = 0x4


class CaptureType(IntEnum):
    SYSTEM = 1
    PROCESS = 2
    THREAD = 3
    FILE = 4


class CaptureState(IntEnum):
    ACTIVE = 1
    COMPLETED = 2
    FAILED = 3
    INTERRUPTED = 4


class TriggerType(IntEnum):
    ON_START = 1


class ActionType(IntEnum):
    """A trigger's action: what runs when its capture has completed."""

    EXECUTE = 1
    EXPORT = 2


class AlertType(IntEnum):
    """What an alert watches (api/alerts.py)."""

    THRESHOLD = 1        # a group-by row's metric over a window above a value
    NEW_PROGRAM = 2      # a program uses the network for the first time
    NEW_DESTINATION = 3  # a program reaches a remote address/port it never used before
    LABEL = 4            # a live capture's connection with a given application label


class CommandState(IntEnum):
    """A COMMAND's State; searches (SEARCHMETA) use the same states."""

    QUEUED = 1
    RUNNING = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5


DONE_STATES = (CommandState.COMPLETED, CommandState.FAILED, CommandState.CANCELLED)


class ApcFlush(IntEnum):
    """apc_flush's `flags` bits."""

    CAPTURES = 0x1
    IPS = 0x2
    STATS = 0x4
    SEARCHES = 0x8
    EXPORTS = 0x10
    EXTRACTED = 0x20
    PROCESSES = 0x40
    ALL = 0xFFFF


class Direction(IntEnum):
    """A PACKET's Direction. Not in CONSTANTS: the reference names no constants for it."""

    IN = 0
    OUT = 1
    UNKNOWN = 2


# (wire prefix, enum) in the order CONSTANTS lists them
_PREFIXED = (("ERROR_SERVE_", ErrorCode), ("DATA_TYPE_", DataType),
             ("CAPTURE_FLAG_", CaptureFlag), ("CAPTURE_TYPE_", CaptureType),
             ("CAPTURE_STATE_", CaptureState), ("TRIGGER_TYPE_", TriggerType),
             ("ACTION_TYPE_", ActionType), ("ALERT_TYPE_", AlertType),
             ("COMMAND_STATE_", CommandState),
             ("APC_FLUSH_", ApcFlush))


def _constants() -> dict[str, int]:
    out: dict[str, int] = {}
    for prefix, enum in _PREFIXED:
        # __members__ keeps aliases (DATA_TYPE_INTEGER) in declaration order
        out.update({prefix + name: int(member) for name, member in enum.__members__.items()})
        if enum is ErrorCode:
            out["ERROR_SUCCESS"] = ERROR_SUCCESS
    return out


CONSTANTS: dict[str, int] = _constants()
