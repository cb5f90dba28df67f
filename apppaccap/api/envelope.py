"""Constants of the wire protocol, the answer envelope and the error classes.

Every answer is HTTP 200 with {"Version", "ErrorCode", "DataType", "ReturnValue"};
the ErrorCode lives on the exception class so handlers only ever `raise`.
"""

from __future__ import annotations

CONSTANTS = {
    "ERROR_SERVE_SUCCESS": 0,
    "ERROR_SERVE_GENERIC_ERROR": 1,
    "ERROR_SERVE_NO_TOKEN": 2,
    "ERROR_SERVE_NO_PAGE": 3,
    "ERROR_SERVE_MALFORMED_REQUEST": 4,
    "ERROR_SERVE_SESSION_TIMEOUT": 5,
    "ERROR_SERVE_NOT_FOUND": 6,
    "ERROR_SERVE_BUSY": 7,
    "ERROR_SERVE_INVALID_PERMISSIONS": 8,
    "ERROR_SERVE_INVALID_CREDENTIALS": 9,
    "ERROR_SERVE_UNSUPPORTED": 10,
    "ERROR_SERVE_IO_ERROR": 11,
    "ERROR_SERVE_INVALID_LICENSE": 12,
    "ERROR_SUCCESS": 0,
    "DATA_TYPE_STRING": 1,
    "DATA_TYPE_INT": 2,
    "DATA_TYPE_INTEGER": 2,
    "DATA_TYPE_JSON": 3,
    "DATA_TYPE_HEX": 4,
    "CAPTURE_FLAG_RESOLVE_IPS": 0x1,
    "CAPTURE_FLAG_THREAD_CAPTURE": 0x2,
    "CAPTURE_FLAG_CHILD_PROCESSES": 0x4,
    "CAPTURE_TYPE_SYSTEM": 1,
    "CAPTURE_TYPE_PROCESS": 2,
    "CAPTURE_TYPE_THREAD": 3,
    "CAPTURE_TYPE_FILE": 4,
    "CAPTURE_STATE_ACTIVE": 1,
    "CAPTURE_STATE_COMPLETED": 2,
    "CAPTURE_STATE_FAILED": 3,
    "CAPTURE_STATE_INTERRUPTED": 4,
    "TRIGGER_TYPE_ON_START": 1,
    "ACTION_TYPE_EXECUTE": 1,
    "ACTION_TYPE_EXPORT": 2,
    "COMMAND_STATE_QUEUED": 1,
    "COMMAND_STATE_RUNNING": 2,
    "COMMAND_STATE_COMPLETED": 3,
    "COMMAND_STATE_FAILED": 4,
    "COMMAND_STATE_CANCELLED": 5,
    "APC_FLUSH_CAPTURES": 0x1,
    "APC_FLUSH_IPS": 0x2,
    "APC_FLUSH_STATS": 0x4,
    "APC_FLUSH_SEARCHES": 0x8,
    "APC_FLUSH_EXPORTS": 0x10,
    "APC_FLUSH_EXTRACTED": 0x20,
    "APC_FLUSH_PROCESSES": 0x40,
    "APC_FLUSH_ALL": 0xFFFF,
}
globals().update(CONSTANTS)  # module-level names for `from envelope import CAPTURE_TYPE_SYSTEM`


class ApiError(Exception):
    """Base of every error an action may raise; `code` is the wire ErrorCode."""

    code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NoToken(ApiError):
    code = 2


class NoPage(ApiError):
    code = 3


class Malformed(ApiError):
    code = 4


class SessionTimeout(ApiError):
    code = 5


class NotFound(ApiError):
    code = 6


class Busy(ApiError):
    code = 7


class InvalidPermissions(ApiError):
    code = 8


class InvalidCredentials(ApiError):
    code = 9


class Unsupported(ApiError):
    code = 10


class IOFailure(ApiError):
    code = 11


def envelope(error_code: int, data_type: int, value) -> dict:
    """The one answer shape of /ajax."""
    return {"Version": 1, "ErrorCode": error_code, "DataType": data_type, "ReturnValue": value}


def error_envelope(err: ApiError) -> dict:
    return envelope(err.code, 1, err.message)
