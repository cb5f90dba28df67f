"""nDPI 4.2 (Debian's libndpi4.2) through ctypes: application protocol, application and
category of a flow from its first packets.

Why ctypes and not the compiled scanner (ingest/_pcapscan.c): the extension is optional
and built without nDPI's headers on machines that lack them, while labelling must work in
live captures too (no extension involved) and must degrade - not disappear with the whole
fast path - when the library is missing. nDPI only ever sees the first packets of a flow
(capture/applabels.py), so the cost of a ctypes call per such packet is small next to
nDPI's own work; the scanner keeps a flow in Python until its label is known.

`open_detector()` returns None (and logs why, once per process) when the library cannot
be loaded or is not the 4.2 ABI this binding declares (`ndpi_protocol` is returned by
value and its layout changed in later releases).
"""

from __future__ import annotations

import ctypes
import json
import logging
import threading

log = logging.getLogger(__name__)

LIBRARY = "libndpi.so.4.2"   # Debian 12's libndpi4.2 (its SONAME)
ABI = "4.2"                  # ndpi_revision() must start with this
UNKNOWN = "Unknown"


class _Protocol(ctypes.Structure):
    # ndpi_typedefs.h (4.2): struct ndpi_proto { u_int16_t master_protocol, app_protocol;
    # ndpi_protocol_category_t category; }
    _fields_ = [("master", ctypes.c_uint16), ("app", ctypes.c_uint16),
                ("category", ctypes.c_int)]


_BITMASK_BYTES = 512 // 8    # NDPI_NUM_BITS / 8 (ndpi_define.h)
_SERIALIZER_BYTES = 1024     # sizeof(ndpi_serializer) is ~100 bytes in 4.2: room to spare
_JSON = 2                    # ndpi_serialization_format_json
_reported: set = set()
_init_lock = threading.Lock()  # ndpi_init_detection_module calls must not run in parallel
_libs: dict = {}


def _report(reason: str) -> None:
    if reason not in _reported:
        _reported.add(reason)
        log.warning("application labels are off: %s; connections stay unlabelled", reason)


def _load(name: str):
    lib = _libs.get(name)
    if lib is not None:
        return lib
    lib = ctypes.CDLL(name)
    vp, u16, u8 = ctypes.c_void_p, ctypes.c_uint16, ctypes.c_uint8
    lib.ndpi_revision.restype = ctypes.c_char_p
    lib.ndpi_revision.argtypes = []
    lib.ndpi_init_detection_module.restype = vp
    lib.ndpi_init_detection_module.argtypes = [ctypes.c_uint32]
    lib.ndpi_set_protocol_detection_bitmask2.argtypes = [vp, ctypes.c_char_p]
    lib.ndpi_finalize_initialization.argtypes = [vp]
    lib.ndpi_exit_detection_module.argtypes = [vp]
    lib.ndpi_detection_get_sizeof_ndpi_flow_struct.restype = ctypes.c_uint32
    lib.ndpi_flow_malloc.restype = vp
    lib.ndpi_flow_malloc.argtypes = [ctypes.c_size_t]
    lib.ndpi_free_flow.argtypes = [vp]
    lib.ndpi_detection_process_packet.restype = _Protocol
    lib.ndpi_detection_process_packet.argtypes = [vp, vp, ctypes.c_char_p, ctypes.c_ushort,
                                                  ctypes.c_uint64]
    lib.ndpi_detection_giveup.restype = _Protocol
    lib.ndpi_detection_giveup.argtypes = [vp, vp, u8, ctypes.POINTER(u8)]
    lib.ndpi_extra_dissection_possible.restype = u8
    lib.ndpi_extra_dissection_possible.argtypes = [vp, vp]
    lib.ndpi_get_proto_name.restype = ctypes.c_char_p
    lib.ndpi_get_proto_name.argtypes = [vp, u16]
    lib.ndpi_category_get_name.restype = ctypes.c_char_p
    lib.ndpi_category_get_name.argtypes = [vp, ctypes.c_int]
    lib.ndpi_init_serializer.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.ndpi_term_serializer.argtypes = [ctypes.c_char_p]
    lib.ndpi_dpi2json.argtypes = [vp, vp, _Protocol, ctypes.c_char_p]
    lib.ndpi_serializer_get_buffer.restype = ctypes.POINTER(ctypes.c_char)
    lib.ndpi_serializer_get_buffer.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint32)]
    _libs[name] = lib
    return lib


class Detector:
    """One nDPI detection module (not thread-safe: one per capture or ingest)."""

    def __init__(self, lib):
        self.lib = lib
        with _init_lock:
            mod = lib.ndpi_init_detection_module(0)
        if not mod:
            raise MemoryError("ndpi_init_detection_module failed")
        self.mod = mod
        lib.ndpi_set_protocol_detection_bitmask2(mod, b"\xff" * _BITMASK_BYTES)
        lib.ndpi_finalize_initialization(mod)
        self.flow_size = lib.ndpi_detection_get_sizeof_ndpi_flow_struct()
        # names()' memo, (master, app, category) -> its names; read directly by the
        # compiled scanner (ingest/_pcapscan.c settle) before it calls names()
        self.names_memo: dict = {}
        self._extra = lib.ndpi_extra_dissection_possible
        self._process = lib.ndpi_detection_process_packet

    def new_flow(self) -> int:
        flow = self.lib.ndpi_flow_malloc(self.flow_size)
        if not flow:
            raise MemoryError("ndpi_flow_malloc failed")
        ctypes.memset(flow, 0, self.flow_size)
        return flow

    def process(self, flow: int, l3: bytes, ts_ms: int) -> tuple[int, int, int, bool]:
        """Feed one packet (from its IP header); returns (master, app, category, more):
        `more` is False once nDPI has nothing more to learn from this flow."""
        p = self._process(self.mod, flow, l3, min(len(l3), 0xFFFF), ts_ms)
        if p.app == 0 and p.master == 0:
            return 0, 0, p.category, True
        return p.master, p.app, p.category, bool(self._extra(self.mod, flow))

    def giveup(self, flow: int) -> tuple[int, int, int]:
        """What nDPI concludes without more packets (guessing from ports and addresses, as
        ndpiReader does at the end of a file)."""
        guessed = ctypes.c_uint8(0)
        p = self.lib.ndpi_detection_giveup(self.mod, flow, 1, ctypes.byref(guessed))
        return p.master, p.app, p.category

    def details(self, flow: int, master: int, app: int, category: int) -> dict:
        """nDPI's own account of a flow (ndpi_dpi2json): host names it read (HTTP Host, TLS
        SNI, the DNS query), the HTTP user agent... {} when it has none."""
        ser = ctypes.create_string_buffer(_SERIALIZER_BYTES)
        if self.lib.ndpi_init_serializer(ser, _JSON) != 0:
            return {}
        try:
            if self.lib.ndpi_dpi2json(self.mod, flow, _Protocol(master, app, category), ser):
                return {}
            size = ctypes.c_uint32(0)
            buf = self.lib.ndpi_serializer_get_buffer(ser, ctypes.byref(size))
            text = ctypes.string_at(buf, size.value).decode("utf-8", "replace") if buf else ""
        finally:
            self.lib.ndpi_term_serializer(ser)
        try:
            out = json.loads(text)
        except ValueError:
            return {}
        return out if isinstance(out, dict) else {}

    def free_flow(self, flow: int) -> None:
        self.lib.ndpi_free_flow(flow)

    def names(self, master: int, app: int, category: int) -> tuple[str, str, str]:
        """(AppProtocol, App, Category): ndpiReader's "master.app" split in two, e.g.
        (TLS, Google, Web); a flow with one id has it as AppProtocol and no App."""
        key = (master, app, category)
        out = self.names_memo.get(key)
        if out is None:
            name = self._proto_name
            if master and app and master != app:
                out = (name(master), name(app))
            else:
                out = (name(master or app) if master or app else UNKNOWN, "")
            cat = self.lib.ndpi_category_get_name(self.mod, category)
            out = self.names_memo[key] = (*out, cat.decode("ascii", "replace") if cat else "")
        return out

    def _proto_name(self, pid: int) -> str:
        raw = self.lib.ndpi_get_proto_name(self.mod, pid)
        return raw.decode("ascii", "replace") if raw else UNKNOWN

    def close(self) -> None:
        if self.mod:
            self.lib.ndpi_exit_detection_module(self.mod)
            self.mod = None


def open_detector(library: str | None = None) -> Detector | None:
    """A new detection module, or None when nDPI is unusable here (the reason is logged
    once per process)."""
    name = library or LIBRARY
    try:
        lib = _load(name)
        revision = (lib.ndpi_revision() or b"").decode("ascii", "replace")
    except (OSError, AttributeError) as exc:
        _report(f"cannot load {name} (install Debian's libndpi4.2): {exc}")
        return None
    if not revision.startswith(ABI):
        _report(f"{name} is nDPI {revision}, this binding declares the {ABI} ABI")
        return None
    try:
        return Detector(lib)
    except MemoryError as exc:
        _report(str(exc))
        return None
