"""apppaccap, server_folders, server_pages, adapter_list."""

import os
import platform

from apppaccap import __version__
from apppaccap.api.registry import endpoint
from apppaccap.capture.adapters import list_adapters
from apppaccap.errors import NotFound
from apppaccap.web import pages
from apppaccap.wire import CONSTANTS
from apppaccap.wire import DataType


@endpoint(DataType.JSON, public=True)
def apppaccap(ctx) -> dict:
    """Information about this installation, with every protocol constant under `Constants`
    and the attribution backend in use under `Attribution`."""
    geo_path = ctx.settings.get("geoip_db") or ""
    geo = bool(geo_path) and os.path.isfile(geo_path)
    return {
        "Version": 1, "AppPacCap": __version__, "Licensed": 1, "LicenseType": "open source",
        "MachineName": ctx.machine_name, "OS": f"{platform.system()} {platform.release()}",
        "MapData": 1 if geo else 0, "Threat": 0, "Updated": 0,
        "AuthEnabled": bool(ctx.config.auth or ctx.login_required), "Constants": CONSTANTS,
        "Attribution": _attribution(ctx),
    }


def _attribution(ctx) -> dict:
    """Which attribution backend names packets: {"Backend": "ebpf" | "socket-table" | ""
    (not loaded yet), "Setting", "Reason" (why not eBPF)}."""
    captures = getattr(ctx, "captures", None)
    if captures is None:
        return {"Backend": "", "Setting": ctx.settings.get("attribution_backend") or "auto",
                "Reason": "no capture service"}
    st = captures.attribution_status()
    return {"Backend": st["backend"], "Setting": st["setting"], "Reason": st["reason"]}


@endpoint(DataType.JSON)
def server_folders(ctx) -> list:
    """The installed themes (folder names under the themes directory)."""
    return pages.list_themes(ctx.config.themes_dir)


@endpoint(DataType.JSON)
def server_pages(ctx, *, theme_name: str) -> list:
    """The pages (.html files, relative paths) of one theme.

    - theme_name: a name from server_folders
    """
    if theme_name not in pages.list_themes(ctx.config.themes_dir):
        raise NotFound(f"theme_name: no theme {theme_name[:80]!r}")
    return pages.list_pages(ctx.config.themes_dir, theme_name)


@endpoint(DataType.JSON)
def adapter_list(ctx) -> list:
    """Every libpcap device with its addresses, MAC and up/loopback/wireless/monitor flags."""
    return list_adapters()
