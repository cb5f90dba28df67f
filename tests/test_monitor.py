"""monitor_start / monitor_stop: real refusals on this host's adapters (no Wi-Fi here) and
the switching decisions with an injected runner, link control and adapter list."""

from __future__ import annotations

import pytest

from apppaccap.capture.adapters import list_adapters
from apppaccap.capture.monitor import MonitorSwitch
from apppaccap.capture.monitor import supports_monitor
from apppaccap.errors import Busy
from apppaccap.errors import NotFound
from apppaccap.errors import Unsupported

PHY_INFO = """Wiphy phy0
\tmax # scan SSIDs: 4
\tSupported interface modes:
\t\t * IBSS
\t\t * managed
\t\t * AP
\t\t * monitor
\tBand 1:
"""


def _wired(ajax):
    """A real wired adapter of this host (eth0 or a veth), as adapter_list reports it."""
    wired = [a for a in ajax.ok("adapter_list")
             if not a["Loopback"] and not a["Wireless"] and a["LinkType"] == 1]
    assert wired, "no wired adapter to test the refusal on"
    return wired[0]


@pytest.mark.live
def test_loopback_and_wired_adapters_are_unsupported_for_real(ajax):
    for action in ("monitor_start", "monitor_stop"):
        body = ajax(action, tap_id="lo")
        assert body["ErrorCode"] == 10, body
        assert body["ReturnValue"] == ("tap_id: lo is a loopback adapter; monitor mode needs "
                                       "a wireless (802.11) adapter")
        wired = _wired(ajax)
        body = ajax(action, tap_id=wired["AdapterId"])
        assert body["ErrorCode"] == 10, body
        assert body["ReturnValue"].startswith(
            f"tap_id: {wired['AdapterId']} is not a wireless adapter (")
    # nothing changed: still no monitor mode anywhere
    assert not any(a["MonitorMode"] for a in ajax.ok("adapter_list"))


def test_unknown_and_blank_tap_ids(ajax):
    body = ajax("monitor_start", tap_id="wlan-nope")
    assert (body["ErrorCode"], body["ReturnValue"]) == (
        6, "tap_id: no adapter 'wlan-nope' (see adapter_list)")
    body = ajax("monitor_stop", tap_id="../../etc/passwd")
    assert body["ErrorCode"] == 6
    assert ajax("monitor_start", tap_id="")["ReturnValue"] == "tap_id: required"
    assert ajax("monitor_start")["ReturnValue"] == "tap_id: required"


def test_pseudo_device_is_unsupported():
    sw = MonitorSwitch(adapters=lambda: list_adapters(["any"]))  # real facts of "any"
    with pytest.raises(Unsupported, match="any is a libpcap pseudo-device"):
        sw.start("any")


class FakeHost:
    """One wireless adapter whose type the fake `iw` really changes."""

    def __init__(self, *, iw="/usr/sbin/iw", phy_info=PHY_INFO, set_type_result=(0, "")):
        self.monitor = False
        self.up = True
        self.calls: list = []
        self.iw, self.phy_info, self.set_type_result = iw, phy_info, set_type_result

    def adapters(self):
        return [{"AdapterId": "wlan0", "Loopback": False, "Wireless": True,
                 "MonitorMode": self.monitor, "Up": self.up, "Description": "802.11"}]

    def run(self, argv):
        self.calls.append(tuple(argv))
        if argv[1] == "phy":
            return 0, self.phy_info
        code, text = self.set_type_result
        if code == 0:
            assert not self.up, "type changed on a running interface"
            self.monitor = argv[-1] == "monitor"
        return code, text

    def link(self, name, up):
        self.calls.append(("link", name, "up" if up else "down"))
        self.up = up

    def switch(self):
        return MonitorSwitch(adapters=self.adapters, run=self.run, which=lambda n: self.iw,
                             link=self.link, phy_of=lambda n: "phy0")


def test_switches_down_set_type_up_and_back():
    host = FakeHost()
    a = host.switch().start("wlan0")
    assert a["MonitorMode"] is True and host.up
    assert host.calls == [("/usr/sbin/iw", "phy", "phy0", "info"), ("link", "wlan0", "down"),
                          ("/usr/sbin/iw", "dev", "wlan0", "set", "type", "monitor"),
                          ("link", "wlan0", "up")]
    host.calls.clear()
    host.switch().start("wlan0")  # already: nothing to do
    assert host.calls == []
    a = host.switch().stop("wlan0")
    assert a["MonitorMode"] is False and host.calls[1:] == [
        ("/usr/sbin/iw", "dev", "wlan0", "set", "type", "managed"), ("link", "wlan0", "up")]
    host.calls.clear()
    host.switch().stop("wlan0")  # not in monitor mode: left alone
    assert host.calls == []


def test_missing_iw_is_unsupported_and_touches_nothing():
    host = FakeHost(iw=None)
    with pytest.raises(Unsupported, match=r"wlan0 is wireless, but the `iw` tool \(package iw\) "
                                          "is not installed"):
        host.switch().start("wlan0")
    assert host.calls == [] and host.up


def test_driver_without_monitor_mode_is_unsupported():
    host = FakeHost(phy_info=PHY_INFO.replace("\t\t * monitor\n", ""))
    with pytest.raises(Unsupported, match="does not support monitor mode"):
        host.switch().start("wlan0")
    assert host.calls == [("/usr/sbin/iw", "phy", "phy0", "info")]


def test_busy_driver_is_busy_and_the_link_comes_back_up():
    host = FakeHost(set_type_result=(240, "command failed: Device or resource busy (-16)"))
    with pytest.raises(Busy, match="wlan0 is busy"):
        host.switch().start("wlan0")
    assert host.up and not host.monitor


def test_refused_switch_is_unsupported_with_iw_message():
    host = FakeHost(set_type_result=(161, "command failed: Operation not supported (-95)"))
    with pytest.raises(Unsupported, match=r"Operation not supported \(-95\)"):
        host.switch().start("wlan0")
    assert host.up


def test_unknown_adapter_with_injected_list():
    with pytest.raises(NotFound):
        FakeHost().switch().start("wlan9")


def test_phy_info_parsing():
    assert supports_monitor(PHY_INFO)
    assert not supports_monitor(PHY_INFO.replace("monitor", "mesh point"))
    assert not supports_monitor("Wiphy phy0\n\tSupported commands:\n\t\t * monitor\n")
