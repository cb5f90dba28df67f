"""The default theme in a real browser (Debian's Chromium through Playwright).

A real server runs as a subprocess; the test captures a process it launched (a client
fetching from a local http.server every 200 ms) from the UI, watches the packets arrive
live, opens one, stops, exports, searches, opens a 100k-packet capture, and logs in and
out on a second server with authentication on. No console error is allowed anywhere.
Screenshots of every main view go to tests/artifacts/.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from tests.helpers.browser import Console
from tests.helpers.browser import start_traffic
from tests.helpers.browser import stop_all
from tests.helpers.browser import write_big_pcap
from tests.helpers.server import Server
from tests.helpers.server import add_user

pytestmark = [pytest.mark.browser, pytest.mark.live]

ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
BIG = 100_000


@pytest.fixture
def page(browser):
    os.makedirs(ARTIFACTS, exist_ok=True)
    ctx = browser.new_context(viewport={"width": 1440, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(15_000)
    pg.console = Console(pg)
    yield pg
    ctx.close()


def shot(page, name):
    page.wait_for_timeout(150)  # let charts and fades settle
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}.png"))


def displayed(page) -> tuple[int, int]:
    text = page.locator("#view-capture .pstatus").inner_text()
    m = re.search(r"Displayed ([\d,]+) of ([\d,]+)", text)
    assert m, text
    return int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))


def wait_packets(page, at_least, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if displayed(page)[1] >= at_least:
            return displayed(page)[1]
        page.wait_for_timeout(100)
    raise AssertionError(f"fewer than {at_least} packets after {timeout} s: {displayed(page)}")


def test_capture_follow_inspect_export_search(page, tmp_path):
    # the test's directory is an ingest root: the big capture below is ingested by path
    server = Server(tmp_path / "data", tmp_path / "export", "--ingest-root", tmp_path,
                    log_dir=tmp_path)
    port, traffic = start_traffic(str(tmp_path / "www"))
    client_pid = traffic[0].pid
    try:
        _walk_through(page, server, port, client_pid, tmp_path)
    except Exception:
        shot(page, "failure")
        print(server.log_text())
        raise
    finally:
        stop_all(traffic)
        server.stop()
    page.console.assert_clean()


def _walk_through(page, server, port, client_pid, tmp_path):
    page.goto(server.url + "/")
    page.wait_for_selector("#nav a.active[data-view=network]")  # the landing page
    page.evaluate("window.__sameDocument = true")

    # File extraction on (Settings), so the capture below finds the HTTP bodies.
    page.click("#nav a[data-view=settings]")
    page.check("#view-settings input[name=extract]")
    page.wait_for_selector("#toasts >> text=File extraction enabled")
    page.wait_for_selector("#view-settings input[aria-label=extract_enabled] >> nth=0")
    page.click("#nav a[data-view=processes]")

    # Processes: filter down to the client and capture it with one click.
    page.fill("#view-processes input[name=procfilter]", str(client_pid))
    row = page.locator(f"#view-processes tr[data-key='{client_pid}']")
    row.click()
    page.wait_for_selector("#view-processes .kv >> text=Command line")
    shot(page, "processes")
    row.locator("button.rec").click()
    page.wait_for_url(re.compile(r"#/capture/\d+/packets"))
    capture_id = int(re.search(r"#/capture/(\d+)/", page.url).group(1))

    # Live packet list: rows arrive by capture_stream without reloading the page.
    first = wait_packets(page, 6)
    later = wait_packets(page, first + 6)
    assert later > first and page.evaluate("window.__sameDocument") is True
    assert page.locator("#view-capture .caphead .badge.state-active").is_visible()
    assert page.locator("#livebadge").is_visible()
    shot(page, "capture_live")

    # Open the client's request: dissection tree, hex dump, notes.
    page.fill("#view-capture input[name=quick]",
              f"tcp.dstport == {port} && tcp.flags.push == 1 && proc.pid == {client_pid}")
    page.press("#view-capture input[name=quick]", "Enter")
    # (Predicates are functions, not expressions: Playwright would eval() an expression,
    # which the page's CSP rightly refuses.)
    page.wait_for_function("() => { const s = document.querySelector('#view-capture .pstatus')"
                           ".innerText.match(/([\\d,]+) matching packets/);"
                           " return s && s[1] !== '0'; }")
    page.locator("#view-capture .prow:not(.phead)").first.click()
    page.wait_for_selector("#view-capture pre.hexdump")
    assert "GET /hello.txt" in page.locator("#view-capture .tree").inner_text()
    assert re.search(r"0000\s+00 00 00 00", page.locator("#view-capture pre.hexdump").inner_text())
    page.locator("#view-capture .tree .leaf", has_text="Destination port").click()
    assert page.locator("#view-capture pre.hexdump .hl").count() == 4  # 2 bytes, hex + ASCII
    page.fill("#view-capture .notesbox textarea", "the request line")
    page.click("#view-capture .notesbox button")
    page.wait_for_selector("#toasts >> text=Notes saved on packet")
    shot(page, "packet_detail")
    # Follow stream from the packet: the live connection's request and response.
    page.click("#view-capture button.followbtn")
    page.wait_for_selector(".modal pre.followtext .seg.server")
    assert "GET /hello.txt" in page.locator(".modal pre.followtext .seg.client").first.inner_text()
    assert "HTTP/1." in page.locator(".modal pre.followtext .seg.server").first.inner_text()
    page.keyboard.press("Escape")
    page.fill("#view-capture input[name=quick]", "")

    # Pause stops following; the capture keeps running.
    page.click("#view-capture .caphead button:has-text('Pause')")
    page.wait_for_selector("#view-capture .caphead button:has-text('Resume')")
    assert "paused" in page.locator("#view-capture .pstatus").inner_text()

    # Connections of the capture carry per-direction counters and the process.
    page.click("#view-capture .subtabs button[data-tab=conns]")
    conn = page.locator("#view-capture tr[data-key]").first
    conn.wait_for()
    assert "python" in conn.inner_text() and str(port) in conn.inner_text()
    shot(page, "connections")
    page.click("#view-capture .subtabs button[data-tab=packets]")

    # Stop, then export to PCAPNG; the file shows up in the export list.
    page.click("#view-capture .caphead button:has-text('Stop capture')")
    page.wait_for_selector("#view-capture .caphead .badge.state-completed")
    page.click("#view-capture .caphead button:has-text('Export PCAPNG')")
    page.click(".modal .modal-foot button:has-text('Export')")
    written = page.wait_for_selector(".modal .okmsg:has-text('Written:')").inner_text()
    exported = os.path.basename(written.split("Written:", 1)[1].strip())
    assert exported.endswith(".pcapng") and os.path.getsize(tmp_path / "export" / exported) > 0
    page.keyboard.press("Escape")
    page.click("#view-capture .subtabs button[data-tab=stats]")
    page.wait_for_selector("#view-capture .chartbox canvas")
    shot(page, "capture_stats")

    # Files found in the capture's HTTP responses; write one to disk.
    page.click("#view-capture .subtabs button[data-tab=files]")
    stream = page.locator("#view-capture tr[data-key]", has_text="hello.txt").first
    stream.locator("button:has-text('Extract')").click()
    page.wait_for_selector("#toasts >> text=Wrote")
    page.wait_for_selector("#view-capture td:has-text('extracted')")
    shot(page, "extracted_files")

    page.click("#nav a[data-view=files]")
    page.wait_for_selector(f"#view-files tr[data-key='{exported}']")
    page.click("#nav a[data-view=captures]")
    page.wait_for_selector(f"#view-captures tr[data-key='{capture_id}']")
    shot(page, "captures")

    # Search, when the server has it: checked as you type, results open the packet.
    if page.locator("#nav a[data-view=search]").is_visible():
        page.click("#nav a[data-view=search]")
        box = "#view-search input[name=filter]"
        page.fill(box, "tcp.port ==")
        page.wait_for_selector("#view-search input.invalid")
        assert "^" in page.locator("#view-search .filtermsg").inner_text()
        page.select_option("#view-search select[aria-label='search in']", str(capture_id))
        page.fill(box, f"tcp.port == {port} && proc.pid == {client_pid}")
        page.wait_for_selector("#view-search input.valid")
        page.click("#view-search button:has-text('Search')")
        result = page.locator("#view-search tr[data-key]").last
        page.wait_for_function("() => document.querySelectorAll('#view-search table.grid')"
                               ".length > 1 && "
                               "document.querySelectorAll('#view-search table.grid')[1]"
                               ".querySelectorAll('tr[data-key]').length > 0", timeout=20_000)
        shot(page, "search")
        result.click()
        page.wait_for_selector(".modal pre.hexdump")
        page.keyboard.press("Escape")
        grid = page.locator("#view-search table.grid").first
        grid.locator("button:has-text('Export')").first.click()
        page.wait_for_selector("#toasts >> text=/Search #\\d+ exported to .*\\.pcapng/")

    # Upload a capture file from the browser (pcap_ingest_post, multipart `file`).
    small = tmp_path / "upload-me.pcap"
    write_big_pcap(str(small), 300)
    page.click("#nav a[data-view=files]")
    page.set_input_files("#view-files input[name=upload]", str(small))
    page.click("#view-files button:has-text('Upload and ingest')")
    page.wait_for_selector(
        "#view-files .toolbar:has-text('upload-me.pcap') a:has-text('Open capture #')")

    # Triggers and actions: add, link, remove.
    page.click("#nav a[data-view=triggers]")
    page.fill("#view-triggers input[name=tname]", "browser-test")
    page.fill("#view-triggers input[name=tpath]", str(tmp_path / "www"))
    page.click("#view-triggers button:has-text('Add trigger')")
    page.wait_for_selector("#view-triggers tr[data-key]:has-text('browser-test')")
    page.fill("#view-triggers input[name=aname]", "say-done")
    page.fill("#view-triggers input[name=apath]", "/bin/true")
    page.fill("#view-triggers input[name=aparams]", "{capture_id} {process_name}")
    trigger_opt = page.locator("#view-triggers select[name=trigger] option",
                               has_text="browser-test")
    page.select_option("#view-triggers select[name=trigger]", trigger_opt.get_attribute("value"))
    page.click("#view-triggers button:has-text('Add action')")
    page.wait_for_selector("#view-triggers tr[data-key]:has-text('say-done') >> text=browser-test")
    shot(page, "triggers")
    page.locator("#view-triggers tr[data-key]:has-text('browser-test') "
                 "button:has-text('Remove')").first.click()
    page.click(".modal .modal-foot button:has-text('Remove')")
    page.wait_for_selector("#view-triggers tr.empty:has-text('No triggers')")

    # A 100k-packet capture: ingested from the Files view, listed fast with a small DOM.
    big = tmp_path / "big.pcap"
    write_big_pcap(str(big), BIG)
    page.click("#nav a[data-view=files]")
    page.fill("#view-files input[name=ingestpath]", str(big))
    page.click("#view-files button:has-text('Ingest')")
    page.click("#view-files .toolbar:has-text('big.pcap') a:has-text('Open capture #')",
               timeout=30_000)
    t0 = time.monotonic()
    wait_packets(page, BIG, timeout=30)
    page.wait_for_selector("#view-capture .prow .c-no:text-is('1')")
    open_s = time.monotonic() - t0
    assert open_s < 10, f"a {BIG}-packet capture took {open_s:.1f} s to show"
    page.click("#view-capture button:has-text('Last')")
    page.wait_for_selector("#view-capture .prow:not(.pending) .c-no:text-is('100000')")
    page.evaluate("(() => { const v = document.querySelector('#view-capture .pviewport');"
                  " v.scrollTop = v.scrollHeight / 2; })()")
    page.wait_for_selector("#view-capture .prow:not(.pending) .c-no:text-is('50001')")
    rows = page.locator("#view-capture .prows .prow").count()
    assert rows < 120, f"{rows} row elements for {BIG} packets: the list is not virtual"
    page.locator("#view-capture .prow:not(.phead)", has_text="ICMP").first.click()
    page.keyboard.press("End")
    page.wait_for_selector("#view-capture .prow.selected .c-no:text-is('100000')")
    page.wait_for_selector("#view-capture .tree:has-text('Packet') >> text=#100000 of capture")
    page.wait_for_selector("#view-capture pre.hexdump")
    shot(page, "big_capture")
    page.click("#view-capture .subtabs button[data-tab=stats]")
    page.wait_for_selector("#view-capture .chartbox canvas")
    shot(page, "big_capture_stats")

    for view in ("adapters", "stats", "files", "settings"):
        page.click(f"#nav a[data-view={view}]")
        page.wait_for_selector(f"#view-{view} .panel")
        page.wait_for_load_state("networkidle")
        shot(page, view)

    # An API error is shown in words, not swallowed.
    page.click("#nav a[data-view=files]")
    page.fill("#view-files input[name=ingestpath]", "/no/such/file.pcap")
    page.click("#view-files button:has-text('Ingest')")
    page.wait_for_selector("#view-files .error:has-text('ingest roots')")
    assert page.evaluate("window.__sameDocument") is True


def test_login_and_logout(page, tmp_path):
    data = str(tmp_path / "data")
    add_user(data, "alice", "correct horse")
    server = Server(data, tmp_path / "export", "--auth", "on", log_dir=tmp_path)
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("#login:not([hidden])")
        assert page.locator("#main").is_hidden()
        page.fill("#loginform [name=username]", "alice")
        page.fill("#loginform [name=password]", "wrong")
        page.click("#loginform button")
        page.wait_for_selector("#loginerror:not([hidden])")
        assert "credentials" in page.locator("#loginerror").inner_text().lower() or \
            "password" in page.locator("#loginerror").inner_text().lower()
        shot(page, "login")
        page.fill("#loginform [name=password]", "correct horse")
        page.click("#loginform button")
        page.wait_for_selector("#nav a.active[data-view=network]")
        page.click("#nav a[data-view=processes]")
        page.wait_for_selector("#view-processes tr[data-key]")
        assert "alice" in page.locator("#username").inner_text()
        # An upload with authentication on: the server reads none of its body before the
        # token (sent in a header, not the multipart body) names the caller.
        small = tmp_path / "upload-auth.pcap"
        write_big_pcap(str(small), 50)
        page.click("#nav a[data-view=files]")
        page.set_input_files("#view-files input[name=upload]", str(small))
        page.click("#view-files button:has-text('Upload and ingest')")
        page.wait_for_selector("#view-files .toolbar:has-text('upload-auth.pcap') "
                               "a:has-text('Open capture #')", timeout=30_000)
        page.click("#logout")
        page.wait_for_selector("#login:not([hidden])")
        assert page.locator("#main").is_hidden()
        page.reload()
        page.wait_for_selector("#login:not([hidden])")  # the token is gone for good

        # The default theme never takes a token from a URL: a link with a live ?token=
        # opens the login form, and the token is gone from the address bar.
        token = server.call("login", username="alice", password="correct horse")["ReturnValue"]
        page.goto(f"{server.url}/default/index.html?token={token}#/captures")
        page.wait_for_selector("#login:not([hidden])")
        assert "token" not in page.url and page.locator("#main").is_hidden()
        assert server.call("capture_list_active", token=token)["ErrorCode"] == 0  # still live

        # A server without the optional actions: their sections are hidden, nothing breaks.
        missing = re.compile(r"(?:^|&)action=(?:search|trigger|action|extract|monitor)_")

        def refuse(route):
            if missing.search(route.request.post_data or ""):
                name = re.search(r"action=(\w+)", route.request.post_data).group(1)
                route.fulfill(json={"Version": 1, "ErrorCode": 3, "DataType": 1,
                                    "ReturnValue": f"action: unknown action '{name}'"})
            else:
                route.continue_()
        page.route("**/ajax", refuse)
        page.goto(f"{server.url}/default/index.html#/search")
        page.fill("#loginform [name=username]", "alice")
        page.fill("#loginform [name=password]", "correct horse")
        page.click("#loginform button")
        page.wait_for_selector("#nav a.active[data-view=network]")  # #/search fell back
        assert page.locator("#nav a[data-view=search]").is_hidden()
        assert page.locator("#nav a[data-view=triggers]").is_hidden()
        page.click("#nav a[data-view=settings]")
        page.wait_for_selector("#view-settings h2:has-text('Delete saved data')")
        assert page.locator("#view-settings h2:has-text('File extraction')").count() == 0
        shot(page, "without_optional_actions")
    finally:
        server.stop()
    page.console.assert_clean()


def test_packet_detail_shows_the_row_selected_last_when_answers_cross(page, tmp_path):
    """Two rows clicked one after the other: the first packet's answer held back until
    the second's is shown (the order a loaded server can give them) must not replace it.
    The detail showed the packet clicked first under the row selected last (a flake of
    the walk-through above on a busy machine)."""
    from urllib.parse import parse_qs

    from tests.helpers import corpus
    from tests.helpers.server import with_ingested

    server, cid = with_ingested(tmp_path, corpus.path("wellformed/tls_three_sessions.pcap"))
    held = []

    def asks_for_1(request) -> bool:  # the page posts a form (api.js)
        body = parse_qs(request.post_data or "")
        return body.get("action") == ["capture_get_packet"] and body.get("packet_id") == ["1"]

    def hold_packet_1(route):
        if asks_for_1(route.request):
            held.append(route)  # let through below, once packet 2's answer is shown
        else:
            route.continue_()

    try:
        page.goto(server.url + f"/#/capture/{cid}/packets")
        page.wait_for_selector("#view-capture .prow:not(.pending) .c-no:text-is('2')")
        page.route("**/ajax", hold_packet_1)
        page.locator("#view-capture .prow:not(.phead)").nth(0).click()
        deadline = time.monotonic() + 10
        while not held and time.monotonic() < deadline:
            page.wait_for_timeout(20)
        assert held, "packet 1's detail was not asked for"
        page.locator("#view-capture .prow:not(.phead)").nth(1).click()
        page.wait_for_selector("#view-capture .tree:has-text('Packet') >> text=#2 of capture")
        with page.expect_response(lambda r: asks_for_1(r.request)):
            held[0].continue_()
        page.wait_for_timeout(200)  # the late answer handled
        tree = page.locator("#view-capture .tree").inner_text()
        assert f"#2 of capture {cid}" in tree and "#1 of capture" not in tree
        assert page.locator("#view-capture .prow.selected .c-no").inner_text() == "2"
        page.console.assert_clean()
    finally:
        server.stop()


def test_threads_shown_are_those_of_the_process_selected_last(page, tmp_path):
    """Two processes selected one after the other, the first one's thread list held back
    until the second's is shown: the list under the second process stays its own."""
    import subprocess
    from urllib.parse import parse_qs

    a = subprocess.Popen(["sleep", "300"])
    b = subprocess.Popen(["sleep", "301"])
    server = Server(tmp_path / "data", tmp_path / "export", log_dir=tmp_path)
    held = []

    def threads_of_a(request) -> bool:
        body = parse_qs(request.post_data or "")
        return body.get("action") == ["process_list_threads"] and body.get("pid") == [str(a.pid)]

    def hold_a(route):
        if threads_of_a(route.request):
            held.append(route)
        else:
            route.continue_()

    try:
        page.goto(server.url + "/#/processes")
        page.fill("#view-processes input[name=procfilter]", "sleep 30")
        page.wait_for_selector(f"#view-processes tr[data-key='{b.pid}']")
        page.route("**/ajax", hold_a)
        page.locator(f"#view-processes tr[data-key='{a.pid}']").click()
        deadline = time.monotonic() + 10
        while not held and time.monotonic() < deadline:
            page.wait_for_timeout(20)
        assert held, "the first process's threads were not asked for"
        page.locator(f"#view-processes tr[data-key='{b.pid}']").click()
        tids = "#view-processes .panel:has(> .panel-head h2:text-is('Threads')) td"
        page.wait_for_selector(f"{tids}:text-is('{b.pid}')")  # b's one thread: tid = pid
        with page.expect_response(lambda r: threads_of_a(r.request)):
            held[0].continue_()
        page.wait_for_timeout(200)
        assert page.locator(f"{tids}:text-is('{a.pid}')").count() == 0
        assert page.locator(f"{tids}:text-is('{b.pid}')").count() == 1
        page.console.assert_clean()
    finally:
        server.stop()
        for p in (a, b):
            p.kill()
            p.wait()
