"""Network adapters: libpcap's devices joined with the OS's addresses and flags."""

from __future__ import annotations

import os
import socket

import psutil

# ARPHRD_* (from /sys/class/net/<if>/type) → pcap link type of a capture on that device.
_ARPHRD_TO_LINKTYPE = {1: 1, 772: 1, 65534: 101, 776: 101, 512: 9, 801: 105, 803: 127}
# libpcap pseudo-devices that are not network interfaces: never in "all adapters".
PSEUDO = {"any", "nflog", "nfqueue", "dbus-system", "dbus-session", "bluetooth-monitor"}


def _sys(name: str, attr: str) -> str | None:
    try:
        with open(f"/sys/class/net/{name}/{attr}") as fh:
            return fh.read().strip()
    except OSError:
        return None


def pcap_devices() -> list[str]:
    import pcap  # imported lazily: listing processes must not need libpcap
    return list(pcap.findalldevs())


def monitor_mode(name: str) -> bool:
    return _sys(name, "type") == "803"  # ARPHRD_IEEE80211_RADIOTAP


def list_adapters(devices=None) -> list[dict]:
    """NETADAPTER objects for every libpcap device (devices injectable for tests)."""
    devices = pcap_devices() if devices is None else devices
    addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    out = []
    for name in devices:
        arphrd = _sys(name, "type")
        mac, ips = "", []
        for a in addrs.get(name, []):
            if a.family == psutil.AF_LINK:
                mac = a.address
            elif a.family in (socket.AF_INET, socket.AF_INET6):
                ips.append(a.address.split("%")[0])
        st = stats.get(name)
        loopback = name == "lo" or arphrd == "772"
        out.append({
            "Version": 1, "AdapterId": name, "Name": name,
            "Description": _describe(name, arphrd),
            "Addresses": ips, "Mac": mac, "Up": bool(st and st.isup),
            "Loopback": loopback,
            "Wireless": os.path.isdir(f"/sys/class/net/{name}/wireless")
            or os.path.exists(f"/sys/class/net/{name}/phy80211"),
            "MonitorMode": monitor_mode(name),
            "LinkType": _ARPHRD_TO_LINKTYPE.get(int(arphrd), 0) if arphrd else 0,
            "Capturable": name not in PSEUDO and arphrd is not None,
        })
    return out


def _describe(name: str, arphrd: str | None) -> str:
    if name in PSEUDO:
        return "libpcap pseudo-device"
    if arphrd == "772":
        return "Loopback"
    if arphrd is None:
        return "libpcap device"
    kind = {"1": "Ethernet", "65534": "Tunnel (raw IP)", "776": "IPv6-in-IPv4 tunnel",
            "803": "802.11 monitor (radiotap)", "801": "802.11"}.get(arphrd, f"ARPHRD {arphrd}")
    driver = os.path.basename(os.path.realpath(f"/sys/class/net/{name}/device/driver")) \
        if os.path.exists(f"/sys/class/net/{name}/device/driver") else ""
    return f"{kind} ({driver})" if driver else kind


def default_capture_adapters() -> list[str]:
    """'All adapters': every real interface that is up (pseudo-devices excluded)."""
    return [a["Name"] for a in list_adapters() if a["Capturable"] and a["Up"]]
