"""The browser boundary of the door: which Host, Origin and Referer a request may carry.

A page on any other site can make the visitor's browser POST to 127.0.0.1; what stops it
is that browsers say where a request comes from. The rules (docs/SECURITY.md):

* Host must name this server (DNS rebinding).
* Origin, when present, must be exactly http://<one of our names>:<our port>. `null`
  (sandboxed frames, data: and file: pages), https (we serve plain http), another port,
  user info, a path, or anything that does not parse: refused.
* A state-changing request (any method but GET/HEAD/OPTIONS) without Origin: refused when
  Sec-Fetch-Site says another site, or when its Referer is not one of our pages (or does
  not parse). Modern browsers send Origin with every POST, so this is the case of older
  browsers; a request with neither header is either a script (curl, the CLI) or a browser
  whose Referer was suppressed - the door tells those apart with `looks_like_browser` and
  asks the latter for a token (app.py).
"""

from __future__ import annotations

import re

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

# scheme://host[:port] and nothing else. Hosts: a DNS name, an IPv4 address or a
# bracketed IPv6 address; the port at most five digits.
_ORIGIN = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9.-]+)"
                     r"(?::(?P<port>[0-9]{1,5}))?", re.IGNORECASE)


def _same_origin(scheme: str, host: str, port: str | None, names: set[str],
                 our_port: int) -> bool:
    default = 80 if scheme.lower() == "http" else None
    got = int(port) if port else default
    return scheme.lower() == "http" and host.lower() in names and got == our_port


def origin_is_ours(origin: str, names: set[str], our_port: int) -> bool:
    """Is an Origin header exactly this server's origin?"""
    m = _ORIGIN.fullmatch(origin.strip())
    return bool(m) and _same_origin(m["scheme"], m["host"], m["port"], names, our_port)


def referer_is_ours(referer: str, names: set[str], our_port: int) -> bool:
    """Is a Referer one of this server's URLs (any path)?"""
    m = _ORIGIN.match(referer.strip())
    if not m or referer.strip()[m.end():m.end() + 1] not in ("", "/", "?", "#"):
        return False  # "http://127.0.0.1:8733@evil.example/" and the like
    return _same_origin(m["scheme"], m["host"], m["port"], names, our_port)


def host_names(allowed: set[str]) -> set[str]:
    """Names as Origin/Referer spell them: lower case, IPv6 in brackets and without."""
    names = {a.lower() for a in allowed}
    return names | {f"[{a}]" for a in names if ":" in a and not a.startswith("[")}


def refusal(method: str, headers, names: set[str], our_port: int) -> str | None:
    """Why a request must be refused for its Origin/Referer, or None."""
    origin = headers.get("Origin")
    if origin is not None:
        if origin_is_ours(origin, names, our_port):
            return None
        return f"Origin: cross-site request from {quote(origin)} refused"
    if method.upper() in SAFE_METHODS:
        return None
    site = (headers.get("Sec-Fetch-Site") or "").strip().lower()
    if site and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: {quote(site)} request refused"
    referer = headers.get("Referer")
    if referer is not None and not referer_is_ours(referer, names, our_port):
        return f"Referer: cross-site request from {quote(referer)} refused"
    return None


def looks_like_browser(headers) -> bool:
    """A POST without Origin and Referer from something that says it is a browser.

    Every browser's User-Agent starts with "Mozilla/"; scripts (curl, python, the CLI)
    do not unless told to, and a page cannot make a browser drop its own.
    """
    if headers.get("Origin") is not None or headers.get("Referer") is not None:
        return False
    return (headers.get("User-Agent") or "").startswith("Mozilla/")


def quote(value: str) -> str:
    """A header value shown in a message: printable, short, quoted."""
    text = "".join(c if c.isprintable() else "?" for c in value[:80])
    return f'"{text}"' + ("..." if len(value) > 80 else "")
