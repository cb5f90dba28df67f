"""trigger_* / action_*: validation, links, objects - through /ajax, no capture engine."""

from __future__ import annotations

import os

import pytest

from apppaccap.triggers.programs import Matcher
from apppaccap.triggers.programs import compile_matchers
from apppaccap.triggers.runner import substitute


@pytest.fixture
def files(tmp_path):
    """A directory, an executable, a non-executable file and a writable export directory."""
    d = tmp_path / "apps"
    d.mkdir()
    exe = d / "tool"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    plain = d / "notes.txt"
    plain.write_text("not a program")
    plain.chmod(0o644)
    out = tmp_path / "out"
    out.mkdir()
    return {"dir": str(d), "exe": str(exe), "plain": str(plain), "out": str(out)}


def _err(ajax, action, **params):
    body = ajax(action, **params)
    assert body["ErrorCode"] != 0, body
    return body["ErrorCode"], body["ReturnValue"]


def test_trigger_add_returns_the_object_and_lists_it(ajax, files):
    t = ajax.ok("trigger_add", name=" My app ", trigger_type=1, path=files["exe"] + "/",
                filter="tcp port 443", flags="0x5")
    assert t == {"Version": 1, "TriggerId": 1, "Name": "My app", "TriggerType": 1,
                 "Path": files["exe"], "Filter": "tcp port 443", "Flags": 5, "ActionIds": [],
                 "FireCount": 0, "LastFired": 0, "LastCaptureId": 0, "LastError": ""}
    assert ajax.ok("trigger_list") == [t]
    d = ajax.ok("trigger_add", name="dir", trigger_type="1", path=files["dir"])
    assert d["TriggerId"] == 2 and d["Filter"] == "" and d["Flags"] == 0
    assert [x["TriggerId"] for x in ajax.ok("trigger_list")] == [1, 2]


@pytest.mark.parametrize("params,code,needle", [
    ({"trigger_type": 2}, 4, "trigger_type: unknown trigger type 2"),
    ({"trigger_type": 0}, 4, "trigger_type: unknown trigger type 0"),
    ({"path": "relative/tool"}, 4, "path: must be an absolute path"),
    ({"path": "/no/such/program"}, 4, "does not exist"),
    ({"path": "PLAIN"}, 4, "neither an executable file nor a directory"),
    ({"path": ""}, 4, "path: required"),
    ({"name": "  "}, 4, "name: required"),
    ({"name": "a\nb"}, 4, "name: must be"),
    ({"filter": "tcp port"}, 4, "filter: can't parse filter expression: syntax error"),
    ({"filter": "host no.such.host.invalid"}, 4, "filter: unknown host"),
    ({"flags": 2}, 4, "CAPTURE_FLAG_THREAD_CAPTURE needs a thread id"),
    ({"flags": 8}, 4, "flags: unsupported bits 0x8"),
    ({"flags": -1}, 4, "flags: -1 is out of range"),
])
def test_trigger_add_refuses_bad_input_and_creates_nothing(ajax, files, params, code, needle):
    good = {"name": "t", "trigger_type": 1, "path": files["exe"]}
    good.update(params)
    if good["path"] == "PLAIN":
        good["path"] = files["plain"]
    got_code, message = _err(ajax, "trigger_add", **good)
    assert got_code == code and needle in message, message
    assert ajax.ok("trigger_list") == []


def test_trigger_mod_changes_only_what_is_given(ajax, files):
    t = ajax.ok("trigger_add", name="t", trigger_type=1, path=files["exe"], filter="udp",
                flags=4)
    assert ajax.ok("trigger_mod", trigger_id=t["TriggerId"], flags=1) == 0
    got = ajax.ok("trigger_list")[0]
    assert (got["Filter"], got["Flags"], got["Name"], got["Path"]) == ("udp", 1, "t", files["exe"])
    ajax.ok("trigger_mod", trigger_id=t["TriggerId"], filter="", name="renamed",
            path=files["dir"])
    got = ajax.ok("trigger_list")[0]
    assert (got["Filter"], got["Flags"], got["Name"], got["Path"]) == ("", 1, "renamed",
                                                                        files["dir"])
    assert _err(ajax, "trigger_mod", trigger_id=99, flags=0) == (6, "trigger_id: no trigger 99")
    code, msg = _err(ajax, "trigger_mod", trigger_id=t["TriggerId"], filter="tcp port",
                     flags=0)
    assert code == 4 and msg.startswith("filter:")
    assert ajax.ok("trigger_list")[0]["Flags"] == 1  # nothing of the refused change applied


def test_action_add_validates_per_type(ajax, files):
    e = ajax.ok("action_add", name="run", action_type=1, path=files["exe"],
                params="--id {capture_id} 'a b'")
    assert e == {"Version": 1, "ActionId": 1, "Name": "run", "ActionType": 1,
                 "Path": files["exe"], "Params": "--id {capture_id} 'a b'", "TriggerIds": []}
    x = ajax.ok("action_add", name="keep", action_type=2, path=files["out"])
    assert x["ActionType"] == 2 and x["Params"] == "" and x["TriggerIds"] == []
    cases = [
        ({"action_type": 3}, 4, "action_type: unknown action type 3"),
        ({"path": files["plain"]}, 4, "is not an executable file"),
        ({"path": files["dir"]}, 4, "is not an executable file"),
        ({"path": "bin/tool"}, 4, "path: must be an absolute path"),
        ({"path": "/no/such/tool"}, 4, "does not exist"),
        ({"params": "unbalanced 'quote"}, 4, "params: cannot split like a shell would"),
        ({"trigger_id": 5}, 6, "trigger_id: no trigger 5"),
        ({"trigger_id": -2}, 4, "trigger_id: -2 is out of range: an id is 0 or more"),
        ({"action_type": 2, "path": files["exe"]}, 4, "is not an existing directory"),
        ({"action_type": 2, "path": files["out"], "params": "x"}, 4,
         "params: ACTION_TYPE_EXPORT takes no params"),
    ]
    for params, code, needle in cases:
        good = {"name": "a", "action_type": 1, "path": files["exe"]}
        good.update(params)
        got_code, message = _err(ajax, "action_add", **good)
        assert got_code == code and needle in message, (params, message)
    assert [a["ActionId"] for a in ajax.ok("action_list")] == [1, 2]


def test_links_system_wide_and_the_reference_semantics(ajax, files):
    t1 = ajax.ok("trigger_add", name="t1", trigger_type=1, path=files["exe"])["TriggerId"]
    t2 = ajax.ok("trigger_add", name="t2", trigger_type=1, path=files["dir"])["TriggerId"]
    a = ajax.ok("action_add", name="a", action_type=2, path=files["out"],
                trigger_id=t1)["ActionId"]
    assert ajax.ok("trigger_get_actions", trigger_id=t1)[0]["ActionId"] == a
    assert ajax.ok("action_set_trigger", action_id=a, trigger_id=t2) == 0  # adds
    assert ajax.ok("action_list")[0]["TriggerIds"] == [t1, t2]
    assert ajax.ok("trigger_list")[1]["ActionIds"] == [a]
    assert ajax.ok("action_set_trigger", action_id=a, trigger_id=0) == 0  # system wide again
    assert ajax.ok("action_list")[0]["TriggerIds"] == []
    assert ajax.ok("trigger_get_actions", trigger_id=t1) == []
    assert ajax.ok("trigger_set_action", trigger_id=t2, action_id=a) == 0
    assert ajax.ok("trigger_set_action", trigger_id=t2, action_id=a) == 0  # idempotent
    assert ajax.ok("action_list")[0]["TriggerIds"] == [t2]
    assert ajax.ok("action_clear_triggers", action_id=a) == 0
    assert ajax.ok("action_list")[0]["TriggerIds"] == []
    assert _err(ajax, "action_set_trigger", action_id=a, trigger_id=77) == \
        (6, "trigger_id: no trigger 77")
    assert _err(ajax, "trigger_set_action", trigger_id=t1, action_id=77) == \
        (6, "action_id: no action 77")
    assert _err(ajax, "action_clear_triggers", action_id=0)[0] == 4
    assert _err(ajax, "trigger_get_actions", trigger_id=42) == (6, "trigger_id: no trigger 42")


def test_removing_a_trigger_never_turns_its_actions_system_wide(ajax, files):
    t1 = ajax.ok("trigger_add", name="t1", trigger_type=1, path=files["exe"])["TriggerId"]
    t2 = ajax.ok("trigger_add", name="t2", trigger_type=1, path=files["dir"])["TriggerId"]
    own = ajax.ok("action_add", name="own", action_type=1, path=files["exe"],
                  trigger_id=t1)["ActionId"]
    shared = ajax.ok("action_add", name="shared", action_type=2, path=files["out"],
                     trigger_id=t1)["ActionId"]
    ajax.ok("action_set_trigger", action_id=shared, trigger_id=t2)
    wide = ajax.ok("action_add", name="wide", action_type=2, path=files["out"])["ActionId"]
    assert ajax.ok("trigger_remove", trigger_id=t1) == 0
    assert {a["ActionId"]: a["TriggerIds"] for a in ajax.ok("action_list")} == \
        {shared: [t2], wide: []}
    assert own not in [a["ActionId"] for a in ajax.ok("action_list")]
    assert _err(ajax, "trigger_remove", trigger_id=t1) == (6, f"trigger_id: no trigger {t1}")


def test_clearing_removes_associations_only(ajax, files):
    """trigger_clear_actions / action_clear_triggers unlink (the reference); deleting is
    action_remove / trigger_remove."""
    t1 = ajax.ok("trigger_add", name="t1", trigger_type=1, path=files["exe"])["TriggerId"]
    t2 = ajax.ok("trigger_add", name="t2", trigger_type=1, path=files["dir"])["TriggerId"]
    own = ajax.ok("action_add", name="own", action_type=2, path=files["out"],
                  trigger_id=t1)["ActionId"]
    both = ajax.ok("action_add", name="both", action_type=2, path=files["out"],
                   trigger_id=t1)["ActionId"]
    ajax.ok("action_set_trigger", action_id=both, trigger_id=t2)
    assert ajax.ok("trigger_clear_actions", trigger_id=t1) == 0
    assert {a["ActionId"]: a["TriggerIds"] for a in ajax.ok("action_list")} == \
        {own: [], both: [t2]}
    assert ajax.ok("trigger_get_actions", trigger_id=t1) == []
    assert [t["TriggerId"] for t in ajax.ok("trigger_list")] == [t1, t2]
    assert ajax.ok("action_clear_triggers", action_id=both) == 0
    assert {a["ActionId"]: a["TriggerIds"] for a in ajax.ok("action_list")} == \
        {own: [], both: []}
    assert [t["TriggerId"] for t in ajax.ok("trigger_list")] == [t1, t2]


def test_action_mod_checks_the_result_as_a_whole(ajax, files):
    a = ajax.ok("action_add", name="run", action_type=1, path=files["exe"],
                params="{pid}")["ActionId"]
    # switching to EXPORT needs a directory; the old program path is refused as a whole
    code, msg = _err(ajax, "action_mod", action_id=a, action_type=2)
    assert code == 4 and "is not an existing directory" in msg
    assert ajax.ok("action_mod", action_id=a, action_type=2, path=files["out"]) == 0
    got = ajax.ok("action_list")[0]
    assert (got["ActionType"], got["Path"], got["Params"]) == (2, files["out"], "")
    assert ajax.ok("action_mod", action_id=a, name="renamed") == 0
    assert ajax.ok("action_list")[0]["Name"] == "renamed"
    assert _err(ajax, "action_mod", action_id=9, name="x") == (6, "action_id: no action 9")
    assert ajax.ok("action_remove", action_id=a) == 0
    assert ajax.ok("action_list") == []
    assert _err(ajax, "action_remove", action_id=a) == (6, f"action_id: no action {a}")


def test_missing_required_parameters_are_named(ajax):
    body = ajax("trigger_add")
    assert body["ErrorCode"] == 4
    for name in ("name: required", "trigger_type: required", "path: required"):
        assert name in body["ReturnValue"]
    assert ajax("action_add", name="x", action_type="one", path="/bin/true")["ReturnValue"] \
        == "action_type: expected an integer, got 'one'"


def test_matchers_compare_resolved_paths(tmp_path, files):
    link = tmp_path / "link"
    os.symlink(files["dir"], link)
    rows = [{"id": 1, "name": "d", "type": 1, "path": str(link), "filter": "", "flags": 0},
            {"id": 2, "name": "f", "type": 1, "path": files["exe"], "filter": "", "flags": 4}]
    d, f = compile_matchers(rows)
    assert d == Matcher(1, "d", files["dir"], True, "", 0)
    assert d.matches(files["exe"]) and d.matches(files["dir"] + "/sub/x")
    assert not d.matches(files["dir"] + "-other/x") and not d.matches(files["dir"])
    assert f.matches(files["exe"]) and not f.matches(files["exe"] + "2")


def test_placeholders_are_substituted_per_argument():
    values = {"capture_id": 7, "pid": 1234, "process_name": "evil; rm -rf /",
              "export_file": "/x/a b.pcapng"}
    assert substitute("--cap={capture_id} {pid} '{process_name}' {export_file} {other}",
                      values) == ["--cap=7", "1234", "evil; rm -rf /", "/x/a b.pcapng",
                                  "{other}"]
    assert substitute("", values) == []
    # one pass: a name that reads like a placeholder is not expanded again
    assert substitute("{process_name}", {"process_name": "{pid}", "pid": 5}) == ["{pid}"]


def test_a_value_that_would_be_an_option_is_refused():
    # any account names its process (prctl): "-f/etc/shadow" made `logger -s -t x
    # {process_name}` run as root read /etc/shadow into the command's output
    values = {"process_name": "-f/etc/shadow", "pid": 7}
    with pytest.raises(ValueError, match="would read as an option"):
        substitute("-s -t apppaccap {process_name}", values)
    with pytest.raises(ValueError, match="would read as an option"):  # behind an empty one
        substitute("{export_file}{process_name}", {**values, "export_file": ""})
    # as an option's value, or after "--", it is an operand and stays
    assert substitute("--name={process_name} -- {process_name}", values) == [
        "--name=-f/etc/shadow", "--", "-f/etc/shadow"]


def test_gate_helper_parses_exec_events_and_matches_paths():
    from apppaccap.attribution import procevents as pe
    from apppaccap.triggers.gate_helper import exec_events
    from apppaccap.triggers.gate_helper import match

    def event(what, data, ts):
        body = pe.EVENT_HEAD.pack(what, 0, ts) + data
        cn = pe.CN_MSG.pack(pe.CN_IDX_PROC, pe.CN_VAL_PROC, 0, 0, len(body), 0) + body
        return pe.NLMSGHDR.pack(pe.NLMSGHDR.size + len(cn), 3, 0, 0, 0) + cn

    datagram = (event(pe.PROC_EVENT_FORK, pe.PIDS4.pack(1, 1, 50, 50), 10)
                + event(pe.PROC_EVENT_EXEC, pe.PIDS2.pack(51, 50), 20))
    assert list(exec_events(datagram)) == [(50, 20)]  # the tgid, with the kernel's time
    assert list(exec_events(datagram[:-3])) == []  # a truncated message is not read
    watch = [(1, "/opt/app", True), (2, "/usr/bin/curl", False)]
    assert match(watch, "/opt/app/bin/x") == [1] and match(watch, "/usr/bin/curl") == [2]
    assert match(watch, "/opt/application") == [] and match(watch, "") == []


@pytest.mark.parametrize("root", ["/", "/usr", "/usr/bin", "/bin", "/usr/local", "/home", "/opt",
                                  "/usr/lib", "/usr/local/bin", "/usr/bin/../bin", "LINK"])
def test_over_broad_trigger_directories_are_refused(ajax, files, tmp_path, root):
    # a trigger on / would hold every program the host starts in a ptrace stop
    if root == "LINK":
        root = str(tmp_path / "innocent")
        os.symlink("/", root)  # the watcher compares real paths: this is /
    code, message = _err(ajax, "trigger_add", name="all", trigger_type=1, path=root)
    assert code == 4 and message.startswith("path: "), message
    assert "top-level directory" in message or "shared program directory" in message, message
    t = ajax.ok("trigger_add", name="mine", trigger_type=1, path=files["dir"])
    code, message = _err(ajax, "trigger_mod", trigger_id=t["TriggerId"], path=root)
    assert code == 4 and message.startswith("path: "), message
    assert [x["Path"] for x in ajax.ok("trigger_list")] == [files["dir"]]


def test_programs_in_shared_directories_can_still_be_named(ajax, tmp_path):
    # an executable is an exact match: /usr/bin/env watches env alone
    t = ajax.ok("trigger_add", name="env", trigger_type=1, path="/usr/bin/env")
    assert t["Path"] == "/usr/bin/env"
    deep = tmp_path / "opt" / "app"
    deep.mkdir(parents=True)
    assert ajax.ok("trigger_add", name="app", trigger_type=1, path=str(deep))["Path"] == str(deep)


def test_watcher_ignores_over_broad_rows_stored_before_the_rule(tmp_path):
    rows = [{"id": 1, "type": 1, "name": "old", "path": "/", "filter": "", "flags": 0},
            {"id": 2, "type": 1, "name": "ok", "path": str(tmp_path), "filter": "", "flags": 0}]
    assert [m.trigger_id for m in compile_matchers(rows)] == [2]
