"""stats_group_by on ingested corpus files against tshark's conversation and endpoint
tables, rows + Other = Total, the flow filter's refusals, search_count against tshark, and
"the numbers add up": stats_by_date of an empty range and stats_totals after stats_reset
report zero connections."""

from __future__ import annotations

import collections
import re
import subprocess
import time

import pytest

from tests.helpers import corpus
from tests.helpers import tshark
from tests.helpers.app import ingest

FILES = ["wellformed/dns_udp_mixed.pcap", "wellformed/http_large_mixed_2k_packets.pcap",
         "wellformed/tls_three_sessions.pcap", "wellformed/rawip_mixed_v4v6.pcap",
         "wellformed/smb2_readwrite.pcap", "wellformed/ftp_bigtransfer.pcap",
         "wellformed/icmp_5_pings.pcap", "wellformed/linux_sll_tcp_dns.pcap",
         "wellformed/pcapng_http_image.pcapng", "wellformed/http_vlan_download.pcap"]
KEYS = ("process", "program", "ip", "remote_ip", "port", "protocol", "country", "hostname",
        "conn")
_CONV = re.compile(r"^(\S+)\s+<->\s+(\S+)\s+(\d+) (\d+) (bytes|kB|MB)\s+(\d+) (\d+) "
                   r"(bytes|kB|MB)\s+(\d+) (\d+) (bytes|kB|MB)\s")
_UNIT = {"bytes": 1, "kB": 1000, "MB": 1000_000}


def _err(ajax, action, **params) -> str:
    body = ajax(action, **params)
    assert body["ErrorCode"] == 4, body  # MALFORMED_REQUEST
    return body["ReturnValue"]


def _split(end: str) -> tuple[str, int]:
    ip, _, port = end.rpartition(":")
    return ip, int(port)


def _conversations(path, proto: str) -> dict:
    """frozenset of the two ends → (frames, total bytes, bytes unit) from tshark -z conv."""
    out = {}
    for line in tshark.run(path, "-q", "-z", f"conv,{proto}").splitlines():
        m = _CONV.match(line)
        if m:
            key = frozenset((_split(m[1]), _split(m[2])))
            out[key] = (int(m[9]), int(m[10]), _UNIT[m[11]])
    return out


def _endpoints(path) -> dict:
    """address → (packets, bytes) of tshark -z endpoints,ip and endpoints,ipv6, TCP and
    UDP only."""
    out = {}
    for table in ("ip", "ipv6"):
        for line in tshark.run(path, "-q", "-z", f"endpoints,{table},tcp or udp").splitlines():
            parts = line.split()
            if len(parts) == 7 and parts[1].isdigit() and (
                    re.fullmatch(r"\d+\.\d+\.\d+\.\d+", parts[0]) or ":" in parts[0]):
                out[parts[0]] = (int(parts[1]), int(parts[2]))
    return out


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """Every file of FILES ingested once into one server context (module-wide)."""
    from apppaccap.server import start_services
    from apppaccap.server import stop_services
    from apppaccap.web.app import create_app
    from tests.helpers.app import Ajax
    from tests.helpers.app import make_ctx
    ctx = make_ctx(tmp_path_factory.mktemp("groupby"))
    start_services(ctx)
    ajax = Ajax(create_app(ctx).test_client())
    ids = {rel: ingest(ctx, ajax, corpus.path(rel)) for rel in FILES}
    yield ctx, ajax, ids
    stop_services(ctx)


@pytest.mark.parametrize("rel", FILES)
def test_connections_agree_with_tshark_conv(ingested, rel):
    _, ajax, ids = ingested
    path = corpus.path(rel)
    rows = ajax.ok("stats_group_by", capture_id=ids[rel], group_by="conn", top=1000)["Rows"]
    ours = {}
    for proto in ("tcp", "udp"):
        want = _conversations(path, proto)
        number = 6 if proto == "tcp" else 17
        got = {}
        for r in rows:
            m = re.fullmatch(r"(\w+) (.+) - (.+)", r["Name"])
            if m[1] != proto.upper():
                continue
            ends = []
            for end in (m[2], m[3]):
                ip, port = _split(end)
                ends.append((ip.strip("[]"), port))
            got[frozenset(ends)] = (r["Packets"], r["Bytes"])
        ours[number] = got
        assert set(got) == set(want), (proto, set(got) ^ set(want))
        for key, (frames, nbytes, unit) in want.items():
            assert got[key][0] == frames, (proto, key)
            # tshark rounds bytes above 10 kB to kB (or MB)
            assert abs(got[key][1] - nbytes * unit) <= unit // 2 + (unit > 1) * unit, (key,
                                                                                     got[key])
    assert ours[6] or ours[17] or "icmp" in rel


@pytest.mark.parametrize("rel", FILES)
def test_ip_rows_agree_with_tshark_endpoints(ingested, rel):
    """A host's TCP and UDP packets in tshark's endpoint tables (endpoints,ip and ipv6)
    = its connections as the local end plus those as the remote end (group_by ip +
    group_by remote_ip). Connections are TCP and UDP flows: ICMP has none, so a file of
    pings has no rows (its packets are in stats_by_id, not in a group-by)."""
    _, ajax, ids = ingested
    cid = ids[rel]
    want = _endpoints(corpus.path(rel))
    got = collections.Counter()
    got_bytes = collections.Counter()
    for key in ("ip", "remote_ip"):
        answer = ajax.ok("stats_group_by", capture_id=cid, group_by=key, top=1000)
        assert answer["Other"]["Packets"] == 0
        for r in answer["Rows"]:
            got[r["Key"]] += r["Packets"]
            got_bytes[r["Key"]] += r["Bytes"]
    for ip, (packets, nbytes) in want.items():
        assert (got[ip], got_bytes[ip]) == (packets, nbytes), ip
    assert set(got) == set(want)
    if "icmp" in rel:
        assert not want and not got and ajax.ok("stats_by_id", capture_id=cid)["Packets"] > 0


@pytest.mark.parametrize("rel", FILES)
def test_rows_plus_other_is_total(ingested, rel):
    _, ajax, ids = ingested
    cid = ids[rel]
    whole = ajax.ok("stats_by_id", capture_id=cid)
    for key in KEYS:
        for metric in ("bytes", "packets", "connections"):
            for direction in ("in", "out", "both"):
                a = ajax.ok("stats_group_by", capture_id=cid, group_by=key, metric=metric,
                            direction=direction, top=2)
                for c in ("Packets", "Bytes", "Connections"):
                    assert sum(r[c] for r in a["Rows"]) + a["Other"][c] == a["Total"][c]
                col = {"bytes": "Bytes", "packets": "Packets",
                       "connections": "Connections"}[metric]
                values = [r[col] for r in a["Rows"]]
                assert values == sorted(values, reverse=True)
                if direction == "both":
                    assert a["Total"]["Connections"] == whole["Connections"]
    both = ajax.ok("stats_group_by", capture_id=cid, group_by="protocol")
    ins = ajax.ok("stats_group_by", capture_id=cid, group_by="protocol", direction="in")
    outs = ajax.ok("stats_group_by", capture_id=cid, group_by="protocol", direction="out")
    assert both["Total"]["Bytes"] == ins["Total"]["Bytes"] + outs["Total"]["Bytes"]


def test_series_add_up_to_rows(ingested):
    _, ajax, ids = ingested
    cid = ids["wellformed/http_large_mixed_2k_packets.pcap"]
    for key in ("conn", "remote_ip", "protocol", "port"):
        a = ajax.ok("stats_group_by", capture_id=cid, group_by=key, series=1, top=5)
        assert a["BucketSeconds"] == 1  # a 16 s capture: second buckets
        for r in a["Rows"]:
            assert sum(p["Packets"] for p in r["Series"]) == r["Packets"]
            assert sum(p["Bytes"] for p in r["Series"]) == r["Bytes"]
            times = [p["Time"] for p in r["Series"]]
            assert times == sorted(set(times))
            assert a["FirstTime"] - 10_000_000 <= times[0] and times[-1] <= a["LastTime"]


def test_filter_and_its_refusals(ingested):
    _, ajax, ids = ingested
    cid = ids["wellformed/dns_udp_mixed.pcap"]
    dns = ajax.ok("stats_group_by", capture_id=cid, group_by="conn", filter="udp.port == 53",
                  top=1000)
    n53 = len(tshark.fields(corpus.path("wellformed/dns_udp_mixed.pcap"), "frame.number",
                            display_filter="udp.port == 53"))
    assert dns["Total"]["Packets"] == n53 > 0
    assert all(":53" in r["Name"] for r in dns["Rows"])
    not_dns = ajax.ok("stats_group_by", capture_id=cid, group_by="conn",
                      filter="not udp.port == 53", top=1000)
    everything = ajax.ok("stats_group_by", capture_id=cid, group_by="conn", top=1000)
    assert dns["Total"]["Packets"] + not_dns["Total"]["Packets"] == \
        everything["Total"]["Packets"]
    cidr = ajax.ok("stats_group_by", capture_id=cid, group_by="remote_ip",
                   filter="ip.addr == 224.0.0.0/4")
    assert {r["Key"] for r in cidr["Rows"]} == {"224.0.0.251", "224.0.0.252"}
    for bad, words in (("ip.src == 10.0.0.1", "both ways"), ("dns.qry.name == \"x\"",
                                                            "cannot be answered"),
                       ("frame.len > 100", "cannot be answered")):
        err = _err(ajax, "stats_group_by", capture_id=cid, group_by="ip", filter=bad)
        assert words in err and "ip.addr" in err, err
    assert "group_by: one of" in _err(ajax, "stats_group_by", capture_id=cid, group_by="bogus")
    assert "metric" in _err(ajax, "stats_group_by", capture_id=cid, group_by="ip",
                                metric="volume")
    assert "give a capture_id" in _err(ajax, "stats_group_by", capture_id=0, group_by="conn")
    assert "relative_time" in _err(ajax, "stats_group_by", capture_id=cid, group_by="ip",
                                       relative_time="yesterday")


def test_search_count_agrees_with_tshark(ingested):
    _, ajax, ids = ingested
    rel = "wellformed/http_large_mixed_2k_packets.pcap"
    for flt in ("tcp.port == 8871", "ip.addr == 172.16.30.190 and frame.len > 1000",
                "tcp.flags.syn == 1"):
        got = ajax.ok("search_count", capture_id=ids[rel], filter=flt)
        want = len(tshark.fields(corpus.path(rel), "frame.number", display_filter=flt))
        assert got["Exact"] is True and got["Count"] == want, (flt, got, want)
    slow = ajax.ok("search_count", capture_id=ids[rel], filter='tcp contains "GET "')
    assert slow["Exact"] is False and slow["Count"] == -1
    assert "search_start" in slow["Message"]
    everything = ajax.ok("search_count", filter="")
    assert everything["Count"] == sum(ajax.ok("stats_by_id", capture_id=c)["Packets"]
                                      for c in ids.values())


def test_empty_range_and_reset_count_no_connections(live_ajax, http_server):
    port, _ = http_server
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter=f"tcp port {port}")
    for _ in range(3):
        subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/hello.txt"],
                       check=True)
    time.sleep(0.5)
    cid = cap["CaptureId"]
    assert live_ajax.ok("stats_totals")["Connections"] >= 3
    live_ajax.ok("stats_reset")
    totals = live_ajax.ok("stats_totals")
    assert (totals["Packets"], totals["Connections"]) == (0, 0)
    subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/hello.txt"],
                   check=True)
    time.sleep(1.5)
    live_ajax.ok("capture_stop_all")
    after = live_ajax.ok("stats_totals")
    assert after["Connections"] == 1 and after["Packets"] > 0
    empty = live_ajax.ok("stats_by_date", capture_id=cid, start_dtg=116444736000000000 + 1,
                         end_dtg=116444736000000000 + 10_000_000)  # 1970
    assert (empty["Packets"], empty["Connections"]) == (0, 0)
    whole = live_ajax.ok("stats_by_date", capture_id=cid, start_dtg=1)
    assert whole["Connections"] == 4


def test_usage_accounting_group_by(live, live_ajax, http_server, tmp_path):
    """capture_id 0: usage accounting's counters, grouped; a program we run shows with its
    bytes (both directions), a series, and rows + Other = Total."""
    import shutil
    port, _ = http_server
    from tests.helpers.live import wait_for
    wait_for(lambda: live_ajax.ok("usage_now")["Enabled"], timeout=20, what="usage on")
    program = str(tmp_path / "curl-groupby")
    shutil.copy2(shutil.which("curl"), program)
    # ~2 s each at 20 kB/s: long enough for usage accounting to name the program on a
    # loaded machine (a curl gone within milliseconds may count as nobody's)
    (tmp_path / "www" / "slow.bin").write_bytes(b"s" * 40_000)

    def ours():
        a = live_ajax.ok("stats_group_by", group_by="program", relative_time="5m", series=1,
                         top=1000)
        return [r for r in a["Rows"] if r["Key"] == program] and a
    answer = None
    for _ in range(8):  # a flow usage accounting leaves unnamed (loaded machine): again
        subprocess.run([program, "-s", "--limit-rate", "20k", "-o", "/dev/null",
                        f"http://127.0.0.1:{port}/slow.bin"], check=True, timeout=30)
        try:
            answer = wait_for(ours, timeout=5, what="the program in usage accounting")
            break
        except AssertionError:
            continue
    assert answer, "usage accounting named none of 8 fetches"
    time.sleep(2)  # every fetch counted and named (or not) before comparing answers
    answer = ours()
    row = [r for r in answer["Rows"] if r["Key"] == program][0]
    assert row["Name"] == "curl-groupby"
    # one connection per process (one server endpoint each), however many were named
    procs = live_ajax.ok("stats_group_by", group_by="process", relative_time="5m",
                         filter=f'proc.path == "{program}"')["Rows"]
    assert row["Bytes"] >= 40_000 * len(procs) and row["Connections"] == len(procs) >= 1
    assert answer["BucketSeconds"] == 1  # 5 minutes in the ring: second buckets
    assert sum(p["Bytes"] for p in row["Series"]) == row["Bytes"]
    narrowed = live_ajax.ok("stats_group_by", group_by="remote_ip", relative_time="5m",
                            filter=f'proc.path == "{program}" and tcp.port == {port}')
    assert [(r["Key"], r["Bytes"]) for r in narrowed["Rows"]] == [("127.0.0.1", row["Bytes"])]
    out = live_ajax.ok("stats_group_by", group_by="port", relative_time="5m", direction="out",
                       filter=f'proc.path == "{program}"')
    assert out["Rows"][0]["Key"] == port and 0 < out["Total"]["Bytes"] < row["Bytes"]
    top1 = live_ajax.ok("stats_group_by", group_by="program", relative_time="5m", top=1)
    for c in ("Packets", "Bytes", "Connections"):
        assert top1["Rows"][0][c] + top1["Other"][c] == top1["Total"][c]


def test_filter_of_too_many_comparisons_is_refused(ingested):
    """869 comparisons fit the 20,000-character filter yet cost 869 tests per connection:
    refused; a set is one comparison however many values it lists, with the same answer
    as the comparisons spelled out."""
    _, ajax, ids = ingested
    cid = ids["wellformed/dns_udp_mixed.pcap"]
    many = " or ".join(["ip.addr == 10.0.0.9"] * 869)
    assert len(many) < 20000
    err = _err(ajax, "stats_group_by", capture_id=cid, group_by="protocol", filter=many)
    assert "filter: 869 comparisons" in err and "at most 64" in err and "in {" in err, err
    spelled = ajax.ok("stats_group_by", capture_id=cid, group_by="remote_ip", top=1000,
                      filter="ip.addr == 224.0.0.251 or ip.addr == 224.0.0.252 or "
                             "ip.addr == 224.0.0.0/30 or udp.port == 5353 or udp.port == 5355")
    many_values = " ".join(f"198.18.{i // 250}.{i % 250}" for i in range(1000))
    as_sets = ajax.ok("stats_group_by", capture_id=cid, group_by="remote_ip", top=1000,
                      filter=f"ip.addr in {{{many_values} 224.0.0.251 224.0.0.0/30 "
                             "224.0.0.252} or udp.port in {5355 5353 5353..5353}")
    assert as_sets == spelled and spelled["Rows"]
    # a `not` is a call per connection too: 64 terms each under 300 of them is not cheap
    nots = " and ".join(["!" * 30 + "tcp"] * 64)
    err = _err(ajax, "stats_group_by", capture_id=cid, group_by="protocol", filter=nots)
    assert "filter: 1984 comparisons" in err, err


def test_work_over_the_budget_answers_busy(ingested, monkeypatch):
    """A question whose work (connection rows read + filter comparisons) passes the
    budget stops with BUSY and says what to narrow; so does one past the deadline."""
    from apppaccap.analytics import groupby
    _, ajax, ids = ingested
    cid = ids["wellformed/http_large_mixed_2k_packets.pcap"]
    whole = ajax.ok("stats_group_by", capture_id=cid, group_by="conn", top=1000)
    assert whole["Total"]["Connections"] > 5
    monkeypatch.setattr(groupby, "MAX_WORK", 5, raising=False)
    body = ajax("stats_group_by", capture_id=cid, group_by="conn", top=1000)
    assert body["ErrorCode"] == 7, body  # BUSY
    assert "too many connections" in body["ReturnValue"]
    assert "narrow the time range" in body["ReturnValue"]
    monkeypatch.setattr(groupby, "MAX_WORK", 10_000_000, raising=False)
    monkeypatch.setattr(groupby, "MAX_SECONDS", 0.0, raising=False)
    assert ajax("stats_group_by", capture_id=cid, group_by="conn")["ErrorCode"] == 7


def test_usage_group_by_over_the_budget_answers_busy_early(ctx, ajax, monkeypatch):
    """capture_id 0 over a range of 9999 weeks reads every usage row there is: with the
    real budget 120,000 rows answer; over a smaller one the question stops early, BUSY."""
    from apppaccap.analytics import groupby
    from apppaccap.store import usage as usage_table
    minute = time.time_ns() // 60_000_000_000
    n = 120_000
    rows = {(minute - 20 - i // 300, 0, f"10.0.{i % 300 // 250}.{i % 300 % 250}", 443, 6, i % 2):
            [1, 100] for i in range(n)}
    ctx.catalog.write(lambda c: usage_table.add(c, rows))
    t = time.monotonic()
    full = ajax.ok("stats_group_by", group_by="remote_ip", relative_time="9999w")
    full_seconds = time.monotonic() - t
    assert full["Total"]["Bytes"] == n * 100 and full["Total"]["Groups"] == 300
    monkeypatch.setattr(groupby, "MAX_WORK", n // 10, raising=False)
    t = time.monotonic()
    body = ajax("stats_group_by", group_by="remote_ip", relative_time="9999w")
    busy_seconds = time.monotonic() - t
    assert body["ErrorCode"] == 7, body  # BUSY
    assert "too many usage rows" in body["ReturnValue"]
    assert busy_seconds < full_seconds / 2, (busy_seconds, full_seconds)
