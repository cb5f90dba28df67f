"""Theme files: locating the themes directory, confined paths and token placeholders."""

from __future__ import annotations

import json
import os
import re

_PLACEHOLDER = re.compile(r"\{%(hd_token|hd_link_token|hd_ajax_token|hd_post_params)\}", re.I)


def default_themes_dir() -> str:
    """themes/ beside the package in a checkout, else the copy shipped inside the package."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(os.path.dirname(here), "themes"), os.path.join(here, "themes")):
        if os.path.isdir(os.path.join(candidate, "default")):
            return candidate
    return os.path.join(here, "themes")


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


def list_themes(root: str) -> list[str]:
    if not os.path.isdir(root):
        return []
    return sorted(d for d in os.listdir(root)
                  if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))


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


def fill_placeholders(text: str, token: str | None, params: dict | None = None) -> str:
    """Replace the four token placeholders (case-insensitive)."""

    def value(match: re.Match) -> str:
        name = match.group(1).lower()
        if name == "hd_post_params":
            merged = dict(params or {})
            if token:
                merged["token"] = token
            return "var params = " + json.dumps(merged) + ";"
        if not token:
            return ""
        if name == "hd_token":
            return token
        if name == "hd_link_token":
            return "?token=" + token
        return json.dumps("token") + ": " + json.dumps(token) + ","

    return _PLACEHOLDER.sub(value, text)
