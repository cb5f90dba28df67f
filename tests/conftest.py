"""Fixtures only (helpers live in tests/helpers/): a fresh data dir and Context, a Flask
test client and an `ajax` caller, the capture engine running, a loopback HTTP server, and
Chromium."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from apppaccap.web.app import create_app
from tests.helpers.app import Ajax
from tests.helpers.app import as_this_process
from tests.helpers.app import make_ctx
from tests.helpers.browser import CHROMIUM
from tests.helpers.browser import CHROMIUM_ARGS
from tests.helpers.ports import free_port
from tests.helpers.ports import wait_port


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups to tag node ids
def pytest_collection_modifyitems(config, items):
    """`make test` runs two pytest-xdist workers with --dist loadgroup: every live and
    browser test goes to one worker, in order (they share `lo`, the eBPF programs and the
    usage recorder's view of the host, and assert on what the kernel delivered), while the
    other worker runs the tests that need no interface. Without xdist the group is inert."""
    for item in items:
        if item.get_closest_marker("live") or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.xdist_group("live"))
        elif item.module.__name__.endswith("test_search_oracle"):
            # its module fixture runs tshark over a large capture (~80 s): once, not per worker
            item.add_marker(pytest.mark.xdist_group("oracle"))


def pytest_collection_finish(session):
    """The grouping above is silent when it fails, and it failed twice: pytest-xdist tags a
    test with its group by renaming its node id in its own collection hook, which ran before
    ours (so the live mark came too late: hence tryfirst), and pytest 9.2 ignores the renamed
    id. Either way the live tests ran on both workers at once, each disturbing the other's
    traffic on `lo` (flaky failures in CI). A worker that cannot group refuses to run
    (pyproject.toml pins pytest)."""
    if not hasattr(session.config, "workerinput") or not session.config.getvalue("loadgroup"):
        return
    for item in session.items:
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
            why = (f"pytest-xdist did not group {item.nodeid}: this pytest and pytest-xdist "
                   "do not work together under --dist loadgroup (see pyproject.toml's pin)")
            sys.__stderr__.write(why + "\n")  # a worker's exception reaches the controller
            raise pytest.UsageError(why)       # as an INTERNALERROR trace without its text


@pytest.fixture
def ctx(tmp_path):
    c = make_ctx(tmp_path)
    yield c
    if c.captures is not None:
        c.captures.stop_all()
    c.catalog.close()


@pytest.fixture
def client(ctx):
    app = create_app(ctx)
    return as_this_process(app.test_client())


@pytest.fixture
def ajax(client):
    return Ajax(client)


@pytest.fixture
def live(tmp_path):
    """A Context with the capture engine running (root and libpcap required: never skipped)."""
    from apppaccap.server import start_services
    c = make_ctx(tmp_path)
    # CI runs the suite on a loaded 2-core machine: let a flow's packets wait longer for
    # their owner than the 50 ms default. These tests check labels; benchmarks/attribution.py
    # measures the latency.
    c.settings.set("attribution_hold_ms", "300")
    start_services(c)
    assert c.captures is not None, "capture engine failed to start"
    yield c
    from apppaccap.server import stop_services
    stop_services(c)


@pytest.fixture
def live_ajax(live):
    return Ajax(create_app(live).test_client())


@pytest.fixture
def http_server(tmp_path):
    """`python3 -m http.server` on a free loopback port, serving a small file."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello world\n" * 100)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    yield port, proc
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium through Playwright, one per test module."""
    from playwright.sync_api import sync_playwright
    assert os.path.exists(CHROMIUM), "chromium is missing: apt-get install chromium"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
