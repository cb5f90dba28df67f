"""The fleet end to end: two real sensors (apppaccap serve) ship to a two-shard ClickHouse
cluster (two local clickhouse-server processes, config written here), and the fleet's
answers are compared with each sensor's own.

Traffic: both sensors capture `lo`, each with its own BPF filter (its own HTTP server's
port), so each sensor's captures hold distinct connections of known programs: curl, and
python3 (urllib) as a program the filters must leave out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.helpers import tshark
from tests.helpers.clickhouse import two_shards
from tests.helpers.ports import free_port
from tests.helpers.ports import wait_port
from tests.helpers.server import Server

pytestmark = pytest.mark.live

COUNTERS = ("PacketsOut", "BytesOut", "PacketsIn", "BytesIn")
CH_COUNTERS = "packets_out, bytes_out, packets_in, bytes_in"


class Sensor:
    def __init__(self, root, name: str, url: str):
        self.name = name
        self.www_port = free_port()
        www = os.path.join(root, f"www-{name}")
        os.makedirs(www)
        with open(os.path.join(www, "hello.txt"), "wb") as fh:
            fh.write(b"hello fleet\n" * 200)
        self.www = subprocess.Popen([sys.executable, "-m", "http.server", str(self.www_port),
                                     "--bind", "127.0.0.1", "--directory", www],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.www_port)
        self.data = os.path.join(root, f"sensor-{name}")
        self.server = Server(self.data, None, log_dir=root)
        self.captures = []
        try:
            self.server.ok("settings_set", key_name="fleet_cluster", value="fleet")
            self.server.ok("settings_set", key_name="fleet_host", value=name)
            self.server.ok("settings_set", key_name="fleet_url", value=url)
        except BaseException:
            self.close()  # a sensor that cannot be set up is not left running
            raise

    def start_capture(self) -> int:
        cap = self.server.ok("capture_start_system", adapter="lo",
                             filter=f"tcp port {self.www_port}")
        self.captures.append(cap["CaptureId"])
        return cap["CaptureId"]

    def stop_capture(self, capture_id: int) -> None:
        time.sleep(0.5)  # the last FIN/ACKs
        self.server.ok("capture_stop_system", capture_id=capture_id)

    def curl(self, n: int = 1) -> None:
        for _ in range(n):
            subprocess.run(["curl", "-s", "-o", "/dev/null",
                            f"http://127.0.0.1:{self.www_port}/hello.txt"], check=True)

    def python_get(self) -> None:
        subprocess.run([sys.executable, "-c", "import urllib.request as u; u.urlopen("
                        f"'http://127.0.0.1:{self.www_port}/hello.txt').read()"], check=True)

    def conns(self) -> dict:
        """(host, capture, connection) → counters, as the sensor answers for itself."""
        out = {}
        for cap in self.captures:
            for c in self.server.ok("capture_list_conns", capture_id=cap):
                out[(self.name, cap, c["ConnectionId"])] = tuple(c[k] for k in COUNTERS)
        return out

    def close(self) -> None:
        self.server.stop()
        self.www.kill()
        self.www.wait()


def fleet_conns(node, hosts) -> dict:
    rows = node.query(f"SELECT host, capture_id, conn_id, count(), {CH_COUNTERS} FROM "
                      "apppaccap.connections_all FINAL WHERE host IN %(h)s "
                      f"GROUP BY host, capture_id, conn_id, {CH_COUNTERS}",
                      {"h": tuple(hosts)})
    seen: dict = {}
    for host, cap, conn, count, *counters in rows:
        key = (host, cap, conn)
        seen.setdefault(key, []).extend([tuple(counters)] * count)
    return seen


def wait_same(node, sensors, timeout: float = 30) -> dict:
    """Until every sensor connection is in connections_all with its counters."""
    want: dict = {}
    for s in sensors:
        want.update(s.conns())
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = fleet_conns(node, [s.name for s in sensors])
        except Exception:  # the cluster is still coming back
            got = {}
        if {k: [v] for k, v in want.items()} == got:
            return want
        if time.monotonic() > deadline:
            missing = set(want) - set(got)
            assert not missing, f"not in the fleet: {sorted(missing)}"
            differ = {k: (want[k], got.get(k)) for k in want if [want[k]] != got.get(k)}
            assert not differ, f"counters (sensor, fleet) differ: {differ}"
            assert set(got) == set(want), f"extra in the fleet: {set(got) - set(want)}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fleet"))
    nodes = two_shards(root)
    sensors = []
    try:
        for name, node in (("sensor-a", nodes[0]), ("sensor-b", nodes[1])):
            sensors.append(Sensor(root, name, node.url))
        for s in sensors:
            s.start_capture()
        a, b = sensors
        a.curl(3)
        a.python_get()
        b.curl(2)
        b.python_get()
        for s in sensors:
            s.stop_capture(s.captures[-1])
        yield nodes, sensors
    finally:
        for s in sensors:
            s.close()
        for n in nodes:
            n.stop()


def test_every_connection_is_in_the_fleet_once_with_the_sensors_counters(fleet):
    nodes, sensors = fleet
    want = wait_same(nodes[0], sensors)
    assert len(want) == 3 + 1 + 2 + 1
    # each host's rows live on the shard its sensor writes to (FINAL collapses per shard)
    for node, s in zip(nodes, sensors):
        hosts = {h for (h,) in node.query("SELECT DISTINCT host FROM apppaccap.connections")}
        assert hosts == {s.name}
    # the other node's Distributed table answers the same
    assert fleet_conns(nodes[1], [s.name for s in sensors]) == {k: [v] for k, v in want.items()}
    hosts = sensors[1].server.ok("fleet_hosts")
    assert [h["Host"] for h in hosts["Hosts"]] == ["sensor-a", "sensor-b"]
    for h, s in zip(hosts["Hosts"], sensors):
        assert h["Connections"] == len(s.conns())
        assert h["GapRows"] == 0 and h["LagSeconds"] < 30


def _own_answer(sensor, flt: str) -> set:
    """The sensor's own answer to a connection filter: stats_group_by by connection."""
    keys = set()
    for cap in sensor.captures:
        out = sensor.server.ok("stats_group_by", capture_id=cap, group_by="conn", filter=flt,
                               top=1000)
        keys |= {(sensor.name, cap, row["Key"]) for row in out["Rows"]}
    return keys


def test_fleet_search_is_the_union_of_the_sensors_answers(fleet):
    nodes, sensors = fleet
    wait_same(nodes[0], sensors)
    a, b = sensors
    filters = [f'proc.name == "curl" && tcp.port == {a.www_port}',
               f'proc.name == "curl" && tcp.port in {{{a.www_port} {b.www_port}}}',
               'proc.name == "curl"', '!(proc.name == "curl")',
               'proc.name matches "^CU" && ip.addr == 127.0.0.0/8',
               'proc.path contains "python"', 'app.proto == "HTTP"',
               f'tcp.port != {b.www_port}', "udp", "",
               f'proc.name == "curl" xor tcp.port == {b.www_port}']
    for flt in filters:
        union = _own_answer(a, flt) | _own_answer(b, flt)
        got = sensors[0].server.ok("fleet_search", filter=flt)
        keys = [(c["Host"], c["CaptureId"], c["ConnectionId"]) for c in got["Connections"]]
        assert len(keys) == len(set(keys)), flt
        assert set(keys) == union, flt
    both = a.server.ok("fleet_search", filter='proc.name == "curl"')["Connections"]
    assert {c["Host"] for c in both} == {"sensor-a", "sensor-b"} and len(both) == 5
    assert all(c["ProcessPath"].endswith("/curl") for c in both)
    only_b = a.server.ok("fleet_search", filter='proc.name == "curl"', host="sensor-b")
    assert len(only_b["Connections"]) == 2
    one = a.server.ok("fleet_search", filter="", limit=1)
    assert len(one["Connections"]) == 1 and one["More"] is True


def test_fleet_errors_are_the_searchs(fleet):
    _, sensors = fleet
    server = sensors[0].server
    for flt in ("ip.src == 1.2.3.4", "frame.len > 3", 'proc.name == "curl" &&'):
        mine = server.call("stats_group_by", capture_id=sensors[0].captures[0],
                           group_by="program", filter=flt)
        fleet_answer = server.call("fleet_search", filter=flt)
        assert mine["ErrorCode"] == fleet_answer["ErrorCode"] == 4, (flt, fleet_answer)
        assert fleet_answer["ReturnValue"].startswith(mine["ReturnValue"].split(";")[0])
    assert server.call("fleet_group_by", group_by="country")["ErrorCode"] == 4


def test_fleet_group_by_adds_up_the_sensors(fleet):
    nodes, sensors = fleet
    wait_same(nodes[0], sensors)
    for metric, direction in (("bytes", "both"), ("packets", "in"), ("connections", "out")):
        out = sensors[0].server.ok("fleet_group_by", group_by="program", metric=metric,
                                   direction=direction, top=1)
        want: dict = {}
        for s in sensors:
            own = s.server.ok("stats_group_by", capture_id=s.captures[0], group_by="program",
                              metric=metric, direction=direction, top=100)
            for row in own["Rows"]:
                acc = want.setdefault(row["Key"], [0, 0, 0])
                acc[0] += row["Packets"]
                acc[1] += row["Bytes"]
                acc[2] += row["Connections"]
        rows = out["Rows"] + [out["Other"]]
        assert len(out["Rows"]) == 1
        top_key = out["Rows"][0]["Key"]
        assert [out["Rows"][0][k] for k in ("Packets", "Bytes", "Connections")] == want[top_key]
        for k, i in (("Packets", 0), ("Bytes", 1), ("Connections", 2)):
            assert sum(r[k] for r in rows) == out["Total"][k] == sum(v[i] for v in want.values())
        assert out["Total"]["Groups"] == len(want)
    by_host = sensors[0].server.ok("fleet_group_by", group_by="host", filter='proc.name == "curl"')
    assert {r["Key"]: r["Connections"] for r in by_host["Rows"]} == {"sensor-a": 3,
                                                                     "sensor-b": 2}


def test_fetch_packets_asks_the_owning_sensor(fleet):
    nodes, sensors = fleet
    a, b = sensors
    wait_same(nodes[0], sensors)
    hit = a.server.ok("fleet_search", filter='proc.name == "curl"', host="sensor-b", limit=1)
    conn = hit["Connections"][0]
    assert a.server.call("fleet_fetch_packets", host="sensor-b", capture_id=conn["CaptureId"],
                         connection_id=conn["ConnectionId"])["ErrorCode"] == 6  # NOT_FOUND
    a.server.ok("settings_set", key_name="fleet_sensors",
                value=f"sensor-b={b.server.url}, sensor-a={a.server.url}")
    got = a.server.ok("fleet_fetch_packets", host="sensor-b", capture_id=conn["CaptureId"],
                      connection_id=conn["ConnectionId"])
    assert got["Path"] == os.path.join(a.data, got["Name"]) and got["Size"] > 0
    rows = tshark.fields(got["Path"], "tcp.srcport", "tcp.dstport", "frame.len")
    assert len(rows) == conn["PacketsIn"] + conn["PacketsOut"]
    assert all(str(conn["LocalPort"]) in r[:2] and str(b.www_port) in r[:2] for r in rows)
    assert sum(int(r[2]) for r in rows) == conn["BytesIn"] + conn["BytesOut"]
    # the sensor's copy is gone
    assert not [f for f in b.server.ok("export_list") if f["FileName"].startswith("capture-")]
    assert a.server.call("fleet_fetch_packets", host="nobody", capture_id=1,
                         connection_id=1)["ErrorCode"] == 6


def test_killed_clickhouse_loses_nothing_and_doubles_nothing(fleet):
    nodes, sensors = fleet
    a = sensors[0]
    wait_same(nodes[0], sensors)
    cap = a.start_capture()
    a.curl(2)
    spool = os.path.join(a.data, "fleet", "spool")
    time.sleep(1.5)  # some of this capture is shipped before the fault
    nodes[0].kill()
    a.curl(3)
    a.python_get()
    deadline = time.monotonic() + 20
    while not [n for n in os.listdir(spool) if n.endswith(".json") and "-" in n]:
        assert time.monotonic() < deadline, "nothing was spooled while ClickHouse was down"
        time.sleep(0.2)
    status = a.server.call("fleet_hosts")
    assert status["ErrorCode"] != 0  # its ClickHouse is down: an error, not a hang
    nodes[0].start()
    a.curl(1)
    a.stop_capture(cap)
    want = wait_same(nodes[0], sensors, timeout=60)
    assert len([k for k in want if k[1] == cap]) == 2 + 3 + 1 + 1
    raw = nodes[0].query("SELECT count() FROM apppaccap.connections WHERE capture_id = %(c)s "
                         "AND host = 'sensor-a'", {"c": cap})[0][0]
    assert raw >= 7  # re-sent rows are there unmerged, and collapse under FINAL (above)
