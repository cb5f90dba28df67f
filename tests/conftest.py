"""Shared fixtures: a fresh data dir, a Context, a Flask test client and an `ajax` helper."""

from __future__ import annotations

import os

import pytest

from apppaccap.context import Config
from apppaccap.context import build_context
from apppaccap.web.app import create_app
from apppaccap.web.callers import PEER_UID
from apppaccap.web.pages import default_themes_dir

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus")
if not os.path.isdir(CORPUS):
    CORPUS = os.environ.get("APPPACCAP_CORPUS", "/work/shared/corpus")


def make_ctx(tmp_path, **config):
    # The test's own directory is an export and ingest root and the corpus an ingest root,
    # as an admin would configure them (apppaccap serve --export-root/--ingest-root);
    # tests/test_fs_boundary.py checks the boundary itself against a real server.
    config.setdefault("export_roots", [str(tmp_path)])
    config.setdefault("ingest_roots", [CORPUS, str(tmp_path)])
    cfg = Config(data_dir=str(tmp_path / "data"), themes_dir=default_themes_dir(),
                 export_dir=str(tmp_path / "export"), **config)
    return build_context(cfg)


@pytest.fixture
def ctx(tmp_path):
    c = make_ctx(tmp_path)
    yield c
    if c.captures is not None:
        c.captures.stop_all()
    c.catalog.close()


def as_this_process(client):
    """The in-process test client has no socket for the kernel to name its owner; say
    what the real server would find: this test process's uid (apppaccap/web/callers.py)."""
    client.environ_base[PEER_UID] = os.getuid()
    return client


@pytest.fixture
def client(ctx):
    app = create_app(ctx)
    return as_this_process(app.test_client())


class Ajax:
    def __init__(self, client):
        self.client = as_this_process(client)
        self.token = None

    def raw(self, **fields):
        if self.token and "token" not in fields:
            fields["token"] = self.token
        resp = self.client.post("/ajax", data=fields)
        assert resp.status_code == 200, resp.data[:200]
        return resp.get_json()

    def __call__(self, action, **params):
        return self.raw(action=action, **params)

    def ok(self, action, **params):
        body = self(action, **params)
        assert body["ErrorCode"] == 0, body
        return body["ReturnValue"]


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


def free_port(kind=None) -> int:
    import socket
    s = socket.socket(socket.AF_INET, kind or socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def http_server(tmp_path):
    """`python3 -m http.server` on a free loopback port, serving a small file."""
    import subprocess
    import sys
    import time
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello world\n" * 100)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port, proc
    proc.kill()
    proc.wait()


def manifest() -> dict:
    """MANIFEST.tsv rows by relative path."""
    import csv
    with open(os.path.join(CORPUS, "MANIFEST.tsv"), newline="") as fh:
        return {r["path"]: r for r in csv.DictReader(fh, delimiter="\t")}
