"""settings_* — user-defined settings (string keys and values, persisted in the catalog)."""

from apppaccap.api.registry import endpoint
from apppaccap.errors import InvalidPermissions
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.settings import POSITIVE_INTEGERS
from apppaccap.settings import SERVE_ONLY
from apppaccap.web import pages
from apppaccap.wire import DataType


@endpoint(DataType.INT)
def settings_clear(ctx) -> int:
    """Clear every user-defined setting (the documented defaults apply again)."""
    ctx.settings.clear()
    return 0


@endpoint(DataType.JSON)
def settings_get_all(ctx) -> dict:
    """All settings as a dictionary of string to string (defaults included)."""
    return ctx.settings.all()


@endpoint(DataType.STRING)
def settings_get_by_key(ctx, *, key_name: str) -> str:
    """The value of one setting.

    - key_name: name of the setting; NOT_FOUND when it was never set and has no default
    """
    value = ctx.settings.get(key_name)
    if value is None:
        raise NotFound(f"key_name: no setting {key_name[:80]!r}")
    return value


def _positive_integer(text: str) -> bool:
    """ASCII digits only ("²" is a digit to str.isdigit), at most 18 of them."""
    text = text.strip()
    return text.isascii() and text.isdigit() and len(text) <= 18 and int(text) > 0


@endpoint(DataType.INT)
def settings_set(ctx, *, key_name: str, value: str = "") -> int:
    """Set a setting.

    - key_name: 1-128 printable characters
    - value: the value; numeric ones (token_timeout, the max_* caps) must be positive integers
    """
    if not key_name or len(key_name) > 128 or not key_name.isprintable():
        raise Malformed("key_name: must be 1-128 printable characters")
    if key_name in SERVE_ONLY:
        raise InvalidPermissions(f"key_name: {key_name} is set only when the server starts "
                                 f"(apppaccap serve {SERVE_ONLY[key_name]} DIR)")
    if len(value) > 65536:
        raise Malformed("value: longer than 65536 characters")
    if key_name == "export_group_read" and value not in ("0", "1"):
        raise Malformed("value: export_group_read must be 0 or 1")
    if key_name in POSITIVE_INTEGERS and not _positive_integer(value):
        raise Malformed(f"value: {key_name} must be a positive integer")
    if key_name == "theme":
        _check_theme(ctx, value)
    ctx.settings.set(key_name, value)
    return 0


def _check_theme(ctx, value: str) -> None:
    """`/` redirects to the theme: only the folder name of an installed theme is taken."""
    if not pages.is_theme_name(value):
        raise Malformed("value: a theme is a folder name (letters, digits, '.', '_', '-'; "
                        "not starting with '.')")
    installed = pages.list_themes(ctx.config.themes_dir)
    if value not in installed:
        raise NotFound(f"value: no theme {value!r} in the themes directory "
                       f"(installed: {', '.join(installed) or 'none'})")
