/* Adapters: every libpcap device, system-wide capture start/stop, monitor mode. */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;
  var $panel, table, systems, $attr, chosen = {}, timer = null;

  function load() {
    api("adapter_list").then(function (list) { table.set(list); }, App.fail);
    loadSystems();
    // which attribution backend names packets (eBPF or the socket table), and why not eBPF
    api("apppaccap").then(function (info) {
      var a = info.Attribution || {};
      $attr.text("Attribution: " + (a.Backend || "loaded with the first capture") +
        " (setting " + (a.Setting || "auto") + ")" + (a.Reason && a.Backend ? " - " + a.Reason : ""));
    }, App.fail);
  }
  function loadSystems() {
    api("capture_list_active").then(function (list) {
      systems.set(list.filter(function (c) { return c.Type === CAPTURE_TYPE_SYSTEM; }));
    }, App.fail);
  }

  function start() {
    var names = Object.keys(chosen).filter(function (k) { return chosen[k]; });
    var flags = $panel.find("[name=resolve]").prop("checked") ? CAPTURE_FLAG_RESOLVE_IPS : 0;
    var $b = $panel.find(".startsys").prop("disabled", true);
    api("capture_start_system", {filter: $panel.find("[name=sysbpf]").val().trim(), flags: flags, adapter: names})
      .then(function (cap) {
        ui.toast("System capture #" + cap.CaptureId + " started on " + cap.Adapters.join(", "));
        App.refreshLive();
        App.go("capture", cap.CaptureId, "packets");
      }, App.fail).always(function () { $b.prop("disabled", false); });
  }

  function monitor(a, on) {
    api(on ? "monitor_start" : "monitor_stop", {tap_id: a.AdapterId}).then(function () {
      ui.toast("Monitor mode " + (on ? "on" : "off") + " for " + a.Name);
      load();
    }, App.fail);
  }

  function init($p) {
    $panel = $p;
    var $tools = ui.el("div", "toolbar").append(
      ui.field("Capture filter (BPF, optional)", ui.input("sysbpf", "e.g. not port 22").addClass("mono"), "wide"),
      ui.checkbox("Resolve IPs", "resolve", true),
      ui.button("Start system capture", "primary rec startsys", start),
      ui.el("span", "help", "Tick adapters to capture on; none ticked = every adapter that is up."));
    $attr = ui.el("p", "help attribution-backend", "");
    table = ui.table([
      {title: "", render: function (a) {
        return ui.el("input").attr({type: "checkbox", "aria-label": "capture on " + a.Name})
          .prop({checked: !!chosen[a.Name], disabled: a.Capturable === false})
          .on("change", function () { chosen[a.Name] = this.checked; });
      }, width: "24px"},
      {title: "Name", get: function (a) { return a.Name; }, cls: "mono"},
      {title: "Description", get: function (a) { return a.Description; }},
      {title: "Addresses", get: function (a) { return (a.Addresses || []).join(", "); }, cls: "mono"},
      {title: "MAC", get: function (a) { return a.Mac; }, cls: "mono"},
      {title: "State", get: function (a) { return a.Up ? "up" : "down"; }, render: function (a) {
        return ui.badge(a.Up ? "up" : "down", a.Up ? "state-completed" : "");
      }},
      {title: "Kind", get: function (a) {
        return [a.Loopback ? "loopback" : "", a.Wireless ? "wireless" : "", a.MonitorMode ? "monitor mode" : ""]
          .filter(Boolean).join(", ");
      }},
      {title: "Link type", get: function (a) { return a.LinkType; }, text: function (a) {
        return a.Capturable === false ? "\u2014" : fmt.linkType(a.LinkType); }},
      {title: "", cls: "actions", render: function (a) {
        if (!api.has("monitor_start") || !a.Wireless) return "";
        return ui.button(a.MonitorMode ? "Monitor off" : "Monitor on", "small", function () { monitor(a, !a.MonitorMode); });
      }}
    ], {key: function (a) { return a.AdapterId; }, empty: "No adapters found (is libpcap installed?)."});
    systems = ui.table([
      {title: "ID", get: function (c) { return c.CaptureId; }, cls: "num"},
      {title: "Adapters", get: function (c) { return c.Adapters.join(", "); }, cls: "mono"},
      {title: "Filter", get: function (c) { return c.Filter; }, cls: "mono"},
      {title: "Started", get: function (c) { return c.StartTime; }, text: function (c) { return fmt.time(c.StartTime); }},
      {title: "Packets", get: function (c) { return c.PacketCount; }, text: function (c) { return fmt.num(c.PacketCount); }, cls: "num"},
      {title: "Bytes", get: function (c) { return c.ByteCount; }, text: function (c) { return fmt.bytes(c.ByteCount); }, cls: "num"},
      {title: "Dropped", get: function (c) { return c.DroppedCount; }, text: function (c) { return fmt.num(c.DroppedCount); }, cls: "num"},
      {title: "", cls: "actions", render: function (c) {
        return $().add(ui.button("Open", "small", function () { App.go("capture", c.CaptureId, "packets"); }))
          .add(ui.button("Stop", "small danger", function () {
            api("capture_stop_system", {capture_id: c.CaptureId}).then(function () {
              ui.toast("System capture #" + c.CaptureId + " stopped"); load(); App.refreshLive();
            }, App.fail);
          }));
      }}
    ], {empty: "No system capture is running."});
    $panel.append(ui.section("Network adapters", ui.button("Refresh", "small", load)).append($tools, $attr, table),
      ui.section("Running system captures").append(systems));
  }

  App.views.adapters = {
    title: "Adapters", init: init,
    show: function () { load(); clearInterval(timer); timer = setInterval(loadSystems, 3000); },
    hide: function () { clearInterval(timer); }
  };
})();
