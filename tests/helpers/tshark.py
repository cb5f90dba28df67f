"""tshark, the oracle most tests compare with: fields of every packet, the frame numbers a
display filter matches, the objects it exports."""

from __future__ import annotations

import collections
import hashlib
import os
import shutil
import subprocess

import pytest

needs_tshark = pytest.mark.skipif(not shutil.which("tshark"), reason="tshark not installed")
# What a capture reader must agree with tshark on, packet by packet.
FRAME_FIELDS = ("frame.time_epoch", "frame.len", "frame.cap_len", "frame.md5_hash",
                "frame.encap_type", "frame.comment")


def run(path, *args, damaged_ok: bool = False) -> str:
    """`tshark -r PATH ARGS…`'s output. It must read the whole file cleanly unless
    `damaged_ok` (a cut or corrupt file: tshark still prints what it read)."""
    proc = subprocess.run(["tshark", "-r", str(path), *args], capture_output=True, text=True,
                          timeout=300)
    assert damaged_ok or (proc.returncode == 0 and "appears to be" not in proc.stderr), \
        (args, proc.stderr[-500:])
    return proc.stdout


def fields(path, *names, display_filter: str | None = None, md5: bool = False,
           options=(), damaged_ok: bool = False) -> list[list[str]]:
    """One row per packet (that `display_filter` matches): the values of `names`.
    `md5` adds frame.md5_hash."""
    args = list(options)
    if md5:
        args += ["-o", "frame.generate_md5_hash:TRUE"]
    if display_filter is not None:
        args += ["-Y", display_filter]
    args += ["-T", "fields"] + [a for name in names for a in ("-e", name)]
    return [line.split("\t") for line in run(path, *args, damaged_ok=damaged_ok).splitlines()]


def packets(path, damaged_ok: bool = False) -> list[dict[str, str]]:
    """FRAME_FIELDS of every packet, by name. tshark 4.0 lists pcapng custom blocks as
    frames without an encapsulation: not packets, left out."""
    rows = fields(path, *FRAME_FIELDS, md5=True, damaged_ok=damaged_ok)
    return [r for r in (dict(zip(FRAME_FIELDS, row)) for row in rows) if r["frame.encap_type"]]


def frames(path, display_filter: str) -> list[int]:
    """The numbers of the frames the display filter matches."""
    return [int(row[0]) for row in fields(path, "frame.number", display_filter=display_filter)]


def export_objects(path, protocol: str, outdir) -> dict[str, bytes]:
    """`tshark --export-objects PROTOCOL,OUTDIR`: the exported files by name."""
    os.makedirs(outdir, exist_ok=True)
    run(path, "--export-objects", f"{protocol},{outdir}", "-q")
    out = {}
    for name in os.listdir(outdir):
        with open(os.path.join(outdir, name), "rb") as fh:
            out[name] = fh.read()
    return out


def http_objects(path, outdir):
    """{sha256: count} and {sha256: bytes} of the HTTP objects tshark exports."""
    counts, blobs = collections.Counter(), {}
    for data in export_objects(path, "http", outdir).values():
        h = hashlib.sha256(data).hexdigest()
        counts[h] += 1
        blobs[h] = data
    return counts, blobs
