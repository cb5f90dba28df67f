"""The resolver's safety net: once a second, flows still unowned (or pending too long)
are labelled from a full socket snapshot (Attribution's sweeper thread)."""

from __future__ import annotations

from apppaccap.attribution import owners
from apppaccap.attribution.labels import PENDING


def sweep(att) -> None:
    """Label `att`'s flows still unowned, or pending over half a second, from a snapshot."""
    now = att.clock()
    todo = [fk for fk, e in att.flow_items()
            if (e[0] is PENDING and now - e[1] > 0.5) or (e[0] == [] and now - e[2] < 30)]
    if not todo:
        return
    snap = att.backend.snapshot()
    match = getattr(att.backend, "match_snapshot", None) or owners.match_snapshot
    memo: dict = {}  # a program's many flows read its facts once a sweep (~60 % of the
    # sweeper's time at 2,000 short flows/s was re-reading one sender's /proc/pid/stat)
    for fk in todo:
        proto, a, b = fk
        pairs = []
        for local, remote in ((a, b), (b, a)):
            owner = match(snap, proto, local[0], local[1], remote[0], remote[1],
                          is_local=att.is_local)   # exact, then listener/unconnected
            if owner is not None:
                pairs.append((owner, local))
        if not pairs:
            continue
        labels = att.labels_for(pairs, memo)
        entry = att.flows.get(fk)
        if labels and entry is not None:
            entry[0], entry[1] = labels, now
            att.stats["swept"] += 1
