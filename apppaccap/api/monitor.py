"""monitor_start, monitor_stop: 802.11 monitor mode on a wireless adapter."""

from __future__ import annotations

from apppaccap.api.registry import endpoint
from apppaccap.capture.monitor import MonitorSwitch
from apppaccap.wire import DataType


@endpoint(DataType.INT)
def monitor_start(ctx, *, tap_id: str) -> int:
    """Put a wireless adapter in monitor mode (captures then see raw 802.11 frames, radiotap).

    Linux: link down, `iw dev X set type monitor`, link up; NETADAPTER.MonitorMode then
    reads 1. Already in monitor mode: nothing to do. UNSUPPORTED, with the reason, for
    wired, loopback and pseudo adapters, for drivers without monitor mode and when `iw`
    is not installed (nothing is installed at run time); BUSY when the driver refuses
    because another program manages the interface.
    - tap_id: the adapter's AdapterId (its interface name, see adapter_list)
    """
    MonitorSwitch().start(tap_id)
    return 0


@endpoint(DataType.INT)
def monitor_stop(ctx, *, tap_id: str) -> int:
    """Return a wireless adapter from monitor mode to managed (station) mode.

    An adapter not in monitor mode is left alone (wired or loopback ones: UNSUPPORTED,
    with the reason).
    - tap_id: the adapter's AdapterId (its interface name, see adapter_list)
    """
    MonitorSwitch().stop(tap_id)
    return 0
