"""Capture lifecycle: start/stop system and process captures, list, details, notes, delete."""

from __future__ import annotations

import os

import psutil

from apppaccap.api import fastpages
from apppaccap.api.registry import endpoint
from apppaccap.attribution import processes
from apppaccap.capture.bpf import compile_error
from apppaccap.errors import Busy
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.errors import Unsupported
from apppaccap.extract.service import forget_capture
from apppaccap.filetime import from_ns
from apppaccap.store import captures as capture_table
from apppaccap.store.blocks import side_path
from apppaccap.store.capturedb import capture_path
from apppaccap.store.capturedb import set_packet_notes
from apppaccap.wire import CaptureFlag
from apppaccap.wire import CaptureState
from apppaccap.wire import CaptureType
from apppaccap.wire import DataType

NOTE_WAIT = 60  # seconds a note's write is waited for (the database's writer may be busy)

ALL_FLAGS = CaptureFlag.RESOLVE_IPS | CaptureFlag.THREAD_CAPTURE | CaptureFlag.CHILD_PROCESSES


def captures(ctx):
    if ctx.captures is None:
        raise Unsupported("capture: the capture engine is not running in this process")
    return ctx.captures


def capture_object(ctx, row) -> dict:
    obj = {
        "Version": 1, "CaptureId": row["id"], "Type": row["type"], "State": row["state"],
        "Name": row["name"], "Filter": row["filter"], "Flags": row["flags"],
        "Adapters": [a for a in row["adapters"].split(",") if a],
        "ProcessId": row["process_id"] or 0, "Pid": row["pid"] or 0,
        "ThreadId": row["thread_id"] or 0, "ProcessName": row["process_name"] or "",
        "ProcessPath": row["process_path"] or "", "StartTime": from_ns(row["start_time"]),
        "EndTime": from_ns(row["end_time"]), "PacketCount": row["packet_count"],
        "ByteCount": row["byte_count"], "DroppedCount": row["dropped_count"],
        "ConnectionCount": row["connection_count"], "Notes": row["notes"],
        "SourceFile": row["source_file"], "Message": row["message"],
    }
    live = ctx.captures.live_counts(row["id"]) if ctx.captures is not None else None
    if live:
        obj.update(live)
    return obj


def _check_flags(flags: int, allowed: int) -> None:
    if flags < 0 or flags & ~allowed:
        raise Malformed(f"flags: unsupported bits 0x{flags & ~allowed:x} (allowed 0x{allowed:x})")


@endpoint(DataType.JSON)
def capture_start_system(ctx, *, filter: str = "", flags: int = 0, adapter: list = ()) -> dict:
    """Start a system-wide capture: every packet, each labelled with its process.

    BUSY when the setting max_active_captures (default 16) captures are already active.

    - filter: BPF capture filter (tcpdump syntax), compiled by libpcap; empty = everything
    - flags: 0 or CAPTURE_FLAG_RESOLVE_IPS
    - adapter: adapter names (repeat, `adapter[]`, or comma-separated); empty = all up adapters
    """
    _check_flags(flags, CaptureFlag.RESOLVE_IPS)
    row = captures(ctx).start(CaptureType.SYSTEM, bpf=filter, flags=flags, adapters=adapter)
    return capture_object(ctx, row)


def _active(ctx, capture_id: int, system: bool):
    row = captures(ctx).get(capture_id)
    if row["state"] != CaptureState.ACTIVE or capture_id not in ctx.captures.live:
        raise Busy(f"capture_id: capture {capture_id} is not active")
    if system != (row["type"] == CaptureType.SYSTEM):
        kind = "a system" if row["type"] == CaptureType.SYSTEM else "not a system"
        raise Malformed(f"capture_id: capture {capture_id} is {kind} capture")
    return row


@endpoint(DataType.INT)
def capture_stop_system(ctx, *, capture_id: int) -> int:
    """Stop an active system capture.

    - capture_id: the capture to stop
    """
    _active(ctx, capture_id, True)
    ctx.captures.stop(capture_id)
    return 0


def _process_row(ctx, process_id: int, pid: int) -> dict:
    """The process named by our ProcessId or by a running pid (NOT_FOUND otherwise)."""
    if process_id:
        row = ctx.processes.by_id(process_id)
        if row is None:
            raise NotFound(f"process_id: no process {process_id}")
        if pid and pid != row["pid"]:
            raise Malformed(f"pid: process {process_id} has pid {row['pid']}, not {pid}")
        if not psutil.pid_exists(row["pid"]):
            raise NotFound(f"process_id: process {process_id} (pid {row['pid']}) has exited")
        return dict(row)
    if pid <= 0:
        raise Malformed("process_id/pid: one of them is required")
    try:
        info = processes.info_from_psutil(
            psutil.Process(pid).as_dict(processes.FIELDS, ad_value=None))
    except psutil.NoSuchProcess:
        raise NotFound(f"pid: no running process {pid}") from None
    return dict(ctx.processes.by_id(ctx.processes.identify([info])[0]))


@endpoint(DataType.JSON)
def capture_start_process(ctx, *, capture_id: int = 0, process_id: int = 0, pid: int = 0,
                          thread_id: int = 0, filter: str = "", flags: int = 0,
                          adapter: list = ()) -> dict:
    """Capture the packets of one process (and its children, or one of its threads).

    BUSY when the setting max_active_captures (default 16) captures are already active.

    - capture_id: add the process to this active process capture instead of starting one
    - process_id: our ProcessId (either this or pid)
    - pid: the system process id
    - thread_id: the thread to capture; needs CAPTURE_FLAG_THREAD_CAPTURE in flags
    - filter: BPF capture filter (tcpdump syntax); empty = everything of the process
    - flags: CAPTURE_FLAG_RESOLVE_IPS | CAPTURE_FLAG_THREAD_CAPTURE | CAPTURE_FLAG_CHILD_PROCESSES
    - adapter: adapter names; empty = all up adapters
    """
    _check_flags(flags, ALL_FLAGS)
    if thread_id and not flags & CaptureFlag.THREAD_CAPTURE:
        raise Malformed("flags: thread_id needs CAPTURE_FLAG_THREAD_CAPTURE")
    if flags & CaptureFlag.THREAD_CAPTURE and not thread_id:
        raise Malformed("thread_id: required with CAPTURE_FLAG_THREAD_CAPTURE")
    proc = _process_row(ctx, process_id, pid)
    if thread_id and not os.path.exists(f"/proc/{proc['pid']}/task/{thread_id}") and \
            thread_id not in {t.id for t in _threads(proc["pid"])}:
        raise NotFound(f"thread_id: process {proc['pid']} has no thread {thread_id}")
    if capture_id:
        return capture_object(ctx, captures(ctx).add_process(capture_id, proc))
    kind = CaptureType.THREAD if thread_id else CaptureType.PROCESS
    row = captures(ctx).start(kind, bpf=filter, flags=flags, adapters=adapter,
                              pids=[proc["pid"]], process=proc, thread_id=thread_id,
                              name=proc["name"])
    return capture_object(ctx, row)


def _threads(pid):
    try:
        return psutil.Process(pid).threads()
    except psutil.Error:
        return []


@endpoint(DataType.INT)
def capture_stop_process(ctx, *, capture_id: int) -> int:
    """Stop an active process or thread capture.

    - capture_id: the capture to stop
    """
    _active(ctx, capture_id, False)
    ctx.captures.stop(capture_id)
    return 0


@endpoint(DataType.INT)
def capture_stop_all(ctx) -> int:
    """Stop every active capture."""
    captures(ctx).stop_all()
    return 0


def _list(ctx, where: str, params=()) -> list:
    rows = ctx.catalog.read(f"SELECT * FROM captures WHERE {where} ORDER BY id", params)
    return [capture_object(ctx, r) for r in rows]


@endpoint(DataType.JSON, paged=("CaptureId", "Captures"))
def capture_list_active(ctx) -> list:
    """Every active capture."""
    return _list(ctx, "state = ?", (CaptureState.ACTIVE,))


@endpoint(DataType.JSON, paged=("CaptureId", "Captures"))
def capture_list_completed(ctx) -> list:
    """Every capture that is no longer active (completed, failed or interrupted)."""
    return _list(ctx, "state != ?", (CaptureState.ACTIVE,))


@endpoint(DataType.JSON, paged=("CaptureId", "Captures"))
def capture_list_system(ctx) -> list:
    """Completed system captures only."""
    return _list(ctx, "state != ? AND type = ?",
                 (CaptureState.ACTIVE, CaptureType.SYSTEM))


@endpoint(DataType.JSON)
def capture_get_details(ctx, *, capture_id: int) -> dict:
    """One capture (CAPTURE), active or not.

    - capture_id: the capture
    """
    return capture_object(ctx, captures(ctx).get(capture_id))


@endpoint(DataType.JSON)
def capture_open(ctx, *, capture_id: int) -> dict:
    """Open a completed capture for reading: CAPTUREMETA (BUSY while it is active).

    - capture_id: the capture
    """
    db = captures(ctx).db(capture_id, active=False)
    obj = capture_object(ctx, ctx.captures.get(capture_id))
    first, last = db.one("SELECT min(ts), max(ts) FROM packets")
    obj["FirstPacketTime"], obj["LastPacketTime"] = from_ns(first), from_ns(last)
    obj["LinkTypes"] = sorted({r[0] for r in db.read("SELECT DISTINCT linktype FROM interfaces")})
    obj["ProcessCount"] = db.one("SELECT count(*) FROM processes")[0]
    obj["IpCount"] = db.one("SELECT count(*) FROM ips")[0]
    return obj


@endpoint(DataType.INT)
def capture_set_notes(ctx, *, capture_id: int, packet_id: int = 0, notes: str = "") -> int:
    """Set (or clear) the notes of a capture or of one of its packets.

    - capture_id: the capture
    - packet_id: a packet of it; 0 or empty = the capture's own notes
    - notes: the text; blank clears
    """
    if len(notes) > 1 << 20:
        raise Malformed("notes: longer than 1 MiB")
    captures(ctx).get(capture_id)
    if not packet_id:
        capture_table.set_notes(ctx.catalog, capture_id, notes)
        return 0
    db = ctx.captures.db(capture_id)
    done = db.submit(lambda c: set_packet_notes(c, packet_id, notes or None))
    # the packet's kept JSON has the old notes: forgotten once the change is committed,
    # also when that comes after this request stopped waiting for it
    done.add_done_callback(lambda _done: fastpages.forget(db))
    if not done.result(NOTE_WAIT):
        raise NotFound(f"packet_id: capture {capture_id} has no packet {packet_id}")
    return 0


@endpoint(DataType.INT)
def capture_delete(ctx, *, capture_id: int) -> int:
    """Delete a capture that is not active, with all its packet data.

    - capture_id: the capture
    """
    row = captures(ctx).get(capture_id)
    if row["state"] == CaptureState.ACTIVE:
        raise Busy(f"capture_id: capture {capture_id} is active; stop it first")
    delete_capture_files(ctx, capture_id)
    capture_table.delete(ctx.catalog, capture_id)
    return 0


def delete_capture_files(ctx, capture_id: int) -> None:
    ctx.captures.forget(capture_id)
    forget_capture(ctx, capture_id)  # spooled bodies, extracted files and their records
    path = capture_path(ctx.config.data_dir, capture_id)
    for name in (path, path + "-wal", path + "-shm", side_path(path)):
        try:
            os.remove(name)
        except FileNotFoundError:
            pass


@endpoint(DataType.JSON, paged=("ProcessId", "Processes"))
def process_list_capture(ctx) -> list:
    """The processes being captured by active process and thread captures."""
    rows = ctx.catalog.read(
        "SELECT DISTINCT p.* FROM processes p JOIN capture_processes cp ON cp.process_id = p.id "
        "JOIN captures c ON c.id = cp.capture_id WHERE c.state = ? ORDER BY p.id",
        (CaptureState.ACTIVE,))
    return [processes.process_object(r) for r in rows]


@endpoint(DataType.JSON)
def capture_verify_filter(ctx, *, filter: str = "") -> dict:
    """Check a BPF capture filter as the capture start will: libpcap compiles it.

    - filter: the BPF capture filter (tcpdump syntax); empty = everything, which is valid

    Returns {Valid, Filter, Error}: Filter is the text as a capture would use it (blanks
    around it removed), Error is "" when Valid, else libpcap's reason as a sentence (for
    example "illegal port number 99999 > 65535" or "can't parse filter expression: syntax
    error"). The filter is compiled for Ethernet framing, the link type of most adapters
    and of `lo`; a host name in it is looked up (as libpcap does when a capture starts).
    UNSUPPORTED when libpcap cannot be loaded.
    """
    error = compile_error(filter)
    return {"Version": 1, "Valid": not error, "Filter": filter.strip(), "Error": error}
