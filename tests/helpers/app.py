"""The application in this process: a Context on a test's folder, a test client that the
door accepts as a local caller, and `Ajax` for calling actions through it."""

from __future__ import annotations

import os

from apppaccap.context import Config
from apppaccap.context import build_context
from apppaccap.web.callers import PEER_UID
from apppaccap.web.pages import default_themes_dir
from tests.helpers.corpus import CORPUS


def make_ctx(tmp_path, **config):
    # The test's own directory is an export and ingest root and the corpus an ingest root,
    # as an admin would configure them (apppaccap serve --export-root/--ingest-root);
    # tests/test_fs_boundary.py checks the boundary itself against a real server.
    config.setdefault("export_roots", [str(tmp_path)])
    config.setdefault("ingest_roots", [CORPUS, str(tmp_path)])
    cfg = Config(data_dir=str(tmp_path / "data"), themes_dir=default_themes_dir(),
                 export_dir=str(tmp_path / "export"), **config)
    return build_context(cfg)


def as_this_process(client):
    """The in-process test client has no socket for the kernel to name its owner; say
    what the real server would find: this test process's uid (callers.py)."""
    client.environ_base[PEER_UID] = os.getuid()
    return client


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


def ingest(ctx, ajax, path) -> int:
    """Ingest a capture file through the API (pcap_ingest_file), wait for the command to
    complete: the capture id."""
    done = ctx.jobs.wait(ajax.ok("pcap_ingest_file", path=str(path))["CommandUid"])
    assert done["State"] == 3, done
    return int(done["Result"])
