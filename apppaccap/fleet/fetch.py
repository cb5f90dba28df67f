"""A connection's packets fetched from the sensor that owns them: packet bytes never travel
to ClickHouse; they are asked of the sensor's own /ajax when someone wants them.

The sensors' addresses and the credentials sent to them are this server's settings
(`fleet_sensors`, `fleet_sensor_credentials`), never what ClickHouse says: whoever can
write to ClickHouse must not be able to send this server's credentials elsewhere.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request

from apppaccap.errors import AppError
from apppaccap.errors import Busy
from apppaccap.errors import IOFailure
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.safefs.writing import WriteTarget
from apppaccap.safefs.writing import atomic_write
from apppaccap.wire import CommandState

TIMEOUT = 60.0
_HOST = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_EXPORT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")
# The /ajax answers asked for here are a command's state (ids, a state, a file name, a
# message): a few hundred bytes. 1 MiB leaves room for any error text and still bounds
# what a broken or hostile sensor can make this server hold (a 300 MB answer cost 600 MB).
MAX_ANSWER_BYTES = 1 << 20
# A connection's packets as PCAPNG: the same bound as the largest capture file this server
# takes from elsewhere (upload_max_bytes' default), so a sensor cannot fill the disk.
MAX_DOWNLOAD_BYTES = 2 << 30
_CHUNK = 1 << 20


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as the error it is: following it would send the Authorization
    header to an address that is not in fleet_sensors."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError(code)


_OPENER = urllib.request.build_opener(_NoRedirect)


def sensors(text: str) -> dict:
    """fleet_sensors "name=http://host:port, ..." → {name: base URL}."""
    out = {}
    for item in (text or "").split(","):
        name, sep, url = item.strip().partition("=")
        if sep and name.strip() and url.strip():
            out[name.strip()] = url.strip().rstrip("/")
    return out


class SensorApi:
    """One sensor's /ajax and /download/export, at its fleet_sensors address only."""

    def __init__(self, name: str, base: str, credentials: str):
        self.name = name
        self.base = base
        self.headers = {}
        if credentials:
            self.headers["Authorization"] = "Basic " + base64.b64encode(
                credentials.encode()).decode()

    def _fail(self, what: str) -> IOFailure:
        return IOFailure(f"sensor {self.name} ({self.base}): {what}")

    def _open(self, req):
        try:
            return _OPENER.open(req, timeout=30)
        except urllib.error.HTTPError as exc:
            exc.close()
            if 300 <= exc.code < 400:
                raise self._fail(f"answered a redirect (HTTP {exc.code}), which is not "
                                 "followed: credentials go only to the address in "
                                 "fleet_sensors (give the address it answers at)") from None
            raise self._fail(f"answered HTTP {exc.code} {exc.reason}") from None

    def call(self, action: str, **params):
        data = urllib.parse.urlencode(dict(params, action=action)).encode()
        req = urllib.request.Request(self.base + "/ajax", data=data, headers=self.headers)
        with self._open(req) as resp:
            raw = b""
            while len(raw) <= MAX_ANSWER_BYTES and (chunk := resp.read(_CHUNK)):
                raw += chunk
        if len(raw) > MAX_ANSWER_BYTES:
            raise self._fail(f"its answer to {action} is larger than {MAX_ANSWER_BYTES} "
                             "bytes; not read further")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("ErrorCode"), int):
            raise self._fail(f"its answer to {action} is not an /ajax answer (a JSON object "
                             "with an ErrorCode)")
        if body["ErrorCode"] != 0:
            raise self._fail(f"{action}: {str(body.get('ReturnValue'))[:300]}")
        return body.get("ReturnValue")

    def command(self, action: str, **params) -> dict:
        """A call whose answer is a COMMAND: {CommandUid, State, Result, Message...}."""
        cmd = self.call(action, **params)
        if not (isinstance(cmd, dict) and type(cmd.get("State")) is int
                and isinstance(cmd.get("CommandUid"), (str, int))):
            raise self._fail(f"its answer to {action} is not a command (CommandUid, State)")
        return cmd

    def download(self, name: str, target: WriteTarget) -> int:
        """The sensor's export `name` into `target` (safefs: a new O_EXCL|O_NOFOLLOW
        temporary file, renamed into place), at most MAX_DOWNLOAD_BYTES."""
        req = urllib.request.Request(
            self.base + "/download/export/" + urllib.parse.quote(name), headers=self.headers)
        cap = MAX_DOWNLOAD_BYTES
        too_big = self._fail(f"its export {name} is larger than {cap} bytes, the most this "
                             "server downloads; export fewer packets on the sensor itself")
        with self._open(req) as resp:
            length = resp.headers.get("Content-Length")
            length = int(length) if length and length.isascii() and length.isdigit() else None
            if length is not None and length > cap:
                raise too_big  # before a byte is written
            size = 0
            with atomic_write(target) as out:
                while True:
                    try:
                        chunk = resp.read(_CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        # not a write error: atomic_write would call an OSError one
                        raise self._fail(f"the download of {name} broke off: "
                                         f"{getattr(exc, 'strerror', None) or exc}") from None
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > cap:
                        raise too_big  # atomic_write removes the partial file
                    out.write(chunk)
                if length is not None and size != length:
                    raise self._fail(f"the download of {name} broke off after {size} of "
                                     f"{length} bytes")
        return size


def fetch_packets(settings, target_for, host: str, capture_id: int,
                  connection_id: int) -> dict:
    """The sensor exports the connection's packets (capture_export, filter conn.id), this
    server downloads the file into `target_for(name)` (a safefs WriteTarget in its export
    directory, as every export's: journalled, so a crash mid-download leaves no temporary
    file behind after the next start) and has the sensor delete its copy.
    {Host, CaptureId, ConnectionId, Name (in this server's export directory), Path, Size}."""
    if not _HOST.fullmatch(host):
        raise Malformed("host: a fleet_host name (letters, digits, '_', '.', '-')")
    base = sensors(settings.get("fleet_sensors") or "").get(host)
    if base is None:
        raise NotFound(f"host: no sensor {host!r} in the setting fleet_sensors "
                       "(name=http://HOST:PORT, comma-separated)")
    api = SensorApi(host, base, settings.get("fleet_sensor_credentials") or "")
    try:
        cmd = api.command("capture_export", capture_id=capture_id,
                          filter=f"conn.id == {connection_id}")
        deadline = time.monotonic() + TIMEOUT
        while cmd["State"] < CommandState.COMPLETED:
            if time.monotonic() > deadline:
                raise Busy(f"sensor {host}: its export did not finish in {TIMEOUT:.0f} s")
            time.sleep(0.1)
            cmd = api.command("command_query", command_uid=cmd["CommandUid"])
        name = os.path.basename(str(cmd.get("Result") or ""))
        if cmd["State"] != CommandState.COMPLETED or not _EXPORT_NAME.fullmatch(name):
            why = str(cmd.get("Message") or cmd.get("Result") or "no file")[:300]
            raise IOFailure(f"sensor {host}: the export failed ({why})")
        local = f"fleet-{host}-{capture_id}-{connection_id}.pcapng"
        # fetching the same connection again replaces the earlier file
        target = target_for(local)
        try:
            size = api.download(name, target)
        except BaseException:
            # the sensor's copy goes anyway; the download's error is the one to tell
            with contextlib.suppress(AppError, urllib.error.URLError, OSError,
                                     http.client.HTTPException):
                api.call("export_delete", filename=name)
            raise
        api.call("export_delete", filename=name)
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise IOFailure(f"sensor {host} ({base}) did not answer: "
                        f"{getattr(exc, 'reason', None) or exc}") from None
    return {"Host": host, "CaptureId": capture_id, "ConnectionId": connection_id,
            "Name": local, "Path": target.path, "Size": size}
