"""The libbpf the eBPF loader (ebpf.py) drives through ctypes: the library with the
functions it calls typed, its callbacks' types, and libbpf's diagnostics kept for the
load error a person reads."""

from __future__ import annotations

import ctypes
import ctypes.util

SAMPLE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
PRINT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class LoadError(Exception):
    """eBPF attribution cannot run here; the message says why (logged once)."""


def open_libbpf():
    """libbpf through ctypes, the functions the loader calls typed."""
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise LoadError(f"libbpf is not installed (Debian package libbpf1): {exc}") from None
    vp, ci = ctypes.c_void_p, ctypes.c_int
    for fn, res, args in (
            ("bpf_object__open_file", vp, [ctypes.c_char_p, vp]),
            ("bpf_object__load", ci, [vp]),
            ("bpf_object__close", None, [vp]),
            ("bpf_object__next_program", vp, [vp, vp]),
            ("bpf_program__name", ctypes.c_char_p, [vp]),
            ("bpf_program__attach", vp, [vp]),
            ("bpf_program__attach_cgroup", vp, [vp, ci]),
            ("bpf_program__section_name", ctypes.c_char_p, [vp]),
            ("bpf_link__destroy", ci, [vp]),
            ("bpf_object__find_map_fd_by_name", ci, [vp, ctypes.c_char_p]),
            ("ring_buffer__new", vp, [ci, SAMPLE, vp, vp]),
            ("ring_buffer__poll", ci, [vp, ci]),
            ("ring_buffer__consume", ci, [vp]),
            ("ring_buffer__free", None, [vp]),
            ("bpf_map_lookup_elem", ci, [ci, vp, vp]),
            ("libbpf_num_possible_cpus", ci, []),
            ("libbpf_set_print", vp, [PRINT])):
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    return lib


class Messages:
    """libbpf's own diagnostics (the verifier's reason, say), kept for the load error."""

    def __init__(self):
        self.lines: list[str] = []
        libc = ctypes.CDLL(None)
        self._vsnprintf = libc.vsnprintf
        self._vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                    ctypes.c_void_p]
        self.callback = PRINT(self._print)

    def _print(self, level, fmt, args):
        buf = ctypes.create_string_buffer(512)
        self._vsnprintf(buf, 512, fmt, args)
        if level <= 1 and len(self.lines) < 200:   # warnings and info; debug is dropped
            self.lines.append(buf.value.decode(errors="replace").rstrip())
        return 0

    def tail(self, n: int = 3) -> str:
        useful = [ln for ln in self.lines if ln and not ln.startswith("libbpf: prog '")]
        return "; ".join((useful or self.lines)[-n:])
