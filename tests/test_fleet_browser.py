"""The Fleet page in a real browser (Debian's Chromium through Playwright) against two real
sensors shipping to a real clickhouse-server: the hosts with their status, the top
programs across hosts, "who talks to X", a click through to the owning sensor, and a
connection's packets fetched from it. Screenshots (light, dark, 800x600) go to
tests/artifacts/; no console errors."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers.browser import Console
from tests.helpers.browser import start_traffic
from tests.helpers.browser import stop_all
from tests.helpers.clickhouse import ClickHouse
from tests.helpers.live import wait_for
from tests.helpers.server import Server

pytestmark = [pytest.mark.browser, pytest.mark.live]

ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleetpage")
    node = ClickHouse(tmp / "ch").start()
    port, procs = start_traffic(str(tmp / "www"))
    servers = []
    try:
        for name in ("web-1", "db-1"):
            s = Server(tmp / name, None, "--fleet-url", node.url, "--fleet-host", name,
                       log_dir=tmp)
            servers.append(s)
        links = ",".join(f"{n}={s.url}" for n, s in zip(("web-1", "db-1"), servers))
        servers[0].ok("settings_set", key_name="fleet_sensors", value=links)
        for i, s in enumerate(servers):
            cap = s.ok("capture_start_system", adapter="lo", filter=f"tcp port {port}")
            for _ in range(2 + i):
                subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/"],
                               check=True, timeout=30)
            s.ok("capture_stop_system", capture_id=cap["CaptureId"])
        wait_for(lambda: len(servers[0].ok("fleet_search", filter='proc.name == "curl"')
                             ["Connections"]) >= 5, timeout=30, what="the fleet")
        yield servers, port
    finally:
        stop_all(procs)
        for s in servers:
            s.stop()
        node.stop()


@pytest.fixture
def browser_ctx(browser):
    os.makedirs(ARTIFACTS, exist_ok=True)
    made = []

    def make(**kw):
        ctx = browser.new_context(accept_downloads=True, **kw)
        pg = ctx.new_page()
        pg.set_default_timeout(15_000)
        pg.console = Console(pg)
        made.append((ctx, pg))
        return pg
    yield make
    for ctx, pg in made:
        pg.console.assert_clean()
        ctx.close()


def test_fleet_page_hosts_top_programs_and_who_talks_to(site, browser_ctx):
    servers, port = site
    page = browser_ctx(viewport={"width": 1400, "height": 900}, color_scheme="light")
    page.goto(servers[0].url + "/#/fleet")
    page.wait_for_selector("#view-fleet:not([hidden])")
    page.wait_for_selector("#view-fleet td:has-text('db-1')")
    assert page.locator("#view-fleet .badge:has-text('reporting')").count() == 2
    page.wait_for_selector("#view-fleet td:has-text('/usr/bin/curl')")
    page.locator("#view-fleet [name=who]").fill(f'proc.name == "curl" && tcp.port == {port}')
    page.locator("#view-fleet button:has-text('Search the fleet')").click()
    page.wait_for_selector("#view-fleet .fleetcount:has-text('5 connections')")
    rows = page.locator("#view-fleet tr:has(button:has-text('Packets'))")
    assert rows.count() == 5
    opens = page.locator("#view-fleet tr:has-text('web-1'):has(button:has-text('Open'))")
    assert opens.count() == 2
    page.screenshot(path=os.path.join(ARTIFACTS, "fleet-page.png"), full_page=True)
    # a click through opens the connection's capture on its own sensor
    row = page.locator("#view-fleet tr:has-text('db-1'):has(button:has-text('Open'))").first
    with page.context.expect_page() as opened:
        row.locator("button:has-text('Open')").click()
    other = opened.value
    other.console = Console(other)
    other.wait_for_load_state()
    assert other.url.startswith(servers[1].url) and "#/capture/" in other.url
    other.wait_for_selector("#view-capture:not([hidden])")
    other.close()
    # and its packets, fetched from that sensor as PCAPNG
    with page.expect_download() as dl:
        row.locator("button:has-text('Packets')").click()
    path = dl.value.path()
    with open(path, "rb") as fh:
        assert fh.read(4) == b"\x0a\x0d\x0d\x0a"  # a pcapng section header block
    # an address as the question
    page.locator("#view-fleet [name=who]").fill("127.0.0.1")
    page.locator("#view-fleet button:has-text('Search the fleet')").click()
    page.wait_for_selector("#view-fleet .fleetcount:has-text('ip.addr == 127.0.0.1')")


@pytest.mark.parametrize("scheme,size", [("dark", (1400, 900)), ("light", (800, 600))])
def test_fleet_page_screenshots(site, browser_ctx, scheme, size):
    servers, _ = site
    page = browser_ctx(viewport={"width": size[0], "height": size[1]}, color_scheme=scheme)
    page.goto(servers[0].url + "/#/fleet")
    page.wait_for_selector("#view-fleet td:has-text('db-1')")
    page.locator("#view-fleet [name=who]").fill("127.0.0.1")
    page.locator("#view-fleet button:has-text('Search the fleet')").click()
    page.wait_for_selector("#view-fleet .fleetcount:has-text('connections')")
    assert page.evaluate("document.documentElement.getAttribute('data-theme')") == scheme
    # nothing wider than the window at 800 px: the tables drop low-priority columns
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= size[0] + 1, width
    page.screenshot(path=os.path.join(ARTIFACTS, f"fleet-{scheme}-{size[0]}x{size[1]}.png"),
                    full_page=True)
