"""Process captures: children, adding a process to a capture, thread captures."""

import subprocess
import sys
import textwrap
import time

import pytest

from tests.helpers.live import read_all

pytestmark = pytest.mark.live


def test_children_followed_with_flag(live_ajax, http_server):
    port, _ = http_server
    script = textwrap.dedent(f"""
        import subprocess, sys
        sys.stdin.readline()
        subprocess.run(["curl", "-s", "-o", "/dev/null", "http://127.0.0.1:{port}/"])
        print("done", flush=True)
        sys.stdin.readline()
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        with_kids = live_ajax.ok("capture_start_process", pid=parent.pid, flags=4, adapter="lo")
        alone = live_ajax.ok("capture_start_process", pid=parent.pid, adapter="lo")
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "done"
        time.sleep(0.5)
        live_ajax.ok("capture_stop_all")
    finally:
        parent.kill()
        parent.wait()
    kids = read_all(live_ajax, with_kids["CaptureId"])
    assert kids and {p["ProcessName"] for p in kids} == {"curl"}
    assert read_all(live_ajax, alone["CaptureId"]) == []   # the parent itself sent nothing
    procs = live_ajax.ok("capture_get_processes", capture_id=with_kids["CaptureId"])
    assert [p["Name"] for p in procs] == ["curl"] and procs[0]["ParentPid"] == parent.pid


def test_add_process_to_capture(live_ajax, http_server):
    port, _ = http_server
    sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    try:
        cap = live_ajax.ok("capture_start_process", pid=sleepers[0].pid, adapter="lo")
        again = live_ajax.ok("capture_start_process", pid=sleepers[1].pid,
                             capture_id=cap["CaptureId"])
        assert again["CaptureId"] == cap["CaptureId"]
        pids = {p["Pid"] for p in live_ajax.ok("process_list_capture")}
        assert {s.pid for s in sleepers} <= pids
        assert live_ajax("capture_start_process", pid=sleepers[1].pid,
                         capture_id=999)["ErrorCode"] == 6
        sys_cap = live_ajax.ok("capture_start_system", adapter="lo", filter="udp port 9")
        assert live_ajax("capture_start_process", pid=sleepers[1].pid,
                         capture_id=sys_cap["CaptureId"])["ErrorCode"] == 4
        live_ajax.ok("capture_stop_all")
    finally:
        for s in sleepers:
            s.kill()
            s.wait()


THREADED = textwrap.dedent("""
    import socket, sys, threading, time
    port = int(sys.argv[1])
    ready = threading.Event()
    def talk(tag, hold):
        s = socket.create_connection(("127.0.0.1", port))
        for i in range(6):
            s.sendall(b"x" * 10)
            s.recv(100)          # the echo server answers after a pause: we block here
    def quiet():
        ready.wait()
    sys.stdin.readline()
    a = threading.Thread(target=talk, args=("a", 0.2), name="talker")
    b = threading.Thread(target=quiet, name="idle")
    b.start(); a.start()
    print(a.native_id, flush=True)
    a.join(); ready.set(); b.join()
    print("done", flush=True)
    sys.stdin.readline()
""")

ECHO_SLOW = textwrap.dedent("""
    import socket, sys, threading, time
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0)); s.listen(5); print(s.getsockname()[1], flush=True)
    def serve(c):
        while True:
            d = c.recv(100)
            if not d: return
            time.sleep(0.1)
            c.sendall(d)
    while True:
        c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
""")


def test_thread_capture_keeps_the_threads_packets(live_ajax):
    echo = subprocess.Popen([sys.executable, "-c", ECHO_SLOW], stdout=subprocess.PIPE, text=True)
    port = int(echo.stdout.readline())
    client = subprocess.Popen([sys.executable, "-c", THREADED, str(port)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        sys_cap = live_ajax.ok("capture_start_system", adapter="lo", filter=f"tcp port {port}")
        threads = live_ajax.ok("process_list_threads", pid=client.pid)
        assert len(threads) == 1 and threads[0]["ThreadId"] == client.pid
        client.stdin.write("go\n")
        client.stdin.flush()
        tid = int(client.stdout.readline())
        assert live_ajax("capture_start_process", pid=client.pid, thread_id=tid,
                         adapter="lo")["ErrorCode"] == 4          # flag missing
        thr = live_ajax.ok("capture_start_process", pid=client.pid, thread_id=tid, flags=2,
                           adapter="lo", filter=f"tcp port {port}")
        assert thr["Type"] == 3 and thr["ThreadId"] == tid
        assert client.stdout.readline().strip() == "done"
        time.sleep(0.3)
        live_ajax.ok("capture_stop_all")
    finally:
        client.kill()
        client.wait()
        echo.kill()
    packets = read_all(live_ajax, thr["CaptureId"])
    assert packets and all(p["ThreadId"] == tid and p["Pid"] == client.pid for p in packets)
    everything = read_all(live_ajax, sys_cap["CaptureId"])
    labelled = [p for p in everything if p["Pid"] == client.pid and p["ThreadId"] == tid]
    assert len(labelled) >= len(packets), \
        [(p["PacketId"], p["Pid"], p["ThreadId"], p["SrcPort"], p["DstPort"])
         for p in everything][:40]
    stream = live_ajax.ok("capture_thread_stream", capture_id=sys_cap["CaptureId"],
                          pid=client.pid, thread_id=tid)
    assert [p["PacketId"] for p in stream["Packets"]] == [p["PacketId"] for p in labelled]
    # the thread has ended; it is still listed (flags=1) because it owned traffic
    ended = {t["ThreadId"]: t for t in
             live_ajax.ok("process_list_threads", process_id=thr["ProcessId"], flags=1)}
    assert tid in ended and ended[tid]["Live"] is False and ended[tid]["Name"]
