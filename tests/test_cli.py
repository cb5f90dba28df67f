"""The `apppaccap` command against a real server process."""

import json

import pytest

from tests.helpers import corpus
from tests.helpers.server import Server
from tests.helpers.server import cli


@pytest.fixture
def server(tmp_path):
    # the corpus is not an ingest root here: `apppaccap ingest` uploads it
    s = Server(tmp_path / "data", tmp_path / "export", "--export-root", str(tmp_path))
    yield s
    s.stop()


def test_call_prints_envelope(server):
    out = cli("call", "apppaccap", "--url", server.url)
    body = json.loads(out.stdout)
    assert body["ErrorCode"] == 0 and body["ReturnValue"]["Constants"]["ERROR_SERVE_BUSY"] == 7
    bad = cli("call", "settings_get_by_key", "--url", server.url, check=False)
    assert bad.returncode == 1 and json.loads(bad.stdout)["ErrorCode"] == 4
    kv = cli("call", "settings_set", "key_name=colour", "value=red", "--url", server.url)
    assert json.loads(kv.stdout)["ReturnValue"] == 0


def test_ingest_and_export_with_progress(server, tmp_path):
    src = corpus.path("wellformed/http_bro_org_multi_object.pcap")
    out = cli("ingest", src, "--url", server.url)
    assert "100%" in out.stderr and "capture 1" in out.stdout
    target = tmp_path / "out.pcapng"
    exp = cli("export", "1", str(target), "--url", server.url)
    assert exp.stdout.strip() == str(target) and target.stat().st_size > 500_000
    bad = cli("ingest", "/no/such.pcap", "--url", server.url, check=False)
    assert bad.returncode == 1 and "no such file" in bad.stderr
    # the file is read by the command, as its user: the service never opens it by path
    caps = server.ok("capture_list_completed")
    assert [c["SourceFile"] for c in caps] == ["http_bro_org_multi_object.pcap"]


def test_user_management(tmp_path):
    data = str(tmp_path / "d")
    assert "saved" in cli("user", "add", "carol", "--data-dir", data,
                          stdin="pw-1234-long\npw-1234-long\n").stdout
    assert cli("user", "list", "--data-dir", data).stdout.split() == ["carol"]
    differ = cli("user", "add", "dave", "--data-dir", data, stdin="aaaa1-long\nbbbb2-long\n",
                 check=False)
    assert differ.returncode != 0 and "differ" in differ.stderr
    cli("user", "remove", "carol", "--data-dir", data)
    assert cli("user", "list", "--data-dir", data).stdout.split() == []
    missing = cli("user", "remove", "zed", "--data-dir", data, check=False)
    assert missing.returncode == 1 and "no user" in missing.stderr
    short = cli("user", "add", "erin", "--data-dir", data, stdin="1234\n", check=False)
    assert short.returncode == 1 and "at least 10 characters" in short.stderr
    assert "at least 10 characters" in cli("user", "--help").stdout


def test_auth_on_for_non_loopback_binding(tmp_path):
    s = Server(tmp_path / "data", None, "--auth", "on")
    try:
        assert s.call("settings_get_all")["ErrorCode"] == 2
        assert s.ok("apppaccap")["AuthEnabled"] is True
    finally:
        s.stop()
