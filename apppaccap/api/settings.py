"""settings_* — user-defined settings (string keys and values, persisted in the catalog).

Passwords in settings (fleet_url's user info, fleet_sensor_credentials) are never read
back: any logged-in caller may read settings, and these open other machines. They are
shown with the password as MASK; a value sent back with MASK in the password's place keeps
the stored password, so a settings page can save what it showed, as long as the password
would still go where it went (same scheme, user, host and port).
"""

import urllib.parse

from apppaccap.api.registry import endpoint
from apppaccap.errors import InvalidPermissions
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.fleet.fetch import sensors
from apppaccap.settings import SERVE_ONLY
from apppaccap.settings import TABLE
from apppaccap.settings import check
from apppaccap.wire import DataType


@endpoint(DataType.INT)
def settings_clear(ctx) -> int:
    """Clear every user-defined setting (the documented defaults apply again)."""
    ctx.settings.clear()
    return 0


MASK = "********"


def _password(name: str, value: str) -> tuple[str, str] | None:
    """(value with the password as MASK, the password) for a setting holding one."""
    if name == "fleet_sensor_credentials" and ":" in value:
        user, _, pw = value.partition(":")
        return f"{user}:{MASK}", pw
    if name == "fleet_url" and value:
        parts = urllib.parse.urlsplit(value)
        if parts.password is not None:
            userinfo, _, hostport = parts.netloc.rpartition("@")
            user = userinfo.partition(":")[0]
            return parts._replace(netloc=f"{user}:{MASK}@{hostport}").geturl(), parts.password
    return None


def _shown(name: str, value: str) -> str:
    hidden = _password(name, value)
    return hidden[0] if hidden is not None else value


def _destination(name: str, value: str) -> tuple:
    """What says where a setting's password goes: fleet_url's scheme (TLS or not), user,
    host and port; fleet_sensor_credentials' user (the sensors are fleet_sensors')."""
    if name == "fleet_url":
        parts = urllib.parse.urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            port = -1  # not a port: never equal to a stored one (check() refuses it later)
        return parts.scheme.lower(), parts.username, parts.hostname, port
    return (value.partition(":")[0],)


def _kept(name: str, new: str, old: str | None) -> str:
    """`new`, with a MASK password replaced by the stored one. Only what does not say where
    the password goes may change (fleet_url's database): whoever may set settings could
    otherwise send the stored password to a host of theirs without ever knowing it."""
    hidden = _password(name, new)
    if hidden is None or hidden[1] != MASK:
        return new
    stored = _password(name, old or "")
    if stored is None:
        raise Malformed(f"value: {name} has no stored password to keep; send the password")
    if _destination(name, new) != _destination(name, old or ""):
        where = "scheme, user, host or port" if name == "fleet_url" else "user"
        raise Malformed(f"value: {name}: enter the password again to change the {where} "
                        f"({MASK} keeps the stored password only where it already goes)")
    return hidden[0].replace(f":{MASK}", ":" + stored[1], 1)


@endpoint(DataType.JSON)
def settings_get_all(ctx) -> dict:
    """All settings as a dictionary of string to string (defaults included); passwords are
    shown as ********."""
    return {k: _shown(k, v) for k, v in ctx.settings.all().items()}


@endpoint(DataType.STRING)
def settings_get_by_key(ctx, *, key_name: str) -> str:
    """The value of one setting.

    - key_name: name of the setting; NOT_FOUND when it was never set and has no default
    """
    value = ctx.settings.get(key_name)
    if value is None:
        raise NotFound(f"key_name: no setting {key_name[:80]!r}")
    return _shown(key_name, value)


def _no_new_sensor_for_the_password(ctx, value: str) -> None:
    """fleet_sensor_credentials go to every sensor of fleet_sensors: a sensor address added
    while they hold a password would be sent it by the next fleet_fetch_packets, by whoever
    may set settings and without knowing it. So a new address needs the password entered
    again (cleared first, set after); removing or renaming sensors does not."""
    if ":" not in (ctx.settings.get("fleet_sensor_credentials") or ""):
        return
    known = set(sensors(ctx.settings.get("fleet_sensors") or "").values())
    new = sorted(name for name, url in sensors(value).items() if url not in known)
    if new:
        raise Malformed(f"value: fleet_sensors: {', '.join(new)[:200]} has a new address and "
                        "fleet_sensor_credentials holds a password, which would be sent there; "
                        "clear fleet_sensor_credentials, set fleet_sensors, then set the "
                        "credentials again")


@endpoint(DataType.INT)
def settings_set(ctx, *, key_name: str, value: str = "") -> int:
    """Set a setting.

    A password sent as ******** (as settings_get_all shows it) keeps the stored one, but only
    where it already goes: the same user, and for fleet_url the same scheme, host and port;
    otherwise MALFORMED_REQUEST (enter the password again to change them). Likewise a new
    sensor address in fleet_sensors while fleet_sensor_credentials holds a password.
    - key_name: 1-128 printable characters
    - value: the value, checked for the settings settings_describe lists (type int, bool...)
    """
    if not key_name or len(key_name) > 128 or not key_name.isprintable():
        raise Malformed("key_name: must be 1-128 printable characters")
    if key_name in SERVE_ONLY:
        raise InvalidPermissions(f"key_name: {key_name} is set only when the server starts "
                                 f"(apppaccap serve {SERVE_ONLY[key_name]})")
    if len(value) > 65536:
        raise Malformed("value: longer than 65536 characters")
    value = _kept(key_name, value, ctx.settings.get(key_name))
    if key_name == "fleet_sensors":
        _no_new_sensor_for_the_password(ctx, value)
    try:
        check(key_name, value, ctx.config)
    except ValueError as why:
        raise Malformed(f"value: {key_name} {why}") from None
    except LookupError as why:
        raise NotFound(f"value: {key_name}: {why}") from None
    ctx.settings.set(key_name, value)
    return 0


@endpoint(DataType.JSON)
def settings_describe(ctx) -> list:
    """The settings the service reads: name, type, default, current value and what each means.

    Type is what the text holds: int, bool (0 or 1), str, path or theme (an installed theme's
    folder name).
    """
    values = ctx.settings.all()
    return [{"Name": s.name, "Type": s.type, "Default": s.default,
             "Value": _shown(s.name, values[s.name]), "Doc": s.doc} for s in TABLE]
