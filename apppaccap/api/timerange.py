"""`relative_time`, the one rule every action taking start_dtg/end_dtg accepts: a whole
number and a unit (s, m, h, d or w: "30s", "15m", "24h", "7d"), meaning that long before
now up to now; not combined with start_dtg/end_dtg."""

from __future__ import annotations

import re

from apppaccap.errors import Malformed
from apppaccap.filetime import now_ns
from apppaccap.filetime import to_ns_clamped

SECOND = 1_000_000_000
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"(\d{1,9})\s*([smhdw])", re.I)


def relative_problem(relative_time: str, start_dtg: int = 0, end_dtg: int = 0) -> str | None:
    """What is wrong with a relative_time (a sentence naming the parameter), None if fine."""
    text = relative_time.strip()
    if not text:
        return None
    if _RELATIVE.fullmatch(text) is None:
        shown = text[:40].encode("ascii", "replace").decode()
        return ("relative_time: expected a number and a unit (s, m, h, d or w) such "
                f'as 30s, 15m, 24h or 7d, got "{shown}"')
    if start_dtg or end_dtg:
        return "relative_time: cannot be combined with start_dtg/end_dtg"
    return None


def relative_range(relative_time: str, start_dtg: int = 0, end_dtg: int = 0,
                   floor: int = 0) -> tuple[int, int] | None:
    """(start_ns, now_ns) for a relative_time, None when it is blank; Malformed when it does
    not parse or comes with start_dtg/end_dtg. The start never goes below `floor`."""
    problem = relative_problem(relative_time, start_dtg, end_dtg)
    if problem:
        raise Malformed(problem)
    text = relative_time.strip()
    if not text:
        return None
    m = _RELATIVE.fullmatch(text)
    now = now_ns()
    return max(now - int(m[1]) * UNITS[m[2].lower()] * SECOND, floor), now


def open_range(start_dtg: int, end_dtg: int, relative_time: str) -> tuple:
    """(start_ns or None, end_ns or None) over stored rows (a capture's, the fleet's): the
    range is open where not given; relative_time as relative_range."""
    rel = relative_range(relative_time, start_dtg, end_dtg)
    if rel is not None:
        return rel
    if start_dtg and end_dtg and end_dtg < start_dtg:
        raise Malformed("end_dtg: must not be before start_dtg")
    return (to_ns_clamped(start_dtg) if start_dtg else None,
            to_ns_clamped(end_dtg) if end_dtg else None)
