"""Follow stream: the reassembled payload of one connection (conn_follow)."""

from __future__ import annotations

from typing import Annotated

from apppaccap.api.captures import captures
from apppaccap.api.registry import Bounds
from apppaccap.api.registry import endpoint
from apppaccap.dissect.decode import decode
from apppaccap.errors import NotFound
from apppaccap.extract.follow import Follow
from apppaccap.wire import DataType

TCP, UDP = 6, 17
MIB = 1 << 20
FOLLOW_BYTES = Bounds(1, 8 * MIB, "1 byte to 8 MiB (8388608) of payload")
_ROWS = ("SELECT p.id, p.blk, p.off, p.caplen, i.linktype AS linktype FROM packets p "
         "LEFT JOIN interfaces i ON i.id = p.iface ")
_PAGE = 2000


def _ip_end(d) -> int:
    """Where the IP datagram ends in the frame by its header's length field (0: unknown,
    e.g. a segmentation-offload frame whose IPv4 length is 0)."""
    data, at = d.data, d.l3_off
    if d.l3 == 0x0800 and at + 4 <= len(data):
        n = int.from_bytes(data[at + 2:at + 4], "big")
        return at + n if n else 0
    if d.l3 == 0x86DD and at + 6 <= len(data):
        return at + 40 + int.from_bytes(data[at + 4:at + 6], "big")
    return 0


def _packets(db, conn_id: int, where: str = "", limit: int = 0):
    """The decoded packets of the connection in capture order."""
    last, reader, cached = 0, db.block_reader(), (None, b"")
    try:
        while True:
            rows = db.read(_ROWS + f"WHERE p.conn_id = ? AND p.id > ? {where} ORDER BY p.id "
                           "LIMIT ?", (conn_id, last, limit or _PAGE))
            for r in rows:
                if cached[0] != r["blk"]:
                    cached = (r["blk"], reader.get(r["blk"]))
                data = cached[1][r["off"]:r["off"] + r["caplen"]]
                yield decode(r["linktype"] or 0, data)
            if limit or len(rows) < _PAGE:
                return
            last = rows[-1]["id"]
    finally:
        reader.close()


@endpoint(DataType.JSON)
def conn_follow(ctx, *, capture_id: int, connection_id: int,
                max_bytes: Annotated[int, FOLLOW_BYTES] = MIB) -> dict:
    """The payload of one connection, both directions in the order they were seen
    ("Follow TCP/UDP stream").

    - capture_id: the capture
    - connection_id: a ConnectionId of that capture (capture_list_conns)
    - max_bytes: at most this many payload bytes (both directions together), 1 to
      8388608; default 1048576 (1 MiB)

    The client (Dir 0) is the sender of the connection's first SYN, or of its first
    packet when the capture holds no SYN; the server is Dir 1. Returns Protocol (6 TCP,
    17 UDP), ClientIp, ClientPort, ServerIp, ServerPort, Segments, ClientBytes and
    ServerBytes (payload bytes in Segments per direction), MissingBytes (bytes lost to
    holes in the capture) and Truncated (true when payload beyond max_bytes was left
    out). Each segment is {Dir, Offset, Data}: Offset counts the bytes of that direction
    before it (holes included; bytes a packet lost to the snap length are not), Data is
    lowercase hex; consecutive data of one direction is one segment. A hole is a segment
    {Dir, Offset, Data: "", Missing: n}.

    TCP is reassembled as Wireshark's Follow TCP Stream does (`tshark -q -z
    follow,tcp,raw,N` gives the same bytes): retransmitted bytes are dropped,
    out-of-order segments wait for the hole before them, and a hole the other side
    acknowledged is reported as Missing (tshark writes "[n bytes missing in capture
    file]" there); data still waiting behind a hole nobody acknowledged is left out, as
    tshark does. When the port pair is used again (a new SYN: tshark's next stream), the
    new connection's bytes follow the old one's. UDP: every datagram's payload in order.
    """
    db = captures(ctx).db(capture_id)
    conn = db.one("SELECT proto FROM connections WHERE id = ?", (connection_id,))
    if conn is None:
        raise NotFound(f"connection_id: capture {capture_id} has no connection "
                       f"{connection_id}")
    proto = conn["proto"]
    client = None
    if proto == TCP:  # the SYN sender is the client (flags SYN without ACK)
        for d in _packets(db, connection_id, "AND p.tcp_flags & 18 = 2", limit=1):
            client = (d.src, d.sport)
    follow = Follow(max_bytes, client)
    for d in _packets(db, connection_id):
        if d.proto != proto or d.src is None or d.l4_off < 0:
            continue
        src, dst = (d.src, d.sport), (d.dst, d.dport)
        data = d.data[d.payload_off:d.payload_off + d.payload_len]
        if proto == TCP:
            if d.payload_off < d.l4_off + 20:
                continue  # TCP header not captured whole
            end = _ip_end(d)
            seglen = max(end - d.payload_off, len(data)) if end else len(data)
            follow.tcp(src, dst, d.tcp_seq, d.tcp_ack, d.tcp_flags, data, seglen)
        elif d.payload_off >= d.l4_off + 8:
            follow.udp(src, dst, data)
        if follow.truncated:
            break
    segments = []
    for chunk in follow.chunks:
        if chunk[2] is None:
            segments.append({"Dir": chunk[0], "Offset": chunk[1], "Data": "",
                             "Missing": chunk[3]})
        else:
            segments.append({"Dir": chunk[0], "Offset": chunk[1], "Data": chunk[2].hex()})
    client, server = follow.client or ("", 0), follow.server or ("", 0)
    return {"Version": 1, "CaptureId": capture_id, "ConnectionId": connection_id,
            "Protocol": proto, "ClientIp": client[0], "ClientPort": client[1],
            "ServerIp": server[0], "ServerPort": server[1], "Segments": segments,
            "ClientBytes": follow.kept[0], "ServerBytes": follow.kept[1],
            "MissingBytes": follow.gaps[0] + follow.gaps[1], "Truncated": follow.truncated}
