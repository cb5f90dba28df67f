"""A Recorder's batch: what its next flush writes in one transaction (capture/recorder.py)."""

from __future__ import annotations


class Batch:
    """What the next flush() writes in one transaction.

    The compiled scanner (ingest/scanner.py) appends to it directly: packed rows to `plain`,
    EPB-framed bytes to `buf`, (flow, second) counters to `flowsec`, touched connections to
    `dirty`; Recorder.add() fills `rows` (one tuple per packet), `procs`, `threads` and
    `procsec`.
    """

    __slots__ = ("rows", "plain", "buf", "dirty", "procs", "threads", "flowsec", "procsec",
                 "names", "answered")

    def __init__(self):
        self.rows: list = []              # packet rows
        self.plain = bytearray()          # packed rows (capturedb.PLAIN_FORMAT)
        self.buf = bytearray()            # the batch's packet bytes
        self.dirty: dict = {}             # conn id -> Conn changed since the last flush
        self.procs: dict = {}             # process id -> [catalog row, packets, bytes]
        self.threads: dict = {}           # (pid, tid, process id) -> packets
        self.flowsec: dict = {}           # (flow, second) -> [packets, bytes, first, last]
        self.procsec: dict = {}           # (process id, second, direction) -> [packets, bytes]
        self.names: set = set()           # (ip, kind, name): capturedb.write_batch's names
        self.answered: dict = {}          # ip -> first name a DNS answer gave (learn_dns)
