"""Compiled plans: SQL and Python agree, values are bound, indexes and id ranges are used."""

from __future__ import annotations

import sqlite3

import pytest

from apppaccap.ingest import ingest
from apppaccap.search import parse_filter
from apppaccap.search.checker import Cond
from apppaccap.search.compiler import compile_plan
from apppaccap.search.parser import Not
from apppaccap.search.scan import matching_ids
from apppaccap.search.scope import Scope
from apppaccap.search.scope import open_readonly
from apppaccap.search.values import BYTES
from apppaccap.search.values import PROTO
from apppaccap.store.capturedb import capture_path
from tests.helpers import corpus
from tests.helpers import tshark
from tests.helpers.app import make_ctx
from tests.helpers.sample import FILTERS
from tests.helpers.sample import sample_packets
from tests.helpers.sample import write_sample

FILES = ["wellformed/http_bro_org_multi_object.pcap", "wellformed/dns_udp_mixed.pcap",
         "wellformed/linux_sll2_icmp_arp.pcap", "wellformed/rawip_mixed_v4v6.pcap",
         "wellformed/http_vlan_download.pcap"]


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    """{name: (ctx, capture_id)} ingested without the web layer (plans need no server)."""
    tmp = tmp_path_factory.mktemp("plans")
    ctx = make_ctx(tmp)
    sample = str(tmp / "sample.pcapng")
    write_sample(sample, sample_packets(), linktypes=(1, 101))
    out = {}
    for name, path in [(f, corpus.path(f)) for f in FILES] + [("SAMPLE", sample)]:
        cid = ingest.create_capture(ctx, path)
        ingest.ingest(ctx, ingest.open_reader(path), cid)
        out[name] = (ctx, cid)
    yield out
    ctx.catalog.close()


def run(ctx, cid, text, force_python=False, time_range=None):
    path = capture_path(ctx.config.data_dir, cid)
    conn = open_readonly(path)
    try:
        scope = Scope(conn, cid, path, force_python=force_python)
        plan = compile_plan(parse_filter(text) if text else None, scope, time_range)
        return matching_ids(scope, plan), plan
    finally:
        conn.close()


def _conds(node):
    if isinstance(node, Cond):
        return [node]
    items = [node.item] if isinstance(node, Not) else node.items
    return [c for i in items for c in _conds(i)]


def _sql_able(c: Cond, columns) -> bool:
    """What the compiler must answer in SQL: a field with an SQL form whose columns exist,
    and no byte search."""
    form = c.field.sql
    if form is None or any(col not in columns for col in getattr(form, "needs", ())):
        return False
    if c.other is not None and not _sql_able(Cond(c.other, "eq"), columns):
        return False
    return not (c.op in ("contains", "matches") and c.field.type in (PROTO, BYTES))


@pytest.mark.parametrize("name", FILES + ["SAMPLE"])
def test_sql_and_python_agree(captures, name):
    """Every filter gives the same packets compiled to SQL and evaluated from the bytes, and
    SQL alone decides every filter it can."""
    ctx, cid = captures[name]
    conn = open_readonly(capture_path(ctx.config.data_dir, cid))
    columns = {r[1] for r in conn.execute("PRAGMA table_info(packets)")}
    conn.close()
    for f in FILTERS:
        text = f if isinstance(f, str) else f[0]
        sql, plan = run(ctx, cid, text)
        py, _ = run(ctx, cid, text, force_python=True)
        assert sql == py, (name, text)
        if all(_sql_able(c, columns) for c in _conds(parse_filter(text).tree)):
            assert plan.exact, text


def test_values_are_bound_never_interpolated(captures):
    ctx, cid = captures["SAMPLE"]
    evil = "x'); DROP TABLE packets; --"
    ids, plan = run(ctx, cid, f'proc.name == "{evil}" || ip.src == 10.9.8.7 || tcp.port == 4711')
    assert ids == [] and evil not in plan.where and "10.9.8.7" not in plan.where
    assert "4711" not in plan.where and "10.9.8.7" in plan.params
    ids, plan = run(ctx, cid, f'frame contains "{evil}"')
    assert ids == [] and "DROP" not in plan.where


def test_connection_pushdown_uses_the_index(captures):
    ctx, cid = captures["wellformed/http_bro_org_multi_object.pcap"]
    ids, plan = run(ctx, cid, "tcp.port in {55079, 55120} && ip.addr == 192.150.187.43")
    assert "conn_id IN" in plan.where and plan.exact and len(ids) == 133 + 16
    conn = open_readonly(capture_path(ctx.config.data_dir, cid))
    steps = " ".join(r[3] for r in conn.execute(
        f"EXPLAIN QUERY PLAN SELECT id FROM packets WHERE ({plan.where})", plan.params))
    assert "packets_conn" in steps, steps
    # a test that selects most packets stays a scan: index lookups would cost more
    ids, wide = run(ctx, cid, "ip.addr == 10.0.2.15")
    assert "conn_id IN" not in wide.where and len(ids) == 751


def test_time_ranges_become_id_ranges(captures):
    ctx, cid = captures["wellformed/http_bro_org_multi_object.pcap"]
    ids, plan = run(ctx, cid, "frame.time_relative >= 5 && frame.time_relative <= 10")
    assert plan.ids == (ids[0], ids[-1]) and "ts" not in plan.where
    conn = open_readonly(capture_path(ctx.config.data_dir, cid))
    first = conn.execute("SELECT ts FROM packets WHERE id = 1").fetchone()[0]
    same, plan2 = run(ctx, cid, "", time_range=(first + 5 * 10**9, first + 10 * 10**9))
    assert same == ids and plan2.ids == plan.ids


def test_unsorted_capture_compares_ts(tmp_path):
    """A file whose timestamps go back cannot use id ranges: the plan compares ts."""
    packets = sample_packets()
    path = str(tmp_path / "shuffled.pcapng")
    write_sample(path, packets, linktypes=(1, 101))
    raw = bytearray(open(path, "rb").read())
    # swap the timestamps of the first two EPBs (after the SHB and two IDBs)
    off1 = 28 + 20 + 20
    len1 = int.from_bytes(raw[off1 + 4:off1 + 8], "little")
    off2 = off1 + len1
    a, b = bytes(raw[off1 + 12:off1 + 20]), bytes(raw[off2 + 12:off2 + 20])
    raw[off1 + 12:off1 + 20], raw[off2 + 12:off2 + 20] = b, a
    open(path, "wb").write(raw)
    ctx = make_ctx(tmp_path)
    cid = ingest.create_capture(ctx, path)
    ingest.ingest(ctx, ingest.open_reader(path), cid)
    ids, plan = run(ctx, cid, "frame.time_relative < 0.1")
    assert plan.ids is None and "ts" in plan.where
    # packet 2 now carries the earliest time: relative to packet 1 it is negative
    assert ids == [1, 2] == tshark.frames(path, "frame.time_relative < 0.1")
    ctx.catalog.close()


def test_capture_id_is_constant_folded(captures):
    ctx, cid = captures["SAMPLE"]
    ids, plan = run(ctx, cid, f"capture.id == {cid + 1} && tcp")
    assert ids == [] and plan.empty
    ids, plan = run(ctx, cid, f"capture.id == {cid} && arp")
    assert ids == [1, 2] and plan.where == "(l3 IN (2054, 32821))"


def test_scope_sees_a_snapshot(captures, tmp_path):
    """Packets written after a scope opened are not part of its search."""
    ctx, cid = captures["wellformed/linux_sll2_icmp_arp.pcap"]
    src = capture_path(ctx.config.data_dir, cid)
    copy = str(tmp_path / "copy.db")
    sqlite3.connect(src).execute(f"VACUUM INTO '{copy}'")
    conn = open_readonly(copy)
    scope = Scope(conn, cid, copy)
    writer = sqlite3.connect(copy)
    cols = [r[1] for r in writer.execute("PRAGMA table_info(packets)") if r[1] != "id"]
    writer.execute(f"INSERT INTO packets(id, {', '.join(cols)}) SELECT id + 100, "
                   f"{', '.join(cols)} FROM packets WHERE id = 1")
    writer.commit()
    plan = compile_plan(parse_filter("icmp"), scope)
    assert matching_ids(scope, plan) == [1, 2]
    conn.close()


def test_block_search_respects_packet_boundaries():
    """A needle across two packets, or in a packet that is not a candidate, is no hit;
    a packet holding it twice is one hit."""
    from apppaccap.search.scan import _block_hits

    class OneBlock:
        def get(self, blk):
            return b"xxAB" + b"CDyy" + b"ABCD" + b"zzzz" + b"ABCDABCD"
    rows = [(1, 7, 0, 4), (2, 7, 4, 4), (3, 7, 8, 4), (5, 7, 16, 8)]  # id 4 (12..16) skipped
    assert [r[0] for r in _block_hits(rows, b"ABCD", OneBlock())] == [3, 5]
    assert [r[0] for r in _block_hits(rows, b"zz", OneBlock())] == []
    assert [r[0] for r in _block_hits(rows, b"yy", OneBlock())] == [2]
