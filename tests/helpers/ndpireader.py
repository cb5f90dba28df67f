"""ndpiReader (Debian's libndpi-bin), the oracle of application labels: the flows of a
capture file with the protocol nDPI gives each ("master.app" names, e.g. TLS.Google)."""

from __future__ import annotations

import re
import subprocess

# "\t1\tTCP 10.0.0.1:55305 <-> 212.199.219.221:443 [proto: 91.126/TLS.Google][...][cat: Web/5]"
_FLOW = re.compile(r"^\s*\d+\s+(TCP|UDP)\s+(\S+)\s+<?->\s+(\S+)\s+\[proto: [\d.]+/([^\]]+)\]"
                   r".*?\[cat: ([^/\]]+)/")
PROTOS = {"TCP": 6, "UDP": 17}


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def flows(path: str) -> dict:
    """{(proto, frozenset of the two (ip, port) endpoints): (name, category)} for every TCP
    and UDP flow ndpiReader lists (its own give-up guess included, as ours)."""
    proc = subprocess.run(["ndpiReader", "-i", str(path), "-v", "2", "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-500:]
    out = {}
    for line in proc.stdout.splitlines():
        m = _FLOW.match(line)
        if m:
            key = (PROTOS[m[1]], frozenset((_endpoint(m[2]), _endpoint(m[3]))))
            out[key] = (m[4], m[5])
    return out
