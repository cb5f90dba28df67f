"""The error classes: every failure a request can meet, each carrying its ErrorCode.

Code anywhere in the service raises these; the doors turn them into answers (an /ajax
envelope, a CLI message). A class's `code` is the envelope's ErrorCode.
"""

from __future__ import annotations

from apppaccap.wire import ErrorCode


class AppError(Exception):
    """Base of every error a request may meet; `code` is the wire ErrorCode."""

    code = ErrorCode.GENERIC_ERROR

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NoToken(AppError):
    code = ErrorCode.NO_TOKEN


class NoPage(AppError):
    code = ErrorCode.NO_PAGE


class Malformed(AppError):
    code = ErrorCode.MALFORMED_REQUEST


class SessionTimeout(AppError):
    code = ErrorCode.SESSION_TIMEOUT


class NotFound(AppError):
    code = ErrorCode.NOT_FOUND


class Busy(AppError):
    code = ErrorCode.BUSY


class InvalidPermissions(AppError):
    code = ErrorCode.INVALID_PERMISSIONS


class InvalidCredentials(AppError):
    code = ErrorCode.INVALID_CREDENTIALS


class Unsupported(AppError):
    code = ErrorCode.UNSUPPORTED


class IOFailure(AppError):
    code = ErrorCode.IO_ERROR
