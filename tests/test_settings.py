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
