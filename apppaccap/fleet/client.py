"""The ClickHouse connection: clickhouse-driver over the native protocol.

Why native and not HTTP: the maintained HTTP client (clickhouse-connect) asks the server for
settings at connect time in a form Debian 12's clickhouse-server 18.16 refuses ("Unknown
identifier: readonly"), while clickhouse-driver negotiates the protocol revision and works
with 18.16 and with current releases. Values are bound client-side by clickhouse-driver's
escaping (`%(name)s`), because 18.16 has no server-side parameters (`{x:Type}`).
"""

from __future__ import annotations

import urllib.parse

from clickhouse_driver import Client

from apppaccap.errors import Malformed

DEFAULT_DATABASE = "apppaccap"
CONNECT_TIMEOUT = 3
SEND_TIMEOUT = 30




def database_of(url: str) -> str:
    name = urllib.parse.urlsplit(url).path.strip("/") or DEFAULT_DATABASE
    if not name.replace("_", "").isalnum():
        raise Malformed("fleet_url: the database name is letters, digits and '_' only")
    return name


def connect(url: str) -> Client:
    """A client for `url`; it connects on its first query. The database named in the URL
    may not exist yet (the schema creates it), so the client starts in `default`."""
    parts = urllib.parse.urlsplit(url)
    return Client(host=parts.hostname, port=parts.port or 9000,
                  user=urllib.parse.unquote(parts.username or "default"),
                  password=urllib.parse.unquote(parts.password or ""),
                  secure=parts.scheme == "clickhouses",
                  connect_timeout=CONNECT_TIMEOUT, send_receive_timeout=SEND_TIMEOUT,
                  sync_request_timeout=CONNECT_TIMEOUT)
