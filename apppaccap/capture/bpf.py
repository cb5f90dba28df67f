"""BPF capture filters on their way into libpcap: only text that reaches C intact.

Why this module exists: pypcap 1.3's `pcap.setfilter(value)` frees the handle's previous
filter string *before* it encodes `value` to UTF-8. When the encoding fails - a lone
surrogate such as "\\ud800", which a JSON body can carry, or a bytes object - the freed
pointer stays in the handle and is freed again when the handle is collected: glibc
aborts the whole service with "free(): double free detected". So every filter is
checked here first (valid Unicode, no NUL, bounded length), and a handle whose
setfilter failed any other way is never collected.
"""

from __future__ import annotations

import logging

from apppaccap.errors import Malformed

MAX_FILTER_CHARS = 8192  # tcpdump expressions are short; libpcap's parser is recursive
log = logging.getLogger(__name__)
_POISONED: list = []  # handles pypcap left with a dangling pointer: kept, never freed


def filter_text(text) -> str:
    """The filter, stripped; MALFORMED (naming `filter`) when C cannot receive it whole."""
    if not isinstance(text, str):
        raise Malformed("filter: expected a string")
    text = text.strip()
    if len(text) > MAX_FILTER_CHARS:
        raise Malformed(f"filter: longer than {MAX_FILTER_CHARS} characters")
    if "\x00" in text:
        # a C string ends at the NUL: "tcp\0 and port 1" would silently capture all of tcp
        raise Malformed("filter: contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Malformed(f"filter: is not valid Unicode (a lone surrogate at position "
                        f"{exc.start})") from None
    return text


def filter_bytes(text) -> bytes:
    """The filter as the C string libpcap's pcap_compile() takes."""
    return filter_text(text).encode("utf-8")


def set_filter(handle, text: str) -> None:
    """Compile and install `text` on a pypcap handle; libpcap's complaint → MALFORMED."""
    text = filter_text(text)
    try:
        handle.setfilter(text)
    except OSError as exc:  # libpcap refused the expression; the handle stays sound
        raise Malformed(f"filter: {_message(exc)}") from None
    except Exception:
        # pypcap freed its filter string and failed before storing a new one: closing the
        # pcap_t is safe, letting the object be collected is not (double free).
        handle.close()
        _POISONED.append(handle)
        log.error("libpcap filter could not be set; handle kept to avoid a double free")
        raise Malformed("filter: cannot be passed to libpcap") from None


def _message(exc: OSError) -> str:
    arg = exc.args[0] if exc.args else exc
    if isinstance(arg, bytes):
        return arg.decode("utf-8", "replace")
    return str(arg)
