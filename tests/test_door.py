"""The /ajax door: envelope, validation, unknown actions, garbage bodies."""

import json

import pytest

from apppaccap.api.registry import REGISTRY


def test_unknown_action_suggests_close_names(ajax):
    body = ajax("settings_get_al")
    assert body["ErrorCode"] == 3
    assert body["DataType"] == 1
    assert "settings_get_all" in body["ReturnValue"]


def test_missing_action_is_malformed(ajax):
    body = ajax.raw(foo="bar")
    assert body["ErrorCode"] == 4 and "action" in body["ReturnValue"]


def test_every_problem_reported_at_once(ajax):
    body = ajax("process_list_threads", pid="abc", flags="zz")
    assert body["ErrorCode"] == 4
    assert "pid:" in body["ReturnValue"] and "flags:" in body["ReturnValue"]


def test_missing_required_parameter_named(ajax):
    body = ajax("settings_get_by_key")
    assert body == {"Version": 1, "ErrorCode": 4, "DataType": 1,
                    "ReturnValue": "key_name: required"}


@pytest.mark.parametrize("data,ctype", [
    (b"\xff\xfe\x00garbage", "application/json"),
    (b"[1,2,3]", "application/json"),
    (b"{not json", "application/json"),
    (b"%%%===&&&", "application/x-www-form-urlencoded"),
    (b"--xx\r\nbroken", "multipart/form-data; boundary=xx"),
    (b"", "text/plain"),
])
def test_garbage_bodies_get_an_envelope(client, data, ctype):
    resp = client.post("/ajax", data=data, content_type=ctype)
    assert resp.status_code == 200
    body = resp.get_json()
    assert set(body) == {"Version", "ErrorCode", "DataType", "ReturnValue"}
    assert body["ErrorCode"] in (3, 4)


def test_json_body_accepted(client):
    resp = client.post("/ajax", data=json.dumps({"action": "apppaccap"}),
                       content_type="application/json")
    assert resp.get_json()["ReturnValue"]["Constants"]["DATA_TYPE_HEX"] == 4


def test_list_params_three_spellings():
    act = REGISTRY.get("capture_start_system") if "capture_start_system" in REGISTRY.endpoints \
        else None
    if act is None:
        pytest.fail("capture_start_system not registered")
    for raw in ({"adapter": ["lo", "eth0"]}, {"adapter[]": ["lo", "eth0"]},
                {"adapter": "lo,eth0"}):
        assert act.bind(dict(raw))["adapter"] == ["lo", "eth0"]


GARBAGE = ["", "-1", "abc", "0x", "9" * 40, "../../etc/passwd", "\x00", "1e999", "[]"]


@pytest.mark.parametrize("name", sorted(REGISTRY.endpoints))
def test_garbage_parameters_never_generic_error(ajax, name):
    act = REGISTRY.endpoints[name]
    for junk in GARBAGE:
        params = {p.name: junk for p in act.params}
        body = ajax(name, **params)
        assert body["ErrorCode"] != 1, (name, junk, body)


def test_get_on_the_door_is_an_envelope(client):
    resp = client.get("/ajax?action=apppaccap")
    assert resp.status_code == 200 and resp.get_json()["ErrorCode"] == 4
