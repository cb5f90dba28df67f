"""Monitor mode (802.11 radiotap capture) on a wireless adapter, switched through nl80211.

Linux switches an interface's type with nl80211; `iw` is the standard tool for it:
link down → `iw dev X set type monitor` (or `managed`) → link up. Nothing is installed at
run time: without `iw` the answer is UNSUPPORTED naming the package. Wired, loopback and
pseudo adapters cannot do monitor mode at all (UNSUPPORTED with the reason). A switched
interface reports NETADAPTER.MonitorMode through its ARPHRD type (803, radiotap).

Every OS access is a seam (`adapters`, `run`, `which`, `link`, `phy_of`) so the decision
logic is tested on a machine without Wi-Fi.
"""

from __future__ import annotations

import fcntl
import shutil
import socket
import struct
import subprocess

from apppaccap.capture.adapters import PSEUDO
from apppaccap.capture.adapters import list_adapters
from apppaccap.errors import Busy
from apppaccap.errors import InvalidPermissions
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.errors import Unsupported

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def run_command(argv: list[str]) -> tuple[int, str]:
    """Run a tool; (exit code, stderr+stdout text)."""
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return p.returncode, (p.stderr + p.stdout).strip()


def set_link(name: str, up: bool) -> None:
    """Administrative up/down through SIOCSIFFLAGS (no `ip` needed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh", name.encode()[:15], 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        flags = (flags | IFF_UP) if up else (flags & ~IFF_UP)
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", name.encode()[:15], flags))


def phy_name(name: str) -> str:
    """The wiphy of an interface ('' when it has none)."""
    try:
        with open(f"/sys/class/net/{name}/phy80211/name") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def supports_monitor(phy_info: str) -> bool:
    """Parse `iw phy X info`: is `monitor` among the "Supported interface modes"?"""
    in_modes = False
    for line in phy_info.splitlines():
        text = line.strip()
        if text.startswith("Supported interface modes"):
            in_modes = True
            continue
        if in_modes:
            if not text.startswith("*"):
                break
            if text.lstrip("* ").strip().lower() == "monitor":
                return True
    return False


def _iw_error(name: str, text: str):
    """Map iw's errno text to our error classes."""
    if "(-16)" in text or "busy" in text.lower():
        return Busy(f"tap_id: {name} is busy ({text[:200]}); stop the program managing it "
                    "(NetworkManager, wpa_supplicant) first")
    if "(-1)" in text or "not permitted" in text.lower():
        return InvalidPermissions(f"tap_id: not permitted to switch {name}: {text[:200]}")
    return Unsupported(f"tap_id: {name} refused the switch: {text[:200]}")


class MonitorSwitch:
    """Decides whether an adapter can switch, then switches it."""

    def __init__(self, *, adapters=list_adapters, run=run_command, which=shutil.which,
                 link=set_link, phy_of=phy_name):
        self.adapters, self.run, self.which = adapters, run, which
        self.link, self.phy_of = link, phy_of

    def adapter(self, tap_id: str) -> dict:
        """The NETADAPTER named by tap_id (NOT_FOUND otherwise)."""
        if not tap_id.strip():
            raise Malformed("tap_id: required")
        for a in self.adapters():
            if a["AdapterId"] == tap_id:
                return a
        raise NotFound(f"tap_id: no adapter {tap_id[:80]!r} (see adapter_list)")

    def check(self, a: dict) -> str:
        """Why-not as UNSUPPORTED, or the path of `iw` when the switch can be tried."""
        name = a["AdapterId"]
        if name in PSEUDO:
            raise Unsupported(f"tap_id: {name} is a libpcap pseudo-device, not a network "
                              "adapter; monitor mode needs a wireless (802.11) adapter")
        if a.get("Loopback"):
            raise Unsupported(f"tap_id: {name} is a loopback adapter; monitor mode needs a "
                              "wireless (802.11) adapter")
        if not a.get("Wireless"):
            raise Unsupported(f"tap_id: {name} is not a wireless adapter "
                              f"({a.get('Description') or 'wired'}); monitor mode needs "
                              "a wireless (802.11) adapter")
        iw = self.which("iw")
        if not iw:
            raise Unsupported(f"tap_id: {name} is wireless, but the `iw` tool (package iw) "
                              "is not installed; it is what switches nl80211 interface types")
        return iw

    def start(self, tap_id: str) -> dict:
        """Put a wireless adapter in monitor mode; a no-op when it already is."""
        a = self.adapter(tap_id)
        if a.get("MonitorMode"):
            return a
        iw = self.check(a)
        name = a["AdapterId"]
        phy = self.phy_of(name)
        if phy:
            code, info = self.run([iw, "phy", phy, "info"])
            if code == 0 and not supports_monitor(info):
                raise Unsupported(f"tap_id: the driver of {name} ({phy}) does not support "
                                  "monitor mode (not among its supported interface modes)")
        self._switch(iw, name, "monitor")
        return self.adapter(tap_id)

    def stop(self, tap_id: str) -> dict:
        """Return a monitor-mode adapter to managed (station) mode; a no-op otherwise."""
        a = self.adapter(tap_id)
        if not a.get("MonitorMode"):
            self.check(a)  # still say why a wired/loopback adapter has nothing to stop
            return a
        iw = self.which("iw")
        if not iw:
            raise Unsupported(f"tap_id: {a['AdapterId']} is in monitor mode, but the `iw` "
                              "tool (package iw) is not installed to switch it back")
        self._switch(iw, a["AdapterId"], "managed")
        return self.adapter(tap_id)

    def _switch(self, iw: str, name: str, kind: str) -> None:
        # Most drivers refuse a type change on a running interface (-EBUSY): down first.
        try:
            self.link(name, False)
        except OSError as exc:
            raise _iw_error(name, f"link down failed: {exc.strerror or exc}") from None
        code, text = self.run([iw, "dev", name, "set", "type", kind])
        try:
            self.link(name, True)  # up again whether or not the switch worked
        except OSError as exc:
            if code == 0:
                raise Unsupported(f"tap_id: {name} switched to {kind} but did not come up: "
                                  f"{exc.strerror or exc}") from None
        if code != 0:
            raise _iw_error(name, text or f"iw exited with {code}")

