"""The context handed to every action: long-lived services plus the caller's request.

Handlers never import Flask; the web layer, the CLI, the scheduler and the tests
all build a Context and call the same functions.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from dataclasses import field

from apppaccap.attribution.processes import ProcessBook
from apppaccap.auth import Logins
from apppaccap.auth import Users
from apppaccap.settings import Settings
from apppaccap.store.catalog import Catalog


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8733
    data_dir: str = "./data"
    themes_dir: str = ""
    auth: bool = False
    export_dir: str = ""
    # Directories exports may write below (besides export_dir) and ingest may read below
    # (besides <data-dir>/import): serve-time options only, never API settings, because
    # they decide what the root service writes and reads for its callers (safefs/).
    export_roots: list = field(default_factory=list)
    ingest_roots: list = field(default_factory=list)
    # `--auth off` on a network address, confirmed with --i-know-this-is-open: nobody is
    # asked for a token, local accounts included (web/callers.py).
    open_door: bool = False
    # Local accounts in this group (and root) call without a token when authentication is
    # off (callers.py). A start-up option, never a setting: whoever could change it could
    # hand token-free root to any group.
    local_group: str = "apppaccap"


@dataclass
class Context:
    config: Config
    catalog: Catalog
    settings: Settings
    users: Users
    logins: Logins
    processes: ProcessBook
    captures: object = None  # capture.manager.CaptureManager, started by the server
    jobs: object = None      # jobs.Jobs (APScheduler), started by the server
    triggers: object = None  # triggers.watcher.TriggerWatcher, started by the server
    usage: object = None     # usage.service.UsageService, started by the server
    alerts: object = None    # analytics.alerts.AlertEngine, started by the server
    fleet: object = None     # fleet.shipper.Shipper, started by the server
    # -- per request --------------------------------------------------------
    token: str | None = None
    user: str | None = None
    remote: str = ""
    files: dict = field(default_factory=dict)
    # Who is on the other end (web/callers.py): the uid owning the client's socket (None when
    # unknown or not local) and whether non-public actions need a token from this caller.
    # The web door sets both on every request; internal callers (CLI, scheduler) are the
    # service itself.
    caller_uid: int | None = None
    login_required: bool = False

    def for_request(self, **kw) -> Context:
        return dataclasses.replace(self, **kw)

    @property
    def machine_name(self) -> str:
        return socket.gethostname()


def build_context(config: Config) -> Context:
    """Open the catalog and the basic services for a data directory."""
    config.data_dir = os.path.abspath(config.data_dir)
    os.makedirs(config.data_dir, exist_ok=True)
    if not config.export_dir:
        config.export_dir = os.path.join(config.data_dir, "export")
    os.makedirs(config.export_dir, exist_ok=True)
    # the default ingest root: files an admin puts here may be ingested by path
    os.makedirs(os.path.join(config.data_dir, "import"), mode=0o700, exist_ok=True)
    config.export_roots = [os.path.abspath(r) for r in config.export_roots]
    config.ingest_roots = [os.path.abspath(r) for r in config.ingest_roots]
    catalog = Catalog(config.data_dir)
    settings = Settings(catalog)
    users = Users(catalog)
    logins = Logins(users, lambda: settings.get_int("token_timeout"))
    return Context(config, catalog, settings, users, logins, ProcessBook(catalog))
