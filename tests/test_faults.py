"""Faults: a data directory that fills up, and the attribution sweeper under concurrency.

The disk-full tests run on real, small tmpfs file systems (root required: never skipped).
"""

from __future__ import annotations

import gc
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

import pytest

from apppaccap.capture.recorder import Recorder
from apppaccap.context import Config
from apppaccap.context import build_context
from apppaccap.dissect.decode import decode
from apppaccap.errors import IOFailure
from apppaccap.store.capturedb import CaptureDb
from apppaccap.web.app import create_app
from apppaccap.web.pages import default_themes_dir
from tests.helpers.app import as_this_process
from tests.helpers.live import NoOwners
from tests.helpers.live import read_all
from tests.helpers.live import wait_for
from tests.helpers.packets import udp_frame
from tests.helpers.ports import free_port
from tests.helpers.server import Server

IO_ERROR = 11
INTERRUPTED = 4


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) → a fresh tmpfs of that size (e.g. "5m"), unmounted afterwards."""
    mounted = []

    def mount(size: str):
        path = tmp_path / f"tmpfs-{len(mounted)}"
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder) -> None:
    """Take every byte left on `folder`'s file system."""
    try:
        fd = os.open(os.path.join(folder, "filler"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    except OSError:
        return  # not even room for a new file: full already
    try:
        for size in (64 << 10, 4096, 512, 1):  # down to the last partial page
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def feed(rec: Recorder, count: int) -> list:
    """Add `count` 1,400-byte packets; returns the exceptions add() raised."""
    frame = udp_frame(b"x" * 1400, 5000, 9)
    d = decode(1, frame)
    raised = []
    for i in range(count):
        try:
            rec.add(i * 1000, 0, frame, len(frame), d, rec.conn_for(d, i * 1000))
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            raised.append(exc)
    return raised


def test_full_disk_stops_writing_and_counts_lost_packets(tmpfs):
    """A live capture's recorder: the failed batch and every packet after it are counted as
    lost (DroppedCount), PacketCount is what the database holds, nothing is raised."""
    root = str(tmpfs("1m"))
    db = CaptureDb(root, 1)
    rec = Recorder(db, batch_packets=100)
    told = []
    rec.on_failure = told.append
    assert feed(rec, 3000) == []  # ~4.3 MB into 1 MB
    rec.flush(wait=True)
    stored = db.one("SELECT count(*) FROM packets")[0]
    db.close()
    assert len(told) == 1 and told[0].startswith("disk full: "), told
    assert 0 < stored < 3000
    assert rec.packets == stored
    assert rec.packets + rec.lost == 3000


def test_full_disk_errors_are_fresh_and_never_grow(tmpfs):
    """Without a listener (file ingest) the failure is raised, as IO_ERROR, on every call -
    a new exception each time: re-raising one stored exception grew a ~14,000-frame
    traceback."""
    root = str(tmpfs("1m"))
    db = CaptureDb(root, 1)
    rec = Recorder(db, batch_packets=50)
    raised = feed(rec, 2000)
    db.close()
    assert len(raised) > 100
    assert all(isinstance(e, IOFailure) and e.message.startswith("disk full: ")
               for e in raised), {type(e).__name__ for e in raised}
    assert len({id(e) for e in raised}) == len(raised)
    frames = [len(traceback.extract_tb(e.__traceback__)) for e in raised]
    assert max(frames) <= 10, frames[-5:]
    assert all(e.__context__ is None or e.__context__.__context__ is None for e in raised)


def test_database_write_on_full_disk_is_io_failure(tmpfs):
    root = str(tmpfs("256k"))
    db = CaptureDb(root, 1)
    try:
        with pytest.raises(IOFailure, match="^disk full: "):
            db.write(lambda c: c.execute("INSERT INTO meta VALUES ('big', ?)",
                                         (b"\0" * (1 << 20),)))
        assert db.one("SELECT count(*) FROM meta")[0] == 0
    finally:
        db.close()


def test_disk_fault_in_any_action_answers_io_error(tmpfs, tmp_path):
    """The door maps a disk fault raised anywhere (here an upload written into the full data
    directory: OSError ENOSPC) to IO_ERROR, not GENERIC_ERROR."""
    root = tmpfs("1m")
    ctx = build_context(Config(data_dir=str(root / "data"), themes_dir=default_themes_dir(),
                               export_dir=str(tmp_path / "export")))
    try:
        fill(root)
        client = as_this_process(create_app(ctx).test_client())
        resp = client.post("/ajax", data={"action": "pcap_ingest_post",
                                          "file": (io.BytesIO(b"\0" * 300_000), "a.pcap")})
        body = resp.get_json()
        assert body["ErrorCode"] == IO_ERROR, body
        assert body["ReturnValue"].startswith("disk full: "), body
    finally:
        ctx.catalog.close()


def assert_quiet(log_path) -> None:
    """Disk faults are logged as one line each, never as (growing) tracebacks."""
    with open(log_path, errors="replace") as fh:
        text = fh.read()
    assert len(text) < 200_000, f"{len(text)} bytes of log"
    assert "Traceback" not in text, text[-3000:]


def send_udp(port: int, count: int, size: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"p" * size
    for i in range(count):
        sock.sendto(payload, ("127.0.0.1", port))
        if i % 200 == 199:
            time.sleep(0.005)
    sock.close()


def send_while_stopped(server, port: int, count: int, size: int) -> None:
    """Send with the server stopped (SIGSTOP): every packet waits in the capture's kernel
    ring, so all of them reach the capture before it can fail and stop - the test knows
    exactly how many packets the capture saw."""
    server.proc.send_signal(signal.SIGSTOP)
    try:
        send_udp(port, count, size)
    finally:
        server.proc.send_signal(signal.SIGCONT)


def test_live_capture_on_a_full_data_directory(tmpfs, tmp_path):
    data = tmpfs("5m") / "data"
    export = tmpfs("1m")
    server = Server(data, export, log_dir=tmp_path)
    try:
        port = free_port(socket.SOCK_DGRAM)
        cid = server.ok("capture_start_system", adapter="lo",
                        filter=f"udp port {port}")["CaptureId"]
        send_udp(port, 1000, 1400)  # 1.4 MB: stored
        wait_for(lambda: server.ok("capture_stream", capture_id=cid, last_id=999)["Packets"],
                 what="the first 1000 packets committed")
        send_while_stopped(server, port, 3000, 1400)  # 4.3 MB more: the disk is 5 MB

        def stopped():
            row = server.ok("capture_get_details", capture_id=cid)
            return row if row["State"] != 1 else None
        row = wait_for(stopped, timeout=30, what="the capture to stop on a full disk")
        assert row["State"] == INTERRUPTED, row
        assert row["Message"].startswith("disk full: "), row["Message"]
        # committed packets stay readable; the counters are the truth
        packets = read_all(server, cid)
        assert len(packets) >= 1000
        assert row["PacketCount"] == len(packets)
        assert row["ByteCount"] == sum(p["Length"] for p in packets)
        assert row["PacketCount"] + row["DroppedCount"] == 4000  # lost ones counted
        assert server.ok("capture_list_active") == []

        # with the disk full, whatever has to write answers IO_ERROR
        fill(data)
        body = server.call("capture_start_system", adapter="lo", filter=f"udp port {port}")
        assert body["ErrorCode"] == IO_ERROR, body
        assert body["ReturnValue"].startswith("disk full"), body
        # catalog writes succeed while its WAL has room, then fail: never GENERIC_ERROR
        codes = []
        for i in range(40):
            body = server.call("settings_set", key_name=f"big{i}", value="v" * 60000)
            codes.append(body["ErrorCode"])
            if body["ErrorCode"]:
                assert body["ReturnValue"].startswith("disk full"), body
                break
        assert codes[-1] == IO_ERROR and set(codes) <= {0, IO_ERROR}, codes
        assert server.ok("capture_get_details", capture_id=cid)["State"] == INTERRUPTED
        assert len(read_all(server, cid)) == len(packets)
    finally:
        server.stop()
    assert_quiet(server.log_path)


def test_stop_answers_quickly_when_the_disk_fills_under_a_capture(tmpfs, tmp_path):
    data = tmpfs("5m") / "data"
    server = Server(data, tmp_path, log_dir=tmp_path)
    try:
        port = free_port(socket.SOCK_DGRAM)
        cid = server.ok("capture_start_system", adapter="lo",
                        filter=f"udp port {port}")["CaptureId"]
        fill(data)  # someone else takes the disk: no batch can be written
        send_while_stopped(server, port, 2000, 1000)
        started = time.monotonic()
        body = server.call("capture_stop_system", capture_id=cid)
        took = time.monotonic() - started
        assert took < 5, took
        # stopped by us, or already by the service when its write failed (BUSY, or
        # NOT_FOUND when the service's stop won the race after our request was checked)
        assert body["ErrorCode"] in (0, 6, 7), body

        def ended():
            row = server.ok("capture_get_details", capture_id=cid)
            return row if row["State"] != 1 else None
        row = wait_for(ended, timeout=10, what="the capture to end")
        assert row["State"] == INTERRUPTED and row["Message"].startswith("disk full"), row
        assert row["PacketCount"] == len(read_all(server, cid))
        assert row["PacketCount"] + row["DroppedCount"] == 2000
    finally:
        server.stop()
    assert_quiet(server.log_path)


# -- the attribution sweeper ---------------------------------------------------------------

class Finalized:
    """Cyclic garbage whose finalizer blocks briefly (as closing a file does): the garbage
    collector runs it in whichever thread allocates, and it lets other threads run."""

    def __init__(self):
        self.me = self

    def __del__(self):
        time.sleep(0.0001)


def test_sweep_copes_with_flows_added_meanwhile():
    """The sweeper copies the flow table while sniffer threads add flows. A garbage
    collection inside that copy runs finalizers that release the GIL; the copy then saw
    "OrderedDict mutated during iteration" (93 times under load)."""
    from apppaccap.attribution.resolver import Attribution
    # a clock that stands still: no flow is ever due for the (slow) matching part
    attribution = Attribution(NoOwners(), None, boost=False, clock=lambda: 0.0)
    for i in range(5000):
        attribution.status((17, "10.0.0.1", i, "10.0.0.2", 53))
    stop = threading.Event()

    def sniffer():
        i = 0
        while not stop.is_set():
            i += 1
            attribution.status((6, "10.0.0.3", i % 65536, "10.0.0.4", 80))

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # as Attribution.acquire() sets it
    thread = threading.Thread(target=sniffer)
    thread.start()
    failures = []
    try:
        for _ in range(30):
            gc.collect(0)
            for _ in range(3):
                Finalized()  # collected by the sweep's own allocations, mid-copy
            try:
                attribution._sweep()
            except RuntimeError as exc:
                failures.append(str(exc))
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old)
    assert failures == []
    assert len(attribution.flows) > 5000  # the sniffer did run meanwhile


def test_bulk_ingest_on_a_full_disk_fails_as_disk_full(tmpfs, tmp_path):
    """A file ingest whose side file or writer process meets a full disk fails with
    "disk full" (IO_ERROR), promptly: the bytes are appended by the bulk writer's
    sender thread, whose failure must reach the ingest rather than leave it waiting."""
    import threading

    from apppaccap.ingest import ingest
    from apppaccap.store.faults import io_failure
    from tests.test_pcapscan import gen_flows
    src = str(tmp_path / "flows.pcap")
    gen_flows(src, 30000)  # ~20 MB of packet bytes
    root = tmpfs("6m")
    ctx = build_context(Config(data_dir=str(root / "data"), themes_dir=default_themes_dir()))
    raised = []

    def run():
        try:
            ingest.ingest(ctx, ingest.open_reader(src), ingest.create_capture(ctx, src))
        except Exception as exc:  # noqa: BLE001 - checked below
            raised.append(exc)

    try:
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(60)
        assert not worker.is_alive(), "the ingest hangs on a full disk"
        assert len(raised) == 1
        failure = io_failure(raised[0], "ingesting")
        assert failure is not None and failure.message.startswith("disk full"), raised[0]
    finally:
        ctx.catalog.close()
