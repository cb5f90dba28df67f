"""Benchmark the search engine against tshark on a 1,000,000-packet capture.

Generates a realistic pcapng (TCP and UDP flows between a few hundred hosts, HTTP-like
requests, 1460-byte responses, DNS; every packet carries a ptcpdump process comment so
proc.name has something to find), ingests it through the product's own path
(apppaccap.ingest.ingest into a temporary data directory), then for each filter measures:

- our search to completion through the SearchEngine (compile, scan, results written to
  the catalog — what search_start does), and
- `tshark -r FILE -Y FILTER` on the same file in the same run,

checks both found the same number of packets, and prints a table. Targets: indexed
filters (ip.addr, tcp.port, proc.name, time ranges) ≤ 0.1× tshark's time; payload
`contains` ≥ 100 MB/s of packet data.

Run:  .venv/bin/python benchmarks/search.py [--packets N] [--keep DIR] [--no-tshark]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from apppaccap.context import Config  # noqa: E402
from apppaccap.context import build_context  # noqa: E402
from apppaccap.filetime import from_ns  # noqa: E402
from apppaccap.ingest import ingest  # noqa: E402
from apppaccap.search import parse_filter  # noqa: E402
from apppaccap.search.engine import engine_for  # noqa: E402
from apppaccap.search.engine import shutdown  # noqa: E402

T0 = 1_700_000_000  # capture start, seconds since the epoch (UTC)
NEEDLE = b"X-Trace-Needle: 7f3a9c"

_EPB = struct.Struct("<IIIIIII")
_ETH_IP = struct.Struct("!6s6sHBBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")


def _pcapng_header() -> bytes:
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    idb = struct.pack("<IIHHI", 1, 20, 1, 0, 0) + struct.pack("<I", 20)
    return shb + idb


def _option_comment(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<HH", 1, len(raw)) + raw + b"\0" * (-len(raw) & 3) + b"\0\0\0\0"


def _frame(src_mac, dst_mac, src, dst, proto, sport, dport, flags, seq, ack, payload):
    l4 = (_TCP.pack(sport, dport, seq, ack, 0x50, flags, 65535, 0, 0) if proto == 6 else
          _UDP.pack(sport, dport, 8 + len(payload), 0))
    total = 20 + len(l4) + len(payload)
    return _ETH_IP.pack(dst_mac, src_mac, 0x0800, 0x45, 0, total, 0, 0x4000, 64, proto, 0,
                        src, dst) + l4 + payload


def generate(path: str, packets: int, seed: int = 7) -> dict:
    """Write the benchmark pcapng; returns facts the filters are built from."""
    rng = random.Random(seed)
    noise = rng.randbytes(1 << 16)
    clients = [bytes([10, 1, i // 250, 1 + i % 250]) for i in range(240)]
    servers = [bytes([172, 16, i // 250, 1 + i % 250]) for i in range(60)]
    mac = {ip: bytes([2, 0]) + ip for ip in clients + servers}
    ports = [443] * 12 + [80] * 6 + [8080, 8443, 22, 25, 3306]  # 5432 only rarely
    procs = {}  # client ip → [(pid, comment option)]
    for i, ip in enumerate(clients):
        procs[ip] = [(1000 + i * 4 + k,
                      _option_comment(f"PID: {1000 + i * 4 + k}\nCmd: /usr/bin/app{(i + k) % 40}"
                                      f"\nArgs: app{(i + k) % 40} --worker {k}"))
                     for k in range(1 + i % 3)]
    ns_per_packet = 3_600_000_000_000 // packets  # one hour of traffic
    out = open(path, "wb", buffering=16 << 20)
    out.write(_pcapng_header())
    active: list = []
    written = needles = 0

    def new_flow():
        c, s = rng.choice(clients), rng.choice(servers)
        pid, opt = rng.choice(procs[c])
        if rng.random() < 0.8:
            port = 5432 if rng.random() < 0.01 else rng.choice(ports)
            return {"tcp": True, "c": c, "s": s, "cp": rng.randint(32768, 60999), "sp": port,
                    "left": rng.randint(6, 120), "step": 0, "opt": opt,
                    "seq": rng.getrandbits(32), "aseq": rng.getrandbits(32)}
        return {"tcp": False, "c": c, "s": s, "cp": rng.randint(32768, 60999),
                "sp": 53 if rng.random() < 0.5 else rng.randint(5000, 6000),
                "left": rng.randint(2, 10), "step": 0, "opt": opt}

    while written < packets:
        while len(active) < 200:
            active.append(new_flow())
        i = rng.randrange(len(active))
        f = active[i]
        step, f["step"] = f["step"], f["step"] + 1
        up = step % 2 == 0
        src, dst = (f["c"], f["s"]) if up else (f["s"], f["c"])
        sport, dport = (f["cp"], f["sp"]) if up else (f["sp"], f["cp"])
        if f["tcp"]:
            last = f["left"] <= 1
            if step == 0:
                flags, payload = 0x02, b""
            elif step == 1:
                flags, payload = 0x12, b""
            elif last:
                flags, payload = 0x11, b""
            elif up:
                flags = 0x18
                payload = (b"GET /item/%d HTTP/1.1\r\nHost: svc\r\n" % rng.randrange(10**6))
                if rng.random() < 0.001:
                    payload += NEEDLE + b"\r\n"
                    needles += 1
                payload += b"\r\n"
            else:
                flags = 0x10
                size = 1460 if rng.random() < 0.6 else rng.randint(1, 1460)
                off = rng.randrange(len(noise) - size)
                payload = noise[off:off + size]
            data = _frame(mac[src], mac[dst], src, dst, 6, sport, dport, flags,
                          f["seq"] if up else f["aseq"], f["aseq"] if up else f["seq"], payload)
        else:
            size = rng.randint(30, 200)
            off = rng.randrange(len(noise) - size)
            data = _frame(mac[src], mac[dst], src, dst, 17, sport, dport, 0, 0, 0,
                          noise[off:off + size])
        f["left"] -= 1
        if f["left"] <= 0:
            active.pop(i)
        ts = T0 * 1_000_000 + written * ns_per_packet // 1000  # µs ticks
        opt = f["opt"]
        pad = -len(data) & 3
        blen = 32 + len(data) + pad + len(opt)
        out.write(_EPB.pack(6, blen, 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)))
        out.write(data)
        out.write(b"\0" * pad)
        out.write(opt)
        out.write(struct.pack("<I", blen))
        written += 1
    out.close()
    return {"client": clients[17], "needles": needles, "ns_per_packet": ns_per_packet}


def dotted(ip: bytes) -> str:
    return ".".join(map(str, ip))


def local_time(ns: int) -> str:
    """A filter literal for tshark and us: both read it as local time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns // 1_000_000_000))


def run_search(ctx, text: str, capture_id: int, window=None) -> tuple[float, int]:
    """Our search to completion through the engine; (seconds, results)."""
    eng = engine_for(ctx)
    flt = parse_filter(text) if text else None
    start = time.perf_counter()
    meta = eng.start(flt, text, [capture_id], capture_id, window)
    while True:
        meta = eng.get(meta["SearchId"])
        if meta["State"] >= 3:
            break
        time.sleep(0.002)
    elapsed = time.perf_counter() - start
    assert meta["State"] == 3, meta
    return elapsed, meta["ResultCount"]


def run_tshark(path: str, text: str) -> tuple[float, int]:
    start = time.perf_counter()
    out = subprocess.run(["tshark", "-r", path, "-Y", text, "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - start, len(out.split())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--keep", help="keep the pcapng and data dir here (reused when present)")
    ap.add_argument("--no-tshark", action="store_true", help="skip the tshark comparison")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="apc-search-bench-")
    os.makedirs(work, exist_ok=True)
    pcap = os.path.join(work, "flows.pcapng")
    t = time.perf_counter()
    facts = generate(pcap, args.packets) if not os.path.exists(pcap) else None
    if facts is None:  # reused file: regenerate the facts only (same seed)
        facts = generate(os.path.join(work, "facts.tmp"), args.packets)
        os.remove(os.path.join(work, "facts.tmp"))
    print(f"generated {args.packets:,} packets, {os.path.getsize(pcap) / 1e6:.0f} MB "
          f"in {time.perf_counter() - t:.1f}s")
    ctx = build_context(Config(data_dir=os.path.join(work, "data")))
    t = time.perf_counter()
    done = ctx.catalog.read("SELECT id FROM captures WHERE source_file = ? AND state = 2", (pcap,))
    if done:
        capture_id = done[0]["id"]
    else:
        capture_id = ingest.create_capture(ctx, pcap)
        ingest.ingest(ctx, ingest.open_reader(pcap), capture_id)
        print(f"ingested in {time.perf_counter() - t:.1f}s "
              f"({args.packets / (time.perf_counter() - t):,.0f} packets/s)")

    client = dotted(facts["client"])
    t_mid = T0 * 1_000_000_000 + 1500 * 1_000_000_000
    window = f'frame.time >= "{local_time(t_mid)}" && frame.time < "{local_time(t_mid + 300e9)}"'
    cases = [  # (label, our filter, tshark filter, kind)
        ("ip.addr", f"ip.addr == {client}", None, "indexed"),
        ("tcp.port (rare)", "tcp.port == 5432", None, "indexed"),
        ("tcp.port (common)", "tcp.port == 443", None, "indexed"),
        ("proc.name", 'proc.name == "app7"', 'frame.comment contains "Cmd: /usr/bin/app7\\n"',
         "indexed"),
        ("time range 5 min", window, None, "indexed"),
        ("ip.addr && tcp.port", f"ip.addr == {client} && tcp.port in {{80, 443}}", None,
         "indexed"),
        ("contains", f'frame contains "{NEEDLE.decode()}"', None, "payload"),
        ("tcp.payload contains", f'tcp.payload contains "{NEEDLE.decode()}"', None, "payload"),
    ]
    total_bytes = ctx.catalog.one("SELECT byte_count FROM captures WHERE id = ?",
                                  (capture_id,))[0]
    rows = []
    for label, ours, theirs, kind in cases:
        run_search(ctx, ours, capture_id)  # warm the page cache and the per-capture checks
        secs, n = min((run_search(ctx, ours, capture_id) for _ in range(3)), key=lambda r: r[0])
        if args.no_tshark:
            ts_secs, ts_n = float("nan"), n
        else:
            ts_secs, ts_n = run_tshark(pcap, theirs or ours)
        ratio = secs / ts_secs if ts_secs == ts_secs else float("nan")
        mbs = total_bytes / secs / 1e6 if kind == "payload" else None
        target = (f"≥ 100 MB/s: {'PASS' if mbs >= 100 else 'FAIL'}" if mbs is not None else
                  f"≤ 0.10×: {'PASS' if ratio <= 0.1 else 'FAIL'}")
        rows.append((label, n, ts_n, secs, ts_secs, ratio, mbs, target))
    # the start_dtg/end_dtg parameters take the same path as a frame.time range
    secs, n = run_search(ctx, "", capture_id, (t_mid, t_mid + 300_000_000_000 - 1))
    rows.append(("start/end_dtg only", n, rows[4][2], secs, rows[4][4], secs / rows[4][4],
                 None, f"≤ 0.10×: {'PASS' if secs / rows[4][4] <= 0.1 else 'FAIL'}"))
    print(f"\n{args.packets:,} packets, {total_bytes / 1e6:.0f} MB of packet data "
          f"(start {from_ns(T0 * 10**9)} FILETIME)\n")
    head = ("filter", "ours", "tshark", "ours s", "tshark s", "ratio", "MB/s", "target")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, n, ts_n, secs, ts_secs, ratio, mbs, target in rows:
        same = "" if n == ts_n else " (MISMATCH)"
        print(f"| {label} | {n:,}{same} | {ts_n:,} | {secs:.3f} | {ts_secs:.1f} | "
              f"{ratio:.3f} | {'' if mbs is None else f'{mbs:,.0f}'} | {target} |")
    shutdown(ctx)
    ctx.catalog.close()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all("PASS" in r[-1] and r[1] == r[2] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
