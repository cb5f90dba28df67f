/* Alerts (alert_*): the alerts, a form to add one, their history (alert_events), and the
 * header badge counting events not seen yet (the last seen AlertEventId is kept in
 * localStorage; opening the Alerts page marks everything seen). */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;
  var $panel, alertT, eventT, alerts = [], events = [], actions = [], visible = false;
  var SEEN = "apppaccap.alerts.seen", POLL_MS = 10000, KEEP = 2000;
  var TYPES = {};
  TYPES[ALERT_TYPE_THRESHOLD] = "threshold";
  TYPES[ALERT_TYPE_NEW_PROGRAM] = "new program";
  TYPES[ALERT_TYPE_NEW_DESTINATION] = "new destination";
  TYPES[ALERT_TYPE_LABEL] = "application label";
  var GROUPS = ["program", "process", "remote_ip", "port", "protocol", "country", "hostname"];

  function seen() { return Number(localStorage.getItem(SEEN) || 0); }
  function markSeen(id) { if (id > seen()) localStorage.setItem(SEEN, String(id)); }

  /* Every event after last_id, page by page (alert_events pages with last_id/limit). */
  function eventsAfter(lastId, out) {
    out = out || [];
    return api("alert_events", {last_id: lastId, limit: 1000}).then(function (page) {
      out.push.apply(out, page);
      if (page.length < 1000 || out.length >= KEEP * 5) return out;
      return eventsAfter(page[page.length - 1].AlertEventId, out);
    });
  }

  /* Header badge: events newer than the last seen one. */
  var timer = null;
  function poll() {
    clearTimeout(timer);
    if ($("#main").prop("hidden")) { timer = setTimeout(poll, POLL_MS); return; }
    eventsAfter(seen()).then(function (fresh) {
      if (visible && fresh.length) { merge(fresh); markSeen(fresh[fresh.length - 1].AlertEventId); fresh = []; }
      $("#alertbadge").text("\u{1F514} " + fresh.length + (fresh.length === 1 ? " alert" : " alerts"))
        .prop("hidden", !fresh.length)
        .attr("title", fresh.slice(-5).map(function (e) { return e.Message; }).join("\n"));
    }, function () { /* the views report errors; the badge keeps its state */ }).always(function () {
      timer = setTimeout(poll, POLL_MS);
    });
  }

  function merge(more) {
    var have = {};
    events.forEach(function (e) { have[e.AlertEventId] = true; });
    more.forEach(function (e) { if (!have[e.AlertEventId]) events.push(e); });
    if (events.length > KEEP) events = events.slice(-KEEP);
    eventT.set(events);
  }

  function alertName(id) {
    var a = alerts.filter(function (x) { return x.AlertId === id; })[0];
    return a ? a.Name : "#" + id;
  }
  function condition(a) {
    if (a.AlertType === ALERT_TYPE_LABEL) return "a connection labelled " + a.Label;
    if (a.AlertType !== ALERT_TYPE_THRESHOLD) return TYPES[a.AlertType] || String(a.AlertType);
    var v = a.Metric === "bytes" ? fmt.bytes(a.Threshold) : fmt.num(a.Threshold) + " " + a.Metric;
    return "a " + a.GroupBy + " above " + v + " (" + a.Direction + ") in " + a.Window;
  }

  function load() {
    var acts = api.has("action_list") ? api("action_list") : $.Deferred().resolve([]).promise();
    return $.when(api("alert_list"), acts, eventsAfter(0)).then(function (list, a, evs) {
      alerts = list; actions = a.filter(function (x) { return x.ActionType === ACTION_TYPE_EXECUTE; });
      alertT.set(alerts);
      events = [];
      merge(evs);
      if (evs.length) markSeen(evs[evs.length - 1].AlertEventId);
      $("#alertbadge").prop("hidden", true);
      var $sel = $panel.find("select[name=action]"), keep = $sel.val();
      $sel.empty().append(ui.el("option", "", "none").val(0));
      actions.forEach(function (x) { $sel.append(ui.el("option", "", "#" + x.ActionId + " " + x.Name).val(x.ActionId)); });
      $sel.val(keep || 0);
    }, App.fail);
  }

  function addAlert() {
    var $f = $panel.find(".alertform"), type = Number($f.find("[name=type]").val());
    var data = {name: $f.find("[name=name]").val().trim(), alert_type: String(type),
      process_path: $f.find("[name=path]").val().trim(), interval: Number($f.find("[name=interval]").val()) || 5,
      action_id: Number($f.find("[name=action]").val()) || 0};
    if (type === ALERT_TYPE_THRESHOLD) {
      data.group_by = $f.find("[name=group]").val();
      data.metric = $f.find("[name=metric]").val();
      data.direction = $f.find("[name=direction]").val();
      data.threshold = Number($f.find("[name=threshold]").val()) || 0;
      data.window = $f.find("[name=window]").val().trim() || "5m";
    }
    if (type === ALERT_TYPE_LABEL) data.label = $f.find("[name=label]").val().trim();
    api("alert_add", data).then(function () {
      $f.find("[name=name], [name=path]").val("");
      ui.toast("Alert \u201c" + data.name + "\u201d added");
      load();
    }, App.fail);
  }

  function select(name, values) {
    var $s = ui.el("select").attr("name", name);
    values.forEach(function (v) { $s.append(ui.el("option", "", v[1]).val(v[0])); });
    return $s;
  }

  function init($p) {
    $panel = $p;
    var $type = select("type", Object.keys(TYPES).map(function (k) { return [k, TYPES[k]]; }));
    var $threshold = $().add(ui.field("Group by", select("group", GROUPS.map(function (g) { return [g, g]; }))))
      .add(ui.field("Metric", select("metric", [["bytes", "bytes"], ["packets", "packets"], ["connections", "connections"]])))
      .add(ui.field("Direction", select("direction", [["both", "both"], ["out", "out"], ["in", "in"]])))
      .add(ui.field("Above", ui.input("threshold", "e.g. 50000000").attr("inputmode", "numeric")))
      .add(ui.field("Window", ui.input("window", "5m", "5m")));
    var $label = $(ui.field("Label", ui.input("label", "e.g. BitTorrent, VPN, HTTP")
      .attr("title", "an application protocol, application or category (any case)"))).hide();
    var $f = ui.el("div", "toolbar alertform").append(
      ui.field("Name", ui.input("name", "e.g. big upload")), ui.field("Kind", $type), $threshold, $label,
      ui.field("Program or directory", ui.input("path", "optional: /usr/bin/curl").addClass("mono"), "wide"),
      ui.field("Every (s)", ui.input("interval", "5", "5").attr("inputmode", "numeric")),
      ui.field("Run action", ui.el("select").attr("name", "action")),
      ui.button("Add alert", "primary", addAlert));
    $type.on("change", function () {
      $threshold.toggle(Number(this.value) === ALERT_TYPE_THRESHOLD);
      $label.toggle(Number(this.value) === ALERT_TYPE_LABEL);
    });
    alertT = ui.table([
      {title: "ID", get: function (a) { return a.AlertId; }, cls: "num"},
      {title: "Name", get: function (a) { return a.Name; }},
      {title: "When", get: condition},
      {title: "Program", get: function (a) { return a.ProcessPath || "any"; }, cls: "mono"},
      {title: "Every", get: function (a) { return a.Interval; }, text: function (a) { return a.Interval + " s"; }, cls: "num"},
      {title: "Fired", get: function (a) { return a.FireCount; }, cls: "num"},
      {title: "Last fired", get: function (a) { return a.LastFired; }, text: function (a) { return fmt.time(a.LastFired); }, cls: "nowrap"},
      {title: "", cls: "actions", render: function (a) {
        return $().add(ui.button(a.Enabled ? "Pause" : "Resume", "small", function () {
          api("alert_mod", {alert_id: a.AlertId, enabled: a.Enabled ? 0 : 1}).then(load, App.fail);
        })).add(ui.button("Remove", "small danger", function () {
          ui.confirm("Remove alert " + a.Name, "Remove this alert and its history?", "Remove").then(function () {
            api("alert_remove", {alert_id: a.AlertId}).then(function () { ui.toast("Alert removed"); load(); }, App.fail);
          });
        }));
      }}], {key: function (a) { return a.AlertId; }, rowClass: function (a) { return a.Enabled ? "" : "muted"; },
      empty: "No alerts. An alert watches usage accounting (a new program, a new destination, or traffic above a value) " +
        "or the live captures' connections (an application label)."});
    eventT = ui.table([
      {title: "Time", get: function (e) { return e.Time; }, text: function (e) { return fmt.time(e.Time); }, cls: "nowrap"},
      {title: "Alert", get: function (e) { return alertName(e.AlertId); }},
      {title: "Program", get: function (e) { return e.ProcessName; }, render: function (e) {
        return ui.el("span", "", e.ProcessName || "\u2014").attr("title", e.ProcessPath);
      }},
      {title: "PID", get: function (e) { return e.Pid; }, cls: "num"},
      {title: "Remote", get: function (e) { return e.RemoteIp; }, text: function (e) {
        return e.RemoteIp ? fmt.endpoint(e.RemoteIp, e.RemotePort) : "";
      }, cls: "mono"},
      {title: "Value", get: function (e) { return e.Value; }, text: function (e) { return e.Value ? fmt.num(e.Value) : ""; }, cls: "num"},
      {title: "Message", get: function (e) { return e.Message; }}
    ], {key: function (e) { return e.AlertEventId; }, sort: 0, sortDir: -1, empty: "No alert has fired yet."});
    $panel.append(ui.section("Alerts", ui.button("Refresh", "small", load)).append($f, alertT,
      ui.el("p", "help").text("Alerts watch usage accounting (Settings: usage_enabled); a label alert watches the " +
        "connections of running captures that begin after it is added. A new program or destination " +
        "means one not seen since alerts began watching. An action runs for each event with {alert_name}, " +
        "{process_name}, {process_path}, {pid}, {remote_ip}, {remote_port} and {value} replaced.")));
    $panel.append(ui.section("History").append(eventT));
  }

  App.views.alerts = {title: "Alerts", init: init,
    show: function () { visible = true; load(); },
    hide: function () { visible = false; }};
  $("#alertbadge").on("click", function () { App.go("alerts"); });
  $(poll);
})();
