"""This host's addresses: is an IP local (and on which interface)? IPv4-mapped forms.

Used by the socket lookups (a listener or wildcard match counts only for a local
address), by attribution and by the capture manager.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable

import psutil


def unmap(ip: str) -> str:
    """'::ffff:1.2.3.4' -> '1.2.3.4'; anything else unchanged."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip


def is_wildcard(ip: str) -> bool:
    return ip in ("0.0.0.0", "::")


# The change notices are polled at most this often (seconds). Every recv lets the
# interpreter lock go, and the resolver asked ~5 times a flow: at 3,000 new flows/s that
# was ~15,000 lock hand-overs a second to threads that held it for milliseconds. An
# address added or removed counts within this long of its notice.
POLL = 0.001


class LocalAddresses:
    """Is an address one of this host's (this network namespace's)? Which interface has it?

    Loopback ranges are always local; multicast, broadcast and unspecified never are. The
    interface list comes from psutil. On Linux a netlink socket subscribed to address
    changes says when to re-read it (an address added a moment ago - DHCP, a veth just
    configured - counts within POLL); elsewhere it is re-read at most every `refresh` seconds
    when an unknown address is asked about. Answers are memoised because this sits on the
    per-flow path.
    """

    def __init__(self, refresh: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 source: Callable[[], dict[str, int]] | None = None):
        self._refresh, self._clock = refresh, clock
        self._source = source or interface_addresses
        # (addresses → ifindex, memo, loaded fine): swapped as one, so a question asked
        # while another thread reloads never files an old answer in the new memo
        self._state: tuple[dict, dict, bool] = ({}, {}, False)
        self._loaded = self._polled = -1e18
        self._lock = threading.Lock()
        self._changes = _address_changes() if source is None else None

    def _load(self) -> tuple[dict, dict, bool]:
        with self._lock:
            try:
                state = (self._source(), {}, True)
            except Exception:  # psutil missing or failing: only loopback counts as local
                state = ({}, {}, False)
            self._state, self._loaded = state, self._clock()
            return state

    def _current(self) -> tuple[dict, dict, bool]:
        if self._changes is not None:
            now = self._clock()
            if now - self._polled < POLL and self._loaded > -1e17:
                return self._state
            self._polled = now
            failed = not self._state[2] and now - self._loaded >= self._refresh
            if self._changed() or self._loaded < -1e17 or failed:
                return self._load()
        return self._state

    def __call__(self, ip: str) -> bool:
        """True when `ip` (text, IPv4-mapped allowed) is an address of this host."""
        addrs, memo, ok = self._current()
        known = memo.get(ip)
        if known is not None:
            return known
        ip = unmap(ip)
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if addr.is_multicast or addr.is_unspecified or ip == "255.255.255.255":
            result = False
        elif addr.is_loopback:
            result = True
        else:
            if self._changes is None and ip not in addrs and \
                    self._clock() - self._loaded >= self._refresh:
                addrs, memo, ok = self._load()
            result = ip in addrs
            if not result and (self._changes is None or not ok):
                return False  # not memoised: the address may appear at the next reload
        if len(memo) > 4096:
            memo.clear()
        memo[ip] = result
        return result

    def _changed(self) -> bool:
        """Drain the netlink socket; True when an address or link changed since last time.
        An overrun (ENOBUFS) also means something changed."""
        changed = False
        for _ in range(1000):
            try:
                self._changes.recv(65536)
            except BlockingIOError:
                break
            except OSError:
                pass
            changed = True
        return changed

    def ifindex(self, ip: str) -> int:
        """Index of the interface holding `ip` (loopback ranges: the loopback device)."""
        ip = unmap(ip)
        addrs = self._current()[0]
        if not addrs and self._changes is None and self._clock() - self._loaded >= self._refresh:
            addrs = self._load()[0]
        if ip in addrs:
            return addrs[ip]
        try:
            if ipaddress.ip_address(ip).is_loopback:
                return addrs.get("127.0.0.1" if ":" not in ip else "::1", 0)
        except ValueError:
            pass
        return 0


def _address_changes():
    """A non-blocking netlink socket told of every address/link change (Linux), or None."""
    groups = 0x1 | 0x10 | 0x100     # RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        sock.bind((0, groups))
        sock.setblocking(False)
        return sock
    except (AttributeError, OSError):
        return None


def interface_addresses() -> dict[str, int]:
    """{address: ifindex} for every IPv4/IPv6 address of every interface."""

    out: dict[str, int] = {}
    for name, items in psutil.net_if_addrs().items():
        try:
            index = socket.if_nametoindex(name)
        except OSError:
            index = 0
        for a in items:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out[a.address.split("%", 1)[0]] = index
    return out
