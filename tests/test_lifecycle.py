"""Lifecycle and integrity: signals, helper processes, ids, a damaged catalog, file modes.

Real servers (tests/helpers/server.py), real signals, real files; root required.
"""

from __future__ import annotations

import glob
import os
import signal
import socket
import sqlite3
import stat
import time

import pytest

from apppaccap.store.catalog import Catalog
from apppaccap.store.database import migrate
from apppaccap.store.migrations import CATALOG
from tests.helpers.live import wait_for
from tests.helpers.ports import free_port
from tests.helpers.server import Server

ACTIVE, COMPLETED, INTERRUPTED = 1, 2, 4
SYSTEM = 1


def _stat_fields(pid: int):
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def descendants(pid: int) -> dict[int, int]:
    """Every process below `pid`: pid → start time (ticks), to tell a reused pid apart."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(name))[1]), []).append(int(name))
            except (OSError, IndexError):
                pass
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                found[child] = int(_stat_fields(child)[19])
            except (OSError, IndexError):
                continue
            todo.append(child)
    return found


def alive(procs: dict[int, int]) -> list[int]:
    """The processes of `procs` that still exist (zombies count as gone)."""
    left = []
    for pid, started in procs.items():
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        if int(fields[19]) == started and fields[0] != "Z":
            left.append(pid)
    return left


def command_lines(pids) -> list[str]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                out.append(fh.read().replace(b"\0", b" ").decode()[:200])
        except OSError:
            pass
    return out


def start_capture(server) -> int:
    """A system capture on lo with a few packets in it."""
    port = free_port(socket.SOCK_DGRAM)
    cid = server.ok("capture_start_system", adapter="lo", filter=f"udp port {port}")["CaptureId"]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(50):
        sock.sendto(b"hello %d" % i, ("127.0.0.1", port))
    sock.close()
    wait_for(lambda: server.ok("capture_stream", capture_id=cid, last_id=49)["Packets"],
             what="50 packets committed")
    return cid


def catalog_row(data, capture_id: int):
    conn = sqlite3.connect(os.path.join(data, "catalog.db"))
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM captures WHERE id = ?", (capture_id,)).fetchone()
    finally:
        conn.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_completes_captures_and_ends_every_helper(tmp_path, sig):
    data = tmp_path / "data"
    server = Server(data)
    try:
        cid = start_capture(server)
        helpers = descendants(server.proc.pid)
        assert helpers, "no helper process to watch (the fast path runs with a capture)"
        server.proc.send_signal(sig)
        assert server.proc.wait(30) == 0
    finally:
        server.stop()
    wait_for(lambda: not alive(helpers), timeout=5,
             what=f"helpers to end: {command_lines(alive(helpers))}")
    row = catalog_row(data, cid)
    assert row["state"] == COMPLETED, dict(row)
    assert row["packet_count"] == 50 and row["end_time"]


def test_helpers_die_with_a_killed_server(tmp_path):
    """kill -9 runs no cleanup: the helpers must notice their parent's death themselves -
    even one that is not reading its pipe (stopped here, as a busy or blocked one is)."""
    server = Server(tmp_path / "data")
    try:
        # the socket-table backend: with eBPF loaded the fast-path helper is not started,
        # and this test is about every kind of helper
        server.ok("settings_set", key_name="attribution_backend", value="socket-table")
        start_capture(server)
        time.sleep(1)  # helpers started from a request thread outlive that thread
        helpers = descendants(server.proc.pid)
        names = command_lines(helpers)
        assert any("apppaccap.attribution.fastpath" in n for n in names), names
        assert any("triggers.gate_h" in n for n in names), names
        for pid in helpers:
            os.kill(pid, signal.SIGSTOP)
        server.kill(9)
    finally:
        server.stop()
    try:
        wait_for(lambda: not alive(helpers), timeout=5,
                 what=f"helpers to die: {command_lines(alive(helpers))}")
    finally:
        for pid in alive(helpers):  # do not leave a failed run's processes behind
            os.kill(pid, signal.SIGKILL)


# -- ids ------------------------------------------------------------------------------------

def test_ids_are_never_reused_after_deletion(live, live_ajax, tmp_path):
    ajax = live_ajax
    exe = tmp_path / "tool"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)

    def capture():
        port = free_port(socket.SOCK_DGRAM)
        cid = ajax.ok("capture_start_system", adapter="lo", filter=f"udp port {port}")
        ajax.ok("capture_stop_system", capture_id=cid["CaptureId"])
        return cid["CaptureId"]

    first = capture()
    ajax.ok("capture_delete", capture_id=first)
    second = capture()
    assert second > first

    search = ajax.ok("search_start", filter="", capture_id=second)["SearchId"]
    live.jobs  # noqa: B018 - searches run on the engine; deleting cancels a running one
    ajax.ok("search_delete", search_id=search)
    assert ajax.ok("search_start", filter="", capture_id=second)["SearchId"] > search

    trigger = ajax.ok("trigger_add", name="t", trigger_type=1, path=str(exe))["TriggerId"]
    ajax.ok("trigger_remove", trigger_id=trigger)
    assert ajax.ok("trigger_add", name="t", trigger_type=1, path=str(exe))["TriggerId"] > trigger

    action = ajax.ok("action_add", name="a", action_type=1, path=str(exe))["ActionId"]
    ajax.ok("action_remove", action_id=action)
    assert ajax.ok("action_add", name="a", action_type=1, path=str(exe))["ActionId"] > action

    def process(pid):
        rec = {"pid": pid, "ppid": 1, "name": "p", "path": "/p", "cmdline": "p", "user": "u",
               "start_time": pid}
        return live.processes.identify([rec])[0]

    old = process(4242)
    ajax.ok("apc_flush", flags=0x40)  # APC_FLUSH_PROCESSES
    assert process(4343) > old


def test_migration_keeps_rows_and_the_highest_ids(tmp_path):
    """A catalog of the previous schema (ids without AUTOINCREMENT) is migrated in place:
    rows kept, and new ids continue above every id still referenced or on disk."""
    data = tmp_path / "data"
    (data / "captures").mkdir(parents=True)
    (data / "captures" / "7.db").write_bytes(b"")  # a capture database named 7
    conn = sqlite3.connect(data / "catalog.db", isolation_level=None)
    migrate(conn, CATALOG[:6])
    for cid in (1, 2, 3):
        conn.execute("INSERT INTO captures(id, type, state, name, start_time) "
                     "VALUES (?, 1, 2, ?, 0)", (cid, f"c{cid}"))
    conn.execute("DELETE FROM captures WHERE id = 3")
    conn.execute("INSERT INTO searches(id, filter, capture_id, state, created) "
                 "VALUES (4, 'tcp', 2, 3, 0)")
    conn.execute("INSERT INTO search_results VALUES (9, 1, 2, 1, 0)")  # search 9 deleted
    conn.execute("INSERT INTO triggers(id, name, type, path, created) VALUES (5, 't', 1, '/x', 0)")
    conn.execute("INSERT INTO trigger_actions VALUES (5, 6)")  # action 6 deleted
    conn.close()

    cat = Catalog(str(data))
    try:
        assert [tuple(r) for r in cat.read("SELECT id, name FROM captures")] == \
            [(1, "c1"), (2, "c2")]
        assert cat.one("PRAGMA integrity_check")[0] == "ok"
        new = {
            "captures": cat.execute("INSERT INTO captures(type, state, start_time) "
                                    "VALUES (1, 2, 0)"),
            "searches": cat.execute("INSERT INTO searches(filter, state, created) "
                                    "VALUES ('', 1, 0)"),
            "triggers": cat.execute("INSERT INTO triggers(name, type, path, created) "
                                    "VALUES ('u', 1, '/y', 0)"),
            "actions": cat.execute("INSERT INTO actions(name, type, path, created) "
                                   "VALUES ('a', 1, '/y', 0)"),
        }
        assert new == {"captures": 8, "searches": 10, "triggers": 6, "actions": 7}
        cat.execute("DELETE FROM captures WHERE id = 8")
        assert cat.execute("INSERT INTO captures(type, state, start_time) VALUES (1, 2, 0)") == 9
    finally:
        cat.close()


# -- a damaged catalog ------------------------------------------------------------------------

def _damage(path: str, how: str) -> None:
    """Damage the catalog file; its WAL goes too (it could otherwise repair the file)."""
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    if how == "empty":
        open(path, "wb").close()
    elif how == "garbage":
        with open(path, "wb") as fh:
            fh.write(os.urandom(64 << 10))
    else:  # truncated: the header survives, most pages do not
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 3)


@pytest.mark.parametrize("how", ["empty", "garbage", "truncated"])
def test_damaged_catalog_is_set_aside_and_captures_come_back(tmp_path, how):
    data = tmp_path / "data"
    server = Server(data)
    try:
        cid = start_capture(server)
        server.ok("capture_stop_system", capture_id=cid)
        before = server.ok("capture_get_details", capture_id=cid)
        for i in range(200):  # a catalog large enough for truncation to cut pages
            server.ok("settings_set", key_name=f"k{i}", value="v" * 2000)
    finally:
        server.stop()
    catalog = str(data / "catalog.db")
    _damage(catalog, how)

    again = Server(data)
    try:
        assert again.proc.poll() is None
        row = again.ok("capture_get_details", capture_id=cid)
        for key in ("Type", "Adapters", "Filter", "PacketCount", "ByteCount",
                    "ConnectionCount", "StartTime"):
            assert row[key] == before[key], key
        assert row["State"] == COMPLETED
        assert "registered again" in row["Message"]
        assert len(again.ok("capture_read", capture_id=cid)["Packets"]) == 50
        # the next capture does not take the recovered one's id
        assert start_capture(again) > cid
    finally:
        again.stop()
    aside = glob.glob(catalog + ".damaged-*")
    assert [p for p in aside if not p.endswith(("-wal", "-shm"))], os.listdir(data)
    log = again.proc.stderr.read().decode(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    lines = [line for line in log.splitlines() if "set aside" in line]
    assert len(lines) == 1 and "1 capture(s)" in lines[0], lines


def test_capture_interrupted_by_a_crash_comes_back_interrupted(tmp_path):
    data = tmp_path / "data"
    server = Server(data)
    try:
        cid = start_capture(server)
    finally:
        server.kill(9)
    _damage(str(data / "catalog.db"), "garbage")
    again = Server(data)
    try:
        row = again.ok("capture_get_details", capture_id=cid)
        assert row["State"] == INTERRUPTED and row["Type"] == SYSTEM, row
        assert row["PacketCount"] == 50
    finally:
        again.stop()


# -- file modes -------------------------------------------------------------------------------

def test_data_directory_and_files_are_private(tmp_path):
    data = tmp_path / "data"
    (data / "captures").mkdir(parents=True)
    os.chmod(data, 0o755)
    os.chmod(data / "captures", 0o755)
    old = data / "captures" / "9.bytes"
    old.write_bytes(b"packets of an older run")
    os.chmod(old, 0o644)
    server = Server(data, tmp_path / "export")
    try:
        cid = start_capture(server)
        server.ok("capture_stop_system", capture_id=cid)
        start_capture(server)  # an active one too: its -wal and -shm exist now
        modes = {}
        for root, dirs, files in os.walk(data):
            for name in dirs + files:
                path = os.path.join(root, name)
                modes[os.path.relpath(path, data)] = stat.S_IMODE(os.lstat(path).st_mode)
        modes["."] = stat.S_IMODE(os.stat(data).st_mode)
    finally:
        server.stop()
    assert {"catalog.db", "catalog.db-wal", "catalog.db-shm", f"captures/{cid}.db",
            "captures/9.bytes"} <= set(modes), sorted(modes)
    assert any(name.endswith(".db-wal") and name.startswith("captures/") for name in modes)
    loose = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert loose == {}
