"""Loopback ports: a free one to listen on, and waiting until something listens."""

from __future__ import annotations

import socket
import time

_GIVEN: set = set()


def free_port(kind=None) -> int:
    """A loopback port nobody holds right now (TCP, or `kind`, e.g. socket.SOCK_DGRAM),
    and never one this process was given before: the kernel may hand the port it just
    freed out again, and two servers asked for together then got the same one (both
    ClickHouse shards on one port, one answering for both)."""
    while True:
        s = socket.socket(socket.AF_INET, kind or socket.SOCK_STREAM)
        # Bound on every address: a port free on 127.0.0.1 may still be taken on another
        # address, which a server bound to 0.0.0.0 would then collide with.
        s.bind(("", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")
