/* Fleet (fleet_*): the sensors shipping to this server's ClickHouse with their status, the
 * top programs across hosts, and "who talks to X" over every sensor's connections, each
 * connection opening on its own sensor (setting fleet_sensors) or fetched as PCAPNG. */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;
  var $panel, hostT, topT, connT, $note, $status, sensors = {};
  var LATE_S = 60;

  function sensorLinks() {
    // fleet_sensors: "name=http://host:port, ..." (docs/FLEET.md); only this server's own
    // setting decides where a link points, never what ClickHouse reports
    return api("settings_get_by_key", {key_name: "fleet_sensors"}).then(function (text) {
      var out = {};
      String(text || "").split(",").forEach(function (item) {
        var i = item.indexOf("="), name = item.slice(0, i).trim(), url = item.slice(i + 1).trim();
        if (i > 0 && /^https?:\/\//.test(url)) out[name] = url.replace(/\/+$/, "");
      });
      return out;
    }, function () { return $.Deferred().resolve({}).promise(); });
  }

  function status(h) {
    if (h.GapRows) return ui.badge("gap: " + fmt.num(h.GapRows) + " rows lost", "state-failed");
    if (h.LagSeconds > LATE_S) return ui.badge("late", "state-interrupted");
    return ui.badge("reporting", "state-completed");
  }

  function load() {
    $note.prop("hidden", true);
    return $.when(api("fleet_hosts"), sensorLinks()).then(function (out, links) {
      sensors = links;
      hostT.set(out.Hosts);
      var l = out.Local || {};
      $status.text(l.LastError ? "This server cannot ship: " + l.LastError
        : "This server: " + fmt.num(l.ShippedRows || 0) + " rows shipped, spool " + fmt.bytes(l.SpoolBytes || 0) +
          (l.GapRows ? ", " + fmt.num(l.GapRows) + " rows dropped" : ""));
      return top();
    }, function (r) {
      hostT.set([]); topT.set([]); connT.set([]);
      $note.text(r.ReturnValue).prop("hidden", false);
    });
  }

  function top() {
    return api("fleet_group_by", {group_by: "program", metric: "bytes", top: 10}).then(function (out) {
      topT.set(out.Rows);
    }, App.fail);
  }

  /* An address or CIDR block becomes ip.addr/ipv6.addr == X; anything else is a filter. */
  function filterFor(text) {
    text = text.trim();
    if (/^[0-9.]+(\/\d+)?$/.test(text)) return "ip.addr == " + text;
    if (/^[0-9a-fA-F:]+:[0-9a-fA-F:.]*(\/\d+)?$/.test(text)) return "ipv6.addr == " + text;
    return text;
  }

  function search() {
    var flt = filterFor($panel.find("[name=who]").val());
    api("fleet_search", {filter: flt, limit: 1000}).then(function (out) {
      connT.set(out.Connections);
      $panel.find(".fleetcount").text(fmt.num(out.Connections.length) + (out.More ? "+" : "") +
        " connections" + (flt ? " matching " + flt : ""));
    }, App.fail);
  }

  function fetchPackets(c) {
    api("fleet_fetch_packets", {host: c.Host, capture_id: c.CaptureId, connection_id: c.ConnectionId})
      .then(function (out) {
        ui.toast("Packets of " + c.Host + " #" + c.ConnectionId + " fetched (" + fmt.bytes(out.Size) + ")");
        window.location.assign(api.download.exportUrl(out.Name));
      }, App.fail);
  }

  function init($p) {
    $panel = $p;
    $note = ui.el("p", "help").prop("hidden", true);
    $status = ui.el("p", "help");
    hostT = ui.table([
      {title: "Host", get: function (h) { return h.Host; }},
      {title: "Status", get: function (h) { return h.GapRows ? 2 : h.LagSeconds > LATE_S ? 1 : 0; }, render: status},
      {title: "Last report", get: function (h) { return h.LastReport; }, text: function (h) { return fmt.time(h.LastReport); }, cls: "nowrap"},
      {title: "Lag", get: function (h) { return h.LagSeconds; }, text: function (h) { return fmt.duration(h.LagSeconds * 1e7); }, cls: "num"},
      {title: "Spool", get: function (h) { return h.SpoolBytes; }, text: function (h) { return fmt.bytes(h.SpoolBytes); }, cls: "num", prio: 2},
      {title: "Connections", get: function (h) { return h.Connections; }, cls: "num"},
      {title: "Shipped", get: function (h) { return h.ShippedRows; }, text: function (h) { return fmt.num(h.ShippedRows); }, cls: "num", prio: 3}
    ], {key: function (h) { return h.Host; }, empty: "No sensor has reported yet."});
    topT = ui.table([
      {title: "Program", get: function (r) { return r.Name || r.Key; }, render: function (r) {
        return ui.el("span", r.Key ? "" : "muted", r.Key ? r.Name || r.Key : "(no program)")
          .attr("title", r.Key || "traffic no process was found for");
      }},
      {title: "Path", get: function (r) { return r.Key; }, cls: "mono", prio: 3},
      {title: "Connections", get: function (r) { return r.Connections; }, cls: "num"},
      {title: "Bytes", get: function (r) { return r.Bytes; }, text: function (r) { return fmt.bytes(r.Bytes); }, cls: "num"}
    ], {key: function (r) { return r.Key; }, sort: 3, sortDir: -1, empty: "No connections in the fleet yet."});
    connT = ui.table([
      {title: "Host", get: function (c) { return c.Host; }},
      {title: "Program", get: function (c) { return c.ProcessName; }, render: function (c) {
        return ui.el("span", "", c.ProcessName || "\u2014").attr("title", c.ProcessPath);
      }},
      {title: "PID", get: function (c) { return c.Pid; }, cls: "num", prio: 3},
      {title: "Local", get: function (c) { return c.LocalIp; }, text: function (c) { return fmt.endpoint(c.LocalIp, c.LocalPort); }, cls: "mono", prio: 2},
      {title: "Remote", get: function (c) { return c.RemoteIp; }, text: function (c) { return fmt.endpoint(c.RemoteIp, c.RemotePort); }, cls: "mono"},
      {title: "App", get: function (c) { return c.App || c.AppProtocol; }, prio: 3},
      {title: "Bytes", get: function (c) { return c.BytesIn + c.BytesOut; }, text: function (c) { return fmt.bytes(c.BytesIn + c.BytesOut); }, cls: "num"},
      {title: "Last", get: function (c) { return c.LastTime; }, text: function (c) { return fmt.time(c.LastTime); }, cls: "nowrap", prio: 2},
      {title: "", cls: "actions", render: function (c) {
        var base = sensors[c.Host], $open;
        if (base) {
          $open = ui.button("Open", "small", function () {
            window.open(base + "/#/capture/" + c.CaptureId + "/conns", "_blank", "noopener");
          }).attr("title", "capture " + c.CaptureId + ", connection " + c.ConnectionId + " on " + c.Host);
        } else {
          $open = ui.el("span", "muted", "#" + c.CaptureId + "/" + c.ConnectionId)
            .attr("title", c.Host + " is not in the setting fleet_sensors");
        }
        return $().add($open).add(ui.button("Packets", "small", function () { fetchPackets(c); })
          .prop("disabled", !base));
      }}
    ], {key: function (c) { return c.Host + "/" + c.CaptureId + "/" + c.ConnectionId; },
      empty: "Ask who talks to an address: an IP, a CIDR block or a filter such as proc.name == \"curl\" && tcp.port == 443."});
    var $who = ui.input("who", "192.0.2.10, 10.0.0.0/8 or proc.name == \"curl\"").addClass("mono");
    $who.on("keydown", function (e) { if (e.key === "Enter") search(); });
    $panel.append(ui.section("Fleet hosts", ui.button("Refresh", "small", load)).append($note, hostT, $status));
    $panel.append(ui.section("Top programs across hosts").append(topT));
    $panel.append(ui.section("Who talks to\u2026").append(
      ui.el("div", "toolbar").append(ui.field("Address or filter", $who, "wide"),
        ui.button("Search the fleet", "primary", search)),
      ui.el("p", "help fleetcount"), connT,
      ui.el("p", "help").text("Connections of every sensor shipping to this server's ClickHouse (setting fleet_url). " +
        "Open shows the connection's capture on its own sensor, Packets fetches its packets from there as PCAPNG " +
        "(setting fleet_sensors).")));
  }

  App.views.fleet = {title: "Fleet", init: init, show: function () { load(); }};
})();
