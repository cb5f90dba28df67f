"""DNS messages: names (with compression), the first question, A/AAAA answers, a summary.

Split out of decode.py; pure functions that never raise on hostile input (pointer loops,
over-long names and truncation end the parse).
"""

from __future__ import annotations

import socket
import struct

_u16 = struct.Struct("!H").unpack_from
_dns_hdr = struct.Struct("!HHHH").unpack_from  # id, flags, qdcount, ancount
_dns_rr = struct.Struct("!HHIH").unpack_from  # type, class, ttl, rdlength
_inet_ntop = socket.inet_ntop
_AF6 = socket.AF_INET6


def _ntop4(b):
    return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"


_DNS_TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
              28: "AAAA", 33: "SRV", 35: "NAPTR", 41: "OPT", 43: "DS", 46: "RRSIG", 47: "NSEC",
              48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 255: "ANY"}
_DNS_OPCODES = {0: "Standard query", 1: "Inverse query", 2: "Server status request",
                4: "Zone change notification", 5: "Dynamic update"}
_DNS_RCODES = {1: "Format error", 2: "Server failure", 3: "No such name", 4: "Not implemented",
               5: "Refused"}


def read_name(buf, pos):
    """Read a possibly compressed DNS name at pos -> (name, position after it) or None."""
    labels = []
    after = -1
    jumps = total = 0
    n = len(buf)
    while True:
        if pos >= n:
            return None
        ln = buf[pos]
        if ln >= 0xC0:  # compression pointer
            if pos + 1 >= n or jumps >= 32:  # a pointer loop ends here
                return None
            if after < 0:
                after = pos + 2
            jumps += 1
            pos = ((ln & 0x3F) << 8) | buf[pos + 1]
        elif ln >= 0x40:  # extended label types (RFC 6891 §5) are not used in practice
            return None
        elif ln == 0:
            name = b".".join(labels).decode("utf-8", "backslashreplace") or "<Root>"
            return name, (after if after >= 0 else pos + 1)
        else:
            total += ln + 1
            if pos + 1 + ln > n or total > 255:
                return None
            labels.append(bytes(buf[pos + 1:pos + 1 + ln]))
            pos += 1 + ln


def question_names(msg: bytes) -> list[str]:
    """The names of every question of a DNS message ([] if it does not parse)."""
    if len(msg) < 12:
        return []
    qdcount = _u16(msg, 4)[0]
    out, pos = [], 12
    for _ in range(min(qdcount, 64)):
        got = read_name(msg, pos)
        if got is None or got[1] + 4 > len(msg):
            break
        out.append(got[0])
        pos = got[1] + 4
    return out


def _question(payload):
    """(id, flags, qdcount, ancount, qname, qtype, position after the question) or None."""
    if len(payload) < 12:
        return None
    ident, flags, qd, an = _dns_hdr(payload, 0)
    if not qd:
        return ident, flags, qd, an, None, 0, 12
    got = read_name(payload, 12)
    if got is None or got[1] + 4 > len(payload):
        return None
    return ident, flags, qd, an, got[0], _u16(payload, got[1])[0], got[1] + 4


def dns_query_name(payload):
    """Name in the first question of a DNS message, or None."""
    try:
        q = _question(payload)
        return q[4] if q else None
    except Exception:
        return None


def dns_answers(payload):
    """(name, ip) pairs of the A/AAAA records in the answer section of a DNS response.

    Follows name compression (loops are cut off); returns [] for queries and for anything
    malformed.
    """
    try:
        if len(payload) < 12:
            return []
        _ident, flags, qd, an = _dns_hdr(payload, 0)
        if not flags & 0x8000:
            return []
        pos, n, out = 12, len(payload), []
        for _ in range(qd):
            got = read_name(payload, pos)
            if got is None:
                return []
            pos = got[1] + 4
        for _ in range(an):
            got = read_name(payload, pos)
            if got is None or got[1] + 10 > n:
                return []
            name, pos = got
            rtype, rclass, _ttl, rdlen = _dns_rr(payload, pos)
            pos += 10
            if pos + rdlen > n:
                return []
            if rclass & 0x7FFF == 1:  # IN; mDNS sets the top "cache flush" bit
                if rtype == 1 and rdlen == 4:
                    out.append((name, _ntop4(payload[pos:pos + 4])))
                elif rtype == 28 and rdlen == 16:
                    out.append((name, _inet_ntop(_AF6, bytes(payload[pos:pos + 16]))))
            pos += rdlen
        return out
    except Exception:
        return []


def dns_text(payload):
    """'DNS Standard query A example.com' style text, or None if it does not parse as DNS."""
    q = _question(payload)
    if q is None:
        return None
    _ident, flags, qd, an, qname, qtype, _ = q
    if not qd and not an:
        return None
    op = _DNS_OPCODES.get(flags >> 11 & 15, f"Opcode {flags >> 11 & 15}")
    parts = [f"DNS {op}{' response' if flags & 0x8000 else ''}"]
    if qname is not None:
        parts.append(f"{_DNS_TYPES.get(qtype, f'TYPE{qtype}')} {qname}")
    if flags & 0x8000:
        rcode = flags & 15
        if rcode:
            parts.append(_DNS_RCODES.get(rcode, f"rcode {rcode}"))
        for _name, ip in dns_answers(payload):
            parts.append(f"{'AAAA' if ':' in ip else 'A'} {ip}")
    return " ".join(parts)



def is_response(payload) -> list[int]:
    """[1] for a response, [0] for a query ([] when shorter than a header): dns.flags.response."""
    if len(payload) < 12:
        return []
    return [payload[2] >> 7]


def records(payload) -> list[tuple[str, int, int, int, int]]:
    """(name, type, class, rdata start, rdata length) of every resource record of the
    answer, authority and additional sections; stops where the message stops parsing."""
    out = []
    try:
        if len(payload) < 12:
            return out
        qd, an, ns, ar = struct.unpack_from("!HHHH", payload, 4)
        pos, n = 12, len(payload)
        for _ in range(qd):
            got = read_name(payload, pos)
            if got is None:
                return out
            pos = got[1] + 4
        for _ in range(min(an + ns + ar, 4096)):
            got = read_name(payload, pos)
            if got is None or got[1] + 10 > n:
                return out
            name, pos = got
            rtype, rclass, _ttl, rdlen = _dns_rr(payload, pos)
            pos += 10
            if pos + rdlen > n:
                return out
            out.append((name, rtype, rclass, pos, rdlen))
            pos += rdlen
    except Exception:  # hostile input ends the walk, never the caller
        pass
    return out


def a_records(payload) -> list[str]:
    """IPv4 addresses of every A record in any section (dns.a)."""
    return [_ntop4(payload[p:p + 4]) for _n, t, c, p, ln in records(payload)
            if t == 1 and c & 0x7FFF == 1 and ln == 4]


def resp_names(payload) -> list[str]:
    """The owner name of every resource record (dns.resp.name)."""
    return [r[0] for r in records(payload)]


def _rdata_text(payload, rtype, pos, rdlen) -> str:
    """What Wireshark's Info shows after an RR's type ("" for types it shows bare)."""
    if rtype == 1 and rdlen == 4:
        return " " + _ntop4(payload[pos:pos + 4])
    if rtype == 28 and rdlen == 16:
        return " " + _inet_ntop(_AF6, bytes(payload[pos:pos + 16]))
    if rtype in (2, 5, 6, 12):  # NS, CNAME, SOA (primary name server), PTR
        got = read_name(payload, pos)
        return " " + got[0] if got else ""
    if rtype == 15 and rdlen > 2:
        got = read_name(payload, pos + 2)
        return f" {_u16(payload, pos)[0]} {got[0]}" if got else ""
    if rtype == 33 and rdlen > 6:
        got = read_name(payload, pos + 6)
        pri, weight, port = struct.unpack_from("!HHH", payload, pos)
        return f" {pri} {weight} {port} {got[0]}" if got else ""
    return ""


def info(payload) -> str:
    """Wireshark's Info: "Standard query 0x1a2b A example.com" / "Standard query response
    0x1a2b A example.com A 1.2.3.4" (every question, then every record); "" if not DNS."""
    try:
        if len(payload) < 12:
            return ""
        ident, flags, qd = _dns_hdr(payload, 0)[:3]
        op = _DNS_OPCODES.get(flags >> 11 & 15, f"Unknown operation ({flags >> 11 & 15})")
        parts = [f"{op}{' response' if flags & 0x8000 else ''} 0x{ident:04x}"]
        if flags & 0x8000 and flags & 15:
            parts.append(_DNS_RCODES.get(flags & 15, f"Unknown error ({flags & 15})"))
        pos = 12
        for _ in range(min(qd, 64)):
            got = read_name(payload, pos)
            if got is None or got[1] + 4 > len(payload):
                return ""
            qtype = _u16(payload, got[1])[0]
            parts.append(f"{_DNS_TYPES.get(qtype, f'Unknown ({qtype})')} {got[0]}")
            pos = got[1] + 4
        for _name, rtype, _c, p, ln in records(payload):
            parts.append(_DNS_TYPES.get(rtype, f"Unknown ({rtype})")
                         + _rdata_text(payload, rtype, p, ln))
        return " ".join(parts)
    except Exception:
        return ""
