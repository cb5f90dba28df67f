"""The Recorder's per-batch aggregates: one (flow, second) counter per packet on the hot
path becomes, at flush time, per-IP totals and per-IP/port/protocol rows by minute and
by second (store/flowagg.py expands them; store/capturedb.py write_batch stores them)."""

from __future__ import annotations

from apppaccap.store.flowagg import expand_flows


def flat(flowsec: dict) -> list:
    """(flow, second) counters → the (proto, a_ip, b_ip, a_port, b_port, second, packets,
    bytes, first, last) tuples expand_flows takes (plain values: they can be pickled)."""
    out = []
    for (flow, sec), (n, b, first, last) in flowsec.items():
        if not isinstance(flow, tuple):  # a Conn (capture/recorder.py)
            (a_ip, a_port), (b_ip, b_port) = flow.local, flow.remote
            out.append((flow.proto, a_ip, b_ip, a_port, b_port, sec, n, b, first, last))
        else:
            proto, a_ip, b_ip, a_port, b_port = flow
            out.append((proto, a_ip, b_ip, a_port, b_port, sec, n, b, first, last))
    return out


def expand(flowsec: dict, procsec: dict):
    """(flow, second) aggregates → per-IP totals, (kind, key, minute, proto) rows, the
    same by second, and the batch's (first, last) packet time."""
    return expand_flows(flat(flowsec), procsec)
