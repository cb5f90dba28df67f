"""One load of the eBPF programs per process, however many engines ask the kernel.

The captures' resolver and usage accounting's lookup each had their own `KernelFlows`:
with usage on by default, every capture ran each program twice per packet (net_dev_queue
≈1.1 µs a run) and kept two ring buffers and two consumer threads. `shared_kernel()` hands
every `EbpfOwners` a `KernelUse` onto one `KernelFlows` per object file: the first start
loads it, the last stop unloads it, everything in between reads the same table. Only the
captures' resolver sets `on_seen` (it relabels flows); usage only reads.
"""

from __future__ import annotations

import threading

from apppaccap.attribution.ebpf import OBJECT
from apppaccap.attribution.ebpf import KernelFlows

_lock = threading.Lock()
_loaded: dict[str, list] = {}   # object path → [KernelFlows, users]


class KernelUse:
    """A user's handle on the process's `KernelFlows` for `object_path`: start() and stop()
    count users; everything else is the shared instance's."""

    def __init__(self, object_path: str = OBJECT):
        self.object_path = object_path
        self._kernel: KernelFlows | None = None

    def start(self) -> None:
        """Join the loaded programs, or load them (LoadError as KernelFlows.start)."""
        with _lock:
            if self._kernel is not None:
                return
            entry = _loaded.get(self.object_path)
            if entry is None:
                kernel = KernelFlows(self.object_path)
                kernel.start()   # raises LoadError: nobody is counted, nothing stays loaded
                entry = _loaded[self.object_path] = [kernel, 0]
            entry[1] += 1
            self._kernel = entry[0]

    def stop(self) -> None:
        with _lock:
            kernel, self._kernel = self._kernel, None
            entry = _loaded.get(self.object_path)
            if kernel is None or entry is None or entry[0] is not kernel:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _loaded[self.object_path]
                kernel.stop()

    def port_generation(self, port: int) -> int | None:
        kernel = self._kernel
        return kernel.port_generation(port) if kernel is not None else None

    @property
    def on_seen(self):
        return self._kernel.on_seen if self._kernel is not None else None

    @on_seen.setter
    def on_seen(self, fn) -> None:
        if self._kernel is not None:
            self._kernel.on_seen = fn

    def __getattr__(self, name):
        # flows, socks, stats, load_ms, drain, owner, comm_of, counters: the shared ones
        kernel = self.__dict__.get("_kernel")
        if kernel is None:
            raise AttributeError(f"{name}: the eBPF programs are not loaded for this user")
        return getattr(kernel, name)


def users(object_path: str = OBJECT) -> int:
    """How many engines share the loaded programs now (0: not loaded)."""
    with _lock:
        entry = _loaded.get(object_path)
        return entry[1] if entry is not None else 0
