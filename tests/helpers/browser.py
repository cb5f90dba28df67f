"""Helpers for the browser tests: Chromium, a page's console, traffic makers, a big pcap."""

from __future__ import annotations

import os
import random
import subprocess
import sys

from tests.helpers.packets import eth
from tests.helpers.packets import icmp
from tests.helpers.packets import ipv4
from tests.helpers.packets import tcp
from tests.helpers.packets import udp
from tests.helpers.pcapfiles import write_pcap
from tests.helpers.ports import free_port
from tests.helpers.ports import wait_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
T0 = 1_700_000_000 * 1_000_000_000
HOST_MAC, GATEWAY_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


# Reports every Content-Security-Policy violation of a document as a console error. The
# page's CSP does not apply to it: Playwright injects init scripts through DevTools.
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", function (e) {
  console.error("CSP violation: " + e.violatedDirective + " blocked " + (e.blockedURI || "inline")
                + " at " + e.sourceFile + ":" + e.lineNumber);
});
"""


class Console:
    """Every console error, uncaught page error and CSP violation of a page."""

    def __init__(self, page):
        self.errors = []
        page.add_init_script(CSP_LISTENER)
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def assert_clean(self):
        assert not self.errors, "\n".join(self.errors)


CLIENT = """
import sys, time, urllib.request
url = sys.argv[1]
while True:
    try:
        urllib.request.urlopen(url, timeout=2).read()
    except Exception:
        pass
    time.sleep(0.2)
"""


def start_traffic(www_dir: str):
    """A local http.server and a client that fetches from it every 200 ms → (port, [procs])."""
    os.makedirs(www_dir, exist_ok=True)
    with open(os.path.join(www_dir, "hello.txt"), "w") as fh:
        fh.write("hello from the browser test\n" * 20)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", www_dir],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    client = subprocess.Popen([sys.executable, "-c", CLIENT, f"http://127.0.0.1:{port}/hello.txt"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return port, [client, server]


def stop_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def write_big_pcap(path: str, count: int) -> None:
    """A classic pcap of `count` Ethernet/IPv4 packets, TCP/UDP/ICMP mixed, 10 ms apart."""
    rnd = random.Random(7)
    frames = []
    for i in range(count):
        proto = (6, 6, 6, 17, 17, 1)[i % 6]
        src = f"10.0.{rnd.randrange(4)}.{rnd.randrange(1, 250)}"
        dst = f"93.184.216.{rnd.randrange(1, 40)}"
        request = b"GET /item/%d HTTP/1.1\r\nHost: example.com\r\n\r\n" % i
        payload = request[: rnd.randrange(0, 60)]
        if proto == 6:
            l4 = tcp(40000 + i % 2000, (80, 443, 8080)[i % 3], seq=i, flags=0x18, win=502,
                     payload=payload)
        elif proto == 17:
            l4 = udp(50000 + i % 100, (53, 123, 5353)[i % 3], payload)
        else:
            l4 = icmp(8, ident=1, seq=i & 0xFFFF, payload=payload)
        ip = ipv4(src, dst, proto, l4, ident=i & 0xFFFF, with_checksum=True)
        frames.append((T0 + i * 10_000_000, eth(ip, src=HOST_MAC, dst=GATEWAY_MAC)))
    write_pcap(path, frames, snaplen=65535)
