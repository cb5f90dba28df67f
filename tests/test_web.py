"""Pages, placeholders, confinement and browser safety."""

import json
import os

import pytest

from apppaccap.web.app import create_app
from apppaccap.web.pages import fill_placeholders
from tests.helpers.app import make_ctx


def test_root_redirects_to_default_theme(client):
    resp = client.get("/")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/default/index.html")


def test_index_loads_vendored_jquery(client):
    page = client.get("/default/index.html").data.decode()
    assert 'src="js/jquery-3.7.1.min.js"' in page and "//code.jquery" not in page
    js = client.get("/default/js/jquery-3.7.1.min.js")
    assert js.status_code == 200 and b"jQuery" in js.data[:200]
    assert client.get("/default/css/app.css").status_code == 200
    # no placeholder and no inline script is left in the default theme (CSP: files only)
    assert "{%hd" not in page.lower() and "<script>" not in page


@pytest.mark.parametrize("path", ["/default/../../pyproject.toml",
                                  "/default/%2e%2e/%2e%2e/etc/passwd",
                                  "/..%2fapppaccap/web.py", "/default/..%5c..%5cMakefile",
                                  "/default/%00index.html", "/.git/config"])
def test_nothing_outside_themes(client, path):
    resp = client.get(path)
    assert resp.status_code in (404, 400, 308)
    assert b"[project]" not in resp.data and b"root:" not in resp.data


@pytest.mark.parametrize("token", ["tok123-Tok456_tok789", None, "tok123"])
def test_four_placeholders(token):
    text = "a={%hd_token} b={%HD_LINK_TOKEN} c={ {%Hd_Ajax_Token} \"x\": 1} d={%hd_post_params}"
    out = fill_placeholders(text, token, {"page": "2"})
    if token and len(token) >= 16:
        t = token
        assert out == (f'a={t} b=?token={t} c={{ "token": "{t}", "x": 1}} '
                       f'd=var params = {{"page": "2", "token": "{t}"}};')
    else:   # no token, or one too short to be ours: every token placeholder is empty
        assert out == 'a= b= c={  "x": 1} d=var params = {"page": "2"};'


def test_server_folders_and_pages(ajax):
    assert "default" in ajax.ok("server_folders")
    assert "index.html" in ajax.ok("server_pages", theme_name="default")
    assert ajax("server_pages", theme_name="../apppaccap")["ErrorCode"] == 6


def test_foreign_host_refused(client):
    resp = client.post("/ajax", data={"action": "apppaccap"}, headers={"Host": "evil.example:8733"})
    body = resp.get_json()
    assert body["ErrorCode"] == 8 and "Host" in body["ReturnValue"]
    assert client.get("/default/index.html", headers={"Host": "attacker.test"}).status_code == 403


def test_cross_site_origin_refused(client):
    resp = client.post("/ajax", data={"action": "settings_clear"},
                       headers={"Origin": "http://evil.example"})
    assert resp.get_json()["ErrorCode"] == 8
    same = client.post("/ajax", data={"action": "apppaccap"},
                       headers={"Host": "127.0.0.1:8733", "Origin": "http://127.0.0.1:8733"})
    assert same.get_json()["ErrorCode"] == 0
    other_port = client.post("/ajax", data={"action": "apppaccap"},
                             headers={"Origin": "http://127.0.0.1:9999"})
    assert other_port.get_json()["ErrorCode"] == 8


def test_constants_js(client):
    js = client.get("/constants.js").data.decode()
    assert "var ERROR_SERVE_NO_TOKEN = 2;" in js and "var APC_FLUSH_ALL = 65535;" in js


def test_apppaccap_object(ajax):
    info = ajax.ok("apppaccap")
    assert list(info)[0] == "Version"
    for key in ("AppPacCap", "Licensed", "LicenseType", "MachineName", "OS", "MapData", "Threat",
                "Updated", "AuthEnabled", "Constants"):
        assert key in info
    assert info["AuthEnabled"] is False and info["Constants"]["CAPTURE_TYPE_FILE"] == 4


def test_themes_shipped_in_package_or_found(tmp_path):
    from apppaccap.web.pages import default_themes_dir
    assert os.path.isfile(os.path.join(default_themes_dir(), "default", "index.html"))


def test_bound_to_all_addresses_accepts_own_addresses_only(tmp_path):
    from apppaccap.attribution.localaddr import interface_addresses
    ctx = make_ctx(tmp_path, host="0.0.0.0", auth=True)
    try:
        client = create_app(ctx).test_client()
        own = next(ip for ip in interface_addresses() if ":" not in ip and ip != "127.0.0.1")
        ok = client.post("/ajax", data={"action": "settings_get_all"},
                         headers={"Host": f"{own}:8733"}).get_json()
        assert ok["ErrorCode"] == 2            # past the Host check; now it wants a token
        bad = client.post("/ajax", data={"action": "settings_get_all"},
                          headers={"Host": "rebind.example:8733"}).get_json()
        assert bad["ErrorCode"] == 8
    finally:
        ctx.catalog.close()


def test_script_json_round_trips_and_cannot_end_a_script():
    from apppaccap.web.pages import script_json
    value = {"</script><!--": "<b>&amp;'\u2028\u2029\"\\", "k": [1, None, "\U0001f600"]}
    text = script_json(value)
    assert not set("<>&'\u2028\u2029") & set(text) and text.isascii()
    assert json.loads(text) == value


def test_only_inline_scripts_get_the_nonce():
    from apppaccap.web.pages import add_script_nonce
    from apppaccap.web.pages import has_inline_script
    page = '<SCRIPT>a()</SCRIPT><script src="x.js"></script><script type="module">b()</script>'
    out = add_script_nonce(page, "N0nce")
    assert out == ('<script nonce="N0nce">a()</SCRIPT><script src="x.js"></script>'
                   '<script nonce="N0nce" type="module">b()</script>')
    assert has_inline_script(page) and not has_inline_script('<script src="x.js"></script>')


@pytest.mark.parametrize("name,ok", [
    ("default", True), ("my-theme_2.1", True), ("_x", True), (".hidden", False), ("..", False),
    ("", False), ("a/b", False), ("a\\b", False), ("//evil", False), ("http:x", False),
    ("a b", False), ("x\r\n", False), ("é", False), ("a" * 64, True), ("a" * 65, False)])
def test_theme_names(name, ok):
    from apppaccap.web.pages import is_theme_name
    assert is_theme_name(name) is ok
