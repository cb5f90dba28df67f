"""A capture's sniffer process (capture/sniffchild.py) and the thread that feeds what it
sends into the capture's bounded queue; open_handle() is what the process opens.

pypcap facts (docs/DECISIONS.md: pypcap and libpcap on Linux): dispatch()
holds the GIL while it waits, so we use a non-blocking handle + select() on its fd and
dispatch(-1) only when readable; that also stops cleanly. On lo the kernel counts every
packet twice in stats().

Not immediate mode: libpcap 1.10 on Linux implements immediate mode with
TPACKET_V2 fixed-size frames of `snaplen` bytes, so a 32 MiB ring at snaplen
256 KiB holds only 128 packets and a burst of 2,000 loopback datagrams lost 87 %
(measured). TPACKET_V3 with a 5 ms block timeout (BLOCK_MS) packs packets by their real
size and still delivers them within ~5 ms.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import struct
import subprocess
import sys
import threading

from apppaccap.capture.bpf import filter_text
from apppaccap.capture.bpf import set_filter
from apppaccap.dissect.decode import decode
from apppaccap.dissect.decoded import Decoded
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.lifeline import spawn

try:
    from apppaccap.capture._frames import items as compiled_items
except ImportError:  # no compiler at install time: every packet through _item
    compiled_items = None

SNAPLEN = 262144
# The ring's block timeout. The 32 MiB ring is 128 blocks of 256 KiB (libpcap's TPACKET_V3
# block for snaplen 256 KiB); a block is handed over when full or after this long, so at
# modest rates the ring holds ~128 x BLOCK_MS of traffic. At 1 ms a sniffer process kept
# off the CPU for >128 ms (load average 18-28 on 2 cores) lost packets in 2 of 4 rounds,
# at 5 ms in none; owners are asked for 5 ms later at most (the fast path and eBPF see
# flow starts by themselves).
BLOCK_MS = 5
ECHO = {1: (0, 8), 58: (128, 129)}  # ICMP / ICMPv6 echo reply and request types
log = logging.getLogger(__name__)
F_SETPIPE_SZ = 1031  # fcntl: a 1 MiB pipe (the kernel's default maximum) = fewer wake-ups
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ERRORS = {"NotFound": NotFound, "Malformed": Malformed}
# The sniffer process's frames (capture/sniffchild.py): u32 length of what follows, u8 kind
FRAME = struct.Struct("<IB")
PACKET = struct.Struct("<QHI")  # before each packet's bytes: ts_ns, adapter index, length
BATCH = 1000  # packets per item of the capture's queue (at most)


def frame(kind: bytes, payload: bytes) -> bytes:
    return FRAME.pack(len(payload) + 1, kind[0]) + payload


def open_handle(adapter: str, bpf: str):
    """Open a live handle with the BPF filter compiled by libpcap (errors → Malformed)."""
    import pcap  # lazily, as in adapters.py: only capturing needs libpcap loaded
    bpf = filter_text(bpf)  # before any handle exists: nothing to clean up on refusal
    if adapter not in pcap.findalldevs():
        # pcap.pcap(name=X) would otherwise try X as a capture *file*.
        raise NotFound(f"adapter: no capture device {adapter!r}")
    try:
        h = pcap.pcap(name=adapter, snaplen=SNAPLEN, promisc=False, immediate=False,
                      timestamp_in_ns=True, buffer_size=32 << 20, timeout_ms=BLOCK_MS)
    except OSError as exc:
        raise NotFound(f"adapter: cannot open {adapter!r}: {exc}") from None
    if bpf:
        try:
            set_filter(h, bpf)  # checks the text first: see capture/bpf.py (double free)
        except Malformed:
            h.close()
            raise
    h.setnonblock(True)
    return h


class Adapter:
    """One adapter of a capture, as the sniffer process opened it."""

    def __init__(self, iface: int, name: str, linktype: int):
        self.iface, self.name, self.linktype = iface, name, linktype


class SnifferProcess:
    """The sniffer process of one capture and its feeding thread.

    Opening the adapters happens in the process, before start() returns (so its errors are
    the caller's: NotFound, Malformed). The thread puts lists of up to BATCH (ts_ns,
    iface_index, bytes, decoded, flow key, what on_flow returned for it) into `out`: the
    5-tuple is decoded here and a new flow's owner is asked for at once (`on_flow`,
    non-blocking): every millisecond counts against a process that lives for five.
    """

    def __init__(self, adapters: list[str], bpf: str):
        filter_text(bpf)  # Malformed before any process exists
        self.proc = spawn([sys.executable, "-m", "apppaccap.capture.sniffchild"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
        # what to open goes through stdin, not argv: a request's names may be too long
        # for an argument list (E2BIG)
        try:
            self.proc.stdin.write(json.dumps({"adapters": adapters, "bpf": bpf}).encode()
                                  + b"\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # it ended already: reported below as no answer
        try:
            import fcntl
            fcntl.fcntl(self.proc.stdout.fileno(), F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass  # a smaller pipe only means more wake-ups
        self._thread = None
        self._in = os.fdopen(os.dup(self.proc.stdout.fileno()), "rb", buffering=1 << 20)
        self.proc.stdout.close()
        kind, hello = self._frame()
        info = json.loads(hello) if kind == b"H" else {"error": "OSError",
                                                       "message": "no answer"}
        if "error" in info:
            self.close()
            raise ERRORS.get(info["error"], NotFound)(
                info["message"] if info["error"] in ERRORS
                else f"adapter: cannot capture ({info['message']})")
        self.adapters = [Adapter(i, n, lt) for i, (n, lt) in enumerate(info["adapters"])]
        self.drops, self.child_overflow = [0] * len(self.adapters), 0
        self.on_lost = None  # told a message when the process ended on its own
        self.fed = 0  # packets put into the capture's queue so far
        self.unread = 0  # packets of frames the feeding thread could not read (dropped)
        self._stopping = False

    def _frame(self) -> tuple[bytes, bytes]:
        head = self._in.read(FRAME.size)
        if len(head) < FRAME.size:
            return b"", b""
        size, kind = FRAME.unpack(head)
        return bytes([kind]), self._in.read(size - 1)

    def start(self, out: queue.Queue, on_flow=None, icmp: bool = False) -> None:
        """Feed `out`; ICMP echoes are flows too (keyed by their identifier, as the eBPF
        backend reports them), only asked for when the backend can answer them."""
        self._thread = threading.Thread(target=self._run, args=(out, on_flow, icmp),
                                        name=f"sniffer:{self.proc.pid}", daemon=True)
        self._thread.start()

    def _run(self, out, on_flow, icmp) -> None:
        put = out.put
        linktypes = [a.linktype for a in self.adapters]
        while True:
            kind, payload = self._frame()
            if kind == b"S":
                stats = json.loads(payload)
                self.drops, self.child_overflow = stats["drops"], stats["overflow"]
                continue
            if kind != b"P":
                break
            try:
                batch = frame_items(payload, linktypes, on_flow, icmp)
            except Exception:  # noqa: BLE001 - memory ran out: this frame is lost, not the capture
                lost = frame_packets(payload)
                self.unread += lost
                log.exception("sniffer: a frame of %d packets could not be read (dropped)", lost)
                continue
            # One queue item per BATCH packets, not per packet: a put costs a lock and a
            # wake-up of the pipeline thread, which under API load was a quarter of the
            # time the service's GIL was held (py-spy --gil, docs/INTERNALS.md).
            # Waiting here for a full queue is safe: the kernel ring is drained by the
            # process, whose buffer (256 MiB) takes the wait and counts its overflow.
            for at in range(0, len(batch), BATCH):
                part = batch[at:at + BATCH] if len(batch) > BATCH else batch
                self.fed += len(part)
                put(part)
        if not self._stopping:
            code = self.proc.wait()
            message = f"the sniffer process ended unexpectedly (exit status {code})"
            log.error("%s", message)
            if self.on_lost is not None:
                self.on_lost(message)

    def dropped(self) -> int:
        """libpcap's drops, the process's buffer overflow and the packets of frames that
        could not be read (cumulative)."""
        return sum(self.drops) + self.child_overflow + self.unread

    def stop(self) -> None:
        """The process reads what the kernel holds, sends it and ends; we read it all."""
        self._stopping = True
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(60)
        else:  # never started: what it sends at the end is read and let go
            while self._frame()[0]:
                pass
        self.close()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def close(self) -> None:
        """End the process (after stop(): it has ended already)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()  # its "stop"
        self._in.close()  # unread frames: its writes fail and it ends
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def frame_items(payload: bytes, linktypes: list, on_flow, icmp: bool) -> list:
    """The queue items of one frame of packets (see _item). The common packet is decoded
    in C (capture/_frames.c: 0.7 us a packet against 2.1, the interpreter lock held); what it leaves
    goes through _item, which python_items runs for every packet without the extension."""
    refs: dict = {}  # the flow's entry, asked once per flow and frame (see _item)

    def one(ts, iface, data):
        try:
            return _item(ts, iface, data, linktypes[iface], on_flow, icmp, refs)
        except Exception as exc:  # noqa: BLE001 - one bad packet must not stop the sniffer
            return failed(exc)
    if compiled_items is None:
        return python_items(payload, one)
    return compiled_items(payload, linktypes, Decoded, on_flow, refs, one, failed)


def failed(exc: Exception) -> None:
    """A packet whose item could not be made (attribution raised): logged, left out."""
    log.error("sniffer: packet handling failed", exc_info=exc)


def python_items(payload: bytes, one) -> list:
    """frame_items without the extension: `one(ts, iface, data)` for each packet (None:
    left out); a trailing header cut short ends the frame, as in C."""
    unpack, size = PACKET.unpack_from, PACKET.size
    items = []
    off, end = 0, len(payload)
    while end - off >= size:
        ts, iface, n = unpack(payload, off)
        off += size
        item = one(ts, iface, payload[off:off + n])
        off += n
        if item is not None:
            items.append(item)
    return items


def frame_packets(payload: bytes) -> int:
    """How many packets a frame holds (its headers walked, as python_items walks them)."""
    n = off = 0
    while len(payload) - off >= PACKET.size:
        off += PACKET.size + PACKET.unpack_from(payload, off)[2]
        n += 1
    return n


def _item(ts, iface, data, linktype, on_flow, icmp, refs) -> tuple:
    """(ts_ns, iface, bytes, decoded, flow key, the flow's entry). `refs` keeps the entries
    asked for in this frame: on_flow (Attribution.entry) is asked once per flow and frame
    (a frame is at most a few ms of traffic) and again on a client's SYN, which may start a
    new connection on a reused tuple: the packets after it keep the new entry."""
    d = decode(linktype, data)
    key = ref = None
    # (an IPv4 header cut at 16-19 bytes has a source and no destination: no flow to ask
    # about; asked, attribution's flow_key raised and the packet was logged and left out)
    if (d.proto == 6 or d.proto == 17) and d.src is not None and d.dst is not None \
            and not d.fragment:
        key = (d.proto, d.src, d.sport, d.dst, d.dport)
        if on_flow is not None:
            syn = d.proto == 6 and d.tcp_flags & 0x12 == 0x02
            ref = None if syn else refs.get(key)
            if ref is None:
                ref = refs[key] = on_flow(key, syn)
    elif icmp and d.icmp_type in ECHO.get(d.proto, ()) and d.src is not None \
            and d.dst is not None and 0 < d.l4_off <= len(data) - 8 and not d.fragment:
        ident = data[d.l4_off + 4] << 8 | data[d.l4_off + 5]
        key = (d.proto, d.src, ident, d.dst, ident)
        if on_flow is not None:
            ref = refs.get(key)
            if ref is None:
                ref = refs[key] = on_flow(key, False)
    return (ts, iface, data, d, key, ref)
