"""Where the pcap corpus is: the one place the tests learn it.

The corpus (MANIFEST.tsv, wellformed/, malformed/) is not part of the repository. It is
looked for as `shared/corpus` beside the repository's folder (how CI lays it out), then
in the folder APPPACCAP_CORPUS names, then at /work/shared/corpus.

Collection never opens it: parametrised lists come from `files()`, which names one
placeholder when the corpus is missing, and `path()`/`row()` fail that test with a
message naming APPPACCAP_CORPUS.
"""

from __future__ import annotations

import csv
import functools
import os

ENV = "APPPACCAP_CORPUS"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MISSING = "corpus-missing"  # the one parameter `files()` gives when there is no corpus


def _locate() -> str:
    beside = os.path.join(os.path.dirname(REPO), "shared", "corpus")
    if os.path.isdir(beside):
        return beside
    return os.environ.get(ENV) or "/work/shared/corpus"


CORPUS = _locate()


def available() -> bool:
    return os.path.isfile(os.path.join(CORPUS, "MANIFEST.tsv"))


def require() -> str:
    """The corpus folder, or this test fails saying how to point at it."""
    if not available():
        import pytest  # benchmarks/ read CORPUS without pytest installed

        pytest.fail(f"the pcap corpus is not at {CORPUS}: set {ENV} to the folder that "
                    "holds MANIFEST.tsv", pytrace=False)
    return CORPUS


def path(*parts: str) -> str:
    """A file of the corpus, e.g. path("wellformed/icmp_5_pings.pcap")."""
    return os.path.join(require(), *parts)


@functools.cache
def manifest() -> dict[str, dict[str, str]]:
    """MANIFEST.tsv rows by relative path ("wellformed/…", "malformed/…")."""
    with open(path("MANIFEST.tsv"), newline="", encoding="utf-8") as fh:
        return {row["path"]: row for row in csv.DictReader(fh, delimiter="\t")}


def row(rel: str) -> dict[str, str]:
    return manifest()[rel]


def files(prefix: str = "", where=None) -> list[str]:
    """Relative paths of the manifest under `prefix` whose row passes `where`, sorted; for
    parametrize. Without a corpus: [MISSING], a test that fails in path() or row()."""
    if not available():
        return [MISSING]
    return sorted(rel for rel, r in manifest().items()
                  if rel.startswith(prefix) and (where is None or where(r)))


def capture_files() -> list[str]:
    """files() the capture reader opens (well-formed and damaged alike), for parametrize."""
    return files(where=lambda r: _opens(r["path"]))


def _opens(rel: str) -> bool:
    from apppaccap.pcap.reader import CaptureReader
    from apppaccap.pcap.reader import NotACaptureError
    try:
        with CaptureReader(path(rel)):
            return True
    except (NotACaptureError, OSError):
        return False


def sniffed(rel: str) -> tuple[list, list]:
    """A corpus file as the sniffer process frames it: (link types, [(ts, index of the link
    type, bytes)]); a timestamp a frame's u64 cannot hold becomes the packet's index."""
    from apppaccap.pcap.reader import CaptureReader
    linktypes: list = []
    packets = []
    with CaptureReader(path(rel)) as reader:
        for r in reader:
            if r.linktype not in linktypes:
                linktypes.append(r.linktype)
            ts = r.ts_ns if 0 <= r.ts_ns < 2**64 else len(packets)
            packets.append((ts, linktypes.index(r.linktype), bytes(r.data)))
    return linktypes, packets


def count(r: dict[str, str], column: str) -> int:
    """A numeric column of a manifest row (0 where the manifest leaves it empty)."""
    value = r[column]
    return int(value) if value.isdigit() else 0


def http_files() -> list[str]:
    """Captures from which tshark exports at least one HTTP object."""
    return files(where=lambda r: count(r, "http_objects") > 0)
