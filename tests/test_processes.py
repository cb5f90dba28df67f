"""process_list_running / process_list_threads / adapter_list on the real machine."""

import os
import subprocess
import sys
import threading
import time


def test_running_includes_us_with_stable_id(ajax):
    procs = ajax.ok("process_list_running")
    me = [p for p in procs if p["Pid"] == os.getpid()]
    assert len(me) == 1 and me[0]["Running"] and me[0]["Path"] == os.path.realpath(sys.executable)
    again = [p for p in ajax.ok("process_list_running") if p["Pid"] == os.getpid()]
    assert again[0]["ProcessId"] == me[0]["ProcessId"]


def test_process_id_not_reused_with_pid(ctx):
    a = {"pid": 4242, "ppid": 1, "name": "a", "path": "/a", "cmdline": "a", "user": "root",
         "start_time": 1_000_000_000}
    b = dict(a, name="b", start_time=2_000_000_000)   # same pid, a later process
    ia, ib = ctx.processes.identify([a, b])
    assert ia != ib and ctx.processes.identify([a]) == [ia]


def test_threads_live_and_ended(ajax):
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="worker-x")
    t.start()
    tid = t.native_id
    threads = ajax.ok("process_list_threads", pid=os.getpid())
    assert tid in {x["ThreadId"] for x in threads}
    stop.set()
    t.join()
    time.sleep(0.05)
    live = {x["ThreadId"] for x in ajax.ok("process_list_threads", pid=os.getpid())}
    assert tid not in live
    ended = [x for x in ajax.ok("process_list_threads", pid=os.getpid(), flags=1)
             if x["ThreadId"] == tid]
    assert ended and ended[0]["Live"] is False


def test_threads_errors(ajax):
    assert ajax("process_list_threads")["ErrorCode"] == 4
    assert ajax("process_list_threads", process_id=999999)["ErrorCode"] == 6
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert ajax("process_list_threads", pid=proc.pid)["ErrorCode"] == 6
    assert ajax("process_list_threads", pid=os.getpid(), flags=7)["ErrorCode"] == 4


def test_adapter_list_joins_libpcap_and_os(ajax):
    adapters = {a["Name"]: a for a in ajax.ok("adapter_list")}
    lo = adapters["lo"]
    assert lo["Loopback"] and lo["Up"] and "127.0.0.1" in lo["Addresses"]
    assert lo["AdapterId"] == "lo" and lo["Wireless"] is False and lo["MonitorMode"] is False
    assert "any" in adapters and adapters["any"]["Capturable"] is False
