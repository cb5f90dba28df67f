"""The programs triggers watch: a trigger as a matcher of executables, and what /proc (or
psutil) says about a pid - its executable, its process record, whether an action started
it, whether it still runs."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import psutil

from apppaccap.attribution import processes
from apppaccap.attribution.procfs import read_process
from apppaccap.triggers import store
from apppaccap.triggers.runner import ACTION_ENV
from apppaccap.wire import TriggerType

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Matcher:
    """A trigger as the hot path needs it: the real path to compare executables with."""

    trigger_id: int
    name: str
    real: str
    is_dir: bool
    bpf: str
    flags: int

    def matches(self, exe: str) -> bool:
        if self.is_dir:
            return exe.startswith(self.real.rstrip("/") + "/")
        return exe == self.real


def compile_matchers(rows) -> tuple:
    """Trigger rows → Matchers; a path that vanished since it was added matches nothing."""
    out = []
    for r in rows:
        if r["type"] != TriggerType.ON_START:
            continue
        real = os.path.realpath(r["path"])  # /proc/<pid>/exe is always the resolved path
        if os.path.isdir(real) and store.over_broad(real):
            # stored before such roots were refused (or a symlink swapped since): skip it
            log.warning("trigger %s: directory %s is too broad to watch; ignored",
                        r["id"], real)
            continue
        out.append(Matcher(r["id"], r["name"], real, os.path.isdir(real), r["filter"],
                           r["flags"]))
    return tuple(out)


def exe_of(pid: int) -> str:
    """The executable of a process ('' when gone or unreadable)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        try:
            exe = psutil.Process(pid).exe()
        except (psutil.Error, OSError):
            return ""
    if exe.endswith(" (deleted)"):
        exe = exe[:-10]
    return exe


def started_by_action(pid: int) -> bool:
    """Does the process carry the marker every action-run program gets (see runner.py)?"""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = fh.read()
    except OSError:
        try:
            return ACTION_ENV in psutil.Process(pid).environ()
        except (psutil.Error, OSError):
            return False
    return (b"\0" + env).find(b"\0" + ACTION_ENV.encode() + b"=") >= 0


def process_record(pid: int) -> dict | None:
    """Our process record (attribution/processes.py shape) for a live pid, from /proc or
    psutil."""
    info = read_process(pid)
    if info is not None:
        return {"pid": info.pid, "ppid": info.ppid, "name": info.name, "path": info.path,
                "cmdline": info.cmdline, "user": info.user, "start_time": info.start_time_ns}
    try:
        return processes.info_from_psutil(
            psutil.Process(pid).as_dict(processes.FIELDS, ad_value=None))
    except psutil.Error:
        return None


def is_alive(pid: int, start_ns: int) -> bool:
    """Is the process (pid, start time) still running? Zombies and reused pids are not."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            # psutil's float create time vs our 10 ms-rounded one: compare coarsely
            return abs(p.create_time() * 1e9 - start_ns) < 20_000_000 and \
                p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
