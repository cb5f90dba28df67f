/* The Network page's program detail: the remote hosts it talked to over the chosen range
 * (usage_by_remote, per ProcessId of the program, merged by address), its connections of
 * the last minute (usage_now's TopRemotes) and a button to capture it. Each host shows
 * nDPI's application label of that traffic (AppProtocol.App, the category as its title).
 *   App.networkDetail.show($el, program, state)   App.networkDetail.capture(pid, name) */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;
  var MAX_IDS = 8, LIMIT = 200;

  function capture(pid, name) {
    return api("capture_start_process", {pid: pid, filter: "", flags: CAPTURE_FLAG_RESOLVE_IPS, adapter: []})
      .then(function (cap) {
        ui.toast("Capturing " + name + " (pid " + pid + ") \u2192 capture #" + cap.CaptureId);
        App.refreshLive();
        App.go("capture", cap.CaptureId, "packets");
      }, App.fail);
  }

  /* Hosts of several ProcessIds → one list by address, most bytes first. */
  function merge(answers) {
    var by = {};
    answers.forEach(function (r) {
      (r.Remotes || []).forEach(function (h) {
        var m = by[h.RemoteIp];
        if (!m) {
          m = by[h.RemoteIp] = $.extend({}, h, {Ports: (h.Ports || []).slice(), Labels: (h.Labels || []).slice()});
          return;
        }
        m.BytesIn += h.BytesIn; m.BytesOut += h.BytesOut;
        (h.Labels || []).forEach(function (l) {
          if (!m.Labels.some(function (k) { return app(k) === app(l) && k.Category === l.Category; })) m.Labels.push(l);
        });
        if (!m.AppProtocol && h.AppProtocol) { m.AppProtocol = h.AppProtocol; m.App = h.App; m.Category = h.Category; }
        m.FirstSeen = Math.min(m.FirstSeen, h.FirstSeen); m.LastSeen = Math.max(m.LastSeen, h.LastSeen);
        (h.Ports || []).forEach(function (p) {
          if (!m.Ports.some(function (q) { return q.Port === p.Port && q.Protocol === p.Protocol; })) m.Ports.push(p);
        });
      });
    });
    return Object.keys(by).map(function (k) { return by[k]; })
      .sort(function (a, b) { return b.BytesIn + b.BytesOut - a.BytesIn - a.BytesOut; });
  }

  /* nDPI's label as ndpiReader prints it: TLS.Google, or the protocol alone. */
  function app(l) { return l.AppProtocol ? l.AppProtocol + (l.App ? "." + l.App : "") : ""; }

  function labelsTitle(h) {
    return (h.Labels || []).map(function (l) { return app(l) + (l.Category ? " (" + l.Category + ")" : ""); }).join(", ");
  }

  function ports(h) {
    return (h.Ports || []).slice(0, 12).map(function (p) { return p.Port + "/" + fmt.proto(p.Protocol).toLowerCase(); }).join(" ") +
      ((h.Ports || []).length > 12 ? " \u2026" : "");
  }

  /* Today's times as a clock, older ones with the date. */
  function seen(ft) {
    var t = fmt.time(ft);
    return t.slice(0, 10) === fmt.time(fmt.toFiletime(new Date())).slice(0, 10) ? t.slice(11, 19) : t.slice(5, 16);
  }

  function show($el, g, S) {
    var pids = Object.keys(g.pids).map(function (k) { return g.pids[k]; });
    // The busiest PID first: the one "Capture this program" captures.
    var live = pids.filter(function (q) { return q.Pid > 0; }).sort(function (a, b) {
      return (b.rateIn || 0) + (b.rateOut || 0) - (a.rateIn || 0) - (a.rateOut || 0);
    });
    var $tools = ui.el("div", "toolbar compact");
    if (live.length) {
      $tools.append(ui.button("Capture this program", "primary rec", function () { capture(live[0].Pid, g.name); })
        .attr("title", "Start a process capture of pid " + live[0].Pid));
    }
    var shown = pids.slice(0, 8).map(function (q) { return q.Pid; }).join(", ") + (pids.length > 8 ? ", \u2026" : "");
    $tools.append(ui.el("span", "muted", pids.length > 1 ? pids.length + " processes: pid " + shown
      : live.length ? "pid " + live[0].Pid : ""));
    var hosts = ui.table([
      {title: "Host", get: function (h) { return h.Hostname || h.RemoteIp; }, render: function (h) {
        return ui.el("span", "").attr("title", "ports " + ports(h)).append(ui.el("span", "", h.Hostname || h.RemoteIp),
          h.Hostname ? ui.el("span", "muted mono", " " + h.RemoteIp) : $());
      }},
      {title: "App", get: function (h) { return app(h); }, render: function (h) {
        return ui.el("span", "app-label", app(h)).attr("title", labelsTitle(h) || "not labelled");
      }, cls: "c-app"},
      {title: "Country", get: function (h) { return h.Country || ""; }, cls: "c-country"},
      {title: "\u2193 In", get: function (h) { return h.BytesIn; }, text: function (h) { return fmt.bytes(h.BytesIn); }, cls: "num"},
      {title: "\u2191 Out", get: function (h) { return h.BytesOut; }, text: function (h) { return fmt.bytes(h.BytesOut); }, cls: "num"},
      {title: "First seen", get: function (h) { return h.FirstSeen; }, text: function (h) { return seen(h.FirstSeen); }, cls: "nowrap", prio: 2},
      {title: "Last seen", get: function (h) { return h.LastSeen; }, text: function (h) { return seen(h.LastSeen); }, cls: "nowrap"}
    ], {key: function (h) { return h.RemoteIp; }, empty: "Loading\u2026"});
    var conns = ui.table([
      {title: "Remote", get: function (c) { return c.Ip; }, text: function (c) { return fmt.endpoint(c.Ip, c.Port); }, cls: "mono"},
      {title: "Proto", get: function (c) { return fmt.proto(c.Protocol); }},
      {title: "\u2193 In", get: function (c) { return c.BytesIn; }, text: function (c) { return fmt.bytes(c.BytesIn); }, cls: "num"},
      {title: "\u2191 Out", get: function (c) { return c.BytesOut; }, text: function (c) { return fmt.bytes(c.BytesOut); }, cls: "num"}
    ], {empty: "No connection in the last minute."}).set(g.remotes);
    $el.empty().attr("data-key", g.key).append(
      ui.el("div", "panel-head").append(ui.el("h2", "", g.name), ui.el("span", "muted mono ellipsis", g.path)),
      ui.el("div", "panel-body").append($tools,
        ui.el("h3", "", "Remote hosts (last " + S.range + ")"), ui.el("div", "scroll hostlist").append(hosts),
        ui.el("h3", "", "Connections (last 60 s, top by bytes)"), ui.el("div", "scroll").append(conns)));
    var ids = pids.map(function (q) { return q.ProcessId; }).slice(0, MAX_IDS);
    $.when.apply($, ids.map(function (id) {
      return api("usage_by_remote", {process_id: id, relative_time: S.range, limit: LIMIT});
    })).then(function () {
      var list = merge(Array.prototype.slice.call(arguments, 0, ids.length));
      hosts.set(list).toggleClass("nocountry", !list.some(function (h) { return h.Country; }));
      if (!list.length) hosts.find("tr.empty td").text("No remote host in this range.");
    }, function (r) { hosts.find("tr.empty td").text(r.ReturnValue); });
  }

  App.networkDetail = {show: show, capture: capture};
})();
