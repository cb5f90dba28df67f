"""Process identity: our ProcessId is stable while the OS reuses pids.

A process is (pid, start time); the catalog gives each such pair one row id.
Names, paths and command lines are kept so captures can show processes that
have already exited.
"""

from __future__ import annotations

import threading

import psutil

from apppaccap.filetime import from_ns

FIELDS = ["pid", "ppid", "name", "exe", "cmdline", "username", "create_time"]


def info_from_psutil(p: dict) -> dict:
    """psutil's as_dict → our process record (times in Unix ns)."""
    cmd = p.get("cmdline") or []
    return {
        "pid": p["pid"], "ppid": p.get("ppid") or 0, "name": p.get("name") or "",
        "path": p.get("exe") or "", "cmdline": " ".join(cmd),
        "user": p.get("username") or "",
        # psutil gives float seconds; round to 10 ms (jiffies) so the same process read
        # from /proc or psutil gets the same key.
        "start_time": int(round((p.get("create_time") or 0) * 100)) * 10_000_000,
    }


def running() -> list[dict]:
    out = []
    for proc in psutil.process_iter(FIELDS, ad_value=None):
        try:
            out.append(info_from_psutil(proc.info))
        except (psutil.Error, KeyError):
            continue
    return out


class ProcessBook:
    """(pid, start_time) → ProcessId, cached in memory, persisted in the catalog."""

    def __init__(self, catalog):
        self.catalog = catalog
        self._ids: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()

    def identify(self, infos: list[dict]) -> list[int]:
        """ProcessIds for process records, creating rows for new ones (one transaction)."""
        with self._lock:
            missing = [i for i in infos if (i["pid"], i["start_time"]) not in self._ids]
            if missing:
                def upsert(conn):
                    for i in missing:
                        conn.execute(
                            "INSERT INTO processes(pid, ppid, name, path, cmdline, user, "
                            "start_time) VALUES (:pid,:ppid,:name,:path,:cmdline,:user,"
                            ":start_time) ON CONFLICT(pid, start_time) DO UPDATE SET "
                            "name=coalesce(nullif(excluded.name,''), name), "
                            "path=coalesce(nullif(excluded.path,''), path), "
                            "cmdline=coalesce(nullif(excluded.cmdline,''), cmdline)", i)
                        row = conn.execute("SELECT id FROM processes WHERE pid=? AND "
                                           "start_time=?", (i["pid"], i["start_time"])).fetchone()
                        self._ids[(i["pid"], i["start_time"])] = row[0]
                self.catalog.write(upsert)
            return [self._ids[(i["pid"], i["start_time"])] for i in infos]

    def forget_all(self) -> None:
        """Drop the in-memory cache (after apc_flush removed process rows)."""
        with self._lock:
            self._ids.clear()

    def by_id(self, process_id: int):
        return self.catalog.one("SELECT * FROM processes WHERE id = ?", (process_id,))


def process_object(row, running_pids: set | None = None) -> dict:
    """A catalog row (or dict with the same keys) → the API's PROCESS object."""
    live = row["end_time"] is None and (running_pids is None or row["pid"] in running_pids)
    return {
        "Version": 1, "ProcessId": row["id"], "Pid": row["pid"], "ParentPid": row["ppid"] or 0,
        "Name": row["name"] or "", "Path": row["path"] or "", "CommandLine": row["cmdline"] or "",
        "User": row["user"] or "", "StartTime": from_ns(row["start_time"]),
        "EndTime": from_ns(row["end_time"]), "Running": bool(live),
        "PacketCount": row["packets"], "ByteCount": row["bytes"],
    }
