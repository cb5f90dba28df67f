"""The filesystem boundary against a real server process: exports write only below the
export roots, ingest reads only below the ingest roots, no file byte or existence leaks,
opens never block on FIFOs, writes never follow symlinks or replace special files, blank
names never collide, and a kill -9 mid-export leaves no temporary file after a restart."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest

from tests.helpers import corpus
from tests.helpers.app import make_ctx
from tests.helpers.packets import eth
from tests.helpers.packets import ipv4
from tests.helpers.packets import udp
from tests.helpers.pcapfiles import write_pcap
from tests.helpers.server import ROOT
from tests.helpers.server import Server
from tests.helpers.server import cli
from tests.helpers.server import wait_command

PINGS = "wellformed/icmp_5_pings.pcap"
HTTP = "wellformed/http_get_file_download.pcap"
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


class Box:
    """A server with one export root and one ingest root, and a directory outside both."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.out = tmp_path / "out"          # an export root
        self.inn = tmp_path / "in"           # an ingest root
        self.outside = tmp_path / "outside"  # neither
        for d in (self.out, self.inn, self.outside):
            d.mkdir()
        self.args = ("--export-root", str(self.out), "--ingest-root", str(self.inn))
        self.server = self.start()

    def start(self) -> Server:
        return Server(self.tmp / "data", self.tmp / "export", *self.args)

    def call(self, action, timeout=30, **params) -> dict:
        data = urllib.parse.urlencode(dict(params, action=action)).encode()
        with urllib.request.urlopen(self.server.url + "/ajax", data=data,
                                    timeout=timeout) as resp:
            return json.loads(resp.read())

    def ok(self, action, **params):
        body = self.call(action, **params)
        assert body["ErrorCode"] == 0, body
        return body["ReturnValue"]

    def wait(self, cmd: dict, timeout: float = 60) -> dict:
        cmd = wait_command(self.ok, cmd, timeout)
        return cmd

    def ingest(self, src: str) -> int:
        """Copy a corpus file into the ingest root and ingest it; the capture id."""
        target = self.inn / os.path.basename(src)
        shutil.copy(src, target)
        done = self.wait(self.ok("pcap_ingest_file", path=str(target)))
        assert done["State"] == 3, done
        return int(done["Result"])


@pytest.fixture
def box(tmp_path):
    b = Box(tmp_path)
    yield b
    b.server.stop()


def _victim(path, text=b"ssh-ed25519 AAAA legit-key root@host\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text)
    path.chmod(0o600)
    return text


# -- exports outside the roots -----------------------------------------------------------------
def test_export_outside_the_roots_is_refused_and_writes_nothing(box):
    cid = box.ingest(corpus.path(PINGS))
    keys = box.outside / "root" / ".ssh" / "authorized_keys"
    before = _victim(keys)
    cron = f"/etc/cron.d/apppaccap-test-{os.getpid()}.pcapng"  # a dot: cron ignores it anyway
    messages = set()
    try:
        for path, extra in ((cron, {}), (str(keys), {}), (str(keys), {"overwrite": 1}),
                            (str(box.outside / "nowhere" / "x.pcapng"), {}),
                            (str(box.out / ".." / "outside" / "y.pcapng"), {})):
            body = box.call("capture_export", capture_id=cid, path=path, **extra)
            assert body["ErrorCode"] == 8, (path, body)   # INVALID_PERMISSIONS
            messages.add(body["ReturnValue"])
        time.sleep(0.3)  # a wrongly queued export would have written by now
        assert not os.path.exists(cron)
        assert keys.read_bytes() == before
        assert os.listdir(box.outside) == ["root"]
    finally:
        if os.path.exists(cron):
            os.remove(cron)
    # one message for all: it tells nothing about the file or the directory
    assert len(messages) == 1 and "export roots" in messages.pop()


def test_the_data_directory_is_never_an_export_target(tmp_path):
    """An export root above the data directory (or an export directory that is the data
    directory) must not let an export replace the catalog or a capture database."""
    data = tmp_path / "data"
    server = Server(data, data, "--export-root", str(tmp_path))
    box = Box.__new__(Box)
    box.server = box.tmp = None
    box.server, box.inn = server, data / "import"
    try:
        cid = box.ingest(corpus.path(PINGS))
        catalog = (data / "catalog.db").read_bytes()[:100]
        for path in (data / "catalog.db", data / "captures" / f"{cid}.db",
                     data / "import" / "x.pcapng"):
            body = box.call("capture_export", capture_id=cid, path=str(path), overwrite=1)
            assert body["ErrorCode"] == 8, (path, body)
        assert (data / "catalog.db").read_bytes()[:100] == catalog
        assert not (data / "import" / "x.pcapng").exists()
        # the export directory (here the data directory itself) still takes .pcapng files
        done = box.wait(box.ok("capture_export", capture_id=cid, path=str(data / "ok.pcapng")))
        assert done["State"] == 3 and (data / "ok.pcapng").read_bytes()[:4] == PCAPNG_MAGIC
    finally:
        server.stop()


def test_symlinks_are_never_followed(box):
    cid = box.ingest(corpus.path(PINGS))
    victim = box.outside / "victim"
    before = _victim(victim)
    # a symlink at the target name: refused, with or without overwrite
    (box.out / "t.pcapng").symlink_to(victim)
    for extra in ({}, {"overwrite": 1}):
        body = box.call("capture_export", capture_id=cid, path=str(box.out / "t.pcapng"),
                        **extra)
        assert body["ErrorCode"] == 4 and "not a regular file" in body["ReturnValue"], body
    # a planted `.part` (the old temporary name) is not used, let alone followed
    (box.out / "u.pcapng.part").symlink_to(victim)
    done = box.wait(box.ok("capture_export", capture_id=cid, path=str(box.out / "u.pcapng")))
    assert done["State"] == 3, done
    assert (box.out / "u.pcapng").read_bytes()[:4] == PCAPNG_MAGIC
    assert not (box.out / "u.pcapng").is_symlink()
    # a symlinked directory below the root that leads outside
    (box.out / "linkdir").symlink_to(box.outside)
    body = box.call("capture_export", capture_id=cid, path=str(box.out / "linkdir" / "x.pcapng"))
    assert body["ErrorCode"] == 8, body
    assert victim.read_bytes() == before and (box.out / "t.pcapng").is_symlink()
    assert sorted(os.listdir(box.outside)) == ["victim"]


def test_special_files_are_never_replaced(box):
    cid = box.ingest(corpus.path(PINGS))
    dev = box.out / "null-device"
    os.mknod(dev, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    fifo = box.out / "pipe"
    os.mkfifo(fifo)
    (box.out / "folder").mkdir()
    for target in (dev, fifo):
        body = box.call("capture_export", capture_id=cid, path=str(target), overwrite=1)
        assert body["ErrorCode"] == 4 and "not a regular file" in body["ReturnValue"], body
    body = box.call("capture_export", capture_id=cid, path=str(box.out / "folder"), overwrite=1)
    assert body["ErrorCode"] == 4 and "directory" in body["ReturnValue"], body
    time.sleep(0.3)
    st = os.lstat(dev)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert (box.out / "folder").is_dir()


def test_existing_file_is_replaced_only_with_overwrite(box):
    cid = box.ingest(corpus.path(PINGS))
    target = box.out / "a.pcapng"
    target.write_bytes(b"an earlier export\n")
    body = box.call("capture_export", capture_id=cid, path=str(target))
    assert body["ErrorCode"] == 4 and "overwrite=1" in body["ReturnValue"], body
    assert target.read_bytes() == b"an earlier export\n"
    done = box.wait(box.ok("capture_export", capture_id=cid, path=str(target), overwrite=1))
    assert done["State"] == 3 and done["Result"] == str(target), done
    assert target.read_bytes()[:4] == PCAPNG_MAGIC
    # search_export follows the same rule
    sid = box.ok("search_start", filter="icmp")["SearchId"]
    deadline = time.monotonic() + 30
    while box.ok("search_open", search_id=sid)["State"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    body = box.call("search_export", search_id=sid, path=str(target))
    assert body["ErrorCode"] == 4 and "overwrite=1" in body["ReturnValue"], body
    body = box.call("search_export", search_id=sid, path="/etc/apppaccap-search.pcapng")
    assert body["ErrorCode"] == 8, body
    done = box.wait(box.ok("search_export", search_id=sid, path=str(target), overwrite=1))
    assert done["State"] == 3, done


def test_concurrent_blank_exports_get_distinct_files(box):
    cid = box.ingest(corpus.path(PINGS))
    answers, errors = [], []

    def export():
        try:
            answers.append(box.ok("capture_export", capture_id=cid))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=export) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(answers) == 10
    done = [box.wait(cmd) for cmd in answers]
    assert [d["State"] for d in done] == [3] * 10, [d["Message"] for d in done]
    paths = {d["Result"] for d in done}
    assert len(paths) == 10 and all(os.path.getsize(p) > 0 for p in paths)
    names = os.listdir(box.tmp / "export")
    assert not [n for n in names if n.endswith(".part")]
    listed = {f["FileName"] for f in box.ok("export_list")}
    assert {os.path.basename(p) for p in paths} <= listed


def test_export_file_mode_and_group(box):
    cid = box.ingest(corpus.path(PINGS))
    done = box.wait(box.ok("capture_export", capture_id=cid, path=str(box.out / "m.pcapng")))
    assert stat.S_IMODE(os.stat(done["Result"]).st_mode) == 0o600
    os.chown(box.out, -1, 65534)
    box.ok("settings_set", key_name="export_group_read", value="1")
    done = box.wait(box.ok("capture_export", capture_id=cid, path=str(box.out / "g.pcapng")))
    st = os.stat(done["Result"])
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == 65534


def test_roots_cannot_be_changed_through_the_api(box):
    for key in ("export_roots", "ingest_roots"):
        body = box.call("settings_set", key_name=key, value="/")
        assert body["ErrorCode"] == 8, body
    body = box.call("pcap_ingest_file", path="/etc/shadow")
    assert body["ErrorCode"] == 8, body


def test_trigger_export_action_must_name_a_directory_in_the_roots(box):
    body = box.call("action_add", name="out", action_type=2, path="/etc/cron.d")
    assert body["ErrorCode"] == 8, body
    body = box.call("action_add", name="out", action_type=2, path=str(box.outside))
    assert body["ErrorCode"] == 8, body
    assert box.ok("action_add", name="ok", action_type=2, path=str(box.out))["ActionId"]


# -- ingest --------------------------------------------------------------------------------------
def test_ingest_outside_the_roots_says_the_same_for_every_file(box):
    secret = box.outside / "secret.pcap"
    shutil.copy(corpus.path(PINGS), secret)
    secret.chmod(0o600)
    locked = box.outside / "locked.pcap"
    shutil.copy(corpus.path(PINGS), locked)
    locked.chmod(0)
    (box.inn / "link.pcap").symlink_to(secret)
    (box.inn / "dirlink").symlink_to(box.outside)
    probes = [str(secret), str(locked), str(box.outside / "missing.pcap"), "/etc/shadow",
              "/root/.ssh/id_rsa_nonexistent", str(box.inn / ".." / "outside" / "secret.pcap"),
              str(box.inn / "link.pcap"), str(box.inn / "dirlink" / "secret.pcap"),
              str(box.inn / "dirlink" / "missing.pcap")]
    answers = [box.call("pcap_ingest_file", path=p) for p in probes]
    assert {a["ErrorCode"] for a in answers} == {8}, answers
    assert len({a["ReturnValue"] for a in answers}) == 1, answers
    assert box.ok("capture_list_completed") == []


def test_ingest_inside_the_roots_never_echoes_file_bytes(box):
    text = box.inn / "shadow-copy"
    text.write_bytes(b"root:$6$saltsalt$hash:19000:0:99999:7:::\n")
    body = box.call("pcap_ingest_file", path=str(text))
    assert body["ErrorCode"] == 4, body
    msg = body["ReturnValue"]
    assert "not a pcap or pcapng file" in msg
    assert "726f6f74" not in msg and "root" not in msg and "0x" not in msg
    assert box.call("pcap_ingest_file", path=str(box.inn / "missing.pcap"))["ErrorCode"] == 6
    assert box.call("pcap_ingest_file", path=str(box.inn))["ErrorCode"] == 4


def test_fifo_ingest_is_refused_at_once_even_behind_a_swapped_symlink(box):
    fifo = box.inn / "pipe"
    os.mkfifo(fifo)
    started = time.monotonic()
    body = box.call("pcap_ingest_file", path=str(fifo), timeout=10)
    assert time.monotonic() - started < 5
    assert body["ErrorCode"] == 4 and "not a regular file" in body["ReturnValue"], body
    # a symlink flipping between a capture and the FIFO while ingests are asked for
    real = box.inn / "real.pcap"
    shutil.copy(corpus.path(PINGS), real)
    link = box.inn / "flip.pcap"
    link.symlink_to(real)
    stop = threading.Event()

    def flip():
        n = 0
        while not stop.is_set():
            tmp = box.inn / f"flip-{n % 2}.tmp"
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            os.symlink(fifo if n % 2 else real, tmp)
            os.replace(tmp, link)
            n += 1

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    try:
        for _ in range(40):
            started = time.monotonic()
            body = box.call("pcap_ingest_file", path=str(link), timeout=10)
            assert time.monotonic() - started < 5
            assert body["ErrorCode"] in (0, 4), body
    finally:
        stop.set()
        flipper.join(5)
    assert box.ok("apppaccap")["AppPacCap"]


def test_geoip_db_fifo_does_not_block_a_capture(box):
    fifo = box.tmp / "geo.mmdb"
    os.mkfifo(fifo)
    box.ok("settings_set", key_name="geoip_db", value=str(fifo))
    cap = box.ok("capture_start_system", flags=1, adapter="lo")
    try:
        # the requests themselves are loopback traffic: new IPs reach the resolver
        for _ in range(10):
            started = time.monotonic()
            box.call("capture_list_active", timeout=10)
            assert time.monotonic() - started < 5
            time.sleep(0.1)
    finally:
        started = time.monotonic()
        box.call("capture_stop_system", capture_id=cap["CaptureId"], timeout=10)
        assert time.monotonic() - started < 5


def test_cli_ingest_reads_outside_files_with_the_callers_permissions(box):
    inside = box.inn / "pings.pcap"
    shutil.copy(corpus.path(PINGS), inside)
    outside = box.outside / "mine.pcap"
    shutil.copy(corpus.path(PINGS), outside)
    secret = box.outside / "root-only.pcap"
    shutil.copy(corpus.path(PINGS), secret)
    secret.chmod(0o600)
    box.outside.chmod(0o755)
    cli("ingest", str(inside), str(outside), "--url", box.server.url)
    sources = sorted(c["SourceFile"] for c in box.ok("capture_list_completed"))
    # the root's file by path; the other uploaded under its name, read by the command
    assert sources == sorted(["mine.pcap", str(inside)])
    os.chmod(box.tmp, 0o755)
    run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-m", "apppaccap", "ingest", str(secret),
                          "--url", box.server.url], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1, run
    # refused by the command (permission denied) or by the door (a login is needed):
    # never read by the service on the caller's behalf
    assert "Permission denied" in run.stderr or "token" in run.stderr.lower(), run.stderr
    assert len(box.ok("capture_list_completed")) == 2


# -- extraction ------------------------------------------------------------------------------------
def test_extracted_files_stay_below_their_directory(box):
    box.ok("extract_enable")
    cid = box.ingest(corpus.path(HTTP))
    streams = box.ok("extract_query", capture_id=cid)["Streams"]
    assert streams
    data = box.tmp / "data"
    escape = box.outside / "escape"
    escape.mkdir()
    folder = data / "extracted" / str(cid)
    folder.parent.mkdir(exist_ok=True)
    folder.symlink_to(escape)  # planted before the first write
    body = box.call("extract_file_write", capture_id=cid, stream_id=streams[0]["StreamId"])
    assert body["ErrorCode"] in (8, 11), body
    assert os.listdir(escape) == []
    folder.unlink()
    got = box.ok("extract_file_write", capture_id=cid, stream_id=streams[0]["StreamId"])
    assert os.path.dirname(got["Path"]) == str(folder)
    assert stat.S_IMODE(os.stat(got["Path"]).st_mode) == 0o600
    assert not [n for n in os.listdir(folder) if n.endswith(".part")]


# -- kill -9 mid-export ---------------------------------------------------------------------
def _big_pcap(path, packets=300_000):
    """A pcap of small UDP packets between two addresses (Ethernet)."""
    frame = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(12345, 53, b"x" * 18), ident=0, df=True),
                src="66:77:88:99:aa:bb", dst="00:11:22:33:44:55")
    write_pcap(path, [(1_700_000_000 * 1_000_000_000, frame)] * packets, snaplen=65535)


def test_kill_during_export_leaves_no_temporary_file_after_restart(box):
    big = box.inn / "big.pcap"
    _big_pcap(big)
    done = box.wait(box.ok("pcap_ingest_file", path=str(big)), timeout=120)
    assert done["State"] == 3, done
    cid = int(done["Result"])
    # a temporary-looking symlink planted in the root: never followed, never removed
    victim = box.outside / "victim"
    before = _victim(victim)
    planted = box.out / ".x.pcapng.0123456789abcdef.part"
    planted.symlink_to(victim)
    box.ok("capture_export", capture_id=cid, path=str(box.out / "big.pcapng"), filter="udp")
    deadline = time.monotonic() + 60
    while not [n for n in os.listdir(box.out) if n.endswith(".part") and n != planted.name]:
        assert time.monotonic() < deadline, "the export never started writing"
        time.sleep(0.002)
    box.server.kill(9)
    parts = [n for n in os.listdir(box.out) if n.endswith(".part") and n != planted.name]
    assert parts and "big.pcapng" not in os.listdir(box.out)  # killed mid-write
    box.server = box.start()
    left = [n for n in os.listdir(box.out) if n.endswith(".part")]
    assert left == [planted.name], left
    assert victim.read_bytes() == before and planted.is_symlink()


def test_start_up_removes_only_its_own_temporary_files(tmp_path):
    from apppaccap.safefs.journal import JOURNAL_DIR
    from apppaccap.safefs.journal import remove_leftovers
    ctx = make_ctx(tmp_path, export_roots=[])  # the export directory is the only root
    try:
        export = tmp_path / "export"
        journal = tmp_path / "data" / JOURNAL_DIR
        journal.mkdir()
        (tmp_path / "elsewhere").mkdir()
        files = {"own": export / ".a.pcapng.0123456789abcdef.part",      # journaled: removed
                 "stray": export / ".c.pcapng.fedcba9876543210.part",   # our pattern: removed
                 "outside": tmp_path / "elsewhere" / ".b.pcapng.0123456789abcdef.part",
                 "not ours": export / "notes.part"}
        for n, path in enumerate(files.values()):
            path.write_bytes(b"partial")
            (journal / f"{n:016x}").write_text(str(path))
        assert remove_leftovers(ctx) == 2
        assert not files["own"].exists() and not files["stray"].exists()
        assert files["outside"].read_bytes() == b"partial"
        assert files["not ours"].read_bytes() == b"partial"
        assert os.listdir(journal) == []
    finally:
        ctx.catalog.close()
