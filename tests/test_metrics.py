"""GET /metrics scraped during a real loopback capture, parsed by prometheus_client."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.live import wait_for
from tests.helpers.ports import free_port
from tests.helpers.server import Server

pytestmark = pytest.mark.live


def scrape(srv, headers=None) -> dict:
    req = urllib.request.Request(f"{srv.url}/metrics", headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_move_with_the_traffic(tmp_path):
    srv = Server(tmp_path / "data", None, log_dir=tmp_path)
    try:
        port = free_port(socket.SOCK_DGRAM)
        cid = srv.ok("capture_start_system", adapter="lo",
                     filter=f"udp port {port}")["CaptureId"]
        label = (("capture_id", str(cid)),)
        before = scrape(srv)
        assert before[("apppaccap_capture_packets_total", label)] == 0
        assert before[("apppaccap_active_captures", ())] == 1
        assert before[("process_resident_memory_bytes", ())] > 10 << 20
        assert ("apppaccap_searches", (("state", "running"),)) in before
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(100):
            udp.sendto(b"m" * i, ("127.0.0.1", port))
        wait_for(lambda: scrape(srv)[("apppaccap_capture_packets_total", label)] == 100,
                 what="100 packets in the metrics")
        after = scrape(srv)
        # 100 datagrams of 0..99 bytes: Ethernet 14 + IPv4 20 + UDP 8 each
        assert after[("apppaccap_capture_bytes_total", label)] == sum(42 + i for i in range(100))
        assert after[("apppaccap_capture_dropped_total", label)] == 0
        attributed = after[("apppaccap_capture_attributed_total", label)]
        assert attributed + after[("apppaccap_capture_unknown_total", label)] == 100
        assert ("apppaccap_capture_writer_queue", label) in after

        def program_bytes():
            m = scrape(srv)
            return sum(v for (n, _l), v in m.items() if n == "apppaccap_program_bytes_total")
        first = program_bytes()
        for _ in range(50):
            udp.sendto(b"p" * 1000, ("127.0.0.1", port))
        wait_for(lambda: program_bytes() >= first + 50 * 1000, timeout=10,
                 what="usage bytes in the metrics")
        srv.ok("capture_stop_system", capture_id=cid)
        assert scrape(srv)[("apppaccap_active_captures", ())] == 0
        srv.ok("settings_set", key_name="metrics_enabled", value="0")
        with pytest.raises(urllib.error.HTTPError) as err:
            scrape(srv)
        assert err.value.code == 404
        # a page of another site cannot read them
        srv.ok("settings_set", key_name="metrics_enabled", value="1")
        with pytest.raises(urllib.error.HTTPError) as err:
            scrape(srv, {"Origin": "http://evil.example"})
        assert err.value.code == 403
    finally:
        srv.stop()
