"""The attribution backend the pipeline gets: eBPF first, the socket table per flow.

`choose_backend(setting)` builds it: "ebpf" / "auto" wrap today's LinuxOwners in
EbpfOwners, which answers each local end of a flow from what the kernel saw (ebpf.py) and
asks the wrapped sock_diag/procfs engine only for the ends the kernel has no answer for.
When the programs cannot load (no BTF, no libbpf, no CAP_BPF/CAP_PERFMON, a verifier
refusal) the whole backend falls back to the socket table at start(), logged once with
the reason; `status()` says which backend runs and why (the `apppaccap` action shows it).
"""

from __future__ import annotations

import logging

from apppaccap.attribution.ebpf import OBJECT
from apppaccap.attribution.kernelshare import KernelUse
from apppaccap.attribution.labels import Label
from apppaccap.attribution.labels import flow_key
from apppaccap.attribution.libbpf import LoadError
from apppaccap.attribution.localaddr import LocalAddresses
from apppaccap.attribution.owners import LinuxOwners
from apppaccap.attribution.owners import Owner
from apppaccap.attribution.owners import default_owners
from apppaccap.attribution.procfs import ProcInfo

log = logging.getLogger(__name__)

CHOICES = ("auto", "ebpf", "socket-table")
HOLD_FLOOR = 0.25   # seconds; the resolver's p95 under a saturated 2-core box was 40-60 ms
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58


class EbpfOwners:
    """Owners from the kernel's own record of who sent and read each flow; the wrapped
    backend (`inner`) for the rest. Same interface as LinuxOwners."""

    knows_icmp = True   # the sniffer keys ICMP echoes by identifier for us

    @property
    def hold_floor(self) -> float:
        """Seconds a capture holds a pending flow at least (LiveCapture.start): the kernel
        has the answer, so a late resolver is worth waiting for."""
        return HOLD_FLOOR if self.active else 0.0

    @property
    def syn_reresolve(self) -> float:
        """Seconds after which a SYN re-asks a known flow (Attribution.status): at once
        with the programs loaded, the socket table's second otherwise."""
        return 0.0 if self.active else 1.0

    def __init__(self, inner, kernel=None, object_path: str = OBJECT):
        self.inner = inner
        # one load of the programs per process, shared with every other EbpfOwners
        self.kernel = kernel if kernel is not None else KernelUse(object_path)
        self._on_seen = None   # watch()'s listener, handed to the kernel once it runs
        self.active = False           # the programs are loaded and attached
        self.reason = "not started"   # why not, when not
        self.stats = {"ebpf": 0, "fallback": 0}
        self.boost = True
        # only a local end can be asked of the socket table (the table's own answer: one
        # netlink socket polled for address changes, not one per layer)
        diag = getattr(inner, "sockdiag", None)
        self.is_local = getattr(diag, "is_local", None) or LocalAddresses()

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        self.inner.start()
        try:
            self.kernel.start()
        except LoadError as exc:
            self.active, self.reason = False, str(exc)
            log.warning("eBPF attribution unavailable, using the socket table: %s", exc)
        else:
            self.active, self.reason = True, ""
            if self._on_seen is not None:
                self.kernel.on_seen = self._on_seen
            diag = getattr(self.inner, "sockdiag", None)
            if diag is not None and hasattr(diag, "udp_port_gen"):
                diag.udp_port_gen = self.kernel.port_generation   # UDP lists kept safely
            log.info("eBPF attribution loaded in %.0f ms", self.kernel.load_ms)

    def stop(self) -> None:
        diag = getattr(self.inner, "sockdiag", None)
        if diag is not None and hasattr(diag, "udp_port_gen"):
            diag.udp_port_gen = None
        if self.active:
            if self._on_seen is not None and self.kernel.on_seen is self._on_seen:
                self.kernel.on_seen = None   # the shared programs outlive this listener
            self.kernel.stop()
            self.active = False
            self.reason = "stopped"
        self.inner.stop()

    def watch(self, callback) -> None:
        """callback(proto, local, remote, pid, tid) for each task the kernel sees on a
        flow end, on the consumer's thread (Attribution relabels flows with it)."""
        def seen(proto, local, remote, _s):
            # the end's answer as resolve() would give it now (the sender before the
            # reader), not the event's own task: a socket one thread writes and another
            # reads keeps one label instead of flipping with every event
            best = self.kernel.owner(proto, local[0], local[1], remote[0], remote[1])
            if best is not None and not best.inferred:
                callback(proto, local, remote, best.pid, best.tid)
        self._on_seen = seen
        if self.active:
            self.kernel.on_seen = seen

    def boost_current_thread(self) -> bool:
        fn = getattr(self.inner, "boost_current_thread", None)
        return bool(self.boost and fn and fn())

    # -- questions ---------------------------------------------------------------
    def resolve(self, proto: int, src: str, sport: int, dst: str, dport: int,
                ifindex: int = 0) -> list[Owner]:
        """Owners of the local ends, the src end first (as LinuxOwners.resolve)."""
        if not self.active:
            return self._inner(proto, src, sport, dst, dport, ifindex)
        ends, wanted = self._kernel_ends(proto, src, sport, dst, dport, None)
        return self._complete(proto, src, sport, dst, dport, ifindex, ends, wanted)

    def resolve_first(self, proto: int, src: str, sport: int, dst: str, dport: int,
                      asked: float | None = None) -> tuple[list[Owner], bool]:
        """(owners, rest) for a flow's first question. With its originator seen in context
        (the src end, its thread known) the kernel's ends alone, `rest` True when a local
        end is left for the socket table (Attribution asks it as a second look); else the
        whole answer. `asked`: when (time.monotonic) the question was put, to spare a
        drain that already took its events in."""
        if not self.active:
            return self._inner(proto, src, sport, dst, dport, 0), False
        ends, wanted = self._kernel_ends(proto, src, sport, dst, dport, asked)
        if wanted and ends[0] is not None and ends[0].tid:
            found = [o for o in ends if o is not None]
            self.stats["ebpf"] += len(found)
            return found, True
        return self._complete(proto, src, sport, dst, dport, 0, ends, wanted), False

    def _complete(self, proto, src, sport, dst, dport, ifindex, ends, wanted) -> list[Owner]:
        """The kernel's ends, and the socket table's answer for those it did not see."""
        if not wanted:
            found = [o for o in ends if o is not None]
            self.stats["ebpf"] += len(found)
            return found
        # an end the kernel has not seen yet (a server that has not read; a flow older
        # than the programs): today's engine answers for that end only
        other = {o.local_is_src: o for o in self.inner.resolve(proto, src, sport, dst, dport,
                                                               ifindex, ends=wanted)}
        out = []
        for o, is_src in zip(ends, (True, False)):
            if o is None:
                o = other.get(is_src)
                self.stats["fallback"] += o is not None
            else:
                self.stats["ebpf"] += 1
            if o is not None:
                out.append(o)
        return out

    def _kernel_ends(self, proto, src, sport, dst, dport, asked):
        """([src end's Owner or None, dst end's], the ends to ask of the socket table)."""
        self.kernel.drain(asked)   # the packet asked about was sent after its event was written
        ends = []
        for lip, lport, rip, rport, is_src in ((src, sport, dst, dport, True),
                                               (dst, dport, src, sport, False)):
            seen = self.kernel.owner(proto, lip, lport, rip, rport, sender=is_src)
            ends.append(None if seen is None else Owner(seen.pid, seen.tid, 0, is_src))
        same = src == dst and sport == dport
        if same:
            ends[1] = None   # a ping of this host: one socket, one end
        wanted = () if proto not in (TCP, UDP) or (same and ends[0] is not None) else \
            tuple(is_src for o, is_src, ip in zip(ends, (True, False), (src, dst))
                  if o is None and self.is_local(ip))
        return ends, wanted

    def _inner(self, proto, src, sport, dst, dport, ifindex):
        if proto not in (TCP, UDP):
            return []   # sock_diag knows no ICMP echo ids
        return self.inner.resolve(proto, src, sport, dst, dport, ifindex)

    def snapshot(self):
        return self.inner.snapshot()

    def process(self, pid: int) -> ProcInfo | None:
        info = self.inner.process(pid)
        if info is None and self.active:
            # exited before anyone read /proc: the kernel's comm is still the right name
            comm = self.kernel.comm_of(pid)
            if comm:
                info = ProcInfo(pid, 0, comm, "", "", "", 0, [])
        return info

    def status(self) -> dict:
        return {"backend": "ebpf" if self.active else "socket-table", "reason": self.reason}


def choose_backend(setting: str = "auto", object_path: str = OBJECT):
    """The backend for `attribution_backend`: EbpfOwners around the socket table (auto,
    ebpf), or the socket table alone (socket-table, or a platform without sock_diag)."""
    inner = default_owners()
    if setting == "socket-table" or not isinstance(inner, LinuxOwners):
        return inner
    return EbpfOwners(inner, object_path=object_path)


def backend_status(backend, setting: str = "auto") -> dict:
    """{'backend': 'ebpf' | 'socket-table', 'reason': why not eBPF} of any backend."""
    if isinstance(backend, EbpfOwners):
        return backend.status()
    if setting == "socket-table":
        why = "the setting attribution_backend is socket-table"
    elif isinstance(backend, LinuxOwners):
        why = "a socket-table backend was given"
    else:
        why = "eBPF attribution needs Linux with sock_diag"
    return {"backend": "socket-table", "reason": why}


def relabel(att, proto, local, remote, pid, tid) -> None:
    """The kernel saw `pid`/`tid` on the `local` end of a flow the Attribution `att` had
    already answered for (a server that had not read yet was named through its listener;
    a pool thread took the connection over): later packets carry the task the kernel saw.
    Runs on the consumer thread (EbpfOwners.watch)."""
    entry = att.flows.get(flow_key(proto, local[0], local[1], remote[0], remote[1]))
    if entry is None or not entry[0]:
        return
    labels = entry[0]
    i = next((n for n, lab in enumerate(labels) if lab.local == local), len(labels))
    if i < len(labels) and labels[i].pid == pid and labels[i].tid == tid:
        return
    try:
        base = att.label_for_pid(pid, tid)
    except Exception as exc:  # noqa: BLE001 - the consumer thread must survive
        log.warning("relabelling a flow failed: %s", exc)
        return
    if base is not None:
        entry[0] = labels[:i] + [Label(base.process_id, pid, base.tid, base.proc, local)] \
            + labels[i + 1:]
        att.stats["relabelled"] = att.stats.get("relabelled", 0) + 1
