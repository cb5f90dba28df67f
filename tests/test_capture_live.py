"""Live captures on loopback, compared with tcpdump run at the same time."""

import os
import subprocess
import sys
import time

import pytest

from tests.helpers import tshark
from tests.helpers.live import Tcpdump
from tests.helpers.live import assert_same_packets
from tests.helpers.live import read_all
from tests.helpers.live import wait_for
from tests.helpers.ports import free_port

pytestmark = pytest.mark.live


def test_system_capture_matches_tcpdump_and_labels_curl(live_ajax, http_server, tmp_path):
    port, server = http_server
    bpf = f"tcp port {port}"
    dump = Tcpdump("lo", bpf, str(tmp_path / "ref.pcap"))
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter=bpf)
    assert cap["State"] == 1 and cap["Type"] == 1 and cap["Adapters"] == ["lo"]
    curls = []
    while len(curls) < 5:
        lport = free_port()
        if lport in curls:  # free again while in TIME_WAIT, and loopback reuses the tuple
            continue        # (tcp_tw_reuse=2): two curls would share one "flow" here
        done = subprocess.run(["curl", "-s", "-o", "/dev/null", "--local-port", str(lport),
                               f"http://127.0.0.1:{port}/hello.txt"])
        if done.returncode == 45:  # the port was taken between free_port() and curl's bind
            continue
        assert done.returncode == 0, done
        curls.append(lport)
    time.sleep(0.5)
    assert live_ajax("capture_open", capture_id=cap["CaptureId"])["ErrorCode"] == 7  # BUSY
    live_ajax.ok("capture_stop_system", capture_id=cap["CaptureId"])
    ref = dump.stop()
    assert live_ajax("capture_stream", capture_id=cap["CaptureId"])["ErrorCode"] == 7
    packets = read_all(live_ajax, cap["CaptureId"])
    assert_same_packets([((p["Time"] - 116444736000000000) // 10, p["Length"]) for p in packets],
                        ref)
    # every packet of each curl flow carries curl's label; the server's side is python
    for lport in curls:
        flow = [p for p in packets if lport in (p["SrcPort"], p["DstPort"])]
        assert flow and all(p["ProcessName"] == "curl" for p in flow), \
            [(p["PacketId"], p["Pid"], p["ProcessName"], p["Summary"]) for p in flow]
        assert len({p["Pid"] for p in flow}) == 1 and flow[0]["Pid"] > 0
    details = live_ajax.ok("capture_get_details", capture_id=cap["CaptureId"])
    assert details["State"] == 2 and details["PacketCount"] == len(packets)
    meta = live_ajax.ok("capture_open", capture_id=cap["CaptureId"])
    assert meta["LinkTypes"] == [1] and meta["ProcessCount"] >= 5
    conns = live_ajax.ok("capture_list_conns", capture_id=cap["CaptureId"])
    assert len(conns) == 5
    for c in conns:
        assert c["ProcessName"] == "curl" and c["RemotePort"] == port
        assert c["LocalPort"] in curls and c["PacketsOut"] > 0 and c["PacketsIn"] > 0
        assert c["State"] in ("CLOSED", "CLOSING", "RESET")
        stream = live_ajax.ok("capture_conn_stream", capture_id=cap["CaptureId"],
                              conn_id=c["ConnectionId"], flags=1)
        assert stream["Packets"] and all(p["ConnectionId"] == c["ConnectionId"]
                                         for p in stream["Packets"])
        assert all(len(p["Data"]) == 2 * p["CapturedLength"] for p in stream["Packets"])


def _client_script(port):
    # waits for a line on stdin, then talks to the server, then waits to be told to exit
    return (
        "import socket,sys\n"
        "sys.stdin.readline()\n"
        f"s=socket.create_connection(('127.0.0.1',{port}))\n"
        "s.sendall(b'GET /hello.txt HTTP/1.0\\r\\n\\r\\n')\n"
        "while s.recv(65536): pass\n"
        "u=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        f"u.sendto(b'ping', ('::1', {port}))\n"
        "print('done', flush=True)\n"
        "sys.stdin.readline()\n")


def test_process_capture_keeps_exactly_its_packets(live_ajax, http_server, tmp_path):
    port, server = http_server
    client = subprocess.Popen([sys.executable, "-c", _client_script(port)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        dump = Tcpdump("lo", f"port {port}", str(tmp_path / "ref.pcap"))
        cap = live_ajax.ok("capture_start_process", pid=client.pid, adapter="lo")
        assert cap["Type"] == 2 and cap["Pid"] == client.pid
        assert client.pid in {p["Pid"] for p in live_ajax.ok("process_list_capture")}
        # unrelated traffic on the same port at the same time must not be kept
        subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/"], check=True)
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "done"
        subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/"], check=True)
        time.sleep(0.5)
        live = live_ajax.ok("capture_stream", capture_id=cap["CaptureId"])
        assert live["Packets"], "capture_stream shows nothing while active"
        live_ajax.ok("capture_stop_process", capture_id=cap["CaptureId"])
        ref = dump.stop()
    finally:
        client.kill()
        client.wait()
    packets = read_all(live_ajax, cap["CaptureId"])
    assert packets and all(p["Pid"] == client.pid for p in packets)
    assert {p["ProcessName"] for p in packets} == {"python3" if "python3" in
                                                    os.path.basename(sys.executable) else
                                                    os.path.basename(sys.executable)[:15]}
    # the client's TCP flow: same packets as tcpdump saw for its port
    tcp_ports = {p["SrcPort"] if p["DstPort"] == port else p["DstPort"]
                 for p in packets if p["Protocol"] == 6}
    assert len(tcp_ports) == 1
    # its UDP datagram over IPv6 is there too
    assert any(p["Protocol"] == 17 and p["DstIp"] == "::1" for p in packets)
    (cport,) = tcp_ports
    ours = [((p["Time"] - 116444736000000000) // 10, p["Length"]) for p in packets
            if p["Protocol"] == 6]
    from apppaccap.dissect.decode import decode
    from apppaccap.pcap.reader import CaptureReader
    with CaptureReader(str(tmp_path / "ref.pcap")) as r:
        theirs = [(rec.ts_ns // 1000, rec.origlen) for rec in r
                  if cport in (decode(rec.linktype, rec.data).sport,
                               decode(rec.linktype, rec.data).dport)]
    assert_same_packets(ours, theirs)
    assert len(ref) > len(theirs)  # tcpdump also saw the unrelated curls we rightly left out


def test_capture_errors(live_ajax):
    r = live_ajax("capture_start_system", adapter="lo", filter="tcp port banana")
    assert r["ErrorCode"] == 4 and r["ReturnValue"].startswith("filter:")
    assert live_ajax("capture_start_system", adapter="nosuch0")["ErrorCode"] == 6
    assert live_ajax("capture_start_system", adapter="/etc/passwd")["ErrorCode"] == 6
    assert live_ajax("capture_start_system", flags=4)["ErrorCode"] == 4
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert live_ajax("capture_start_process", pid=proc.pid)["ErrorCode"] == 6
    assert live_ajax("capture_start_process", pid=os.getpid(), thread_id=1)["ErrorCode"] == 4
    assert live_ajax("capture_stop_system", capture_id=999)["ErrorCode"] == 6
    assert live_ajax("capture_get_details", capture_id=999)["ErrorCode"] == 6
    assert live_ajax.ok("capture_list_active") == []


def test_states_busy_and_flush(live_ajax):
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter="udp port 9")
    cid = cap["CaptureId"]
    assert [c["CaptureId"] for c in live_ajax.ok("capture_list_active")] == [cid]
    assert live_ajax("apc_flush", flags=0xffff)["ErrorCode"] == 7
    assert live_ajax("capture_read", capture_id=cid)["ErrorCode"] == 7
    assert live_ajax("capture_delete", capture_id=cid)["ErrorCode"] == 7
    assert live_ajax("capture_stop_process", capture_id=cid)["ErrorCode"] == 4
    live_ajax.ok("capture_stop_all")
    assert live_ajax.ok("capture_list_active") == []
    assert [c["CaptureId"] for c in live_ajax.ok("capture_list_system")] == [cid]
    live_ajax.ok("capture_set_notes", capture_id=cid, notes="quiet")
    assert live_ajax.ok("capture_get_details", capture_id=cid)["Notes"] == "quiet"
    live_ajax.ok("apc_flush", flags=1)
    assert live_ajax.ok("capture_list_completed") == []
    assert live_ajax("capture_get_details", capture_id=cid)["ErrorCode"] == 6


def test_resolve_ips_fills_hostnames_in_background(live_ajax, http_server):
    port, _ = http_server
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter=f"tcp port {port}", flags=1)
    subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/"], check=True)

    def named():
        ips = live_ajax.ok("capture_query_ip", capture_id=cap["CaptureId"])
        return [i for i in ips if i["Ip"] == "127.0.0.1" and i["Hostname"]]
    found = wait_for(named, what="reverse DNS of 127.0.0.1")
    assert found[0]["Hostname"] == "localhost" and found[0]["PacketCount"] > 0
    live_ajax.ok("capture_stop_all")
    glob = live_ajax.ok("ip_query", ip="127.0.0.1")
    assert glob["Hostname"] == "localhost" and glob["PacketCount"] > 0


def test_ip_data_and_geo(live_ajax, http_server):
    port, _ = http_server
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter=f"tcp port {port}")
    subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/"], check=True)
    time.sleep(0.3)
    live_ajax.ok("capture_stop_all")
    cid = cap["CaptureId"]
    live_ajax.ok("ip_set_data", ip="127.0.0.1", capture_id=cid, data="lab box")
    live_ajax.ok("ip_set_geo", ip="127.0.0.1", capture_id=cid, lat=51.5, lng=-0.12,
                 country="GB", city="London", hostname="lab")
    ip = live_ajax.ok("ip_query", ip="127.0.0.1", capture_id=cid)
    assert (ip["Data"], ip["City"], ip["Lat"], ip["Hostname"]) == ("lab box", "London", 51.5, "lab")
    assert live_ajax.ok("ip_query", ip="127.0.0.1")["Country"] == "GB"
    assert live_ajax("ip_set_geo", ip="127.0.0.1", lat=91, lng=0)["ErrorCode"] == 4
    assert live_ajax("ip_query", ip="not-an-ip")["ErrorCode"] == 4
    assert live_ajax("ip_query", ip="192.0.2.55")["ErrorCode"] == 6


def test_statistics_from_aggregates(live_ajax, http_server):
    port, _ = http_server
    live_ajax.ok("stats_reset")
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter=f"tcp port {port}")
    for _ in range(3):
        subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/hello.txt"],
                       check=True)
    time.sleep(0.3)
    live_ajax.ok("capture_stop_all")
    cid = cap["CaptureId"]
    packets = read_all(live_ajax, cid)
    total = sum(p["Length"] for p in packets)
    st = live_ajax.ok("stats_by_id", capture_id=cid)
    assert (st["Packets"], st["Bytes"], st["Connections"]) == (len(packets), total, 3)
    assert st["Protocols"] == [{"Protocol": 6, "Packets": len(packets), "Bytes": total}]
    assert st["TopPorts"][0]["Port"] == port and st["TopIps"][0]["Ip"] == "127.0.0.1"
    assert sum(s["Packets"] for s in st["Series"]) == len(packets)
    by_port = live_ajax.ok("stats_by_port", capture_id=cid, port=port)
    assert by_port["Packets"] == len(packets) and by_port["Connections"] == 3
    assert live_ajax.ok("stats_by_ip", capture_id=cid, ip="127.0.0.1")["Packets"] == len(packets)
    assert live_ajax.ok("stats_by_protocol", capture_id=cid, protocol=17)["Packets"] == 0
    start = packets[0]["Time"] - 600_000_000
    dated = live_ajax.ok("stats_by_date", capture_id=cid, start_dtg=start,
                         end_dtg=packets[-1]["Time"] + 600_000_000)
    assert dated["Packets"] == len(packets) and dated["Series"]
    totals = live_ajax.ok("stats_totals")
    assert totals["Packets"] == len(packets) and totals["Bytes"] == total
    live_ajax.ok("stats_reset")
    assert live_ajax.ok("stats_totals")["Packets"] == 0
    assert live_ajax("stats_by_date", capture_id=cid, start_dtg=5, end_dtg=1)["ErrorCode"] == 4
    assert live_ajax("stats_by_port", capture_id=cid, port=70000)["ErrorCode"] == 4


def test_export_shows_process_in_tshark_and_ingest_reads_it_back(live, live_ajax, http_server,
                                                                  tmp_path):
    port, _ = http_server
    # usage accounting (on by default) watches the same flows: it must not change labels
    wait_for(lambda: live.usage.recorder is not None, 15, what="usage accounting")
    time.sleep(0.5)  # its adapters are open
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter=f"tcp port {port}")
    curl = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{local_port}",
                           f"http://127.0.0.1:{port}/hello.txt"], check=True,
                          capture_output=True, text=True)
    cport = int(curl.stdout)
    time.sleep(0.3)
    live_ajax.ok("capture_stop_all")
    packets = read_all(live_ajax, cap["CaptureId"])
    curl_pid = {p["Pid"] for p in packets if cport in (p["SrcPort"], p["DstPort"])}.pop()
    out = str(tmp_path / "live.pcapng")
    done = live.jobs.wait(live_ajax.ok("capture_export", capture_id=cap["CaptureId"],
                                       path=out)["CommandUid"])
    assert done["State"] == 3
    rows = tshark.fields(out, "tcp.srcport", "frame.comment",
                         display_filter=f"tcp.port == {cport}")
    assert len(rows) == len([p for p in packets if cport in (p["SrcPort"], p["DstPort"])])
    for row in rows:
        comment = row[1]
        assert comment.startswith(f"PID: {curl_pid}") and "Cmd: /usr/bin/curl" in comment
        assert "Args: curl -s -o /dev/null" in comment
    again = live.jobs.wait(live_ajax.ok("pcap_ingest_file", path=out)["CommandUid"])
    procs = live_ajax.ok("capture_get_processes", capture_id=int(again["Result"]))
    curl_proc = [p for p in procs if p["Pid"] == curl_pid]
    assert curl_proc and curl_proc[0]["Path"] == "/usr/bin/curl"
    assert curl_proc[0]["PacketCount"] == len(rows)


def test_a_frame_that_cannot_be_read_counts_its_packets_as_dropped(live, live_ajax,
                                                                   monkeypatch):
    """The feeding thread survives a frame it cannot read (memory ran out): its packets are
    in DroppedCount, and the packets after it are stored."""
    import socket

    from apppaccap.capture import sniffer
    real, failures = sniffer.frame_items, []

    def first_fails(payload, *args):
        if not failures:
            failures.append(sniffer.frame_packets(payload))
            raise MemoryError("out of memory (test)")
        return real(payload, *args)
    monkeypatch.setattr(sniffer, "frame_items", first_fails)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    cap = live_ajax.ok("capture_start_system", adapter="lo", filter=f"udp dst port {port}")
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _burst in range(3):
            for _ in range(200):
                tx.sendto(bytes(64), ("127.0.0.1", port))
            time.sleep(0.3)  # the sniffer process sends what it has (its 5 ms blocks)
    finally:
        tx.close()
    time.sleep(0.5)
    live_ajax.ok("capture_stop_system", capture_id=cap["CaptureId"])
    rx.close()
    row = live_ajax.ok("capture_get_details", capture_id=cap["CaptureId"])
    assert failures and failures[0] > 0
    assert row["DroppedCount"] == failures[0]
    assert row["PacketCount"] + row["DroppedCount"] == 600, row
