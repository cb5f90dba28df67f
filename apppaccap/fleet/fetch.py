"""A connection's packets fetched from the sensor that owns them: packet bytes never travel
to ClickHouse; they are asked of the sensor's own /ajax when someone wants them.

The sensors' addresses and the credentials sent to them are this server's settings
(`fleet_sensors`, `fleet_sensor_credentials`), never what ClickHouse says: whoever can
write to ClickHouse must not be able to send this server's credentials elsewhere.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request

from apppaccap.errors import Busy
from apppaccap.errors import IOFailure
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.wire import CommandState

TIMEOUT = 60.0
_HOST = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_EXPORT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def sensors(text: str) -> dict:
    """fleet_sensors "name=http://host:port, ..." → {name: base URL}."""
    out = {}
    for item in (text or "").split(","):
        name, sep, url = item.strip().partition("=")
        if sep and name.strip() and url.strip():
            out[name.strip()] = url.strip().rstrip("/")
    return out


class SensorApi:
    def __init__(self, base: str, credentials: str):
        self.base = base
        self.headers = {}
        if credentials:
            self.headers["Authorization"] = "Basic " + base64.b64encode(
                credentials.encode()).decode()

    def call(self, action: str, **params):
        data = urllib.parse.urlencode(dict(params, action=action)).encode()
        req = urllib.request.Request(self.base + "/ajax", data=data, headers=self.headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.loads(resp.read())
        if body.get("ErrorCode") != 0:
            raise IOFailure(f"sensor {self.base}: {action}: {body.get('ReturnValue')}")
        return body["ReturnValue"]

    def download(self, name: str, target: str) -> int:
        req = urllib.request.Request(
            self.base + "/download/export/" + urllib.parse.quote(name), headers=self.headers)
        size = 0
        with urllib.request.urlopen(req, timeout=30) as resp, open(target, "wb") as out:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                size += len(chunk)
        return size


def fetch_packets(settings, export_dir: str, host: str, capture_id: int,
                  connection_id: int) -> dict:
    """The sensor exports the connection's packets (capture_export, filter conn.id), this
    server downloads the file into its export directory and has the sensor delete its copy.
    {Host, CaptureId, ConnectionId, Name (in this server's export directory), Path, Size}."""
    if not _HOST.fullmatch(host):
        raise Malformed("host: a fleet_host name (letters, digits, '_', '.', '-')")
    base = sensors(settings.get("fleet_sensors") or "").get(host)
    if base is None:
        raise NotFound(f"host: no sensor {host!r} in the setting fleet_sensors "
                       "(name=http://HOST:PORT, comma-separated)")
    api = SensorApi(base, settings.get("fleet_sensor_credentials") or "")
    try:
        cmd = api.call("capture_export", capture_id=capture_id,
                       filter=f"conn.id == {connection_id}")
        deadline = time.monotonic() + TIMEOUT
        while cmd["State"] < 3:
            if time.monotonic() > deadline:
                raise Busy(f"sensor {host}: its export did not finish in {TIMEOUT:.0f} s")
            time.sleep(0.1)
            cmd = api.call("command_query", command_uid=cmd["CommandUid"])
        name = os.path.basename(str(cmd.get("Result") or ""))
        if cmd["State"] != CommandState.COMPLETED or not _EXPORT_NAME.fullmatch(name):
            raise IOFailure(f"sensor {host}: the export failed "
                            f"({cmd.get('Message') or cmd.get('Result') or 'no file'})")
        local = f"fleet-{host}-{capture_id}-{connection_id}.pcapng"
        path = os.path.join(export_dir, local)
        part = path + ".part"
        try:
            size = api.download(name, part)
            os.chmod(part, 0o600)
            os.replace(part, path)
        finally:
            if os.path.exists(part):
                os.unlink(part)
            api.call("export_delete", filename=name)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise IOFailure(f"sensor {host} ({base}) did not answer: "
                        f"{getattr(exc, 'reason', None) or exc}") from None
    return {"Host": host, "CaptureId": capture_id, "ConnectionId": connection_id,
            "Name": local, "Path": path, "Size": size}
