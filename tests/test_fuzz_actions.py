"""Hostile values for every registered action and every parameter: never GENERIC_ERROR.

Each answer must be a well-formed envelope whose ErrorCode is not GENERIC_ERROR (1: a
server fault), and the service must be alive afterwards. Most examples run in-process
through apppaccap.web.app.dispatch with a real Context (captures, commands; fast); a smaller
set goes as JSON bodies to a real server process over HTTP, which must keep answering.

Safety: everything runs in a throwaway data directory. Values that would make a valid
call write a file (export paths) are moved below that directory, no executable is
offered as a path (in the server process, trigger and action paths are moved below the
throwaway directory too), geoip_db is never set, and live captures are stopped after
each example.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from apppaccap.api import endpoints  # noqa: F401 - registers every action
from apppaccap.api.registry import REGISTRY
from apppaccap.web.app import dispatch
from tests.helpers.app import make_ctx
from tests.helpers.httpjson import call_json
from tests.helpers.httpjson import drain_stderr
from tests.helpers.pcapgen import write_udp_pcap
from tests.helpers.server import Server

pytestmark = pytest.mark.live  # captures on lo; root needed

ACTIONS = sorted(REGISTRY.endpoints)
# per action; `APPPACCAP_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz_actions.py` digs deeper
EXAMPLES = int(os.environ.get("APPPACCAP_FUZZ_EXAMPLES", "60"))
ERROR_CODES = set(range(0, 13)) - {1}

# -- hostile values ---------------------------------------------------------------------

SURROGATES = ["\ud800", "a\udfffb", "\udc80\udc81", "x" * 50 + "\ud83d"]
NULS = ["\x00", "a\x00b", "tcp\x00 and port 1"]
PATHS = ["../../../../etc/shadow", "/etc/shadow", "/dev/zero", "/dev/null", "/", "/proc/self/mem",
         "./", "..", "~root/.ssh/authorized_keys", "C:\\Windows\\win.ini", "\\\\host\\share",
         "/" + "a/" * 3000, "/etc/cron.d/x"]
NUMBERS = [-1, -(2**31), -(2**63), -(2**63) - 1, 2**31, 2**63 - 1, 2**63, 2**64, 2**200,
           10**5000, 0, 1,
           7, 1.5, -0.0, 1e308, "-1", "1e400", "0x7fffffffffffffff", "9" * 5000, "nan", "inf",
           True, False]
TEXTS = ["", " ", "x" * 100_000, "é" * 30_000, "\u202e\ufeff", "'; DROP TABLE captures; --",
         "{capture_id}", "%s%n", "\r\n\r\n", "frame matches \"(a+)+$\"", None]


def nested(depth: int):
    value = "1"
    for _ in range(depth):
        value = [value]
    return value


NESTING = [[], ["1", "2"], ["1", "1"], [["1"]], {"a": 1}, [{"a": [1]}], nested(50),
           {"k": nested(20)}]
HOSTILE = SURROGATES + NULS + PATHS + NUMBERS + TEXTS + NESTING

hostile_value = st.one_of(
    st.sampled_from(HOSTILE),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010), max_size=5),
    st.recursive(st.integers() | st.text(max_size=5),
                 lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                 max_leaves=12),
)


# -- plausible values (so that hostile ones reach deep into handlers) ---------------------

def plausible(name: str, env) -> list:
    """Valid-looking values by parameter name; never an executable, never a system path."""
    table = {
        "capture_id": [env.capture_id, 0, 1], "packet_id": [1, 2], "conn_id": [1],
        "process_id": [1], "pid": [os.getpid(), 1], "thread_id": [os.getpid()],
        "stream_id": [1], "file_id": [1], "search_id": [1, 2], "trigger_id": [1],
        "action_id": [1], "last_id": [0, 5], "limit": [1, 10000], "flags": [0, 1, 4],
        "adapter": ["lo"], "filter": ["", "udp", "udp port 9", "frame contains \"a\""],
        "start_dtg": [0, 1, 133_000_000_000_000_000], "end_dtg": [0, 2650467743999999999],
        "relative_time": ["15m", "999999999w"], "ip": ["127.0.0.1", "10.0.0.2", "::1"],
        "port": [9, 65535], "protocol": [17, 255], "lat": [1.5], "lng": [-2.5],
        "key_name": ["theme", "token_timeout", "max_active_searches", "made_up"],
        "value": ["1", "default"], "theme_name": ["default"], "tap_id": ["lo"],
        "trigger_type": [1], "action_type": [1, 2], "name": ["fuzz"], "params": ["a {pid}"],
        "path": [str(env.tmp), str(env.tmp / "out.pcapng"), str(env.pcap)],
        "command_uid": ["0" * 32], "filename": ["x.pcapng"], "notes": ["n"],
        "username": ["nobody"], "password": ["x"], "data": ["d"],
    }
    return table.get(name, ["1"])


def params_strategy(action_name: str, env):
    act = REGISTRY.endpoints[action_name]
    fields = {}
    for p in act.params:
        choice = st.one_of(hostile_value, st.sampled_from(plausible(p.name, env)))
        if p.name == "adapter":  # absent = every adapter: keep captures on lo
            fields[p.name] = choice
        else:
            fields[p.name] = st.one_of(st.just(ABSENT), choice)
    return st.fixed_dictionaries(fields)


ABSENT = object()

# (action, parameter) whose valid value makes the service write that file
WRITES_FILE = {("capture_export", "path"), ("search_export", "path")}
# in a server process the trigger watcher runs: keep its paths in the throwaway directory
WATCHED = {("trigger_add", "path"), ("trigger_mod", "path"), ("action_add", "path"),
           ("action_mod", "path")}


def made_safe(action_name: str, params: dict, env, server: bool) -> dict:
    """The call as the fuzzer may send it: see the module docstring."""
    out = {}
    for key, value in params.items():
        if value is ABSENT:
            continue
        guarded = WRITES_FILE | (WATCHED if server else set())
        if (action_name, key) in guarded and isinstance(value, str) \
                and os.path.isabs(value.strip()):
            inside = os.path.normpath(value.strip())
            if not inside.startswith(str(env.tmp) + os.sep):
                value = str(env.tmp) + os.sep + inside.lstrip(os.sep)
        if action_name == "settings_set" and key == "key_name" and value == "geoip_db":
            value = "not_geoip_db"  # opening files named by settings is another boundary
        out[key] = value
    if action_name in ("action_add", "action_mod"):
        path = out.get("path")
        if isinstance(path, str) and os.path.isfile(path) and os.access(path, os.X_OK):
            out["path"] = str(env.tmp / "not-a-program")  # never let a real program in
    return out


def _brief(value) -> str:
    if isinstance(value, int) and value.bit_length() > 128:
        return f"<{value.bit_length()}-bit int>"  # repr() refuses beyond 4300 digits
    return repr(value)[:80]


def check_envelope(body: dict, action_name: str, params: dict) -> None:
    assert isinstance(body, dict) and set(body) == {"Version", "ErrorCode", "DataType",
                                                    "ReturnValue"}, body
    assert body["Version"] == 1 and body["DataType"] in (1, 2, 3, 4), body
    shown = {k: _brief(v) for k, v in params.items()}
    assert body["ErrorCode"] in ERROR_CODES, (action_name, shown, body)
    json.dumps(body, default=str)  # what the door sends


# -- the in-process service ---------------------------------------------------------------

class Env:
    """A throwaway data directory with a capture engine and a scheduler (no trigger
    watcher: stored triggers never fire in-process)."""

    def __init__(self, tmp):
        from apppaccap.capture.manager import CaptureManager
        from apppaccap.jobs import Jobs
        self.tmp = tmp
        self.ctx = make_ctx(tmp)
        self.ctx.logins.sleep = lambda seconds: None  # failed logins would wait
        self.ctx.captures = CaptureManager(self.ctx)
        self.ctx.jobs = Jobs(self.ctx.catalog)
        self.ctx.jobs.start()
        folder = tmp / "data" / "import"
        folder.mkdir(parents=True, exist_ok=True)
        self.pcap = folder / "small.pcap"
        write_udp_pcap(self.pcap, [b"a" * 40 + bytes([i]) for i in range(20)])
        self.capture_id = 0
        self.ensure_capture()

    def call(self, action_name: str, params: dict) -> dict:
        return dispatch(self.ctx, action_name, dict(params))

    def ensure_capture(self) -> None:
        """A completed capture to aim at (apc_flush and capture_delete remove it)."""
        body = self.call("capture_get_details", {"capture_id": self.capture_id or 1})
        if body["ErrorCode"] == 0:
            return
        uid = self.call("pcap_ingest_file", {"path": str(self.pcap)})["ReturnValue"]
        done = self.ctx.jobs.wait(uid["CommandUid"], timeout=30)
        self.capture_id = int(done["Result"])

    def settle(self) -> None:
        self.ctx.captures.stop_all()
        self.ensure_capture()

    def close(self) -> None:
        from apppaccap.search.engine import shutdown as stop_searches
        self.ctx.captures.close()
        self.ctx.jobs.shutdown()
        stop_searches(self.ctx)
        self.ctx.catalog.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("fuzz"))
    yield e
    e.close()


def _alive(env) -> None:
    assert env.call("apppaccap", {})["ErrorCode"] == 0
    assert env.call("settings_set", {"key_name": "fuzz_alive", "value": "1"})["ErrorCode"] == 0
    assert env.ctx.captures.live == {}


# Every action, every parameter, every fixed hostile value: the coverage floor.
@pytest.mark.parametrize("action_name", ACTIONS)
def test_every_parameter_with_every_hostile_value(env, action_name):
    act = REGISTRY.endpoints[action_name]
    # the others plausible, or only the required ones: optional values change the path taken
    full = {q.name: plausible(q.name, env)[0] for q in act.params}
    required = {q.name: v for q, v in zip(act.params, full.values()) if q.required}
    for p in act.params or [None]:
        for value in HOSTILE if p is not None else [None]:
            for base in (full, required):
                params = dict(base)
                if p is not None:
                    params[p.name] = value
                params = made_safe(action_name, params, env, server=False)
                check_envelope(env.call(action_name, params), action_name, params)
                env.settle()
    _alive(env)


# Combinations: hypothesis mixes hostile and plausible values across the parameters.
@pytest.mark.parametrize("action_name", ACTIONS)
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_hostile_combinations(env, action_name, data):
    params = made_safe(action_name, data.draw(params_strategy(action_name, env)), env,
                       server=False)
    check_envelope(env.call(action_name, params), action_name, params)
    env.settle()


# -- a real server process ----------------------------------------------------------------

HTTP_VALUES = SURROGATES[:2] + NULS[:2] + [-1, 2**64, "9" * 5000, nested(30), {"a": [1]},
                                           ["1", "2"], "../../../../etc/shadow",
                                           "x" * 100_000]


def test_real_server_survives_hostile_json(tmp_path):
    class Remote:
        pass
    remote = Remote()
    remote.tmp = tmp_path
    (tmp_path / "data" / "import").mkdir(parents=True)
    remote.pcap = tmp_path / "data" / "import" / "small.pcap"
    write_udp_pcap(remote.pcap, [b"b" * 30] * 5)
    server = Server(tmp_path / "data", tmp_path / "export")
    drain_stderr(server)
    remote.capture_id = 1
    uid = server.ok("pcap_ingest_file", path=str(remote.pcap))["CommandUid"]
    deadline = time.monotonic() + 30
    while server.ok("command_query", command_uid=uid)["State"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        for action_name in ACTIONS:
            act = REGISTRY.endpoints[action_name]
            for p in act.params:
                for value in HTTP_VALUES:
                    if action_name == "login" and not isinstance(value, (list, dict)) \
                            and value not in SURROGATES + NULS:
                        continue  # a real failed login waits longer each time
                    base = {q.name: plausible(q.name, remote)[0] for q in act.params}
                    base[p.name] = value
                    params = made_safe(action_name, base, remote, server=True)
                    body = call_json(server, action_name, **params)
                    check_envelope(body, action_name, params)
                    if action_name.startswith("capture_start") and body["ErrorCode"] == 0:
                        server.ok("capture_stop_all")
        assert server.proc.poll() is None
        assert call_json(server, "apppaccap")["ErrorCode"] == 0
        assert server.ok("capture_list_active") == []
    finally:
        server.stop()


def test_fuzz_never_offers_a_program(env):
    # the guard itself: an executable path given to action_add is replaced
    safe = made_safe("action_add", {"path": sys.executable, "action_type": 1}, env, False)
    assert safe["path"] != sys.executable and not os.access(safe["path"], os.X_OK)
    safe = made_safe("capture_export", {"path": "/etc/cron.d/x"}, env, False)
    assert safe["path"].startswith(str(env.tmp) + os.sep)
