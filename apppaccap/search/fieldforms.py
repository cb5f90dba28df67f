"""The SQL forms a field of the language can take (search/fields.py builds every field from
them; search/compiler.py turns each form into SQL), and the Field record itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Col:
    """Plain packet columns: one SQL expression per occurrence (tshark's multi-occurrence
    fields such as ip.addr = [src, dst])."""

    exprs: tuple
    needs: tuple


@dataclass(frozen=True)
class Ip(Col):
    """IP text columns. Addresses, CIDR and ranges resolve against the capture's `ips`
    table (every src/dst is in it) into a set of texts; `conn` allows the pushdown of the
    same test to the connections table."""

    conn: bool = True


@dataclass(frozen=True)
class Port(Col):
    """TCP/UDP ports, pushed down to the connections table of that protocol."""

    proto: int = 6


@dataclass(frozen=True)
class Proc:
    """A process attribute: resolved in the capture's `processes` table → process_id set."""

    attr: str


@dataclass(frozen=True)
class App:
    """An application label of the packet's connection (app.proto, app.name, app.category):
    resolved in the capture's `connections` table → conn_id set."""

    attr: str


@dataclass(frozen=True)
class Stream:
    """tshark's 0-based tcp.stream / udp.stream = rank of our connection among the flows of
    that protocol in order of first packet (our ConnectionId order)."""

    proto: int


@dataclass(frozen=True)
class Const:
    """A value known per capture (capture.id)."""

    attr: str


@dataclass(frozen=True)
class Time:
    """ts in ns: absolute, epoch seconds, or relative to the capture's first packet."""

    kind: str


@dataclass(frozen=True)
class Exists:
    """A protocol word whose guard is its exact existence test."""


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    doc: str
    example: str
    guard: str = "1"               # SQL, CORE columns; scope placeholders: {eth}
    sql: object = None             # one of the forms above; None = Python only
    py: Callable | None = None     # view → list of occurrence values
    bits: int = 32
    ranges: Callable | None = None  # PROTO/BYTES: view → [(start, end)] for contains/matches
