"""pcap_ingest_file, pcap_ingest_post, capture_export, export_list, export_delete,
command_list, command_query, command_delete."""

from __future__ import annotations

import os
import tempfile

from apppaccap.api.captures import captures
from apppaccap.api.registry import Upload
from apppaccap.api.registry import endpoint
from apppaccap.api.search import checked_filter
from apppaccap.errors import IOFailure
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.errors import Unsupported
from apppaccap.filetime import from_ns
from apppaccap.ingest import export
from apppaccap.ingest import ingest
from apppaccap.ingest.filtered_export import filtered_export
from apppaccap.safefs.roots import ingest_roots
from apppaccap.safefs.writing import release_target
from apppaccap.wire import CaptureState
from apppaccap.wire import DataType


def jobs(ctx):
    if ctx.jobs is None:
        raise Unsupported("command: the command scheduler is not running in this process")
    return ctx.jobs


def queue_ingest(ctx, path: str, source: str, cleanup: str | None = None,
                 roots=None) -> dict:
    """Check the file now (INVALID_PERMISSIONS / NOT_FOUND / MALFORMED), ingest it in the
    background. `roots`: the directories the file must lie below (None for our uploads)."""
    try:
        jobs(ctx).check_room()  # BUSY before a capture row exists (max_queued_commands)
        reader = ingest.open_reader(path, roots=roots)
    except Exception:
        if cleanup:
            os.remove(cleanup)
        raise
    capture_id = ingest.create_capture(ctx, source)

    def run(progress):
        try:
            result = ingest.ingest(ctx, reader, capture_id, progress)
        finally:
            if cleanup:
                os.remove(cleanup)
        if result["State"] != CaptureState.COMPLETED:
            raise RuntimeError(f"capture {capture_id}: {result['Message']}")
        return str(capture_id)

    return jobs(ctx).submit("INGEST", {"path": source, "capture_id": capture_id}, run)


@endpoint(DataType.JSON)
def pcap_ingest_file(ctx, *, path: str) -> dict:
    """Ingest a PCAP or PCAPNG file on the server's disk into a new FILE capture.

    Returns the INGEST COMMAND (the reference returns ERROR_SUCCESS; the command is more
    useful and clients that ignore it lose nothing). Its Result is the CaptureId. Only
    regular files below the server's ingest roots are read (`<data-dir>/import` and the
    `apppaccap serve --ingest-root` directories, symlinks resolved first); any other path
    is INVALID_PERMISSIONS with one message that says nothing about the file. Upload other
    files with pcap_ingest_post (what `apppaccap ingest` does for them).
    - path: absolute or relative path of a file below the ingest roots
    """
    if not path.strip() or "\x00" in path:
        raise Malformed("path: required")
    full = os.path.abspath(path)
    return queue_ingest(ctx, full, full, roots=ingest_roots(ctx.config))


@endpoint(DataType.JSON)
def pcap_ingest_post(ctx, *, file: Upload) -> dict:
    """Ingest a PCAP or PCAPNG file uploaded as multipart form data (the part named `file`).

    The upload is streamed to disk; its size is limited by the setting upload_max_bytes.
    Returns the INGEST COMMAND; its Result is the CaptureId.
    - file: the capture file (multipart part)
    """
    limit = ctx.settings.get_int("upload_max_bytes")
    name = os.path.basename((file.filename or "upload.pcap").replace("\\", "/")) or "upload.pcap"
    folder = os.path.join(ctx.config.data_dir, "uploads")
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=".cap", dir=folder)
    size = 0
    with os.fdopen(fd, "wb") as out:
        while True:
            chunk = file.stream.read(1 << 20)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                out.close()
                os.remove(tmp)
                raise Malformed(f"file: larger than the upload limit of {limit} bytes "
                                "(setting upload_max_bytes)")
            out.write(chunk)
    return queue_ingest(ctx, tmp, name, cleanup=tmp)


@endpoint(DataType.JSON)
def capture_export(ctx, *, capture_id: int, path: str = "", filter: str = "",
                   overwrite: int = 0) -> dict:
    """Export a capture's packets to a PCAPNG file that Wireshark opens with the process shown.

    Returns an EXPORT COMMAND whose Result is the written path. The file is written below
    the server's export roots only (the export directory and the `apppaccap serve
    --export-root` directories; elsewhere INVALID_PERMISSIONS), as a temporary file renamed
    into place when complete, mode 0600 (0640 with the root's group when the setting
    export_group_read is 1).
    - capture_id: a capture that is not active
    - path: absolute file path below an export root; blank = a new name in the export directory
    - filter: display filter limiting the exported packets (the search language)
    - overwrite: 1 = replace an existing regular file (never a symlink, device or FIFO)
    """
    db = captures(ctx).db(capture_id, active=False)
    flt = _compile_filter(ctx, filter, capture_id)
    jobs(ctx).check_room()  # BUSY before a file name is taken (max_queued_commands)
    target = export.resolve_path(ctx, path, f"capture-{capture_id}",
                                 overwrite=export.check_overwrite(overwrite))

    def run(progress):
        if flt is None:
            export.write_capture(db, target, progress=progress)
        else:
            filtered_export(db, capture_id, flt, target, progress)
        return target.path

    try:
        return jobs(ctx).submit("EXPORT", {"capture_id": capture_id, "path": target.path}, run)
    except BaseException:
        release_target(target)
        raise


def _compile_filter(ctx, text: str, capture_id: int):
    """Display filter → a checked search Filter, None when blank (every packet).

    A bad filter is MALFORMED_REQUEST with the message search_start and search_verify_filter
    give; the capture-specific SQL is built when the export runs.
    """
    return checked_filter(text)


def _exported(folder: str) -> list[os.DirEntry]:
    """Regular files of the export directory (symlinks and temporary files left out)."""
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if e.is_file(follow_symlinks=False)
                       and not e.name.startswith(".") and not e.name.endswith(".part")),
                      key=lambda e: e.name)


@endpoint(DataType.JSON)
def export_list(ctx) -> list:
    """The exported files in the export directory (EXPORTFILE list)."""
    out = []
    for entry in _exported(ctx.config.export_dir):
        st = entry.stat(follow_symlinks=False)
        out.append({"Version": 1, "FileName": entry.name, "Size": st.st_size,
                    "Created": from_ns(st.st_mtime_ns)})
    return out


@endpoint(DataType.INT)
def export_delete(ctx, *, filename: str = "") -> int:
    """Delete one exported file by plain name, or all when blank; returns how many.

    - filename: a FileName from export_list (no directory part)
    """
    folder = ctx.config.export_dir
    listed = [e.name for e in _exported(folder)]
    if not filename:
        names = listed
    else:
        if filename != os.path.basename(filename) or "/" in filename or "\\" in filename \
                or filename in (".", "..") or "\x00" in filename:
            raise Malformed(f"filename: must be a plain file name, got {filename[:80]!r}")
        if filename not in listed:
            raise NotFound(f"filename: no exported file {filename[:80]!r}")
        names = [filename]
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names:
            try:
                os.unlink(name, dir_fd=dir_fd)  # the entry itself: nothing is followed
            except FileNotFoundError:
                continue  # deleted meanwhile
            except OSError as exc:
                raise IOFailure(f"filename: cannot delete {name[:80]!r}: "
                                f"{exc.strerror or exc}") from None
    finally:
        os.close(dir_fd)
    return len(names)


@endpoint(DataType.JSON)
def command_list(ctx) -> list:
    """Every command (ingest, export, action runs) with its state and progress.

    At most the setting max_queued_commands (default 64) commands are queued or running;
    an ingest or export beyond that answers BUSY.
    """
    return jobs(ctx).list()


@endpoint(DataType.JSON)
def command_query(ctx, *, command_uid: str) -> dict:
    """One COMMAND.

    - command_uid: the CommandUid
    """
    return jobs(ctx).get(command_uid)


@endpoint(DataType.INT)
def command_delete(ctx, *, command_uid: str) -> int:
    """Delete a command, cancelling it first when it is queued or running.

    - command_uid: the CommandUid
    """
    jobs(ctx).delete(command_uid)
    return 0


