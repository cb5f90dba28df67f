"""BPF capture filters on their way into libpcap: only text that reaches C intact.

Why this module exists: pypcap 1.3's `pcap.setfilter(value)` frees the handle's previous
filter string *before* it encodes `value` to UTF-8. When the encoding fails - a lone
surrogate such as "\\ud800", which a JSON body can carry, or a bytes object - the freed
pointer stays in the handle and is freed again when the handle is collected: glibc
aborts the whole service with "free(): double free detected". So every filter is
checked here first (valid Unicode, no NUL, bounded length), and a handle whose
setfilter failed any other way is never collected.

`compile_check` compiles a filter without a capture handle (a trigger's filter is checked
when the trigger is added, long before its first capture): pypcap cannot compile without
opening a device, so libpcap's pcap_compile is called through ctypes on a "dead" handle.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

from apppaccap.errors import Malformed
from apppaccap.errors import Unsupported

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


# -- compiling without a capture handle (libpcap through ctypes) -------------------------

DLT_EN10MB = 1
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


_libpcap = None


def _pcap_lib():
    """libpcap with the prototypes used here; False when it cannot be found."""
    global _libpcap
    if _libpcap is None:
        name = ctypes.util.find_library("pcap") or ctypes.util.find_library("wpcap")
        if not name:
            _libpcap = False
            return False
        lib = ctypes.CDLL(name)
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram),
                                     ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32]
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        _libpcap = lib
    return _libpcap


def compile_error(text, linktype: int = DLT_EN10MB) -> str:
    """Why libpcap refuses to compile `text` for `linktype`, as a sentence a person reads;
    "" when it compiles (an empty filter captures everything). Text C cannot receive whole
    (see filter_text) is refused with the same kind of sentence. UNSUPPORTED when libpcap
    cannot be loaded."""
    try:
        text = filter_text(text)
    except Malformed as exc:  # "filter: longer than …" → "the filter is longer than …"
        reason = str(exc).removeprefix("filter: ")
        return f"the filter {'is ' if reason.startswith('longer') else ''}{reason}"
    if not text:
        return ""
    lib = _pcap_lib()
    if not lib:
        raise Unsupported("libpcap cannot be loaded here, so filters cannot be checked")
    handle = lib.pcap_open_dead(linktype, 262144)
    if not handle:
        raise Unsupported("libpcap could not open a handle to compile the filter on")
    try:
        prog = _BpfProgram()
        if lib.pcap_compile(handle, ctypes.byref(prog), filter_bytes(text), 1,
                            PCAP_NETMASK_UNKNOWN) != 0:
            return readable(lib.pcap_geterr(handle) or b"")
        lib.pcap_freecode(ctypes.byref(prog))
    finally:
        lib.pcap_close(handle)
    return ""


def readable(message: bytes) -> str:
    """libpcap's complaint as text: decoded, control characters and runs of blanks made one
    space, "the filter does not compile" when libpcap said nothing."""
    text = message.decode("utf-8", "replace")
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text or "the filter does not compile"


def compile_check(text, linktype: int = DLT_EN10MB) -> str:
    """The filter (as filter_text returns it) once libpcap compiled it for `linktype`;
    MALFORMED with libpcap's own message when it does not compile. Without libpcap to ask,
    the filter is returned unchecked (the capture start reports it)."""
    text = filter_text(text)  # valid Unicode, no NUL, bounded: what C receives whole
    try:
        error = compile_error(text, linktype)
    except Unsupported:
        return text
    if error:
        raise Malformed(f"filter: {error}")
    return text
