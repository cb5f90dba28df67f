"""Shared fixtures: a fresh data dir, a Context, a Flask test client and an `ajax` helper."""

from __future__ import annotations

import os

import pytest

from apppaccap.context import Config
from apppaccap.context import build_context
from apppaccap.themes import default_themes_dir
from apppaccap.web import create_app

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus")
if not os.path.isdir(CORPUS):
    CORPUS = os.environ.get("APPPACCAP_CORPUS", "/work/shared/corpus")


def make_ctx(tmp_path, **config):
    cfg = Config(data_dir=str(tmp_path / "data"), themes_dir=default_themes_dir(),
                 export_dir=str(tmp_path / "export"), **config)
    return build_context(cfg)


@pytest.fixture
def ctx(tmp_path):
    c = make_ctx(tmp_path)
    c.sessions.sleep = lambda seconds: None  # delays are recorded in sessions.slept instead
    yield c
    if c.captures is not None:
        c.captures.stop_all()
    c.catalog.close()


@pytest.fixture
def client(ctx):
    app = create_app(ctx)
    return app.test_client()


class Ajax:
    def __init__(self, client):
        self.client = client
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
