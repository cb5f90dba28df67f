"""The answer envelope of /ajax.

Every answer is HTTP 200 with {"Version", "ErrorCode", "DataType", "ReturnValue"}; the
ErrorCode of a failure lives on its error class (apppaccap/errors.py), so handlers only
ever `raise`.
"""

from __future__ import annotations

from apppaccap.errors import AppError
from apppaccap.wire import DataType


def envelope(error_code: int, data_type: int, value, warnings=None) -> dict:
    """The one answer shape of /ajax; `Warnings` (a list of text) only when there are some."""
    out = {"Version": 1, "ErrorCode": int(error_code), "DataType": int(data_type),
           "ReturnValue": value}
    if warnings:
        out["Warnings"] = list(warnings)
    return out


def error_envelope(err: AppError, warnings=None) -> dict:
    return envelope(err.code, DataType.STRING, err.message, warnings)
