import ast
from pathlib import Path

import pytest

from apppaccap.settings import DEFAULTS
from apppaccap.settings import SERVE_ONLY
from apppaccap.settings import SETTINGS
from apppaccap.settings import TABLE
from tests.helpers.app import make_ctx


def test_settings_roundtrip_and_clear(ajax):
    assert ajax.ok("settings_set", key_name="colour", value="blue") == 0
    assert ajax.ok("settings_get_by_key", key_name="colour") == "blue"
    assert ajax.ok("settings_get_all")["colour"] == "blue"
    assert ajax.ok("settings_get_by_key", key_name="token_timeout") == "1800"  # a default
    assert ajax("settings_get_by_key", key_name="nope")["ErrorCode"] == 6
    assert ajax("settings_set", key_name="token_timeout", value="soon")["ErrorCode"] == 4
    ajax.ok("settings_clear")
    assert ajax("settings_get_by_key", key_name="colour")["ErrorCode"] == 6


def test_settings_survive_restart(tmp_path):
    ctx = make_ctx(tmp_path)
    ctx.settings.set("theme_colour", "green")
    ctx.catalog.close()
    again = make_ctx(tmp_path)
    assert again.settings.get("theme_colour") == "green"
    again.catalog.close()


# -- the table of settings (apppaccap/settings.py) ----------------------------------------

PACKAGE = Path(__file__).resolve().parent.parent / "apppaccap"
READERS = {"get", "get_int", "get_bool"}
# Readers whose key is a variable: the names they are given (web.py: _limit), and
# settings_get_by_key, which reads whatever name its caller asks for.
KEYS_PASSED_THROUGH = {"web/app.py": {"max_request_bytes", "max_unauthenticated_bytes"},
                       "web/server.py": {"max_connections_per_caller",
                                         "request_idle_seconds"},
                       "api/settings.py": set()}


def _settings_reads():
    """(module, line, key or None, number of arguments) of every settings.get*() call: the
    receiver is something named `settings` (ctx.settings, self.settings, settings)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in READERS):
                continue
            receiver = node.func.value
            name = receiver.attr if isinstance(receiver, ast.Attribute) else \
                getattr(receiver, "id", None)
            if name != "settings" or not node.args:
                continue
            first = node.args[0]
            key = first.value if isinstance(first, ast.Constant) else None
            yield module, node.lineno, key, len(node.args) + len(node.keywords)


def test_every_setting_read_in_the_package_is_in_the_table():
    reads = list(_settings_reads())
    assert len(reads) > 15  # the walk sees the readers
    unknown = [f"{m}:{line} reads {key!r}" for m, line, key, _n in reads
               if key is not None and key not in SETTINGS]
    assert not unknown, unknown
    variable = {m for m, _line, key, _n in reads if key is None}
    assert variable == set(KEYS_PASSED_THROUGH)
    for module, keys in KEYS_PASSED_THROUGH.items():
        text = (PACKAGE / module).read_text()
        assert all(f'"{k}"' in text and k in SETTINGS for k in keys), module
    assert "settings_get_by_key" in (PACKAGE / "api/settings.py").read_text()
    assert "attribution_hold_ms" in {key for _m, _line, key, _n in reads}


def test_no_reader_has_a_fallback_of_its_own():
    """The default comes from the table, never from a second literal at the call."""
    second = [f"{m}:{line}" for m, line, _key, n in _settings_reads() if n != 1]
    assert not second, second


def test_the_table_is_consistent():
    assert len(SETTINGS) == len(TABLE) == len(DEFAULTS)
    for s in TABLE:
        assert s.type in ("int", "bool", "str", "path", "theme", "group"), s.name
        assert s.doc and s.doc.endswith("."), s.name
        s.check(s.default, None)  # every default passes its own check
        if s.type == "int":
            assert int(s.default) >= 0
        if s.type == "bool":
            assert s.default in ("0", "1")
    assert not set(SERVE_ONLY) & set(SETTINGS)


def test_settings_get_all_lists_every_default_as_text(ajax):
    values = ajax.ok("settings_get_all")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in values.items())
    assert {k: values[k] for k in DEFAULTS} == DEFAULTS
    assert values["attribution_hold_ms"] == "50"


def test_settings_describe_is_the_table(ajax):
    ajax.ok("settings_set", key_name="token_timeout", value="60")
    described = ajax.ok("settings_describe")
    assert [d["Name"] for d in described] == [s.name for s in TABLE]
    one = next(d for d in described if d["Name"] == "token_timeout")
    assert one == {"Name": "token_timeout", "Type": "int", "Default": "1800", "Value": "60",
                   "Doc": SETTINGS["token_timeout"].doc}


@pytest.mark.parametrize("key,bad", [
    ("token_timeout", "0"), ("attribution_hold_ms", "-1"), ("disk_reserve_bytes", "lots"),
    ("trigger_pause", "yes"), ("extract_enabled", "2"), ("export_group_read", ""),
    ("geoip_db", "relative/GeoLite2-City.mmdb"),
    ("theme", "../x")])
def test_settings_set_checks_values_against_the_table(ajax, key, bad):
    body = ajax("settings_set", key_name=key, value=bad)
    assert body["ErrorCode"] == 4 and body["ReturnValue"].startswith(f"value: {key} "), body
    assert ajax.ok("settings_get_by_key", key_name=key) == DEFAULTS[key]


@pytest.mark.parametrize("key,good", [
    ("attribution_hold_ms", "0"), ("disk_reserve_bytes", "0"), ("trigger_pause", "0"),
    ("geoip_db", ""), ("theme", "default"), ("any_name", "any text")])
def test_settings_set_takes_what_the_table_allows(ajax, key, good):
    assert ajax.ok("settings_set", key_name=key, value=good) == 0
    assert ajax.ok("settings_get_by_key", key_name=key) == good


def test_a_theme_that_is_not_installed_is_not_found(ajax):
    body = ajax("settings_set", key_name="theme", value="nosuchtheme")
    assert body["ErrorCode"] == 6 and "nosuchtheme" in body["ReturnValue"], body


def test_readers_fall_back_to_the_table_default(ctx):
    ctx.settings.set("max_active_captures", "many")  # stored by an older version, unchecked
    assert ctx.settings.get_int("max_active_captures") == 16
    ctx.settings.set("trigger_pause", "off")
    assert ctx.settings.get_bool("trigger_pause") is False
    ctx.settings.set("trigger_pause", "maybe")
    assert ctx.settings.get_bool("trigger_pause") is True
    ctx.settings.set("extract_enabled", "1")
    assert ctx.settings.get_bool("extract_enabled") is True


def test_passwords_in_settings_are_never_read_back(ajax, ctx):
    """Any logged-in caller reads settings; the fleet's passwords open other machines (the
    sensors' /ajax, ClickHouse), so they are shown masked and a masked value sent back keeps
    the stored password."""
    ajax.ok("settings_set", key_name="fleet_sensor_credentials", value="fleet:s3cret-pw")
    ajax.ok("settings_set", key_name="fleet_url",
            value="clickhouse://ship:ch-pw@127.0.0.1:9000/apppaccap")
    shown = [ajax.ok("settings_get_all"),
             {k: ajax.ok("settings_get_by_key", key_name=k)
              for k in ("fleet_sensor_credentials", "fleet_url")},
             {s["Name"]: s["Value"] for s in ajax.ok("settings_describe")}]
    for values in shown:
        assert values["fleet_sensor_credentials"] == "fleet:********"
        assert values["fleet_url"] == "clickhouse://ship:********@127.0.0.1:9000/apppaccap"
        assert "s3cret" not in str(values) and "ch-pw" not in str(values)
    # the settings page saves what it showed: the passwords stay, the database may change
    ajax.ok("settings_set", key_name="fleet_sensor_credentials", value="fleet:********")
    ajax.ok("settings_set", key_name="fleet_url",
            value="clickhouse://ship:********@127.0.0.1:9000/other_db")
    assert ctx.settings.get("fleet_sensor_credentials") == "fleet:s3cret-pw"
    assert ctx.settings.get("fleet_url") == "clickhouse://ship:ch-pw@127.0.0.1:9000/other_db"
    # a new password replaces the old; a mask with nothing stored is refused, not saved
    ajax.ok("settings_set", key_name="fleet_sensor_credentials", value="other:new")
    assert ctx.settings.get("fleet_sensor_credentials") == "other:new"
    ajax.ok("settings_clear")
    r = ajax("settings_set", key_name="fleet_sensor_credentials", value="u:********")
    assert r["ErrorCode"] == 4 and "password" in r["ReturnValue"]
    assert ctx.settings.get("fleet_sensor_credentials") == ""


@pytest.mark.parametrize("elsewhere", [
    "clickhouse://ship:********@attacker:9000/apppaccap",      # another host
    "clickhouse://ship:********@127.0.0.1:9001/apppaccap",     # another port
    "clickhouse://ship:********@127.0.0.1/apppaccap",          # the port left out
    "clickhouses://ship:********@127.0.0.1:9000/apppaccap",    # another scheme
    "clickhouse://admin:********@127.0.0.1:9000/apppaccap",    # another user
])
def test_a_masked_password_is_not_kept_for_another_address(ajax, ctx, elsewhere):
    """Whoever may set settings must not send the stored password somewhere new by sending
    the mask back with another address: the password must be entered again."""
    stored = "clickhouse://ship:ch-pw@127.0.0.1:9000/apppaccap"
    ajax.ok("settings_set", key_name="fleet_url", value=stored)
    r = ajax("settings_set", key_name="fleet_url", value=elsewhere)
    assert r["ErrorCode"] == 4, r
    assert "enter the password again" in r["ReturnValue"], r
    assert ctx.settings.get("fleet_url") == stored
    # with the password itself, the address changes
    typed = elsewhere.replace("********", "typed-pw")
    ajax.ok("settings_set", key_name="fleet_url", value=typed)
    assert ctx.settings.get("fleet_url") == typed


def test_a_masked_sensor_password_is_not_kept_for_another_user(ajax, ctx):
    ajax.ok("settings_set", key_name="fleet_sensor_credentials", value="fleet:s3cret-pw")
    r = ajax("settings_set", key_name="fleet_sensor_credentials", value="other:********")
    assert r["ErrorCode"] == 4 and "enter the password again" in r["ReturnValue"], r
    assert ctx.settings.get("fleet_sensor_credentials") == "fleet:s3cret-pw"


def test_a_new_sensor_address_needs_the_sensor_password_again(ajax, ctx):
    # the credentials go to every sensor: one added while they hold a password would get it
    ajax.ok("settings_set", key_name="fleet_sensors", value="web1=http://10.0.0.5:8733")
    ajax.ok("settings_set", key_name="fleet_sensor_credentials", value="fleet:s3cret-pw")
    for value in ("web1=http://10.0.0.5:8733,evil=http://203.0.113.9:80",
                  "web1=http://203.0.113.9:80"):
        r = ajax("settings_set", key_name="fleet_sensors", value=value)
        assert r["ErrorCode"] == 4 and "would be sent there" in r["ReturnValue"], r
    assert ctx.settings.get("fleet_sensors") == "web1=http://10.0.0.5:8733"
    # renaming or removing sensors is fine; so is a new one once the password is cleared
    ajax.ok("settings_set", key_name="fleet_sensors", value="web-1=http://10.0.0.5:8733")
    ajax.ok("settings_set", key_name="fleet_sensors", value="")
    ajax.ok("settings_set", key_name="fleet_sensor_credentials", value="")
    ajax.ok("settings_set", key_name="fleet_sensors", value="web2=http://10.0.0.6:8733")
    ajax.ok("settings_set", key_name="fleet_sensor_credentials", value="fleet:s3cret-pw")
