"""One adapter's packets → per-flow counters, with as little work per packet as possible.

The callback reads the link, IP and port headers by hand (no full dissection: the usage
recorder runs all the time), counts the packet's wire length (link header + the IP total
length, so a cut packet still counts whole) under the raw 5-tuple, and asks attribution
about a flow the first time it is seen in a tick and on every TCP SYN. A flow still being
labelled (usage/applabel.py: its first packets only) also hands its packet to nDPI.

That callback runs in Python for every packet, holding the GIL the web server needs (at
20,000 packets/s a Python call per packet in the service). Where the compiled module
(usage/_usagecount.c, built by setup.py) is there, the handle is its own and all of this
is done in C with the GIL released; Python is called only for a flow's first sighting in a
tick, a TCP SYN and the packets nDPI still wants. The Python callback below is the
reference (tests/test_usage_counting.py counts the same packets both ways) and the path
where the module is missing.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time

try:
    from apppaccap.usage._usagecount import open_live
    from apppaccap.usage._usagecount import open_offline
except ImportError:  # no compiler or libpcap headers at install time (Windows): Python path
    open_live = open_offline = None
COMPILED = open_live is not None

log = logging.getLogger(__name__)

# Enough for a whole Ethernet frame (VLAN tag included): nDPI needs the first packets'
# payload (an HTTP request's Host, a TLS ClientHello's SNI). Was 128 before usage flows
# were labelled; packets are stored in the kernel ring by their captured size, so only
# large packets take more of the buffer (benchmarks/usage.py, README).
SNAPLEN = 1522
BUFFER_BYTES = 16 << 20  # per adapter (was 32 MiB): drops, benchmarks/usage.py and README
_AF4, _AF6 = socket.AF_INET, socket.AF_INET6
# linktype → offset of the ethertype (None: the frame is IP itself), link header length
LINKS = {1: (12, 14), 113: (14, 16), 276: (0, 20), 12: (None, 0), 101: (None, 0),
         228: (None, 0), 229: (None, 0)}


def open_usage_handle(adapter: str, python: bool = False):
    """A nonblocking handle on `adapter`: the compiled module's, or pypcap's (`python`, or
    without the module)."""
    if COMPILED and not python:
        return open_live(adapter, SNAPLEN, BUFFER_BYTES, 50)
    import pcap  # lazily: only capturing needs libpcap loaded
    h = pcap.pcap(name=adapter, snaplen=SNAPLEN, promisc=False, immediate=False,
                  timestamp_in_ns=True, buffer_size=BUFFER_BYTES, timeout_ms=50)
    h.setnonblock(True)
    return h


def open_usage_file(path: str, python: bool = False):
    """A capture file read as an adapter would be (tests: both paths on the same packets)."""
    if COMPILED and not python:
        return open_offline(path)
    import pcap
    return pcap.pcap(name=path, timestamp_in_ns=True)


def ip_text(raw: bytes) -> str:
    return socket.inet_ntop(_AF4 if len(raw) == 4 else _AF6, raw)


class Counter:
    """Reads one handle; `take()` hands over the counters since the last take."""

    def __init__(self, handle, name: str, on_flow, labeller=None):
        self.handle = handle
        self.name = name
        self.on_flow = on_flow  # (key5, syn) → asks attribution; never blocks
        self.labeller = labeller  # usage/applabel.py FlowLabeller (None: labels off)
        self.linktype = handle.datalink()
        # raw (proto, src, sport, dst, dport) → [packets, bytes, key5, nDPI state or None]
        self.counts: dict = {}
        self.lock = threading.Lock()
        # the compiled handle counts in C (its own table and lock)
        self.compiled = hasattr(handle, "count")
        self._dispatch = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"usage:{name}", daemon=True)

    def start(self):
        self._thread.start()

    def take(self) -> dict:
        """raw (proto, src, sport, dst, dport) → [packets, bytes, key5, nDPI state or None]
        since the last take."""
        if self.compiled:
            return self.handle.take()
        with self.lock:
            counts, self.counts = self.counts, {}
        return counts

    def read(self) -> bool:
        """Count what the handle has now (the reading thread's step; a capture file: all of
        it). False when the link type is not counted."""
        if self._dispatch is None:
            if LINKS.get(self.linktype) is None:
                return False
            self._dispatch = self._compiled() if self.compiled else self._callback()
        self._dispatch()
        return True

    def _compiled(self):
        on_flow = self.on_flow
        labeller = self.labeller
        begin = labeller.begin if labeller is not None else None

        def on_new(key5, syn, ts):
            # the order of on_packet below: nDPI's state first, then attribution's ask
            st = begin(key5, ts) if begin is not None else None
            on_flow(key5, syn)
            return st
        feed = labeller.feed if labeller is not None else None
        count = self.handle.count
        return lambda: count(on_new, on_flow, feed)

    def _callback(self):
        type_at, hdr = LINKS[self.linktype]
        on_flow = self.on_flow
        frm = int.from_bytes
        labeller = self.labeller
        begin = labeller.begin if labeller is not None else None
        feed = labeller.feed if labeller is not None else None

        def on_packet(ts, pkt):
            if type_at is None:
                off = hdr
                version = pkt[0] >> 4 if len(pkt) > 0 else 0
            else:
                etype = frm(pkt[type_at:type_at + 2], "big")
                off = hdr
                if etype == 0x8100 and type_at == 12:
                    etype = frm(pkt[16:18], "big")
                    off += 4
                version = 4 if etype == 0x0800 else 6 if etype == 0x86DD else 0
            if version == 4:
                if len(pkt) < off + 20:
                    return
                ihl = (pkt[off] & 15) * 4
                proto = pkt[off + 9]
                length = off + frm(pkt[off + 2:off + 4], "big")
                src, dst = pkt[off + 12:off + 16], pkt[off + 16:off + 20]
                frag = frm(pkt[off + 6:off + 8], "big") & 0x1FFF
                l4 = off + ihl
            elif version == 6:
                if len(pkt) < off + 40:
                    return
                proto = pkt[off + 6]
                length = off + 40 + frm(pkt[off + 4:off + 6], "big")
                src, dst = pkt[off + 8:off + 24], pkt[off + 24:off + 40]
                frag = 0
                l4 = off + 40
            else:
                return
            syn = False
            if (proto == 6 or proto == 17) and not frag and len(pkt) >= l4 + 4:
                sport = frm(pkt[l4:l4 + 2], "big")
                dport = frm(pkt[l4 + 2:l4 + 4], "big")
                if proto == 6 and len(pkt) > l4 + 13:
                    syn = pkt[l4 + 13] & 0x12 == 0x02
            else:
                sport = dport = 0
            raw = (proto, src, sport, dst, dport)
            acc = counts.get(raw)
            if acc is None:
                key5 = (proto, ip_text(src), sport, ip_text(dst), dport)
                st = begin(key5, ts) if begin is not None and (sport or dport) else None
                counts[raw] = acc = [1, length, key5, st]
                if sport or dport:
                    on_flow(key5, syn)
            else:
                acc[0] += 1
                acc[1] += length
                if syn:
                    on_flow(acc[2], True)
            if acc[3] is not None:
                feed(acc[3], pkt, off, l4, length, proto, ts)

        # the dict the callback fills is rebound by take(): read it through a cell
        counts = None

        def dispatch():
            nonlocal counts
            with self.lock:
                counts = self.counts
                return self.handle.dispatch(-1, on_packet)
        return dispatch

    def _run(self):
        try:
            self._loop()
        finally:
            if self.labeller is not None:
                self.labeller.close()  # nDPI's module belongs to this thread
            # closed by this thread only: closing a handle another thread is inside
            # dispatch() on crashed the process (seen under load, a join timing out)
            close_handle(self.handle)

    def _loop(self):
        if LINKS.get(self.linktype) is None:
            log.info("usage: adapter %s has link type %d, not counted", self.name,
                     self.linktype)
            return
        fd = self.handle.fileno()
        read = self.read
        sweep = self.labeller.sweep if self.labeller is not None else None
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if sweep is not None:
                sweep(time.time_ns())
            if ready:
                try:
                    read()
                except OSError:
                    if self._stop.is_set():
                        break
                    log.exception("usage: adapter %s: reading failed", self.name)
                    self._stop.wait(1.0)
                except Exception:  # noqa: BLE001 - one bad packet must not stop counting
                    log.exception("usage: adapter %s: packet handling failed", self.name)

    def drops(self) -> int:
        try:
            _received, dropped, if_dropped = self.handle.stats()
            return (dropped + if_dropped) // (2 if self.name == "lo" else 1)
        except OSError:
            return 0

    def stop(self):
        self._stop.set()
        if self._thread.ident is None:
            close_handle(self.handle)  # never started
        else:
            self._thread.join(5)


def close_handle(handle) -> None:
    try:
        handle.close()
    except OSError:
        pass


def dispatch_until(handle, on_packet, stop, what: str) -> None:
    """Hand every packet of `handle` to on_packet until `stop` is set, then close it (on
    the reading thread: closing a handle another thread is inside dispatch() crashed
    libpcap). A frame on_packet does not understand is skipped (logged as `what`)."""
    fd = handle.fileno()
    try:
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            try:
                handle.dispatch(-1, on_packet)
            except OSError:
                if stop.is_set():
                    break
                stop.wait(1.0)
            except Exception:  # noqa: BLE001 - one odd frame must not stop the reader
                log.debug("usage: %s was not understood", what, exc_info=True)
    finally:
        close_handle(handle)


class HandleReaders:
    """One reading thread per adapter's handle (the DNS and SYN watchers): `watch` opens
    what it can (a handle that cannot be opened is logged, counting goes on), `stop` ends
    the threads, each of which closes its own handle (dispatch_until)."""

    opener = None       # adapter name → pcap handle
    thread_name = ""    # e.g. "usage-dns": the thread is "<thread_name>:<adapter>"
    missing = ""        # what the log says is not read when a handle cannot be opened

    def __init__(self):
        self._readers: list = []

    def watch(self, adapters) -> None:
        for name in adapters:
            try:
                h = self.opener(name)
            except Exception as exc:  # noqa: BLE001 - a bonus: counting goes on without it
                log.info("usage: %s on %s not read (%s)", self.missing, name, exc)
                continue
            stop = threading.Event()
            t = threading.Thread(target=self._run, args=(h, stop), daemon=True,
                                 name=f"{self.thread_name}:{name}")
            self._readers.append((h, t, stop))
            t.start()

    def _run(self, handle, stop) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for _h, _t, stop in self._readers:
            stop.set()
        for _h, t, _stop in self._readers:
            t.join(5)  # each reader closes its own handle (dispatch_until)
        self._readers.clear()
