"""A capture (or a search's packets) → a pcapng file that Wireshark opens with the process shown.

python-pcapng writes the section and interface blocks; the Enhanced Packet Blocks
go through PcapngWriter's hand-written hot path (see pcapng_writer.py). Each
packet with a process carries `opt_comment` "PID: …\\nCmd: …\\nArgs: …" (plus
"ThreadId: …"), the epb_processid_threadid option and epb_flags direction.
"""

from __future__ import annotations

import os
import time

from apppaccap.errors import Malformed
from apppaccap.pcap.pcapng_writer import EPB_FLAGS
from apppaccap.pcap.pcapng_writer import PcapngWriter
from apppaccap.pcap.pcapng_writer import process_comment
from apppaccap.safefs.journal import JOURNAL_DIR
from apppaccap.safefs.roots import check_absolute
from apppaccap.safefs.roots import confine
from apppaccap.safefs.roots import export_roots
from apppaccap.safefs.writing import WriteTarget
from apppaccap.safefs.writing import atomic_write
from apppaccap.safefs.writing import check_target
from apppaccap.safefs.writing import unique_name
from apppaccap.store.sidefile import SideCopier


def new_target(ctx, path: str, *, overwrite: bool = False,
               generated: bool = False) -> WriteTarget:
    """An export target below the export roots, with the export file mode settings."""
    return WriteTarget(
        path, roots=export_roots(ctx.config), kind="export", overwrite=overwrite,
        generated=generated, group_from_root=ctx.settings.get_bool("export_group_read"),
        journal=os.path.join(ctx.config.data_dir, JOURNAL_DIR),
        service_dirs=(ctx.config.data_dir, ctx.config.export_dir))


def resolve_path(ctx, path: str, stem: str, overwrite: bool = False) -> WriteTarget:
    """Where an export goes, checked now (the write checks again when it runs).

    `path` must be an absolute file path below one of the export roots (the export
    directory and the --export-root directories); outside them INVALID_PERMISSIONS says
    nothing about the file. An existing regular file is replaced only with `overwrite`;
    symlinks, devices, FIFOs and directories never. Blank = the export directory with a
    generated name that no other export takes.
    """
    if not path.strip():
        name = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.pcapng"
        target = new_target(ctx, unique_name(ctx.config.export_dir, name),
                            generated=True)
        target.reserved_as = target.path
        return target
    return check_target(new_target(ctx, check_absolute(path), overwrite=overwrite))


def check_export_dir(ctx, folder: str) -> None:
    """An EXPORT action's directory must lie below the export roots: checked before
    anything about the directory itself is said (INVALID_PERMISSIONS, one message)."""
    if folder and os.path.isabs(folder) and "\x00" not in folder:
        confine(folder, export_roots(ctx.config), "export")


def check_overwrite(value: int) -> bool:
    """The `overwrite` parameter: 0 or 1."""
    if value not in (0, 1):
        raise Malformed("overwrite: 0 (refuse an existing file) or 1 (replace it)")
    return value == 1


def _comments(db) -> dict:
    """process_id → comment text (one per process; the writer caches encoded options)."""
    out = {}
    for r in db.read("SELECT process_id, pid, path, cmdline, name FROM processes"):
        out[r["process_id"]] = (r["pid"], r["path"] or r["name"], r["cmdline"])
    return out


def atomic_file(target):
    """A file object whose bytes appear at the target when the block succeeds (a reader never
    sees half a file) and vanish when it fails: atomic_write. `target` is a
    WriteTarget from resolve_path or a plain path (a new file in the caller's directory)."""
    return atomic_write(target)


def epb_comment(procs: dict, process_id, tid, notes, cache: dict) -> str | None:
    """The opt_comment of one packet: the ptcpdump process lines (PID/Cmd/Args and
    ThreadId), then the packet's own notes. `cache` keeps one text per (process, thread)."""
    comment = None
    if process_id is not None:
        key = (process_id, tid)
        comment = cache.get(key)
        if comment is None and process_id in procs:
            ppid, cmd, args = procs[process_id]
            comment = cache[key] = process_comment(ppid, cmd, args, tid or None)
    if notes:
        comment = f"{comment}\n{notes}" if comment else notes
    return comment


def _framed_as_written(db) -> bool:
    """Are the capture's blocks stored as the EPBs this export writes (ingest framed them,
    meta block_framing)? Then blocks are copied as they are, except those holding a
    packet that has gained what the framing lacks: notes, a process, a time kept as text."""
    framing = db.one("SELECT value FROM meta WHERE key = 'block_framing'")
    return framing is not None and framing[0] == "epb"


def _changed_blocks(db) -> dict:
    """blk → (first, last) packet id of blocks that must be written packet by packet."""
    return {blk: (lo, hi) for blk, lo, hi in db.tuples(
        "SELECT blk, min(id), max(id) FROM packets WHERE blk IN (SELECT DISTINCT blk FROM "
        "packets WHERE notes IS NOT NULL OR process_id IS NOT NULL OR ts_raw IS NOT NULL) "
        "GROUP BY blk")}


class _Exporter:
    """One export: the writer, the process comments and where the bytes come from."""

    def __init__(self, db, w: PcapngWriter, count: int, progress):
        self.db, self.w, self.count, self.progress = db, w, count, progress
        self.total = count or 1  # progress denominator
        self.procs = _comments(db)
        self.comments: dict = {}
        self.blocks = db.block_reader()
        self.n = 0

    def packets(self, where: str, params, wanted=None) -> None:
        """Write the packets selected by `where`, one EPB each."""
        blocks, procs, comments = self.blocks, self.procs, self.comments
        cur = self.db.tuples(
            "SELECT id, iface, coalesce(ts_raw, ts), len, caplen, blk, off, process_id, pid, "
            f"tid, direction, notes FROM packets WHERE 1=1 {where} ORDER BY id", tuple(params))
        while True:
            rows = cur.fetchmany(50000)
            if not rows:
                break
            out = []
            append = out.append
            for (pid_, iface, ts, length, caplen, blk, off, process_id, pid, tid, direction,
                 notes) in rows:
                if wanted is not None and pid_ not in wanted:
                    continue
                data = blocks.get(blk)  # packets come in block order: one block at a time
                comment = epb_comment(procs, process_id, tid, notes, comments) \
                    if process_id is not None or notes else None
                append((iface, int(ts) if type(ts) is str else ts, data[off:off + caplen],
                        length, comment, EPB_FLAGS.get(direction), pid or None,
                        tid or None))
            self.n += self.w.write_packets(out)
            if self.progress is not None:
                self.progress(100.0 * self.n / self.total)

    def verbatim(self, fh) -> None:
        """Every block in order: copied when unchanged, else packet by packet."""
        changed = _changed_blocks(self.db)
        side = None
        try:
            rows = self.db.tuples("SELECT id, data, file_off, size FROM blocks ORDER BY id")
            rows = rows.fetchall()
            for i, (blk, data, file_off, size) in enumerate(rows, 1):
                if blk in changed:
                    self.packets("AND id BETWEEN ? AND ?", changed[blk])
                    continue
                self.w.flush()
                if file_off is None:
                    fh.write(data)
                    fh.flush()
                else:
                    if side is None:
                        side = SideCopier(self.db.path)
                    side.copy(fh.fileno(), file_off, size)
                if self.progress is not None:
                    self.progress(100.0 * i / len(rows))
            self.n = self.count
        finally:
            if side is not None:
                side.close()

    def close(self) -> None:
        self.w.close()
        self.blocks.close()


def write_capture(db, path, *, where: str = "", params=(), progress=None,
                  packet_ids=None, copy_blocks: bool = True) -> int:
    """Write the capture's packets (all, those matching `where`, or `packet_ids`) to path
    (a WriteTarget or a plain path); copy_blocks=False writes every packet on its own even
    where blocks could be copied.

    Written to a temporary file renamed when complete (atomic_file), so a reader never sees
    half a file; a WriteTarget's `path` is the file written when it returns.
    """
    count = db.one("SELECT count(*) FROM packets")[0]
    with atomic_file(path) as fh:
        w = PcapngWriter(fh, comment="exported by AppPacCap")
        for r in db.read("SELECT id, name, linktype, ticks_per_second FROM interfaces "
                         "ORDER BY id"):
            # keep µs interfaces µs: a 64-bit tick count in ns ends in 2554
            w.add_interface(r["linktype"], r["name"] or None,
                            tsresol_ns=r["ticks_per_second"] > 1_000_000)
        job = _Exporter(db, w, count, progress)
        try:
            if copy_blocks and where == "" and packet_ids is None and _framed_as_written(db):
                job.verbatim(fh)
            else:
                job.packets(where, params, packet_ids)
        finally:
            job.close()
    return job.n
