"""The catalog's `processes` and `threads` rows: the only writer.

A process is (pid, start time) and gets one row id (apppaccap/processes.py: ProcessBook);
live captures add packet counts to both tables, attribution and process_list_threads
record threads. Functions taking `conn` run inside the caller's write transaction; those
taking `catalog` write it themselves. (Capture databases have tables of the same names;
store/capturedb.py writes those.)
"""

from __future__ import annotations

from apppaccap.store.database import tables


def get(catalog, process_id: int):
    return catalog.one("SELECT * FROM processes WHERE id = ?", (process_id,))


def identify(conn, info: dict) -> int:
    """The row id of process `info` (pid, ppid, name, path, cmdline, user, start_time),
    adding the row, or filling in the facts it lacked."""
    conn.execute(
        "INSERT INTO processes(pid, ppid, name, path, cmdline, user, "
        "start_time) VALUES (:pid,:ppid,:name,:path,:cmdline,:user,"
        ":start_time) ON CONFLICT(pid, start_time) DO UPDATE SET "
        "name=coalesce(nullif(excluded.name,''), name), "
        "path=coalesce(nullif(excluded.path,''), path), "
        "cmdline=coalesce(nullif(excluded.cmdline,''), cmdline)", info)
    return conn.execute("SELECT id FROM processes WHERE pid=? AND start_time=?",
                        (info["pid"], info["start_time"])).fetchone()[0]


def register(conn, procs: list[dict]) -> None:
    """Processes a capture database remembers (store/recovery.py), under their own ids;
    rows already there are kept."""
    tables(conn)["processes"].insert_all(
        ({"id": p["process_id"], "pid": p["pid"] or 0, "ppid": p["ppid"], "name": p["name"],
          "path": p["path"], "cmdline": p["cmdline"], "user": p["user"],
          "start_time": p["start_time"] or 0, "packets": p["packets"], "bytes": p["bytes"]}
         for p in procs), ignore=True)


def mark_ended(catalog, process_id: int, end_ns: int):
    """Asynchronous (returns the writer's future)."""
    return catalog.submit(lambda c: c.execute(
        "UPDATE processes SET end_time = ? WHERE id = ? AND end_time IS NULL",
        (end_ns, process_id)))


def add_packets(conn, procs: dict) -> None:
    """procs: process_id → (row, packets, bytes) deltas of a capture batch."""
    conn.executemany("UPDATE processes SET packets=packets+?, bytes=bytes+? WHERE id=?",
                     [(n, b, process_id) for process_id, (_row, n, b) in procs.items()])


def add_thread_packets(conn, threads: dict) -> None:
    """threads: (pid, tid, process_id) → packets delta; tid 0 (unknown) is not a thread."""
    conn.executemany(
        "INSERT INTO threads(process_id, tid, packets, live) VALUES (?,?,?,1) "
        "ON CONFLICT(process_id, tid) DO UPDATE SET packets=packets+excluded.packets",
        [(process_id, tid, n) for (_pid, tid, process_id), n in threads.items() if tid])


def remember_thread(catalog, process_id: int, tid: int, name: str, now: int):
    """A thread seen owning traffic; asynchronous (returns the writer's future)."""
    return catalog.submit(lambda c: c.execute(
        "INSERT INTO threads(process_id, tid, name, first_seen, last_seen, live) "
        "VALUES (?,?,?,?,?,1) ON CONFLICT(process_id, tid) DO UPDATE SET "
        "last_seen=excluded.last_seen, name=coalesce(nullif(excluded.name,''), name)",
        (process_id, tid, name, now, now)))


def refresh_threads(catalog, process_id: int, live: dict, now: int) -> None:
    """The threads running now (tid → name) are live, every other thread of the process
    is not."""
    def run(conn):
        for tid, name in live.items():
            conn.execute(
                "INSERT INTO threads(process_id, tid, name, first_seen, last_seen, live) "
                "VALUES (?,?,?,?,?,1) ON CONFLICT(process_id, tid) DO UPDATE SET "
                "last_seen=excluded.last_seen, live=1, name=excluded.name",
                (process_id, tid, name, now, now))
        marks = ",".join("?" * len(live))
        conn.execute(f"UPDATE threads SET live=0 WHERE process_id=? AND tid NOT IN ({marks})",
                     (process_id, *live))
    catalog.write(run)


def threads_of(catalog, process_id: int):
    return catalog.read("SELECT tid, name, live, packets FROM threads WHERE process_id=? "
                        "ORDER BY tid", (process_id,))


def clear(conn) -> None:
    """apc_flush: every thread, and every process no capture names."""
    conn.execute("DELETE FROM threads")
    conn.execute("DELETE FROM processes WHERE id NOT IN "
                 "(SELECT process_id FROM capture_processes)")
