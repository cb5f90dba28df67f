"""process_list_running, process_list_threads."""

from typing import Annotated

import psutil

from apppaccap.api.registry import Bounds
from apppaccap.api.registry import endpoint
from apppaccap.attribution import processes
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.filetime import now_ns
from apppaccap.store.processes import refresh_threads
from apppaccap.store.processes import threads_of
from apppaccap.wire import DataType

ZERO_ONE = Bounds(0, 1, "0 or 1")


def is_kernel_thread(info: dict) -> bool:
    """kthreadd (pid 2) and its children without an executable: the kernel's own threads."""
    return not info["path"] and (info["pid"] == 2 or info["ppid"] == 2)


@endpoint(DataType.JSON, paged=("ProcessId", "Processes"))
def process_list_running(ctx, *, kernel_threads: Annotated[int, ZERO_ONE] = 1) -> list:
    """Every running process as PROCESS objects (ProcessId is ours, stable across pid reuse).

    Each carries KernelThread (true for kthreadd and the kernel threads it starts: no
    executable, pid 2 or parent 2).
    - kernel_threads: 1 (default: every process, as the reference) or 0 (without them)
    """
    infos = processes.running()
    if not kernel_threads:
        infos = [i for i in infos if not is_kernel_thread(i)]
    ids = ctx.processes.identify(infos)
    out = []
    for info, pid_ in zip(infos, ids):
        row = dict(info, id=pid_, end_time=None, packets=0, bytes=0)
        obj = processes.process_object(row)
        obj["KernelThread"] = is_kernel_thread(info)
        out.append(obj)
    counts = {r[0]: (r[1], r[2]) for r in ctx.catalog.read(
        f"SELECT id, packets, bytes FROM processes WHERE id IN ({','.join('?' * len(ids))})",
        ids)} if ids and len(ids) < 30000 else {}
    for obj in out:
        obj["PacketCount"], obj["ByteCount"] = counts.get(obj["ProcessId"], (0, 0))
    return out


def _resolve_process(ctx, process_id: int, pid: int):
    """The catalog row named by process_id, or the running process with that pid."""
    if process_id:
        row = ctx.processes.by_id(process_id)
        if row is None:
            raise NotFound(f"process_id: no process {process_id}")
        if pid and row["pid"] != pid:
            raise Malformed(f"pid: process {process_id} has pid {row['pid']}, not {pid}")
        return row
    if not pid:
        raise Malformed("process_id/pid: one of them is required")
    try:
        p = psutil.Process(pid)
        info = processes.info_from_psutil(p.as_dict(processes.FIELDS, ad_value=None))
    except psutil.NoSuchProcess:
        raise NotFound(f"pid: no running process {pid}") from None
    return ctx.processes.by_id(ctx.processes.identify([info])[0])


@endpoint(DataType.JSON, paged=("ThreadId", "Threads"))
def process_list_threads(ctx, *, process_id: int = 0, pid: int = 0, flags: int = 0) -> list:
    """The threads of a process as THREAD objects.

    - process_id: our ProcessId (either this or pid)
    - pid: the system process id of a running process
    - flags: 0 = live threads only; 1 = also threads seen earlier that have ended
    """
    if flags not in (0, 1):
        raise Malformed("flags: must be 0 or 1")
    row = _resolve_process(ctx, process_id, pid)
    live: dict[int, str] = {}
    if row["end_time"] is None:
        try:
            proc = psutil.Process(row["pid"])
            if int(round(proc.create_time() * 100)) * 10_000_000 == row["start_time"]:
                for t in proc.threads():
                    live[t.id] = _thread_name(row["pid"], t.id)
        except psutil.Error:
            pass
    refresh_threads(ctx.catalog, row["id"], live, now_ns())
    rows = threads_of(ctx.catalog, row["id"])
    return [{"Version": 1, "ThreadId": r["tid"], "Pid": row["pid"], "Name": r["name"] or "",
             "Live": bool(r["live"]), "PacketCount": r["packets"]}
            for r in rows if flags == 1 or r["live"]]


def _thread_name(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""
