"""label_list, stats_by_label — nDPI's application labels of connections (capture/applabels.py).

A connection carries three labels: AppProtocol (HTTP, TLS, DNS, QUIC, SSH, ...), App
(Google, YouTube, ... when nDPI knows it from SNI/Host/DNS; "" otherwise) and Category
(Web, SocialNetwork, Streaming, ...). "Unknown" is nDPI saying it could not tell; a
connection with no labels at all was recorded without nDPI (library missing, labelling
off, or a capture written before labels existed).
"""

from __future__ import annotations

from apppaccap.api.captures import captures
from apppaccap.api.registry import endpoint
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.wire import DataType

UNKNOWN = "Unknown"
LABEL_MAX = 64


def label_filter(label: str, alias: str = "") -> tuple[str, tuple]:
    """SQL condition (and parameters) for connections carrying `label` as AppProtocol, App
    or Category, case-insensitively; ("", ()) for a blank label."""
    label = label.strip()
    if not label:
        return "", ()
    if len(label) > LABEL_MAX or not label.isprintable():
        raise Malformed(f"label: an application, protocol or category name of at most "
                        f"{LABEL_MAX} printable characters")
    a = alias
    return (f"({a}app_proto = ? COLLATE NOCASE OR {a}app = ? COLLATE NOCASE OR "
            f"{a}category = ? COLLATE NOCASE)", (label, label, label))


def capture_databases(ctx, capture_id: int) -> list:
    """The capture's database, or (capture_id 0) every capture that has one."""
    if capture_id:
        return [captures(ctx).db(capture_id)]
    if ctx.captures is None:  # no capture engine in this process: no capture to read
        return []
    mgr = ctx.captures
    out = []
    for (cid,) in ctx.catalog.read("SELECT id FROM captures ORDER BY id"):
        try:
            out.append(mgr.db(cid))
        except NotFound:  # a capture with no packet data (failed before its first write)
            continue
    return out


@endpoint(DataType.JSON)
def label_list(ctx, *, capture_id: int = 0) -> list:
    """Application labels actually seen, grouped by category:
    [{GroupName: category, Labels: [application and protocol names]}], both sorted.

    - capture_id: one capture; 0 = every capture
    """
    groups: dict[str, set] = {}
    for db in capture_databases(ctx, capture_id):
        for cat, proto, app in db.read("SELECT DISTINCT category, app_proto, app FROM "
                                       "connections WHERE app_proto IS NOT NULL"):
            names = {n for n in (proto, app) if n and n != UNKNOWN}
            if names:
                groups.setdefault(cat or "Unspecified", set()).update(names)
    return [{"GroupName": g, "Labels": sorted(names, key=str.lower)}
            for g, names in sorted(groups.items(), key=lambda kv: kv[0].lower())]


@endpoint(DataType.JSON)
def stats_by_label(ctx, *, capture_id: int, label: str = "") -> dict:
    """Traffic of one capture per application label, most bytes first, with the programs
    behind each (answered from its connections, not its packets).

    Labels: [{AppProtocol, App, Category, Connections, Packets, Bytes, PacketsIn, BytesIn,
    PacketsOut, BytesOut, Programs: [{ProcessId, Pid, Name, Path, Connections, Packets,
    Bytes}]}]; connections recorded without nDPI have AppProtocol "" (so the rows add up
    to the capture's connections).

    - capture_id: the capture
    - label: only connections with this AppProtocol, App or Category (any case); blank = all
    """
    db = captures(ctx).db(capture_id)
    cond, params = label_filter(label, "c.")
    rows = db.read(
        "SELECT coalesce(c.app_proto, ''), coalesce(c.app, ''), coalesce(c.category, ''), "
        "c.process_id, count(*), sum(c.packets_in), sum(c.bytes_in), sum(c.packets_out), "
        "sum(c.bytes_out) FROM connections c " + (f"WHERE {cond} " if cond else "") +
        "GROUP BY 1, 2, 3, 4", params)
    names = {r[0]: r for r in db.read("SELECT process_id, pid, name, path FROM processes")}
    labels: dict = {}
    for proto, app, cat, process_id, n, p_in, b_in, p_out, b_out in rows:
        lab = labels.get((proto, app, cat))
        if lab is None:
            lab = labels[(proto, app, cat)] = {
                "AppProtocol": proto, "App": app, "Category": cat, "Connections": 0,
                "Packets": 0, "Bytes": 0, "PacketsIn": 0, "BytesIn": 0, "PacketsOut": 0,
                "BytesOut": 0, "Programs": []}
        lab["Connections"] += n
        lab["PacketsIn"] += p_in
        lab["BytesIn"] += b_in
        lab["PacketsOut"] += p_out
        lab["BytesOut"] += b_out
        lab["Packets"] += p_in + p_out
        lab["Bytes"] += b_in + b_out
        if process_id is not None:
            r = names.get(process_id)
            lab["Programs"].append({
                "ProcessId": process_id, "Pid": r[1] if r else 0,
                "Name": (r[2] if r else "") or "", "Path": (r[3] if r else "") or "",
                "Connections": n, "Packets": p_in + p_out, "Bytes": b_in + b_out})
    out = sorted(labels.values(), key=lambda x: (-x["Bytes"], x["AppProtocol"], x["App"]))
    for lab in out:
        lab["Programs"].sort(key=lambda x: (-x["Bytes"], x["ProcessId"]))
    return {"Version": 1, "CaptureId": capture_id, "Labels": out}
