"""kill -9 while capturing: the capture comes back INTERRUPTED with every committed packet."""

import socket
import time

import pytest

from tests.helpers.live import wait_for
from tests.helpers.ports import free_port
from tests.helpers.server import Server

pytestmark = pytest.mark.live


def test_kill_9_keeps_committed_packets(tmp_path):
    data = tmp_path / "data"
    server = Server(data)
    port = free_port(socket.SOCK_DGRAM)
    try:
        cap = server.ok("capture_start_system", adapter="lo", filter=f"udp port {port}")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(2000):
            sock.sendto(b"x%d" % i, ("127.0.0.1", port))
        sock.close()

        def committed():
            page = server.ok("capture_stream", capture_id=cap["CaptureId"], last_id=1999)
            return page["LastId"] if page["Packets"] else 0
        wait_for(committed, what="2000 packets committed")
        seen = server.ok("capture_stream", capture_id=cap["CaptureId"], limit=10000)["Packets"]
        time.sleep(0.3)
    finally:
        server.kill(9)
    assert len(seen) == 2000
    again = Server(data)
    try:
        details = again.ok("capture_get_details", capture_id=cap["CaptureId"])
        assert details["State"] == 4 and details["PacketCount"] == 2000  # INTERRUPTED
        assert again.ok("capture_list_active") == []
        page = again.ok("capture_read", capture_id=cap["CaptureId"], limit=10000)
        assert [p["PacketId"] for p in page["Packets"]] == [p["PacketId"] for p in seen]
        assert [p["Length"] for p in page["Packets"]] == [p["Length"] for p in seen]
    finally:
        again.stop()
