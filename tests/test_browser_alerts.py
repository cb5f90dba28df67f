"""The Alerts page (history, header badge) and the group-by explorer of the Statistics page
in a real browser (Debian's Chromium through Playwright), against a real server: an alert
fired by a program we start shows in the badge and the history; the explorer lists an
ingested capture's top rows with a sparkline each, and Other/Total. No console errors."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.helpers import corpus
from tests.helpers.browser import Console
from tests.helpers.browser import start_traffic
from tests.helpers.browser import stop_all
from tests.helpers.live import wait_for
from tests.helpers.server import Server
from tests.helpers.server import wait_command

pytestmark = [pytest.mark.browser, pytest.mark.live]

ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
FILE = "wellformed/http_large_mixed_2k_packets.pcap"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("alerts")
    inn = tmp / "in"
    inn.mkdir()
    server = Server(tmp / "data", tmp / "data", "--ingest-root", inn, log_dir=tmp)
    shutil.copy(corpus.path(FILE), inn / "big.pcap")
    done = wait_command(server.ok, server.ok("pcap_ingest_file", path=str(inn / "big.pcap")))
    assert done["State"] == 3, done
    server.capture_id = int(done["Result"])
    port, procs = start_traffic(str(tmp / "www"))
    server.port_www = port
    server.tmp = tmp
    yield server
    stop_all(procs)
    server.stop()


@pytest.fixture
def page(browser):
    os.makedirs(ARTIFACTS, exist_ok=True)
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(15_000)
    pg.console = Console(pg)
    yield pg
    pg.console.assert_clean()
    ctx.close()


def test_alerts_page_history_and_badge(page, site):
    alert = site.ok("alert_add", name="first use", alert_type="NEW_PROGRAM", interval=1)
    wait_for(lambda: site.ok("usage_now")["Programs"], timeout=20, what="usage data")
    wait_for(lambda: site.ok("alert_list")[0]["Name"] == "first use", what="the alert")
    page.wait_for_timeout(3000)  # the observer's first look learns what runs already
    page.goto(site.url + "/#/processes")
    page.wait_for_selector("#nav a.active")
    # ~2 s at 20 kB/s: long enough for usage accounting to name the program under load
    (site.tmp / "www" / "slow.bin").write_bytes(b"s" * 40_000)
    for attempt in range(6):
        # a program usage accounting left unnamed, or learned without news (it was running
        # when the observer first looked), is known or lost by now: a new one each time.
        # Its comm name (15 characters) differs each time too: when usage accounting looked
        # it up after it exited (a loaded box), the event names it by comm without a path,
        # and that name is known from then on (analytics/alerts.py, _is_new)
        program = str(site.tmp / f"alertcurl{attempt}")
        shutil.copy2(shutil.which("curl"), program)
        subprocess.run([program, "-s", "--limit-rate", "20k", "-o", "/dev/null",
                        f"http://127.0.0.1:{site.port_www}/slow.bin"], check=True, timeout=30)
        try:
            wait_for(lambda program=program: [
                e for e in site.ok("alert_events", alert_id=alert["AlertId"])
                if e["ProcessPath"] == program or (
                    e["ProcessPath"] == "" and e["ProcessName"] == os.path.basename(program))],
                timeout=8, what="the event")
            break
        except AssertionError:
            continue
    else:
        raise AssertionError("no alert event after 6 programs")
    badge = page.locator("#alertbadge")
    badge.wait_for(state="visible", timeout=20_000)  # polled every 10 s
    assert "alert" in badge.inner_text()
    badge.click()
    page.wait_for_selector("#view-alerts:not([hidden])")
    page.wait_for_selector("#view-alerts td:has-text('alertcurl')")
    assert page.locator("#view-alerts td:has-text('first use')").count() >= 2  # alert + event
    assert not badge.is_visible()
    page.screenshot(path=os.path.join(ARTIFACTS, "alerts-page.png"))
    # add one through the form: a threshold alert
    form = page.locator("#view-alerts .alertform")
    form.locator("[name=name]").fill("heavy remote")
    form.locator("select[name=type]").select_option(str(1))
    form.locator("select[name=group]").select_option("remote_ip")
    form.locator("[name=threshold]").fill("1000000")
    form.locator("button:has-text('Add alert')").click()
    page.wait_for_selector("#view-alerts td:has-text('heavy remote')")
    added = [a for a in site.ok("alert_list") if a["Name"] == "heavy remote"][0]
    assert (added["GroupBy"], added["Threshold"], added["Window"]) == ("remote_ip", 1000000, "5m")
    # and a label alert: the label field shows for that kind only
    assert not form.locator("[name=label]").is_visible()
    form.locator("[name=name]").fill("torrents")
    form.locator("select[name=type]").select_option(str(4))
    assert not form.locator("select[name=group]").is_visible()
    form.locator("[name=label]").fill("BitTorrent")
    form.locator("button:has-text('Add alert')").click()
    page.wait_for_selector("#view-alerts td:has-text('a connection labelled BitTorrent')")
    added = [a for a in site.ok("alert_list") if a["Name"] == "torrents"][0]
    assert (added["AlertType"], added["Label"]) == (4, "BitTorrent")


def test_group_by_explorer(page, site):
    page.goto(site.url + "/#/stats")
    box = page.locator(".groupby")
    box.wait_for()
    source = box.locator("select[aria-label='group-by data']")
    # polled from Python: wait_for_function evaluates a string, which the page's CSP refuses
    wait_for(lambda: source.locator("option").count() > 1, what="the capture in the list")
    source.select_option(str(site.capture_id))
    box.locator("select[aria-label='range']").select_option("")
    box.locator("select[aria-label='group by']").select_option("conn")
    page.wait_for_selector(".groupby td:has-text('TCP 172.16.30.190')")
    want = site.ok("stats_group_by", capture_id=site.capture_id, group_by="conn")
    rows = box.locator("tbody tr")
    # each choice above asks again; an earlier answer (another range) may be drawn first
    expected = len(want["Rows"]) + (1 if want["Other"]["Groups"] else 0) + 1
    wait_for(lambda: rows.count() == expected, what=f"{expected} rows in the explorer")
    assert want["Rows"][0]["Name"] in rows.nth(0).inner_text()
    # one uPlot sparkline (js/charts.js) per row with a series; Other and Total have none
    assert box.locator(".sparkline canvas").count() == len(want["Rows"])
    assert "Total" in rows.nth(rows.count() - 1).inner_text()
    page.screenshot(path=os.path.join(ARTIFACTS, "groupby-explorer.png"))
    # usage accounting: keys it does not know are not offered
    source.select_option("0")
    wait_for(lambda: box.locator("option[value='conn']").is_disabled(), what="conn disabled")
    page.wait_for_selector(".groupby tbody tr")
    # a filter the counters cannot answer is explained, not a console error
    source.select_option(str(site.capture_id))
    box.locator("input[name=gbfilter]").fill("ip.src == 1.2.3.4")
    box.locator("input[name=gbfilter]").press("Enter")
    page.wait_for_selector("text=both ways")


def test_narrow_window_does_not_scroll_sideways(browser, site):
    """At 800x600 the Alerts page and the Statistics page with the explorer fit the width
    (the header with its Alerts link and badge too)."""
    ctx = browser.new_context(viewport={"width": 800, "height": 600})
    pg = ctx.new_page()
    pg.set_default_timeout(15_000)
    console = Console(pg)
    for view, ready in (("alerts", "#view-alerts .alertform"), ("stats", ".groupby tbody tr")):
        pg.goto(site.url + "/#/" + view)
        pg.wait_for_selector(ready)
        pg.wait_for_timeout(400)
        pg.screenshot(path=os.path.join(ARTIFACTS, f"{view}-800x600.png"))
        sw, iw = pg.evaluate("() => [document.documentElement.scrollWidth, innerWidth]")
        assert sw <= iw, (view, sw, iw)
    console.assert_clean()
    ctx.close()
