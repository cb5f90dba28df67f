"""What attribution hands the capture pipeline: a Label (who owns a packet), and the
direction-free key of the flow it was asked about."""

from __future__ import annotations

from dataclasses import dataclass

PENDING = None   # a flow asked about, not answered yet (resolver, usage lookups, pipelines)


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


def refine(old: list, new: list) -> list:
    """A second look's answer merged into the first: an end found again takes the new
    label (the accepted socket's process, the thread now known), an end whose socket has
    closed since (a short-lived client) keeps its label, and the order - originator
    first - stays."""
    by_end = {lab.local: lab for lab in new}
    merged = [by_end.pop(lab.local, lab) for lab in old]
    return merged + list(by_end.values())


def thread_unknown(labels) -> bool:
    """The owner is multi-threaded and no thread was seen on the socket yet: look again
    shortly, when the thread is likely blocked in recv()/send() on it."""
    return bool(labels) and not labels[0].tid


def originator_final(labels, key5) -> bool:
    """The first label names the flow's originator (the src end of `key5`) with its thread:
    a second look can change the other end only, which a system capture does not store
    (Target.pick keeps the first label), so such a capture need not wait for it."""
    if not labels:
        return False
    first = labels[0]
    return bool(first.tid) and first.local == (key5[1], key5[2])

