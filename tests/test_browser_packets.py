"""The capture view's packet list, quick filter, the search result states and the Processes
tab in a real browser (Debian's Chromium through Playwright) against a real server.

The server ingests a corpus capture (HTTP, TCP, UDP mixed) and a generated 100k-packet one;
the quick filter must find what a search with the same filter finds, page by page; column
choices survive a reload; screenshots of the capture view go to tests/artifacts/.
"""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest

from tests.helpers import corpus
from tests.helpers.browser import Console
from tests.helpers.browser import write_big_pcap
from tests.helpers.server import Server
from tests.test_packet_filter import busiest_port

pytestmark = [pytest.mark.browser, pytest.mark.live]

ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
MIXED = "wellformed/http_large_mixed_2k_packets.pcap"   # TCP only, HTTP on ports 8868/8869
TLS = "wellformed/tls_three_sessions.pcap"               # handshakes on port 443
HTTP = "wellformed/http_bro_org_multi_object.pcap"       # port 80
DNS = "wellformed/dns_udp_mixed.pcap"                    # UDP
BIG = 100_000


class Site:
    def __init__(self, tmp):
        self.inn = tmp / "in"
        self.inn.mkdir()
        self.server = Server(tmp / "data", tmp / "export", "--ingest-root", self.inn,
                             log_dir=tmp)
        self.url = self.server.url

    def wait(self, cmd, timeout=120.0):
        deadline = time.monotonic() + timeout
        while cmd["State"] < 3:
            assert time.monotonic() < deadline, cmd
            time.sleep(0.05)
            cmd = self.server.ok("command_query", command_uid=cmd["CommandUid"])
        assert cmd["State"] == 3, cmd
        return cmd

    def ingest(self, path):
        target = self.inn / os.path.basename(path)
        if not target.exists():
            shutil.copy(path, target)
        return int(self.wait(self.server.ok("pcap_ingest_file", path=str(target)))["Result"])

    def search_ids(self, flt, capture_id):
        sid = self.server.ok("search_start", filter=flt, capture_id=capture_id)["SearchId"]
        deadline = time.monotonic() + 60
        while self.server.ok("search_open", search_id=sid)["State"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ids, last = [], 0
        while True:
            page = self.server.ok("search_read", search_id=sid, last_id=last, limit=10000)
            ids += [r["PacketId"] for r in page["Results"]]
            last = page["LastId"]
            if not page["More"]:
                return ids


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packets")
    s = Site(tmp)
    s.mixed = s.ingest(corpus.path(MIXED))
    s.tls, s.http, s.dns = (s.ingest(corpus.path(p)) for p in (TLS, HTTP, DNS))
    yield s
    s.server.stop()


@pytest.fixture
def page(browser):
    os.makedirs(ARTIFACTS, exist_ok=True)
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    pg.console = Console(pg)
    pg.actions = []
    pg.on("request", lambda r: pg.actions.append(_action(r)) if r.url.endswith("/ajax") else None)
    yield pg
    pg.console.assert_clean()
    ctx.close()


def _action(request) -> str:
    m = re.search(r"(?:^|&)action=([a-z_]+)", request.post_data or "")
    return m.group(1) if m else ""


def shot(page, name):
    page.wait_for_timeout(250)
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}.png"))


def open_capture(page, site, cid):
    page.goto(site.url + f"/#/capture/{cid}/packets")
    page.wait_for_selector("#view-capture .prows .prow[data-id]")


def list_count(page) -> int:
    return page.evaluate("() => App.capture.list().count()")


def quick(page, text):
    box = "#view-capture input[name=quick]"
    page.fill(box, text)
    page.press(box, "Enter")


def quick_found(page, text):
    """Apply a quick filter and wait for its own answer: the status line of the filter before
    ("all found") must not be taken for this one's."""
    box = "#view-capture input[name=quick]"
    page.fill(box, text)
    with page.expect_response(lambda r: r.url.endswith("/ajax") and
                              "capture_filter_packets" in (r.request.post_data or "")):
        page.press(box, "Enter")
    wait_all_found(page)


def wait_all_found(page):
    page.wait_for_function("() => /all found/.test(document.querySelector('#view-capture "
                           ".pstatus').innerText)")


def load_all(page):
    """Click Load more until the filter has scanned the whole capture."""
    more = page.locator("#view-capture button:has-text('Load more')")
    deadline = time.monotonic() + 60
    while not re.search("all found", status(page)):
        assert time.monotonic() < deadline, status(page)
        if more.is_visible():
            more.click()
        page.wait_for_timeout(100)


def status(page) -> str:
    return page.locator("#view-capture .pstatus").inner_text()


def test_quick_filter_counts_like_search_and_marks_errors(page, site):
    port = busiest_port(corpus.path(MIXED))
    flt = f"tcp.port == {port}"
    want = site.search_ids(flt, site.mixed)
    assert want
    open_capture(page, site, site.mixed)
    box = page.locator("#view-capture input[name=quick]")

    # invalid while typing: red with the server's message, before any Enter
    page.type("#view-capture input[name=quick]", "tcp.port == ", delay=20)
    page.wait_for_selector("#view-capture input[name=quick].invalid")
    error = site.server.ok("search_verify_filter", filter="tcp.port == ")["Error"]
    assert error in page.locator("#view-capture .qfmsg").inner_text()
    shot(page, "quickfilter_invalid")
    page.press("#view-capture input[name=quick]", "Enter")  # refused: the list stays
    page.wait_for_timeout(300)
    assert "capture_filter_packets" not in page.actions
    # the old syntax is a display-filter error too
    box.fill("proc:curl")
    page.wait_for_selector("#view-capture input[name=quick].invalid")
    box.fill(flt)
    page.wait_for_selector("#view-capture input[name=quick].valid")

    page.actions.clear()
    page.press("#view-capture input[name=quick]", "Enter")
    load_all(page)
    assert list_count(page) == len(want)
    assert f"{len(want):,} matching packets" in status(page)
    shown = page.evaluate("() => { const l = App.capture.list(); return l.shown(); }")
    assert shown == len(want)
    # read from the server by the filter action, not by loading the capture
    assert "capture_filter_packets" in page.actions and "capture_read" not in page.actions
    first = page.locator("#view-capture .prows .prow").first
    assert int(first.get_attribute("data-id")) == want[0]
    shot(page, "quickfilter_applied")

    # emptying the box shows the whole capture again
    box.fill("")
    page.wait_for_function("() => /Displayed [\\d,]+ of 1,985/.test(document.querySelector("
                           "'#view-capture .pstatus').innerText)")


def test_quick_filter_pages_with_load_more_and_scrolling(page, site):
    flt = "tcp"
    want = site.search_ids(flt, site.mixed)
    assert len(want) > 1000  # more than one page of the list
    open_capture(page, site, site.mixed)
    quick(page, flt)
    page.wait_for_selector("#view-capture button:has-text('Load more'):visible")
    first = list_count(page)
    assert first < len(want)
    assert "more: scroll down or Load more" in status(page)
    # scrolling to the end asks for the next page
    page.evaluate("() => { const v = document.querySelector('#view-capture .pviewport');"
                  " v.scrollTop = v.scrollHeight; }")
    wait_all_found(page)
    ids = page.evaluate("""() => { const l = App.capture.list(), out = [];
        document.querySelectorAll('#view-capture .prows .prow[data-id]').forEach(
            r => out.push(Number(r.getAttribute('data-id'))));
        return {count: l.count(), visible: out}; }""")
    assert ids["count"] == len(want)
    assert ids["visible"] and set(ids["visible"]) <= set(want)
    assert not page.locator("#view-capture button:has-text('Load more')").is_visible()


def header(page, col):
    return page.locator(f"#view-capture .phead > span[data-col={col}]")


def column_texts(page, col) -> list[str]:
    return page.locator(f"#view-capture .prows .prow:visible .c-{col}").all_inner_texts()


def test_columns_sort_hide_resize_survive_reload(page, site):
    open_capture(page, site, site.mixed)
    # relative time: the first packet is at 0.000000, then seconds since it
    times = column_texts(page, "time")
    assert times[0] == "0.000000"
    assert all(re.fullmatch(r"\d+\.\d{6}", t) for t in times[:20])
    assert [float(t) for t in times[:20]] == sorted(float(t) for t in times[:20])

    quick(page, "tcp.port == 8868")  # sort works on the packets in the browser
    wait_all_found(page)
    assert list_count(page) > 100
    header(page, "len").click()
    lengths = [int(t) for t in column_texts(page, "len")[:30]]
    assert lengths == sorted(lengths)
    header(page, "len").click()
    lengths = [int(t) for t in column_texts(page, "len")[:30]]
    assert lengths == sorted(lengths, reverse=True)

    # hide PID from the Columns menu; widen Source by dragging its edge
    page.click("#view-capture button.colbtn")
    page.uncheck("#view-capture .colmenu input[name=col-pid]")
    page.keyboard.press("Escape")
    page.mouse.click(5, 5)
    assert not header(page, "pid").is_visible()
    before = header(page, "src").bounding_box()["width"]
    handle = header(page, "src").locator(".rz").bounding_box()
    x, y = handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 60, y, steps=5)
    page.mouse.up()
    after = header(page, "src").bounding_box()["width"]
    assert after == pytest.approx(before + 60, abs=3)
    # absolute time as an option
    page.click("#view-capture button.colbtn")
    page.select_option("#view-capture .colmenu select[name=timefmt]", "abs")
    page.mouse.click(5, 5)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", column_texts(page, "time")[0])

    page.reload()
    open_capture(page, site, site.mixed)
    assert not header(page, "pid").is_visible()
    assert header(page, "src").bounding_box()["width"] == pytest.approx(after, abs=1)
    assert "desc" in header(page, "len").get_attribute("class")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d .*", column_texts(page, "time")[0])
    # reset: the defaults again
    page.click("#view-capture button.colbtn")
    page.click("#view-capture .colmenu button:has-text('Reset columns')")
    page.mouse.click(5, 5)
    assert header(page, "pid").is_visible()
    assert column_texts(page, "time")[0] == "0.000000"


def first_row(page):
    return page.locator("#view-capture .prows .prow:visible").first


def test_wireshark_colours_and_info(page, site):
    open_capture(page, site, site.tls)
    quick_found(page, "tcp.flags.syn == 1")
    row = first_row(page)
    assert "wc-synfin" in row.get_attribute("class")
    # Wireshark's TCP SYN/FIN colours: background [41026,41026,41026], text [4718,10030,11796]
    assert row.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(160, 160, 160)"
    assert row.evaluate("e => getComputedStyle(e).color") == "rgb(18, 39, 46)"
    # Info: "sport → dport [SYN] Seq=… Len=0", as Wireshark's Info column
    info = row.locator(".c-info").inner_text()
    assert re.match(r"\d+ \u2192 443 \[SYN\] Seq=\d+ Win=\d+ Len=0", info), info
    quick_found(page, "tcp.flags.syn == 0")
    assert "wc-tcp" in first_row(page).get_attribute("class")
    assert first_row(page).evaluate("e => getComputedStyle(e).backgroundColor") == \
        "rgb(231, 229, 255)"

    # port 80: the HTTP rule comes before TCP SYN/FIN, so a SYN there is HTTP green
    open_capture(page, site, site.http)
    quick_found(page, "tcp.flags.syn == 1")
    assert "wc-http" in first_row(page).get_attribute("class")
    assert first_row(page).evaluate("e => getComputedStyle(e).backgroundColor") == \
        "rgb(228, 255, 199)"

    open_capture(page, site, site.dns)
    row = first_row(page)
    assert "wc-udp" in row.get_attribute("class")
    assert row.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(218, 238, 255)"
    shot(page, "colours_udp_light")
    # dark theme: the same rule, a dark background and light text
    page.click("#themetoggle")
    assert row.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(27, 49, 71)"
    shot(page, "colours_udp_dark")
    page.click("#themetoggle")


def search_state(page) -> str:
    return page.locator("#view-search .searchstate").get_attribute("data-state")


def test_search_states_and_columns(page, site):
    big = site.inn / "big.pcap"
    write_big_pcap(str(big), BIG)
    big_id = site.ingest(big)
    page.goto(site.url + "/#/search")
    page.wait_for_selector("#view-search .searchstate[data-state=none]")
    assert "No search open" in page.locator("#view-search .searchstate").inner_text()
    none_bg = page.locator("#view-search .searchstate").evaluate(
        "e => getComputedStyle(e).borderStyle + getComputedStyle(e).backgroundColor")
    shot(page, "search_none")

    # running: a Python-tested filter over 100k packets takes a while
    page.select_option("#view-search select[aria-label='search in']", str(big_id))
    page.fill("#view-search input[name=filter]", "ip.len > 9000")
    page.click("#view-search button:has-text('Search')")
    page.wait_for_selector("#view-search .searchstate[data-state=running]")
    running_bg = page.locator("#view-search .searchstate").evaluate(
        "e => getComputedStyle(e).borderStyle + getComputedStyle(e).backgroundColor")
    assert "Searching" in page.locator("#view-search .searchstate").inner_text()
    shot(page, "search_running")
    # finished without a match
    page.wait_for_selector("#view-search .searchstate[data-state=empty]", timeout=120_000)
    assert "No matches" in page.locator("#view-search .searchstate").inner_text()
    empty_bg = page.locator("#view-search .searchstate").evaluate(
        "e => getComputedStyle(e).borderStyle + getComputedStyle(e).backgroundColor")
    shot(page, "search_empty")
    assert len({none_bg, running_bg, empty_bg}) == 3

    # with matches: Process, PID, Protocol and Info columns
    page.select_option("#view-search select[aria-label='search in']", str(site.tls))
    page.fill("#view-search input[name=filter]", "tcp.flags.syn == 1")
    page.click("#view-search button:has-text('Search')")
    page.wait_for_selector("#view-search .searchresults tr[data-key]")
    # finished with matches: the table alone (while it runs, the banner stays above it)
    page.wait_for_selector("#view-search .searchstate", state="hidden")
    heads = page.locator("#view-search .searchresults th").all_inner_texts()
    for col in ("Process", "PID", "Protocol", "Info"):
        assert col in heads, heads
    first = page.locator("#view-search .searchresults tr[data-key]").first
    assert "TCP" in first.inner_text() and "[SYN" in first.inner_text()
    shot(page, "search_results")


def test_processes_tab_hides_kernel_threads(page, site):
    page.goto(site.url + "/#/processes")
    page.wait_for_selector(f"#view-processes tr[data-key='{os.getpid()}']")
    assert page.locator("#view-processes tr[data-key='2']").count() == 0  # kthreadd
    page.check("#view-processes input[name=kthreads]")
    page.wait_for_selector("#view-processes tr[data-key='2']")
    page.uncheck("#view-processes input[name=kthreads]")
    page.wait_for_selector("#view-processes tr[data-key='2']", state="detached")


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", [(1400, 900), (800, 600)])
def test_capture_view_screenshots(browser, site, scheme, size):
    w, h = size
    ctx = browser.new_context(viewport={"width": w, "height": h}, color_scheme=scheme)
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    console = Console(pg)
    open_capture(pg, site, site.mixed)
    pg.locator("#view-capture .prows .prow").nth(2).click()
    pg.wait_for_selector("#view-capture pre.hexdump")
    shot(pg, f"packets_{scheme}_{w}x{h}")
    sw, iw = pg.evaluate("() => [document.documentElement.scrollWidth, innerWidth]")
    assert sw <= iw
    # the list itself never scrolls sideways: its columns fit or collapse
    lw = pg.evaluate("() => { const v = document.querySelector('#view-capture .pviewport');"
                     " return [v.scrollWidth, v.clientWidth]; }")
    assert lw[0] <= lw[1]
    assert pg.locator("#view-capture .phead > span[data-col=info]").is_visible()
    quick(pg, "tcp.port == 8869 && frame.len > 1000")
    wait_all_found(pg)
    assert list_count(pg) > 10
    shot(pg, f"packets_filtered_{scheme}_{w}x{h}")
    pg.click("#view-capture button.colbtn")
    shot(pg, f"packets_columns_{scheme}_{w}x{h}")
    sw, iw = pg.evaluate("() => [document.documentElement.scrollWidth, innerWidth]")
    assert sw <= iw
    console.assert_clean()
    ctx.close()
