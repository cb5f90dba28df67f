"""UDP port generations from the kernel: has any socket bound to a port since?

The eBPF object (bpf/appattr.bpf.c, `udp_port_gen`) bumps a port's counter each time a UDP
socket binds to it (cgroup post_bind4/post_bind6: after the kernel hashed the socket).
sockdiag.py keeps a UDP port's socket list while its generation stays the same: listing
one port costs a walk of the kernel's whole UDP hash (~30 us a family), and a server's
port is asked about for every new client. The map is read through mmap, so a look costs
no system call.

A socket can join a port without a bind the hook sees (an automatic bind aimed at it with
IP_LOCAL_PORT_RANGE, a disconnect), but only where the port's sockets allow sharing: a
port bound by a socket with SO_REUSEADDR or SO_REUSEPORT is marked SHARED for good, and
has no generation here (its list is read every time).

The programs are attached to the cgroup v2 root this process sees (every process of the
host when, as here, the service runs in the root cgroup namespace). Without a cgroup v2
mount, or when the kernel refuses the attachment, there are no generations and UDP lists
are read every time, as before.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os

log = logging.getLogger(__name__)

PORTS = 65536
MAP = b"udp_port_gen"
SHARED = 1 << 63   # the port was bound by a socket that lets others join it


def cgroup2_root(mounts: str = "/proc/self/mounts") -> str | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on a
    hybrid set-up), or None."""
    try:
        with open(mounts, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "cgroup2":
                    return parts[1].replace("\\040", " ")
    except OSError:
        return None
    return None


class PortGenerations:
    """The attached cgroup programs and the mmap'd generation counters."""

    def __init__(self, links: list, mm: mmap.mmap, cgroup_fd: int):
        self._links = links
        self._mm = mm
        self._view = memoryview(mm).cast("Q")   # u64 counters, one per port
        self._cgroup_fd = cgroup_fd

    def get(self, port: int) -> int | None:
        """The port's generation; None for a SHARED port, or once closed."""
        view = self._view
        try:
            gen = view[port] if view is not None else None
        except (ValueError, IndexError):   # released by close() meanwhile, or no such port
            return None
        return None if gen is None or gen & SHARED else gen

    def close(self, lib) -> None:
        view, self._view = self._view, None
        if view is not None:
            view.release()
            self._mm.close()
        for link in self._links:
            lib.bpf_link__destroy(link)
        self._links.clear()
        if self._cgroup_fd >= 0:
            os.close(self._cgroup_fd)
            self._cgroup_fd = -1


def attach(lib, obj, progs: list) -> PortGenerations | None:
    """Attach the cgroup programs `progs` of the loaded object `obj` and map its counters;
    None (the reason logged) when that cannot be done here."""
    root = cgroup2_root()
    if root is None:
        log.info("no cgroup v2 mount: UDP port lists are read for every lookup")
        return None
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        log.info("cannot open the cgroup v2 root %s: %s", root, exc.strerror)
        return None
    links: list = []
    try:
        for prog in progs:
            link = lib.bpf_program__attach_cgroup(prog, fd)
            if not link:
                name = lib.bpf_program__name(prog).decode()
                raise OSError(f"attaching {name} to {root} failed: "
                              f"{os.strerror(ctypes.get_errno())}")
            links.append(link)
        map_fd = lib.bpf_object__find_map_fd_by_name(obj, MAP)
        mm = mmap.mmap(map_fd, PORTS * 8, mmap.MAP_SHARED, mmap.PROT_READ)
    except (OSError, ValueError) as exc:
        log.info("UDP port lists are read for every lookup: %s", exc)
        for link in links:
            lib.bpf_link__destroy(link)
        os.close(fd)
        return None
    return PortGenerations(links, mm, fd)
