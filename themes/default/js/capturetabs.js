/* Capture workspace tabs: connections (per-direction counters), the capture's processes
 * (with threads) and its IP addresses (with geo when known). Each returns {$el, load(cap)};
 * clicking a row narrows the packet list with a display filter, e.g. `conn.id == 4`. */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;

  function num(field) {
    return {title: field.title, get: function (r) { return r[field.key]; }, cls: "num",
      text: function (r) { return field.bytes ? fmt.bytes(r[field.key]) : fmt.num(r[field.key]); }};
  }
  function time(title, key) {
    return {title: title, get: function (r) { return r[key]; }, text: function (r) { return fmt.time(r[key]); }, cls: "nowrap"};
  }
  function pane(title, table, $extra) {
    var $el = ui.el("div", "pane");
    var $count = ui.el("span", "muted");
    var $tools = ui.el("div", "toolbar compact").append(ui.el("h3", "", title), $count, $extra || []);
    $el.append($tools, ui.el("div", "scroll").css("flex", "1").append(table));
    return {$el: $el, count: function (n) { $count.text(fmt.num(n)); }};
  }

  function labelText(c) {
    if (!c.AppProtocol) return "";
    return c.AppProtocol + (c.App ? "." + c.App : "") + (c.Category ? " \u00b7 " + c.Category : "");
  }

  function connections(filterPackets) {
    var current = null;
    var table = ui.table([
      {title: "ID", get: function (c) { return c.ConnectionId; }, cls: "num"},
      {title: "Proto", get: function (c) { return fmt.proto(c.Protocol); }},
      {title: "Local", get: function (c) { return fmt.endpoint(c.LocalIp, c.LocalPort); }, cls: "mono"},
      {title: "Remote", get: function (c) { return fmt.endpoint(c.RemoteIp, c.RemotePort); }, cls: "mono"},
      {title: "Hostname", get: function (c) { return c.Hostname; }},
      {title: "Labels", get: labelText, render: function (c) {
        return ui.el("span", "applabel", labelText(c)).attr("title", c.Category ? "nDPI category: " + c.Category : "");
      }},
      {title: "Process", get: function (c) { return c.ProcessName || ""; }, render: function (c) { return ui.procName(c.ProcessName); }},
      {title: "PID", get: function (c) { return c.Pid; }, cls: "num"},
      {title: "State", get: function (c) { return c.State; }},
      num({title: "\u2191 Pkts out", key: "PacketsOut"}), num({title: "\u2191 Bytes out", key: "BytesOut", bytes: true}),
      num({title: "\u2193 Pkts in", key: "PacketsIn"}), num({title: "\u2193 Bytes in", key: "BytesIn", bytes: true}),
      time("First", "FirstTime"), time("Last", "LastTime"),
      {title: "", cls: "actions", render: function (c) {
        var $b = ui.button("Packets", "small", function () { filterPackets("conn.id == " + c.ConnectionId); });
        if (!App.follow || !api.has("conn_follow")) return $b;
        return $b.add(ui.button("Follow stream", "small followbtn", function (e) {
          e.stopPropagation();
          App.follow.open(current.CaptureId, c.ConnectionId);
        }));
      }}
    ], {key: function (c) { return c.ConnectionId; }, empty: "No connections.",
      onClick: function (c) { filterPackets("conn.id == " + c.ConnectionId); }});
    // the label filter: AppProtocol, App or Category, any case (capture_list_conns' `label`)
    var $label = $("<select>").attr("aria-label", "label filter").addClass("labelfilter");
    var all = [], setRows = table.set;
    function hasLabel(c, want) {
      return [c.AppProtocol, c.App, c.Category].some(function (v) { return v && v.toLowerCase() === want; });
    }
    function labelOptions(rows) {
      var seen = {}, keep = $label.val() || "";
      rows.forEach(function (c) { [c.AppProtocol, c.App, c.Category].forEach(function (v) { if (v) seen[v] = 1; }); });
      $label.empty().append($("<option>").val("").text("All labels"));
      Object.keys(seen).sort(function (a, b) { return a.toLowerCase() < b.toLowerCase() ? -1 : 1; })
        .forEach(function (v) { $label.append($("<option>").val(v.toLowerCase()).text(v)); });
      $label.val(keep);
      if ($label.val() === null) $label.val("");  // the label is gone from this capture
    }
    table.set = function (rows) {
      all = rows || [];
      labelOptions(all);
      var want = $label.val();
      return setRows(want ? all.filter(function (c) { return hasLabel(c, want); }) : all);
    };
    $label.on("change", function () { table.set(all); });

    var p = pane("Connections", table, $label);
    p.load = function (cap) {
      current = cap;
      api.all("capture_list_conns", {capture_id: cap.CaptureId}, "ConnectionId", "Connections").then(function (rows) {
        table.set(rows); p.count(rows.length);
      }, App.fail);
    };
    return p;
  }

  function processes(filterPackets) {
    var threads = ui.table([
      {title: "TID", get: function (t) { return t.ThreadId; }, cls: "num"},
      {title: "Name", get: function (t) { return t.Name; }},
      {title: "State", get: function (t) { return t.Live ? "live" : "ended"; }},
      num({title: "Packets", key: "PacketCount"}),
      {title: "", cls: "actions", render: function (t) {
        return ui.button("Packets", "small", function () { filterPackets("thread.id == " + t.ThreadId); });
      }}], {empty: "Select a process to list its threads."});
    var $threads = ui.section("Threads").append(threads).css({margin: "0 10px 10px", flex: "none"});
    var threadsOf = api.latest();  // the process clicked last: its threads under its heading
    var table = ui.table([
      {title: "PID", get: function (p) { return p.Pid; }, cls: "num"},
      {title: "Name", get: function (p) { return p.Name; }, render: function (p) { return ui.procName(p.Name); }},
      {title: "User", get: function (p) { return p.User; }},
      {title: "Path", get: function (p) { return p.Path; }, cls: "mono ellipsis"},
      {title: "Command line", get: function (p) { return p.CommandLine; }, cls: "mono ellipsis"},
      num({title: "Packets", key: "PacketCount"}), num({title: "Bytes", key: "ByteCount", bytes: true}),
      time("Started", "StartTime"),
      {title: "Running", get: function (p) { return p.Running ? "yes" : "ended " + fmt.time(p.EndTime); }},
      {title: "", cls: "actions", render: function (p) {
        return ui.button("Packets", "small", function () { filterPackets("proc.id == " + p.ProcessId); });
      }}
    ], {key: function (p) { return p.ProcessId; }, empty: "No processes seen in this capture.",
      onClick: function (p) {
        $threads.find("h2").text("Threads of " + p.Name + " (pid " + p.Pid + ")");
        threadsOf("process_list_threads", {process_id: p.ProcessId, flags: 1}).then(function (l) {
          threads.set(l);
        }, function (r) {
          threads.set([]);
          App.fail(r);
        });
      }});
    var p = pane("Processes in this capture", table);
    p.$el.children(".scroll").css("flex", "0 1 auto");  // the threads follow right below
    p.$el.append($threads);
    p.load = function (cap) {
      api.all("capture_get_processes", {capture_id: cap.CaptureId}, "ProcessId", "Processes").then(function (rows) {
        table.set(rows); p.count(rows.length);
      }, App.fail);
    };
    return p;
  }

  function editData(ip, captureId, done) {
    var $ta = ui.el("textarea").attr({rows: 4, placeholder: "free-form data about " + ip.Ip}).val(ip.Data || "");
    ui.dialog("Data for " + ip.Ip, $ta, [{label: "Cancel"}, {label: "Save", cls: "primary", click: function () {
      api("ip_set_data", {ip: ip.Ip, capture_id: captureId, data: $ta.val()}).then(function () {
        ui.toast("Saved data for " + ip.Ip); done();
      }, App.fail);
    }}]);
  }

  function ips(filterPackets, showStats) {
    var cur = null;
    var table = ui.table([
      {title: "IP", get: function (i) { return i.Ip; }, cls: "mono"},
      {title: "Hostname", get: function (i) { return i.Hostname; }},
      {title: "Country", get: function (i) { return i.Country; }},
      {title: "City", get: function (i) { return i.City; }},
      {title: "Location", get: function (i) { return i.Lat || i.Lng ? i.Lat.toFixed(3) + ", " + i.Lng.toFixed(3) : ""; }, cls: "mono"},
      {title: "Data", get: function (i) { return i.Data; }, cls: "ellipsis"},
      num({title: "Packets", key: "PacketCount"}), num({title: "Bytes", key: "ByteCount", bytes: true}),
      time("First", "FirstTime"), time("Last", "LastTime"),
      {title: "", cls: "actions", render: function (i) {
        return $().add(ui.button("Packets", "small", function () { filterPackets((i.Ip.indexOf(":") >= 0 ? "ipv6.addr == " : "ip.addr == ") + i.Ip); }))
          .add(ui.button("Stats", "small", function () { showStats(i.Ip); }))
          .add(ui.button("Data\u2026", "small", function () { editData(i, cur.CaptureId, function () { p.load(cur); }); }));
      }}
    ], {key: function (i) { return i.IpId; }, sort: 6, sortDir: -1, empty: "No IP addresses.",
      onClick: function (i) { filterPackets((i.Ip.indexOf(":") >= 0 ? "ipv6.addr == " : "ip.addr == ") + i.Ip); }});
    var p = pane("IP addresses", table);
    p.load = function (cap) {
      cur = cap;
      api.all("capture_query_ip", {capture_id: cap.CaptureId}, "IpId", "Ips").then(function (rows) {
        table.set(rows); p.count(rows.length);
      }, App.fail);
    };
    return p;
  }

  App.captureTabs = {connections: connections, processes: processes, ips: ips};
})();
