"""What attribution hands the capture pipeline: a Label (who owns a packet), and the
direction-free key of the flow it was asked about."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Label:
    """Who owns a packet: our ProcessId, pid, thread id and the owner's local endpoint."""

    process_id: int
    pid: int
    tid: int
    proc: dict            # catalog row of the process (name, path, cmdline…)
    local: tuple | None   # (ip, port) of the owner's socket; None when not known


def flow_key(proto, src, sport, dst, dport):
    """Direction-free key of a flow."""
    a, b = (src, sport), (dst, dport)
    return (proto, a, b) if a <= b else (proto, b, a)
