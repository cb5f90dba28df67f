"""The default theme's live packet list on the /ws stream, and its polling fallback, in
Chromium (Playwright) against a real server capturing loopback traffic."""

from __future__ import annotations

import re
import socket
import time

import pytest

from tests.helpers.browser import Console
from tests.helpers.ports import free_port
from tests.helpers.server import Server

pytestmark = [pytest.mark.browser, pytest.mark.live]


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "data", None, log_dir=tmp_path)
    yield srv
    srv.stop()


def _count(page) -> int:
    text = page.locator("#view-capture .pstatus").inner_text()
    m = re.search(r"Displayed ([\d,]+) of ([\d,]+)", text)
    return int(m.group(2).replace(",", "")) if m else -1


def _run(browser, server, no_websocket: bool) -> tuple[list, list, int]:
    port = free_port(socket.SOCK_DGRAM)
    cid = server.ok("capture_start_system", adapter="lo", filter=f"udp port {port}")["CaptureId"]
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    console = Console(page)
    if no_websocket:
        page.add_init_script("window.WebSocket = undefined;")
    sockets, polls, details = [], [], []
    page.on("websocket", lambda ws: sockets.append(ws))
    page.on("request", lambda r: polls.append(time.monotonic())
            if r.url.endswith("/ajax") and "capture_stream" in (r.post_data or "") else None)
    page.on("request", lambda r: details.append(time.monotonic())
            if r.url.endswith("/ajax") and "capture_get_details" in (r.post_data or "")
            else None)
    try:
        page.goto(f"{server.url}/#/capture/{cid}/packets")
        page.wait_for_selector("#view-capture .pstatus")
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sent = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for _ in range(5):
                udp.sendto(b"s" * 20, ("127.0.0.1", port))
                sent += 1
            page.wait_for_timeout(300)
            if sent >= 60 and _count(page) == sent:
                break
        shown = _count(page)
        # the list keeps following for 3 s more: how often it polled meanwhile
        t0 = time.monotonic()
        for _ in range(5):
            udp.sendto(b"t" * 20, ("127.0.0.1", port))
            sent += 1
        page.wait_for_timeout(3000)
        assert _count(page) == sent, (shown, sent)
        # the header's counters follow too (by the stream or by polling)
        page.wait_for_function("n => document.querySelector('#view-capture .caphead')"
                               ".innerText.includes('Packets ' + n)", arg=str(sent))
        console.assert_clean()
        return sockets, [t for t in polls if t >= t0], [t for t in details if t >= t0]
    finally:
        ctx.close()
        server.ok("capture_stop_system", capture_id=cid)


def test_packet_list_follows_over_the_stream(browser, server):
    sockets, polls, details = _run(browser, server, no_websocket=False)
    assert [s.url for s in sockets] == [f"ws://127.0.0.1:{server.port}/ws"]
    assert "token" not in sockets[0].url
    # new packets and the header's counters came by the stream: no polls meanwhile
    assert len(polls) == 0 and len(details) == 0


def test_packet_list_polls_without_websocket(browser, server):
    sockets, polls, details = _run(browser, server, no_websocket=True)
    # the fallback: capture_stream and capture_get_details every second
    assert sockets == [] and len(polls) >= 2 and len(details) >= 2


def _network(browser, server, no_websocket: bool) -> tuple[int, int]:
    """The Network page for 3 s under UDP traffic from this process: (usage_now polls,
    usage messages received over the stream)."""
    port = free_port(socket.SOCK_DGRAM)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", port))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    console = Console(page)
    if no_websocket:
        page.add_init_script("window.WebSocket = undefined;")
    polls, pushed = [], []
    page.on("request", lambda r: polls.append(time.monotonic())
            if r.url.endswith("/ajax") and "usage_now" in (r.post_data or "") else None)
    page.on("websocket", lambda ws: ws.on(
        "framereceived", lambda f: pushed.append(time.monotonic())
        if '"type":"usage"' in str(f) else None))
    try:
        page.goto(f"{server.url}/#/network")
        deadline = time.monotonic() + 30
        while not page.locator("#view-network tr.prog").count():  # this process, named
            assert time.monotonic() < deadline, "no program on the Network page"
            udp.sendto(b"u" * 200, ("127.0.0.1", port))
            page.wait_for_timeout(100)
        t0 = time.monotonic()
        while time.monotonic() < t0 + 3:
            udp.sendto(b"u" * 200, ("127.0.0.1", port))
            page.wait_for_timeout(100)
        console.assert_clean()
        return len([t for t in polls if t >= t0]), len([t for t in pushed if t >= t0])
    finally:
        ctx.close()
        udp.close()
        sink.close()


def test_network_page_rates_over_the_stream(browser, server):
    polls, pushed = _network(browser, server, no_websocket=False)
    assert polls == 0 and pushed >= 2, (polls, pushed)


def test_network_page_polls_without_websocket(browser, server):
    polls, pushed = _network(browser, server, no_websocket=True)
    assert polls >= 2 and pushed == 0, (polls, pushed)
