"""Captures on a veth pair into a network namespace the test creates (Ethernet link type)."""

import os
import subprocess
import sys
import time

import pytest

from tests.helpers.live import Tcpdump
from tests.helpers.live import assert_same_packets
from tests.helpers.live import read_all
from tests.helpers.ports import free_port

pytestmark = pytest.mark.live

HOST_IP, NS_IP = "10.213.77.1", "10.213.77.2"


def sh(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, (cmd, r.stdout, r.stderr)


@pytest.fixture
def netns():
    """Namespace `apcNNN` with veth apcNNNh (host, HOST_IP) <-> apcNNNn (ns, NS_IP)."""
    name = f"apc{os.getpid() % 100000}"
    host, inner = f"{name}h", f"{name}n"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "add", host, "type", "veth", "peer", "name", inner)
        sh("ip", "link", "set", inner, "netns", name)
        sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", host)
        sh("ip", "link", "set", host, "up")
        sh("ip", "netns", "exec", name, "ip", "addr", "add", f"{NS_IP}/24", "dev", inner)
        sh("ip", "netns", "exec", name, "ip", "link", "set", inner, "up")
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        # wait until the host can reach the namespace (link up, neighbour resolvable)
        for _ in range(50):
            if subprocess.run(["ping", "-c", "1", "-W", "0.2", NS_IP],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        yield name, host
    finally:
        subprocess.run(["ip", "link", "del", host], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_veth_capture_labels_local_server_and_leaves_foreign_unknown(live_ajax, netns, tmp_path):
    ns, host = netns
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", HOST_IP],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              cwd=str(tmp_path))
    try:
        time.sleep(0.7)
        adapters = {a["Name"]: a for a in live_ajax.ok("adapter_list")}
        assert adapters[host]["Up"] and HOST_IP in adapters[host]["Addresses"]
        dump = Tcpdump(host, "tcp or icmp", str(tmp_path / "ref.pcap"))
        cap = live_ajax.ok("capture_start_system", adapter=host)
        # a client inside the namespace: its socket is not ours to see
        sh("ip", "netns", "exec", ns, "curl", "-s", "-o", "/dev/null", f"http://{HOST_IP}:{port}/")
        sh("ip", "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", HOST_IP)
        time.sleep(0.5)
        srv_cap = live_ajax.ok("capture_start_process", pid=server.pid, adapter=host)
        sh("ip", "netns", "exec", ns, "curl", "-s", "-o", "/dev/null", f"http://{HOST_IP}:{port}/")
        time.sleep(0.5)
        live_ajax.ok("capture_stop_all")
        ref = dump.stop()
    finally:
        server.kill()
        server.wait()
    packets = read_all(live_ajax, cap["CaptureId"])
    assert live_ajax.ok("capture_open", capture_id=cap["CaptureId"])["LinkTypes"] == [1]
    tcp_icmp = [p for p in packets if p["Protocol"] in (1, 6)]
    assert_same_packets([((p["Time"] - 116444736000000000) // 10, p["Length"]) for p in tcp_icmp],
                        ref)
    http = [p for p in packets if p["Protocol"] == 6]
    # the server's end is this machine's: every HTTP packet is the server process's
    assert http and {p["Pid"] for p in http} == {server.pid}, \
        (server.pid, {(p["Pid"], p["ThreadId"], p["ProcessName"], p["SrcPort"], p["DstPort"])
                      for p in http})
    assert all(p["Direction"] == (1 if p["SrcIp"] == HOST_IP else 0) for p in http)
    # the two echoes of the ping (other ICMP, e.g. an unreachable for something else on the
    # host, is not the ping's)
    icmp = [p for p in packets if p["Protocol"] == 1 and "Echo" in p["Summary"]]
    # ping replies come from the kernel: nobody owns them, and we say so
    assert len(icmp) == 4 and all(p["Pid"] == 0 and p["ProcessName"] == "<unknown>" for p in icmp)
    srv_packets = read_all(live_ajax, srv_cap["CaptureId"])
    assert srv_packets and all(p["Pid"] == server.pid for p in srv_packets)
    assert {p["Protocol"] for p in srv_packets} == {6}
