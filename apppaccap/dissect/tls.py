"""TLS records of one TCP segment (no reassembly): handshake types, SNI, a summary.

Only records wholly inside the segment are read, and handshake messages after a Change
Cipher Spec in the same segment are encrypted (Wireshark shows them as "Encrypted
Handshake Message" without a type). Pure functions that never raise on hostile input.
"""

from __future__ import annotations

import struct

_u16 = struct.Struct("!H").unpack_from
# TCP ports Wireshark 4 hands to TLS by default (https, smtps, ldaps, dns-over-tls,
# ftps-data/ftps, imaps, pop3s, sip-tls).
TCP_PORTS = frozenset((443, 465, 636, 853, 989, 990, 993, 995, 5061))
CCS, ALERT, HANDSHAKE, APPDATA, HEARTBEAT = 20, 21, 22, 23, 24
HANDSHAKE_NAMES = {0: "Hello Request", 1: "Client Hello", 2: "Server Hello",
                   4: "New Session Ticket", 5: "End of Early Data", 8: "Encrypted Extensions",
                   11: "Certificate", 12: "Server Key Exchange", 13: "Certificate Request",
                   14: "Server Hello Done", 15: "Certificate Verify", 16: "Client Key Exchange",
                   20: "Finished", 24: "Key Update", 254: "Message Hash"}


def records(payload) -> list[tuple[int, bytes]]:
    """(content type, body) of each complete record from the segment's start."""
    out, pos, n = [], 0, len(payload)
    while pos + 5 <= n:
        ctype, major = payload[pos], payload[pos + 1]
        if ctype not in (CCS, ALERT, HANDSHAKE, APPDATA, HEARTBEAT) or major != 3:
            break
        length = _u16(payload, pos + 3)[0]
        if pos + 5 + length > n:
            break
        out.append((ctype, bytes(payload[pos + 5:pos + 5 + length])))
        pos += 5 + length
    return out


def messages(payload) -> list[tuple[int, bytes] | None]:
    """Per record: its handshake messages as (type, body), None for an encrypted one;
    only handshake records appear, in order."""
    out, encrypted = [], False
    for ctype, body in records(payload):
        if ctype == CCS:
            encrypted = True
        if ctype != HANDSHAKE:
            continue
        msgs, pos = [], 0
        while not encrypted and pos + 4 <= len(body):
            htype, length = body[pos], int.from_bytes(body[pos + 1:pos + 4], "big")
            if htype not in HANDSHAKE_NAMES or pos + 4 + length > len(body):
                msgs = []
                break
            msgs.append((htype, body[pos + 4:pos + 4 + length]))
            pos += 4 + length
        out.append(msgs or None)
    return out


def handshake_types(payload) -> list[int]:
    return [t for msgs in messages(payload) if msgs for t, _ in msgs]


def server_names(payload) -> list[str]:
    """The SNI host names of every Client Hello in the segment."""
    out = []
    for msgs in messages(payload):
        for htype, body in msgs or ():
            if htype == 1:
                out.extend(_sni(body))
    return out


def _sni(hello: bytes) -> list[str]:
    try:
        pos = 34  # version, random
        pos += 1 + hello[pos]                       # session id
        pos += 2 + _u16(hello, pos)[0]              # cipher suites
        pos += 1 + hello[pos]                       # compression methods
        end = min(len(hello), pos + 2 + _u16(hello, pos)[0])
        pos += 2
        while pos + 4 <= end:
            etype, elen = _u16(hello, pos)[0], _u16(hello, pos + 2)[0]
            if etype == 0:
                names, p, stop = [], pos + 6, min(end, pos + 4 + elen)
                while p + 3 <= stop:
                    ntype, nlen = hello[p], _u16(hello, p + 1)[0]
                    if ntype == 0:
                        names.append(hello[p + 3:p + 3 + nlen].decode("utf-8", "replace"))
                    p += 3 + nlen
                return names
            pos += 4 + elen
    except (IndexError, struct.error):
        pass
    return []


def info(payload) -> str:
    """Wireshark's Info for the complete records of a segment ("" when none):
    "Client Hello (SNI=example.com)", "Server Hello, Certificate, Server Hello Done"."""
    parts, encrypted = [], False
    for ctype, body in records(payload):
        if ctype == CCS:
            encrypted = True
            parts.append("Change Cipher Spec")
        elif ctype == ALERT:
            parts.append("Encrypted Alert" if encrypted or len(body) != 2 else "Alert")
        elif ctype == APPDATA:
            parts.append("Application Data")
        elif ctype == HEARTBEAT:
            parts.append("Heartbeat")
        else:
            parts.extend(_handshake_text(body, encrypted))
    return ", ".join(parts)


def _handshake_text(body: bytes, encrypted: bool) -> list[str]:
    msgs = [] if encrypted else (messages(bytes([HANDSHAKE, 3, 3]) + len(body).to_bytes(2, "big")
                                          + body)[0] or [])
    if not msgs:
        return ["Encrypted Handshake Message"]
    out = []
    for htype, mbody in msgs:
        name = HANDSHAKE_NAMES[htype]
        if htype == 1:
            sni = _sni(mbody)
            if sni:
                name += f" (SNI={sni[0]})"
        out.append(name)
    return out
