"""Theme files: locating the themes directory, confined paths and token placeholders.

Placeholders are filled with values a link's author controls (the query string), so each
is escaped for the context it lands in, and a token is only ever echoed when it has the
shape of our tokens (urlsafe base64) — web/app.py further requires a live login.
"""

from __future__ import annotations

import html
import json
import os
import re
import urllib.parse

from apppaccap.settings import is_theme_name
from apppaccap.settings import list_themes

_PLACEHOLDER = re.compile(r"\{%(hd_token|hd_link_token|hd_ajax_token|hd_post_params)\}", re.I)

# secrets.token_urlsafe(32) gives 43 characters of [A-Za-z0-9_-]; such a value is inert
# in every context (HTML text, attribute, JS string, URL), which is why nothing else is echoed.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")

# A theme is a plain folder name: no separators, no leading dot, nothing a browser could
# read as another host (//x, /\x, http:) when it is put into the Location of a redirect.
# An opening <script> tag of a theme file (group 1: its attributes).
_SCRIPT_TAG = re.compile(r"<script\b([^>]*)>", re.I)
_HAS_SRC = re.compile(r"(?:^|\s)src\s*=", re.I)

# Characters that could end a <script> element, start a comment or entity, or end a line
# for the JS parser: written as \uXXXX escapes, which JSON and JavaScript read back as-is.
_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "'": "\\u0027",
                  "\u2028": "\\u2028", "\u2029": "\\u2029"}


def default_themes_dir() -> str:
    """themes/ beside the package in a checkout, else the copy shipped inside the package."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # apppaccap/
    for candidate in (os.path.join(os.path.dirname(package), "themes"),
                      os.path.join(package, "themes")):
        if os.path.isdir(os.path.join(candidate, "default")):
            return candidate
    return os.path.join(package, "themes")


def confined(root: str, *parts: str) -> str | None:
    """Join parts below root; None if the result would leave root (.., absolute, symlink)."""
    root = os.path.realpath(root)
    for part in parts:
        if "\x00" in part or "\\" in part:
            return None
    path = os.path.realpath(os.path.join(root, *parts))
    if path != root and not path.startswith(root + os.sep):
        return None
    return path


def list_pages(root: str, theme: str) -> list[str]:
    """Every .html page of a theme, as paths relative to the theme folder."""
    base = confined(root, theme)
    if base is None or not os.path.isdir(base) or base == os.path.realpath(root):
        return []
    pages = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.lower().endswith((".html", ".htm")):
                pages.append(os.path.relpath(os.path.join(dirpath, f), base).replace(os.sep, "/"))
    return pages


def is_token_shaped(value: object) -> bool:
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def safe_theme(root: str, name: object, fallback: str = "default") -> str:
    """name if it is a plain name of an installed theme, else fallback (for redirects)."""
    if is_theme_name(name) and name in list_themes(root):
        return name
    return fallback


def script_json(value: object) -> str:
    """JSON that is safe inside a <script> element (and the JS it is parsed as)."""
    text = json.dumps(value, ensure_ascii=True)
    return re.sub(r"[<>&'\u2028\u2029]", lambda m: _SCRIPT_UNSAFE[m.group()], text)


def has_inline_script(text: str) -> bool:
    return any(not _HAS_SRC.search(m.group(1)) for m in _SCRIPT_TAG.finditer(text))


def add_script_nonce(text: str, nonce: str) -> str:
    """Give every inline <script> of a theme file this response's CSP nonce.

    Runs on the file as the theme's author wrote it, before placeholders are filled, so
    only the author's scripts carry the nonce; filled values cannot open a tag anyway.
    """

    def tag(match: re.Match) -> str:
        if _HAS_SRC.search(match.group(1)):
            return match.group(0)
        return f'<script nonce="{nonce}"{match.group(1)}>'

    return _SCRIPT_TAG.sub(tag, text)


def fill_placeholders(text: str, token: str | None, params: dict | None = None) -> str:
    """Replace the four reference placeholders (case-insensitive), each escaped for its use.

    {%hd_token}: the bare token (JS string or HTML text); {%hd_link_token}: `?token=…` for
    an href; {%hd_ajax_token}: `"token": "…",` for a JS object; {%hd_post_params}:
    `var params = {…};` for a script. A value that is not token-shaped counts as no token.
    """
    if not is_token_shaped(token):
        token = None

    def value(match: re.Match) -> str:
        name = match.group(1).lower()
        if name == "hd_post_params":
            merged = dict(params or {})
            if token:
                merged["token"] = token
            return "var params = " + script_json(merged) + ";"
        if not token:
            return ""
        if name == "hd_token":
            return html.escape(token)
        if name == "hd_link_token":
            return html.escape("?token=" + urllib.parse.quote(token, safe=""))
        return script_json("token") + ": " + script_json(token) + ","

    return _PLACEHOLDER.sub(value, text)
