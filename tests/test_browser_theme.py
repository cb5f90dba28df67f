"""The default theme's follow-stream dialog, download links, dark theme and narrow layout
in a real browser (Debian's Chromium through Playwright).

A real server ingests an HTTP capture of the corpus; the follow dialog must show the
request text and exactly conn_follow's bytes. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.helpers import corpus
from tests.helpers.browser import Console
from tests.helpers.server import Server

pytestmark = [pytest.mark.browser, pytest.mark.live]

ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
HTTP = "wellformed/http_get_file_download.pcap"


class Site:
    def __init__(self, tmp):
        self.export = tmp / "export"
        self.inn = tmp / "in"
        self.export.mkdir()
        self.inn.mkdir()
        self.server = Server(tmp / "data", self.export, "--ingest-root", self.inn, log_dir=tmp)
        self.url = self.server.url

    def wait(self, cmd, timeout=60.0):
        deadline = time.monotonic() + timeout
        while cmd["State"] < 3:
            assert time.monotonic() < deadline, cmd
            time.sleep(0.05)
            cmd = self.server.ok("command_query", command_uid=cmd["CommandUid"])
        assert cmd["State"] == 3, cmd
        return cmd

    def ingest(self, name):
        target = self.inn / os.path.basename(name)
        shutil.copy(corpus.path(name), target)
        return int(self.wait(self.server.ok("pcap_ingest_file", path=str(target)))["Result"])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Site(tmp_path_factory.mktemp("theme"))
    s.server.ok("extract_enable")  # so the ingest finds the HTTP body
    s.capture_id = s.ingest(HTTP)
    yield s
    s.server.stop()


@pytest.fixture
def page(browser):
    os.makedirs(ARTIFACTS, exist_ok=True)
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(15_000)
    pg.console = Console(pg)
    yield pg
    pg.console.assert_clean()
    ctx.close()


def shot(page, name):
    page.wait_for_timeout(200)
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}.png"))


def open_app(page, site, hash_=""):
    page.goto(site.url + "/" + hash_)
    page.wait_for_selector("#nav a.active")


def http_connection(site):
    """(connection id, conn_follow answer) of the connection carrying the GET."""
    conns = site.server.ok("capture_list_conns", capture_id=site.capture_id, last_id=0,
                           limit=1000)["Connections"]
    for c in conns:
        r = site.server.ok("conn_follow", capture_id=site.capture_id,
                           connection_id=c["ConnectionId"])
        if b"GET /" in b"".join(bytes.fromhex(s["Data"]) for s in r["Segments"]):
            return c["ConnectionId"], r
    raise AssertionError("no HTTP connection in " + HTTP)


def test_follow_dialog_shows_conn_follow_bytes(page, site):
    conn_id, r = http_connection(site)
    open_app(page, site, f"#/capture/{site.capture_id}/conns")
    row = page.locator(f"#view-capture tr[data-key='{conn_id}']")
    row.locator("button.followbtn").click()
    page.wait_for_selector(".modal pre.followtext .seg")
    text = page.locator(".modal pre.followtext").inner_text()
    assert "GET /" in text and "HTTP/1.1 200" in text
    client = page.locator(".modal pre.followtext .seg.client").first
    server = page.locator(".modal pre.followtext .seg.server").first
    assert client.evaluate("e => getComputedStyle(e).color") != \
        server.evaluate("e => getComputedStyle(e).color")
    shot(page, "follow_text")

    # the hex view is exactly conn_follow's bytes, segment by segment
    page.select_option(".modal select[aria-label='follow view']", "hex")
    segs = page.locator(".modal pre.followtext .seg")
    assert segs.count() == len(r["Segments"])
    for i, s in enumerate(r["Segments"]):
        dump = segs.nth(i).inner_text()
        got = "".join("".join(line[10:58].split()) for line in dump.splitlines())
        assert got == s["Data"], i
        assert int(segs.nth(i).get_attribute("data-dir")) == s["Dir"]
    shot(page, "follow_hex")
    page.keyboard.press("Escape")

    # from a packet's detail too
    open_app(page, site, f"#/capture/{site.capture_id}/packets")
    page.locator("#view-capture .prow:not(.phead)").nth(3).click()
    page.locator("#view-capture button.followbtn").click()
    page.wait_for_selector(".modal pre.followtext .seg")


def test_download_links_and_open_in_wireshark(page, site):
    open_app(page, site, "#/captures")
    row = page.locator(f"#view-captures tr[data-key='{site.capture_id}']")
    with page.expect_download() as dl:
        row.locator("button.wireshark").click()
    path = dl.value.path()
    name = dl.value.suggested_filename
    assert name.endswith(".pcapng")
    exported = site.export / name
    assert open(path, "rb").read() == exported.read_bytes()

    # the export list links to the same bytes
    page.click("#nav a[data-view=files]")
    link = page.locator(f"#view-files tr[data-key='{name}'] a.dl")
    assert link.get_attribute("href") == "/download/export/" + name
    with page.expect_download() as dl2:
        link.click()
    assert open(dl2.value.path(), "rb").read() == exported.read_bytes()
    shot(page, "files_downloads")

    # an extracted file: written through the API, downloaded from the capture's Files tab
    streams = site.server.ok("extract_query", capture_id=site.capture_id)["Streams"]
    assert streams, "no extractable file in " + HTTP
    f = site.server.ok("extract_file_write", capture_id=site.capture_id,
                       stream_id=streams[0]["StreamId"])
    open_app(page, site, f"#/capture/{site.capture_id}/files")
    link = page.locator(f"#view-capture a.dl[href$='/{f['FileId']}']")
    with page.expect_download() as dl3:
        link.click()
    assert open(dl3.value.path(), "rb").read() == open(f["Path"], "rb").read()


def html_theme(page):
    return page.evaluate("() => document.documentElement.getAttribute('data-theme')")


def background(page):
    return page.evaluate("() => getComputedStyle(document.body).backgroundColor")


def test_dark_theme_follows_system_and_toggle_persists(browser, site):
    # the system's preference when nothing was chosen
    for scheme in ("light", "dark"):
        ctx = browser.new_context(viewport={"width": 1400, "height": 900}, color_scheme=scheme)
        pg = ctx.new_page()
        console = Console(pg)
        open_app(pg, site)
        assert html_theme(pg) == scheme
        console.assert_clean()
        ctx.close()

    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, color_scheme="light")
    pg = ctx.new_page()
    console = Console(pg)
    open_app(pg, site)
    light = background(pg)
    pg.click("#themetoggle")
    assert html_theme(pg) == "dark" and background(pg) != light
    pg.reload()
    pg.wait_for_selector("#nav a.active")
    assert html_theme(pg) == "dark" and background(pg) != light
    assert pg.evaluate("() => localStorage.getItem('apppaccap_theme')") == "dark"
    pg.click("#themetoggle")
    pg.reload()
    pg.wait_for_selector("#nav a.active")
    assert html_theme(pg) == "light" and background(pg) == light
    console.assert_clean()
    ctx.close()


VIEWS = ["processes", "captures", "capture/{cid}/packets", "capture/{cid}/conns",
         "capture/{cid}/stats", "stats", "files", "search", "settings"]


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", [(1400, 900), (800, 600)])
def test_screenshots(browser, site, scheme, size):
    w, h = size
    ctx = browser.new_context(viewport={"width": w, "height": h}, color_scheme=scheme)
    pg = ctx.new_page()
    pg.set_default_timeout(15_000)
    console = Console(pg)
    open_app(pg, site)
    for view in VIEWS:
        v = view.format(cid=site.capture_id)
        pg.goto(site.url + "/#/" + v)
        pg.wait_for_selector("#nav a.active")
        pg.wait_for_timeout(400)
        name = v.replace("/", "_").replace(str(site.capture_id), "c")
        shot(pg, f"theme_{scheme}_{w}x{h}_{name}")
        if w <= 800:  # nothing scrolls sideways
            sw, iw = pg.evaluate("() => [document.documentElement.scrollWidth, innerWidth]")
            assert sw <= iw, (v, sw, iw)
    # columns collapse by priority: the process path goes first, the name stays
    pg.goto(site.url + "/#/processes")
    pg.wait_for_selector("#view-processes tr[data-key]")
    assert pg.locator("#view-processes th:text-is('Name')").is_visible()
    assert pg.locator("#view-processes th:text-is('Path')").is_visible() == (w > 1000)
    pg.goto(site.url + f"/#/capture/{site.capture_id}/packets")
    pg.locator("#view-capture .prow:not(.phead)").nth(3).click()
    pg.locator("#view-capture button.followbtn").click()
    pg.wait_for_selector(".modal pre.followtext .seg")
    shot(pg, f"theme_{scheme}_{w}x{h}_follow")
    console.assert_clean()
    ctx.close()


def test_open_in_wireshark_with_authentication_on(page, tmp_path):
    """With authentication on, the login cookie authorises the download link; a request
    without it is refused."""
    from tests.helpers.server import add_user
    data = tmp_path / "data"
    add_user(data, "alice", "correct horse")
    inn = tmp_path / "in"
    inn.mkdir()
    shutil.copy(corpus.path(HTTP), inn / "h.pcap")
    server = Server(data, tmp_path / "export", "--auth", "on", "--ingest-root", inn,
                    log_dir=tmp_path)
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("#login:not([hidden])")
        page.fill("#loginform [name=username]", "alice")
        page.fill("#loginform [name=password]", "correct horse")
        page.click("#loginform button")
        page.wait_for_selector("#nav a.active")
        page.click("#nav a[data-view=files]")
        page.fill("#view-files input[name=ingestpath]", str(inn / "h.pcap"))
        page.click("#view-files button:has-text('Ingest')")
        page.wait_for_selector("#view-files a:has-text('capture #')")
        page.click("#nav a[data-view=captures]")
        row = page.locator("#view-captures tr[data-key]").first
        with page.expect_download() as dl:
            row.locator("button.wireshark").click()
        name = dl.value.suggested_filename
        assert open(dl.value.path(), "rb").read() == (tmp_path / "export" / name).read_bytes()
        # the same link without the cookie
        import urllib.error
        import urllib.request
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.url + "/download/export/" + name, timeout=10)
        assert refused.value.code in (401, 403)
    finally:
        server.stop()
