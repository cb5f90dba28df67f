"""JSON bodies to a real server process (tests/helpers/server.py); its stderr kept drained.

JSON is the body that can carry what a form cannot: lone surrogates ("\\ud800"), nesting,
numbers of any size. The server logs every request to stderr; a pipe nobody reads fills
after a few hundred requests and then blocks the server, so long tests drain it.
"""

from __future__ import annotations

import json
import threading
import urllib.request


def call_json(server, action: str, timeout: float = 30, **params) -> dict:
    """POST {"action": ..., **params} as JSON; the envelope. Surrogates travel as \\udxxx
    escapes, exactly what a hostile client sends."""
    body = json.dumps(dict(params, action=action)).encode("ascii")
    req = urllib.request.Request(server.url + "/ajax", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def drain_stderr(server, keep: int = 20000) -> list:
    """Read the server's stderr in a thread; returns a list holding its last bytes."""
    tail = [b""]

    def run():
        for line in server.proc.stderr:
            tail[0] = (tail[0] + line)[-keep:]
    threading.Thread(target=run, daemon=True).start()
    return tail
