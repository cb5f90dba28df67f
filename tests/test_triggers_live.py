"""Triggers for real: a copied curl in a watched directory, captured from its SYN, then
EXPORT and EXECUTE actions; restart, removal, children and the polling fallback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from apppaccap.pcap.reader import CaptureReader
from tests.helpers.app import make_ctx
from tests.helpers.live import Tcpdump
from tests.helpers.live import read_all
from tests.helpers.live import wait_for
from tests.helpers.ports import free_port

pytestmark = pytest.mark.live


def _setup(tmp_path):
    """watched/curl (a real curl), an export directory and an argv-recording script."""
    watched = tmp_path / "watched"
    watched.mkdir()
    shutil.copy("/usr/bin/curl", watched / "curl")
    out = tmp_path / "exports"
    out.mkdir()
    tools = tmp_path / "tools"
    tools.mkdir()
    record = tools / "record.sh"
    argv_file = tmp_path / "argv.txt"
    # one argument per line, written atomically so the test never reads half a file
    record.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv_file}.tmp\n'
                      f'mv {argv_file}.tmp {argv_file}\necho recorded "$#"\n')
    record.chmod(0o755)
    return watched, out, record, argv_file


def _curl(exe, port, lport):
    return subprocess.run([str(exe), "-s", "--local-port", str(lport),
                           f"http://127.0.0.1:{port}/hello.txt"],
                          capture_output=True, timeout=30)


def _commands(ajax, kind):
    return [c for c in ajax.ok("command_list") if c["Type"] == kind]


def test_program_captured_from_its_syn_then_exported_and_executed(live, live_ajax, http_server,
                                                                  tmp_path):
    port, _server = http_server
    watched, out, record, argv_file = _setup(tmp_path)
    trig = live_ajax.ok("trigger_add", name="watched curls", trigger_type=1, path=str(watched),
                        filter=f"tcp port {port}", flags=0)
    assert trig["TriggerId"] > 0 and trig["FireCount"] == 0 and trig["LastFired"] == 0
    assert trig["Path"] == str(watched) and trig["Filter"] == f"tcp port {port}"
    export = live_ajax.ok("action_add", name="keep pcap", action_type=2, path=str(out),
                          trigger_id=trig["TriggerId"])
    assert export["TriggerIds"] == [trig["TriggerId"]]
    execute = live_ajax.ok("action_add", name="record", action_type=1, path=str(record),
                           params='--capture {capture_id} --pid {pid} '
                                  '--name "{process_name} here" --file {export_file}')
    assert execute["TriggerIds"] == []  # system wide: runs for this trigger too

    dump = Tcpdump("lo", f"tcp port {port}", str(tmp_path / "ref.pcap"))
    lport = free_port()
    done = _curl(watched / "curl", port, lport)
    # the program was paused and resumed behind its parent's back: normal exit, full body
    assert done.returncode == 0 and done.stdout == b"hello world\n" * 100
    ref = dump.stop()

    wait_for(argv_file.exists, timeout=15, what="the EXECUTE action's recording")
    argv = argv_file.read_text().splitlines()
    assert argv[0::2] == ["--capture", "--pid", "--name", "--file"]
    capture_id, pid = int(argv[1]), int(argv[3])
    assert argv[5] == "curl here"

    trig = live_ajax.ok("trigger_list")[0]
    assert trig["FireCount"] == 1 and trig["LastCaptureId"] == capture_id
    now_ft = time.time_ns() // 100 + 116444736000000000
    assert 0 < now_ft - trig["LastFired"] < 30 * 10**7  # within 30 s, in FILETIME ticks

    cap = live_ajax.ok("capture_get_details", capture_id=capture_id)
    assert (cap["Type"], cap["State"], cap["Pid"], cap["ProcessName"]) == (2, 2, pid, "curl")
    assert cap["ProcessPath"] == str(watched / "curl") and cap["Filter"] == f"tcp port {port}"
    packets = read_all(live_ajax, capture_id)
    assert len(packets) == cap["PacketCount"] > 0
    # from its first packet: the capture starts with curl's SYN from its local port ...
    first = packets[0]
    assert (first["SrcPort"], first["DstPort"]) == (lport, port), first
    assert "SYN" in first["Summary"] and "ACK" not in first["Summary"], first["Summary"]
    assert all(p["Pid"] == pid and p["ProcessName"] == "curl" for p in packets)
    # ... and holds every packet of the connection that tcpdump saw, FIN/ACKs included
    assert len(packets) == len(ref), (len(packets), len(ref))

    # EXPORT: the pcapng landed in the action's directory with the capture's packets
    export_path = argv[7]
    assert os.path.dirname(export_path) == str(out) and os.listdir(out) == [
        os.path.basename(export_path)]
    with CaptureReader(export_path) as reader:
        exported = list(reader)
    assert len(exported) == cap["PacketCount"]
    exp_cmd = _commands(live_ajax, "ACTION_EXPORT")
    assert [(c["State"], c["Result"]) for c in exp_cmd] == [(3, export_path)]
    run_cmd = wait_for(lambda: [c for c in _commands(live_ajax, "ACTION_EXECUTE")
                                if c["State"] >= 3], what="EXECUTE command state")
    assert run_cmd[0]["State"] == 3
    assert json.loads(run_cmd[0]["Result"]) == {"ExitCode": 0, "Output": "recorded 8\n"}

    lat = live.triggers.latencies[-1]
    print(f"\nexec → program held {lat['stopped_ms']} ms → capture running, program "
          f"released {lat['released_ms']} ms")
    assert lat["pid"] == pid and lat["held"] is True


def test_restart_keeps_triggers_actions_links_and_removal_stops_firing(tmp_path, http_server):
    from apppaccap.api import triggers as api
    from apppaccap.server import start_services
    from apppaccap.server import stop_services
    port, _server = http_server
    watched, out, record, _argv = _setup(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    ctx = make_ctx(tmp_path)
    start_services(ctx)
    try:
        t1 = api.trigger_add(ctx, name="curl", trigger_type=1, path=str(watched / "curl"),
                             filter=f"tcp port {port}", flags=1)
        t2 = api.trigger_add(ctx, name="other", trigger_type=1, path=str(other))
        shared = api.action_add(ctx, name="shared", action_type=2, path=str(out),
                                trigger_id=t1["TriggerId"])
        api.action_set_trigger(ctx, action_id=shared["ActionId"], trigger_id=t2["TriggerId"])
        only1 = api.action_add(ctx, name="only t1", action_type=1, path=str(record),
                               params="{pid}", trigger_id=t1["TriggerId"])
        wide = api.action_add(ctx, name="wide", action_type=1, path=str(record))
        before = (api.trigger_list(ctx), api.action_list(ctx))
    finally:
        stop_services(ctx)

    ctx = make_ctx(tmp_path)  # a new service over the same data directory
    start_services(ctx)
    try:
        assert (api.trigger_list(ctx), api.action_list(ctx)) == before
        assert sorted(api.trigger_list(ctx)[0]["ActionIds"]) == \
            [shared["ActionId"], only1["ActionId"]]
        assert [m.trigger_id for m in ctx.triggers.matchers] == [t1["TriggerId"],
                                                                t2["TriggerId"]]
        # the restored trigger fires
        assert _curl(watched / "curl", port, free_port()).returncode == 0
        wait_for(lambda: api.trigger_list(ctx)[0]["FireCount"] == 1, what="a firing")
        wait_for(lambda: len(ctx.triggers.completed) == 1, what="the firing's actions")
        # removed: no more firing; its own action goes, the shared one keeps t2
        assert api.trigger_remove(ctx, trigger_id=t1["TriggerId"]) == 0
        assert [t["TriggerId"] for t in api.trigger_list(ctx)] == [t2["TriggerId"]]
        actions = {a["ActionId"]: a["TriggerIds"] for a in api.action_list(ctx)}
        assert actions == {shared["ActionId"]: [t2["TriggerId"]], wide["ActionId"]: []}
        captures = len(ctx.catalog.read("SELECT id FROM captures"))
        assert _curl(watched / "curl", port, free_port()).returncode == 0
        time.sleep(1.5)  # longer than any firing takes (pause + start ≈ 0.1 s)
        assert len(ctx.catalog.read("SELECT id FROM captures")) == captures
        assert len(ctx.triggers.completed) == 1
    finally:
        stop_services(ctx)


def test_children_join_the_capture_with_the_child_flag(live, live_ajax, http_server, tmp_path):
    port, _server = http_server
    watched = tmp_path / "watched"
    watched.mkdir()
    shutil.copy("/bin/sh", watched / "sh")
    trig = live_ajax.ok("trigger_add", name="shell", trigger_type=1,
                        path=str(watched / "sh"), filter=f"tcp port {port}", flags=4)
    lport = free_port()
    # `; exit 0` keeps the shell alive, so curl is its child, not an exec of it
    done = subprocess.run([str(watched / "sh"), "-c",
                           f"curl -s -o /dev/null --local-port {lport} "
                           f"http://127.0.0.1:{port}/hello.txt; exit 0"], timeout=30)
    assert done.returncode == 0
    cid = wait_for(lambda: live_ajax.ok("trigger_list")[0]["LastCaptureId"], what="firing")
    wait_for(lambda: live_ajax.ok("capture_get_details", capture_id=cid)["State"] == 2,
             what="the capture to complete")
    cap = live_ajax.ok("capture_get_details", capture_id=cid)
    assert cap["ProcessName"] == "sh" and cap["Flags"] == 4
    packets = read_all(live_ajax, cid)
    assert packets and "SYN" in packets[0]["Summary"] and packets[0]["SrcPort"] == lport
    assert {p["ProcessName"] for p in packets} == {"curl"}
    assert all(p["Pid"] != cap["Pid"] for p in packets)  # the child's, not the shell's
    after = live_ajax.ok("trigger_list")[0]
    assert after["TriggerId"] == trig["TriggerId"] and after["FireCount"] == 1  # curl: none


def test_polling_fallback_without_proc_connector(live, live_ajax, http_server, tmp_path):
    from apppaccap.triggers.watcher import TriggerWatcher
    port, _server = http_server
    live.triggers.stop()
    live.triggers = TriggerWatcher(live, events=False)  # as on a host without cn_proc
    live.settings.set("trigger_poll_ms", "100")
    live.triggers.start()
    assert live.triggers.mode == "poll"
    watched = tmp_path / "watched"
    watched.mkdir()
    shutil.copy("/bin/sh", watched / "sh")
    out = tmp_path / "exports"
    out.mkdir()
    live_ajax.ok("trigger_add", name="slow shell", trigger_type=1, path=str(watched),
                 filter=f"tcp port {port}", flags=4)
    live_ajax.ok("action_add", name="pcap", action_type=2, path=str(out))
    time.sleep(0.3)  # the first poll only learns what already runs
    lport = free_port()
    # the poll notices the shell within 0.1 s; it waits 1 s before its child connects
    subprocess.run([str(watched / "sh"), "-c", f"sleep 1; curl -s -o /dev/null --local-port "
                    f"{lport} http://127.0.0.1:{port}/hello.txt; exit 0"], timeout=30)
    # Only the finished export counts: while it is written, a hidden .<name>.<random>.part
    # temporary stands beside it (the safe-write rule of safefs/writing.py).
    def finished():
        return [n for n in os.listdir(out) if not n.startswith(".")]
    wait_for(finished, timeout=15, what="the export after the poll saw the exit")
    cid = live_ajax.ok("trigger_list")[0]["LastCaptureId"]
    packets = read_all(live_ajax, cid)
    assert packets and "SYN" in packets[0]["Summary"] and packets[0]["SrcPort"] == lport
    with CaptureReader(str(out / finished()[0])) as reader:
        assert len(list(reader)) == len(packets)


def _state(pid):
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def test_gate_catches_a_watched_exec_and_holds_it_invisibly(tmp_path):
    import threading

    from apppaccap.triggers.gate import Gate
    from apppaccap.triggers.programs import Matcher
    watched = tmp_path / "watched"
    watched.mkdir()
    shutil.copy("/bin/sleep", watched / "sleep")
    caught, go = [], threading.Event()

    def on_exec(pid, ids, hold, stopped_us):
        caught.append((pid, ids, _state(pid), stopped_us))
        go.wait(5)  # the service "starts the capture" here

    gate = Gate(on_exec, max_pause=3)
    assert gate.start() and gate.events, gate.reason
    try:
        gate.watch([Matcher(7, "w", str(watched), True, "", 0)])
        proc = subprocess.Popen([str(watched / "sleep"), "0.2"])
        other = subprocess.run(["sleep", "0.01"])  # not watched: runs straight through
        assert other.returncode == 0
        wait_for(lambda: caught, what="the gate to catch the exec")
        pid, ids, state, stopped_us = caught[0]
        assert (pid, ids, state) == (proc.pid, [7], "t")  # held in a ptrace stop
        print(f"\nexec → program stopped by the gate: {stopped_us} µs")
        assert stopped_us < 50_000
        time.sleep(0.5)
        assert proc.poll() is None and _state(proc.pid) == "t"  # its parent saw nothing
        go.set()
        assert proc.wait(5) == 0  # released: it ran its 0.2 s and exited normally
        # the polling fallback's way: hold an arbitrary pid, release it
        killed = subprocess.Popen(["sleep", "30"])
        wait_for(lambda: _state(killed.pid) == "S", what="sleep to start")
        hold = gate.hold(killed.pid)
        assert hold.paused and _state(killed.pid) == "t"
        killed.kill()  # a held program can still be killed ...
        hold.release()
        hold.release()  # idempotent
        assert killed.wait(5) == -9  # ... and its parent still learns of it
    finally:
        gate.stop()


def test_gate_never_holds_longer_than_its_limit(tmp_path):
    import threading

    from apppaccap.triggers.gate import Gate
    from apppaccap.triggers.programs import Matcher
    watched = tmp_path / "watched"
    watched.mkdir()
    shutil.copy("/bin/sleep", watched / "sleep")
    stuck = threading.Event()
    gate = Gate(lambda *a: stuck.wait(10), max_pause=0.3)  # a service that hangs
    assert gate.start(), gate.reason
    try:
        gate.watch([Matcher(1, "w", str(watched / "sleep"), False, "", 0)])
        t0 = time.monotonic()
        done = subprocess.run([str(watched / "sleep"), "0"], timeout=10)
        assert done.returncode == 0 and 0.25 < time.monotonic() - t0 < 3
    finally:
        stuck.set()
        gate.stop()
