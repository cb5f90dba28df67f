"""The kernel side of eBPF attribution: load bpf/appattr.bpf.o through libbpf and turn
its ring-buffer events into a table flow end → (pid, tid, comm) per direction.

Loaded with ctypes on libbpf.so.1 (Debian libbpf1), not through the C extension: libbpf
is a plain C API of a dozen calls, ctypes needs no compiler or libbpf-dev at install time,
and a missing library is an ImportError-free runtime condition we can report and fall
back from (docs/ATTRIBUTION.md, The eBPF backend).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import socket
import struct
import threading
import time
from collections import OrderedDict
from typing import NamedTuple

from apppaccap.attribution import portgen
from apppaccap.attribution.libbpf import SAMPLE
from apppaccap.attribution.libbpf import LoadError
from apppaccap.attribution.libbpf import Messages
from apppaccap.attribution.libbpf import open_libbpf
from apppaccap.attribution.localaddr import unmap

log = logging.getLogger(__name__)

OBJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpf", "appattr.bpf.o")
BTF = "/sys/kernel/btf/vmlinux"
DIR_OUT, DIR_IN, DIR_SOCK_OUT, DIR_SOCK_IN = 0, 1, 2, 3
F_INFERRED = 1
F_PORT_HELD = 2   # UDP socket-level event of a socket bound by port number
F_DUAL = 4        # socket-level event of an IPv6 socket that receives IPv4 too
F_SYN = 8         # a TCP SYN without ACK sent in context: the connection (re)starts
# struct event in appattr.bpf.c: ts, pid, tid, comm, flow (proto dir family pad sport
# dport saddr daddr netns), flags
EVENT = struct.Struct("<QII16sBBBxHH16s16sIIQ")
MAX_ENTRIES = 200_000       # LRU bound of each user-space table
POLL_MS = 50                # the kernel wakes us only at 64 KiB; otherwise we look this often
BATCH = 4096                # records per consume: ring_buffer__poll never returns in a flood
UDP = 17



class Seen(NamedTuple):
    """A task the kernel saw on one end of a flow."""

    pid: int
    tid: int
    comm: str
    inferred: bool   # sent in softirq: the socket's last owner, not the running task
    ts: float        # monotonic seconds, the kernel's time of the event
    gen: int = 0     # UDP: the local port's generation then (portgen.py)
    dual: bool = False   # an IPv6 socket that receives IPv4 too (not IPV6_V6ONLY)


def check_environment() -> None:
    """The cheap preconditions, with a reason a person reads when one is missing."""
    if not os.path.exists(BTF):
        raise LoadError(f"the kernel has no BTF ({BTF} is missing; CONFIG_DEBUG_INFO_BTF)")


class KernelFlows:
    """Loaded programs + the consumer thread + the table they fill.

    `owner()` and `drain()` may be called from any thread: consuming the ring buffer is
    serialised by a lock (libbpf's ring_buffer is not thread-safe)."""

    def __init__(self, object_path: str = OBJECT):
        self.object_path = object_path
        self.flows: OrderedDict = OrderedDict()   # (proto, lip, lport, rip, rport) → [out, in]
        self.socks: OrderedDict = OrderedDict()   # (proto, lip, lport) → [out, in]
        self.stats = {"events": 0, "batches": 0, "consumer_cpu": 0.0, "drains": 0}
        self._lib = None
        self._obj = None
        self._links: list = []
        self._rb = None
        self._pending: list[bytes] = []
        self._lock = threading.Lock()
        self._drained_at = -1e18   # when the last drain began (monotonic)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.load_ms = 0.0
        self.ports: portgen.PortGenerations | None = None   # UDP port generations
        self.netns = _netns()
        # told (proto, local, remote, Seen) for each task seen in context, after the table
        # took it: the resolver relabels a flow whose end it named before the kernel did
        self.on_seen = None
        self._told: list = []   # on_seen calls due, made outside the lock

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        """Load and attach everything, or raise LoadError (nothing left attached)."""
        t0 = time.monotonic()
        check_environment()
        if not os.path.exists(self.object_path):
            raise LoadError(f"the eBPF object {self.object_path} is missing (make bpf)")
        lib = self._lib = open_libbpf()
        msgs = Messages()
        lib.libbpf_set_print(msgs.callback)
        self._msgs = msgs   # the callback must outlive every libbpf call
        try:
            obj = lib.bpf_object__open_file(self.object_path.encode(), None)
            if not obj:
                raise LoadError(f"libbpf could not open {self.object_path}: "
                                f"{_err()}{_more(msgs)}")
            self._obj = obj
            if lib.bpf_object__load(obj) != 0:
                raise LoadError(f"the kernel refused the eBPF programs: {_err()}{_more(msgs)}"
                                + _caps_hint())
            prog = lib.bpf_object__next_program(obj, None)
            cgroup = []   # attached to a cgroup, not auto-attached (portgen.py)
            while prog:
                if lib.bpf_program__section_name(prog).startswith(b"cgroup/"):
                    cgroup.append(prog)
                    prog = lib.bpf_object__next_program(obj, prog)
                    continue
                link = lib.bpf_program__attach(prog)
                if not link:
                    name = lib.bpf_program__name(prog).decode()
                    raise LoadError(f"attaching {name} failed: {_err()}{_more(msgs)}")
                self._links.append(link)
                prog = lib.bpf_object__next_program(obj, prog)
            self.ports = portgen.attach(lib, obj, cgroup)
            fd = lib.bpf_object__find_map_fd_by_name(obj, b"events")
            self._counters_fd = lib.bpf_object__find_map_fd_by_name(obj, b"counters")
            self._sample = SAMPLE(self._on_sample)
            self._rb = lib.ring_buffer__new(fd, self._sample, None, None)
            if not self._rb:
                raise LoadError(f"ring buffer set-up failed: {_err()}")
        except LoadError:
            self._unload()
            raise
        self.load_ms = (time.monotonic() - t0) * 1000
        self._stop.clear()
        self._thread = threading.Thread(target=self._consume_loop, name="attribution-ebpf",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self._unload()

    def _unload(self) -> None:
        lib = self._lib
        if lib is None:
            return
        with self._lock:
            if self._rb:
                lib.ring_buffer__free(self._rb)
                self._rb = None
            if self.ports is not None:
                self.ports.close(lib)
                self.ports = None
            for link in self._links:
                lib.bpf_link__destroy(link)
            self._links.clear()
            if self._obj:
                lib.bpf_object__close(self._obj)
                self._obj = None

    # -- consuming ---------------------------------------------------------------
    def _on_sample(self, _ctx, data, size):
        # only copy here: parsing happens after libbpf returns, outside the callback
        self._pending.append(ctypes.string_at(data, size))
        return 1 if len(self._pending) >= BATCH else 0   # non-zero: poll returns now

    def _consume_loop(self) -> None:
        while not self._stop.is_set():
            c0 = time.thread_time()
            with self._lock:
                if self._rb is None:
                    return
                began = time.monotonic()
                self._lib.ring_buffer__poll(self._rb, 0)
                self._lib.ring_buffer__consume(self._rb)
                self._apply()
                self._drained_at = began   # a drain as well (drain(since))
            self._tell()
            self.stats["consumer_cpu"] += time.thread_time() - c0
            self._stop.wait(POLL_MS / 1000)

    def _tell(self) -> None:
        told, self._told = self._told, []
        for args in told:
            try:
                self.on_seen(*args)
            except Exception:  # noqa: BLE001 - the consumer must survive its listener
                log.exception("eBPF flow listener failed")

    def port_generation(self, port: int) -> int | None:
        """UDP port `port`'s generation (portgen.py), or None when not tracked."""
        ports = self.ports
        return ports.get(port) if ports is not None else None

    def drain(self, since: float | None = None) -> None:
        """Take in every event already in the ring buffer (the resolver calls this before
        looking a flow up: its packet was queued after the event was written). `since`
        (time.monotonic) is when the question was asked: a drain begun after it already
        took that packet's events in (a resolver behind the traffic had drained once per
        flow; each drain lets the interpreter lock go). `_drained_at` is when the last
        drain that has *finished* began: one still running has not applied its events."""
        if since is not None and since < self._drained_at:
            return
        with self._lock:
            if self._rb is None:
                return
            began = time.monotonic()
            self.stats["drains"] += 1
            while self._lib.ring_buffer__consume(self._rb) > 0 and len(self._pending) >= BATCH:
                self._apply()
            self._apply()
            self._drained_at = began

    def _apply(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        self.stats["batches"] += 1
        self.stats["events"] += len(pending)
        unpack = EVENT.unpack_from
        for raw in pending:
            (ts, pid, tid, comm, proto, d, family, sport, dport, saddr, daddr, netns,
             flags, gen) = unpack(raw)
            if netns != self.netns:
                continue   # another namespace's flow: its addresses are not ours (containers)
            src, dst = _ip(family, saddr), _ip(family, daddr)
            seen = Seen(pid, tid, comm.split(b"\0", 1)[0].decode(errors="replace"),
                        bool(flags & F_INFERRED), ts * 1e-9, gen, bool(flags & F_DUAL))
            if d == DIR_OUT:
                key = (proto, src, sport, dst, dport)
                if flags & F_SYN:
                    # a connection starts on this 4-tuple: what the other end's sockets
                    # did on it before belonged to a connection that is gone
                    self.flows.pop((proto, dst, dport, src, sport), None)
                self._put(self.flows, key, 0, seen)
            elif d == DIR_IN:
                key = (proto, dst, dport, src, sport)
                self._put(self.flows, key, 1, seen)
            else:   # socket level: src = the socket's local end, dst = its peer (or 0)
                side = 0 if d == DIR_SOCK_OUT else 1
                key = (proto, src, sport, dst, dport) if dport else None
                if proto == UDP and flags & F_PORT_HELD:
                    # unconnected receivers are known per socket only; kept only of a
                    # socket that leaves its port by a release the kernel counts (owner())
                    self._put(self.socks, (proto, src, sport), side, seen)
                if key is not None:
                    self._put(self.flows, key, side, seen)
            if key is not None and not seen.inferred and self.on_seen is not None:
                self._told.append((proto, (key[1], key[2]), (key[3], key[4]), seen))

    @staticmethod
    def _put(table: OrderedDict, key, side: int, seen: Seen) -> None:
        entry = table.get(key)
        if entry is None:
            entry = table[key] = [None, None]
            if len(table) > MAX_ENTRIES:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        old = entry[side]
        if old is None or not seen.inferred or old.inferred:
            entry[side] = seen   # an inferred owner never replaces a task seen in context

    # -- answers -------------------------------------------------------------------
    def owner(self, proto: int, lip: str, lport: int, rip: str, rport: int,
              sender: bool = False) -> Seen | None:
        """The task on the local end (lip, lport) of a flow: its sender seen in context,
        else its reader, else the socket's owner (inferred); for UDP, the socket bound to
        that port when the flow itself was not seen (unconnected receivers). `sender`:
        the flow's first packet left from this end.

        A UDP answer counts only while the port's generation is the one it was seen at
        (portgen.py: binds, releases and connects of the port's sockets start a new one):
        the port may have been taken by another user's socket since, which would then be
        named for the old owner (docs/ATTRIBUTION.md). One exception: a send seen in
        context answers for the end its flow's first packet left from, whatever came
        after - a short flow's sender has often closed its socket (a new generation)
        before that packet is asked about, and the packet was its - but never over a read
        of the current generation. The per-port answer also comes only from sockets bound
        by port number (a port the kernel chose can be left by connect(AF_UNSPEC), which
        no hook sees), and only from a socket that can receive the flow's family."""
        entry = self.flows.get((proto, lip, lport, rip, rport))
        now = self.port_generation(lport) if proto == UDP else None
        if entry is not None and now is not None:
            out, inn = entry
            current = _current(entry, now)
            if sender and out is not None and current[0] is None and current[1] is None \
                    and not out.inferred:
                current[0] = out   # the flow's own first packets were this task's
            entry = current
        best = _best(entry) if entry is not None else None
        if best is not None and not best.inferred:
            return best
        if now is not None:
            v4 = ":" not in lip
            for ip in (lip, "0.0.0.0", "::") if v4 else (lip, "::"):
                sock = self.socks.get((proto, ip, lport))
                found = _best(_current(sock, now)) if sock is not None else None
                if found is not None and (ip != "::" or not v4 or found.dual):
                    return found
        return best

    def comm_of(self, pid: int) -> str:
        """The comm the kernel reported for `pid` (the newest flow first), or ""."""
        for table in (self.flows, self.socks):
            for entry in reversed(list(table.values())[-2000:]):
                for s in entry:
                    if s is not None and s.pid == pid and not s.inferred:
                        return s.comm
        return ""

    def counters(self) -> dict:
        """The kernel side's counters summed over CPUs: emitted, ring full, skipped."""
        out = {}
        if self._lib is None or self._obj is None:
            return out
        n = self._lib.libbpf_num_possible_cpus()
        for i, name in enumerate(("emitted", "ring_full", "softirq_unowned")):
            key = ctypes.c_uint32(i)
            vals = (ctypes.c_uint64 * max(1, n))()
            if self._lib.bpf_map_lookup_elem(self._counters_fd, ctypes.byref(key), vals) == 0:
                out[name] = sum(vals)
        return out


def _netns() -> int:
    """Our network namespace's inode: the captures see this namespace's interfaces."""
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


def _current(entry, gen: int) -> list:
    """An [out, in] entry without the sides seen at another generation of the port."""
    return [s if s is not None and s.gen == gen else None for s in entry]


def _best(entry) -> Seen | None:
    """The sender seen in context, else the reader, else an inferred owner; but a reader of
    another process newer than the sender: the socket changed hands (a 4-tuple reused by
    a new connection, whose first sends went out in softirq), the newer owner is named."""
    out, inn = entry
    if out is not None and inn is not None and not inn.inferred and inn.pid != out.pid \
            and inn.ts > out.ts:
        return inn
    for s in (out, inn):
        if s is not None and not s.inferred:
            return s
    return out or inn


def _ip(family: int, raw: bytes) -> str:
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return unmap(socket.inet_ntop(socket.AF_INET6, raw))


def _err() -> str:
    code = ctypes.get_errno()
    return f"{os.strerror(code)} (errno {errno.errorcode.get(code, code)})" if code else \
        "unknown error"


def _more(msgs: Messages) -> str:
    tail = msgs.tail()
    return f" [libbpf: {tail}]" if tail else ""


def _caps_hint() -> str:
    return (" - loading needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)"
            if ctypes.get_errno() in (errno.EPERM, errno.EACCES) else "")
