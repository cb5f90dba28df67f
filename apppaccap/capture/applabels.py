"""Application labels of connections (AppProtocol, App, Category) from nDPI.

The Recorder hands each connection's packets here until its label is known: nDPI sees
the first packets of a flow only - until it has detected the protocol and has nothing
more to learn (TLS certificates, DNS answers), or MAX_PACKETS were fed (nfstream's
n_dissections default); pure TCP ACKs teach it nothing and are neither fed nor counted.
A flow that ends (a TCP flow CLOSED or RESET: the Recorder and the compiled scanner settle
it at that packet, so nDPI's memory comes back at once), idles out or reaches the cap
undetected gets nDPI's give-up answer (a guess from ports and addresses, what ndpiReader
prints at the end of a file).

`conn.app` is (AppProtocol, App, Category) once known; "Unknown" when nDPI cannot tell;
None while pending or when labelling is off (no nDPI: the columns stay NULL).

The compiled ingest scanner (ingest/_pcapscan.c) and the live recorder (capture/_record.c)
feed the same flows directly: a pending flow's state lives in a bytearray of layout STATE
that both sides read and write, and `c_args()` / `c_feed` give them nDPI's function
addresses. The live recorder puts a connection whose label a packet settled on `settled`;
its caller names them (complete_settled) before anything else reads the batch.
"""

from __future__ import annotations

import ctypes
import struct

from apppaccap.dissect import ndpi
from apppaccap.store.capturedb import NAME_AGENT
from apppaccap.store.capturedb import NAME_DOMAIN

MAX_PACKETS = 10        # packets of one flow nDPI sees at most (pure ACKs not counted)
MAX_PENDING = 100_000   # flows in detection at once (688 bytes of nDPI state each in 4.2);
# beyond, a new flow is labelled Unknown at once (the recorder keeps <= 100,000 flows anyway)
# DpiState in _pcapscan.c: nDPI flow address, packets fed, master, app, category, done
STATE = struct.Struct("=QIHHiI")
_TCP, _SYN_FIN_RST = 6, 0x07
_NAMED = ("HTTP", "TLS", "QUIC")  # AppProtocols whose flows name their server
_NAME_MAX = 255


def _learn(names: set, conn, info: dict) -> None:
    """TLS SNI / HTTP Host name the server; the user agent belongs to the client. Which end
    is which: the server's port is the lower one (nDPI's JSON does not say)."""
    a, b = conn.local, conn.remote
    client, server = (a[0], b[0]) if a[1] >= b[1] else (b[0], a[0])
    http, tls = info.get("http") or {}, info.get("tls") or info.get("quic") or {}
    host = http.get("hostname") or tls.get("client_requested_server_name")
    if isinstance(host, str) and host:
        names.add((server, NAME_DOMAIN, host[:_NAME_MAX]))
    agent = http.get("user_agent")
    if isinstance(agent, str) and agent:
        names.add((client, NAME_AGENT, agent[:_NAME_MAX * 4]))


class AppLabeller:
    """Per capture (or ingest): one nDPI module and the flows it is still looking at."""

    def __init__(self, detector: ndpi.Detector):
        self.det = detector
        self.pending: dict = {}   # conn id -> (conn, state bytearray)
        self.settled: list = []   # conns whose label capture/_record.c settled, not named
        # what capture/_record.c reads to feed nDPI itself (None once closed)
        self.c_feed = (*self.c_args(), self.pending, self.settled)

    @classmethod
    def open(cls, library: str | None = None) -> AppLabeller | None:
        det = ndpi.open_detector(library)
        return cls(det) if det is not None else None

    def c_args(self) -> tuple:
        """(module, process, extra_possible, cap) for the compiled scanner."""
        lib = self.det.lib
        addr = ctypes.cast
        return (self.det.mod, addr(lib.ndpi_detection_process_packet, ctypes.c_void_p).value,
                addr(lib.ndpi_extra_dissection_possible, ctypes.c_void_p).value, MAX_PACKETS)

    def c_open_args(self) -> tuple:
        """(ndpi_flow_malloc, flow size, pending, MAX_PENDING): the compiled scanner opens
        a new flow's state itself as open_state does (below the bound)."""
        return (ctypes.cast(self.det.lib.ndpi_flow_malloc, ctypes.c_void_p).value,
                self.det.flow_size, self.pending, MAX_PENDING)

    def c_settle_args(self) -> tuple:
        """(names, module, ndpi_detection_giveup, ndpi_free_flow, protocols whose names
        nDPI read complete() adds, names' memo): the compiled scanner settles a flow nDPI
        did not detect, or detected as another protocol, as complete() does."""
        lib, addr = self.det.lib, ctypes.cast
        return (self.det.names, self.det.mod,
                addr(lib.ndpi_detection_giveup, ctypes.c_void_p).value,
                addr(lib.ndpi_free_flow, ctypes.c_void_p).value, _NAMED, self.det.names_memo)

    def state(self, conn):
        """The shared state of a pending connection (None once labelled)."""
        p = self.pending.get(conn.id)
        return p[1] if p is not None else None

    def open_state(self, conn):
        """Start looking at a new connection: its shared state (None when too many flows
        are pending: the connection is labelled Unknown at once). The compiled scanner
        calls this for the flows it creates."""
        if len(self.pending) >= MAX_PENDING:
            conn.app = (ndpi.UNKNOWN, "", "")
            return None
        st = bytearray(STATE.size)
        STATE.pack_into(st, 0, self.det.new_flow(), 0, 0, 0, 0, 0)
        self.pending[conn.id] = (conn, st)
        return st

    def feed(self, conn, d, data, ts: int, batch=None) -> None:
        """One packet of `conn` (whose label is still None); names learned go to `batch`
        (the Recorder's Batch)."""
        p = self.pending.get(conn.id)
        st = p[1] if p is not None else self.open_state(conn)
        if st is None:
            return
        flow, fed, master, app, cat, done = STATE.unpack(st)
        l3 = d.l3_off
        if done:  # settled by the compiled scanner, not yet named: as if named then
            self.complete(conn, batch)
            return
        if l3 < 0:
            done = 1
        elif d.proto == _TCP and not d.payload_len and not d.tcp_flags & _SYN_FIN_RST:
            return  # a pure ACK
        else:
            m, a, c, more = self.det.process(flow, bytes(data[l3:]), ts // 1_000_000)
            fed += 1
            if m or a:
                master, app, cat, done = m, a, c, int(not more)
            done = done or fed >= MAX_PACKETS
        STATE.pack_into(st, 0, flow, fed, master, app, cat, done)
        if done:
            self.complete(conn, batch)

    def complete(self, conn, batch=None) -> None:
        """Settle a pending connection's label: what nDPI detected, else its give-up guess;
        frees nDPI's flow (the state says done, so the scanner stops feeding it). With
        `batch`, the connection is marked to be written and the names nDPI read (TLS SNI,
        HTTP Host and user agent) are added to it."""
        _conn, st = self.pending.pop(conn.id)
        flow, fed, master, app, cat, _done = STATE.unpack(st)
        detected = bool(master or app)
        verdict = (master, app, cat) if detected else self.det.giveup(flow)
        conn.app = self.det.names(*verdict)
        if batch is not None:
            batch.dirty[conn.id] = conn
            # names only where nDPI dissected the flow (a give-up guess read nothing)
            if detected and conn.app[0] in _NAMED:
                _learn(batch.names, conn, self.det.details(flow, *verdict))
        self.det.free_flow(flow)
        STATE.pack_into(st, 0, 0, fed, master, app, cat, 1)

    def complete_settled(self, batch) -> None:
        """Name the connections the compiled recorder settled (see complete())."""
        todo, self.settled[:] = list(self.settled), []
        for conn in todo:
            if conn.id in self.pending:
                self.complete(conn, batch)

    def settle(self, conns=None, batch=None) -> None:
        """Give up on pending flows (all, or those of `conns`: ending or evicted ones) and
        mark their connections in `batch` so the label is written."""
        todo = [p[0] for p in self.pending.values()] if conns is None else \
            [c for c in conns if c.id in self.pending]
        for conn in todo:
            self.complete(conn, batch)

    def close(self) -> None:
        self.c_feed = None
        self.settled.clear()
        for _conn, st in self.pending.values():
            self.det.free_flow(STATE.unpack_from(st)[0])
            STATE.pack_into(st, 0, 0, 0, 0, 0, 0, 1)
        self.pending.clear()
        self.det.close()
