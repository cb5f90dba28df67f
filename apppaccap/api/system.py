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
    """Information about this installation, with every protocol constant under `Constants`."""
    geo_path = ctx.settings.get("geoip_db") or ""
    geo = bool(geo_path) and os.path.isfile(geo_path)
    return {
        "Version": 1, "AppPacCap": __version__, "Licensed": 1, "LicenseType": "open source",
        "MachineName": ctx.machine_name, "OS": f"{platform.system()} {platform.release()}",
        "MapData": 1 if geo else 0, "Threat": 0, "Updated": 0,
        "AuthEnabled": bool(ctx.config.auth or ctx.login_required), "Constants": CONSTANTS,
    }


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
