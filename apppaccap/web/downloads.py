"""GET /download/export/<name> and GET /download/extract/<capture_id>/<file_id>: a file
of the export directory or an extracted file, streamed as an attachment.

The same callers as /ajax (app.py): the Host/Origin check of every request (guard.py), and
here also no cross-site Sec-Fetch-Site even for a GET; the caller-uid rule (callers.py);
the token from the `apppaccap_token` cookie (set at login, HttpOnly, SameSite=Strict) or the
X-AppPacCap-Token header, never from the URL (a link is logged, kept in history, shared).

Only files the product wrote are reachable: a regular file directly in the export
directory (no directory part, no dot-file, no `.part` temporary, never a symlink, FIFO or
device; opened without blocking; only `.pcapng` names when the export directory is the
data directory itself, which holds the catalog), or the file an `extracted_files` row
names, opened by walking from <data-dir>/extracted/<capture_id>/ without following a
symlink.
"""

from __future__ import annotations

import os
import re
import urllib.parse

from flask import Response
from flask import request
from werkzeug.wsgi import wrap_file

from apppaccap.errors import AppError
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.extract.service import extracted_dir
from apppaccap.safefs.reading import open_entry
from apppaccap.safefs.reading import open_regular
from apppaccap.store import extracted
from apppaccap.web import callers
from apppaccap.web import credentials

TOKEN_HEADER = callers.TOKEN_HEADER
TOKEN_COOKIE = callers.TOKEN_COOKIE
EXPORT_MIME = "application/x-pcapng"
CHUNK = 256 << 10
MAX_NAME = 255
# type/subtype[; parameters] as RFC 6838 spells them; anything else is served as octets
_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
                   r"(?:\s*;\s*[a-z0-9!#$&^_.+-]+=[a-z0-9!#$&^_.+-]+)*", re.IGNORECASE)
# A download is never shown as a page: nothing it holds may run or load anything.
DOWNLOAD_CSP = "default-src 'none'; sandbox"
_STATUS = {NotFound: 404, Malformed: 404}
_DIGITS = re.compile(r"[0-9]+")


def register(app, ctx) -> None:
    """Add the download routes to the app."""

    @app.get("/download/export/<path:name>")
    def download_export(name):
        return _answer(lambda: _export(ctx, name))

    @app.get("/download/extract/<capture_id>/<file_id>")
    def download_extract(capture_id, file_id):
        return _answer(lambda: _extracted(ctx, capture_id, file_id))

    def _answer(opener) -> Response:
        try:
            _check_caller(ctx)
            fd, filename, mime = opener()
        except AppError as err:
            status = next((s for kind, s in _STATUS.items() if isinstance(err, kind)), 403)
            return Response(err.message + "\n", status, mimetype="text/plain")
        return _stream(fd, filename, mime)


def _check_caller(ctx) -> None:
    """The /ajax rules for who may call, applied before anything is looked up
    (credentials.check_get: Sec-Fetch-Site, no token in the URL, the caller-uid rule,
    Basic / Bearer / header / cookie)."""
    credentials.check_get(ctx, request)


def _export(ctx, name: str):
    if len(name) > MAX_NAME or name.startswith(".") or name.endswith(".part") \
            or "/" in name or "\\" in name or "\x00" in name:
        raise NotFound("name: no such exported file")
    if os.path.realpath(ctx.config.export_dir) == os.path.realpath(ctx.config.data_dir) \
            and not name.lower().endswith(".pcapng"):
        # the export directory is the data directory: the catalog and the service's
        # other files are there, and only exports (.pcapng, none of the service's) leave
        raise NotFound("name: no such exported file")
    fd = open_entry(ctx.config.export_dir, name, "name")
    return fd, name, EXPORT_MIME


def _extracted(ctx, capture_id: str, file_id: str):
    # ASCII digits only: str.isdigit also accepts "²" and other scripts' digits, and
    # int("²") raised (a 500) where the answer is "no such file"
    if not (_DIGITS.fullmatch(capture_id) and _DIGITS.fullmatch(file_id)) \
            or len(capture_id + file_id) > 36:
        raise NotFound("file_id: no such extracted file")
    row = extracted.get(ctx.catalog, int(file_id))
    if row is None or row["capture_id"] != int(capture_id):
        raise NotFound(f"file_id: capture {int(capture_id)} has no extracted file "
                       f"{int(file_id)}")
    folder = extracted_dir(ctx.config.data_dir, int(capture_id))
    fd = open_regular(row["path"], roots=[folder], kind="extract", name="file_id")
    mime = row["mime_type"] or ""
    return fd, row["file_name"] or f"file-{int(file_id)}", \
        mime if _MIME.fullmatch(mime) else "application/octet-stream"


def _stream(fd: int, filename: str, mime: str) -> Response:
    fh = os.fdopen(fd, "rb")
    size = os.fstat(fh.fileno()).st_size
    resp = Response(wrap_file(request.environ, fh, CHUNK), 200, mimetype=mime,
                    direct_passthrough=True)
    resp.content_length = size
    resp.headers["Content-Disposition"] = content_disposition(filename)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Content-Security-Policy"] = DOWNLOAD_CSP
    resp.headers["Cache-Control"] = "no-store"
    return resp


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the exact name as RFC 5987 UTF-8."""
    name = os.path.basename(filename.replace("\\", "/"))
    if not name.strip(" ."):
        name = "download"
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%;' else "_" for c in name)
    fallback = fallback.strip(" .") or "download"
    exact = urllib.parse.quote(name.encode("utf-8", "replace"), safe="!#$&+-.^_`|~")
    if exact == fallback:
        return f'attachment; filename="{fallback}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{exact}"
