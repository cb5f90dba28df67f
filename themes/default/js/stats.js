/* Statistics as charts: traffic over time (Series), protocols, top IPs and ports.
 * App.stats.render($el, capture) draws one capture (stats_by_id / stats_by_date, with
 * drill-down to stats_by_ip / _port / _protocol); the Statistics view adds the
 * system-wide totals (stats_totals, stats_reset). */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;
  var RANGES = [["all", "Whole capture"], ["15", "Last 15 minutes"], ["60", "Last hour"],
    ["1440", "Last day"], ["custom", "Custom range\u2026"]];

  function card(k, v) { return ui.el("div", "statcard").append(ui.el("div", "v", v), ui.el("div", "k", k)); }
  function box(title, wide) {
    var $c = ui.el("div", "chart");
    var $b = ui.el("div", "chartbox" + (wide ? " wide" : "")).append(ui.el("h3", "", title), $c);
    return {$b: $b, $c: $c, el: $c[0]};
  }
  var PER = {1: "second", 60: "minute", 3600: "hour", 86400: "day"};
  function per(bucket) { return PER[bucket] || fmt.duration(bucket * 1e7); }
  /* FILETIME → Unix seconds (uPlot's time axis). */
  function unix(ft) { return ft / 1e7 - 11644473600; }

  /* Draw one STATSQUERY / STATSCAPTUREQUERY into $out. opts: {metric, onDrill(kind, value)} */
  function draw($out, s, opts) {
    var metric = opts.metric || "Packets", f = metric === "Bytes" ? fmt.bytes : fmt.num;
    var dur = s.LastTime && s.FirstTime ? s.LastTime - s.FirstTime : 0;
    $out.empty().append(ui.el("div", "statcards").append(
      card("Packets", fmt.num(s.Packets)), card("Bytes", fmt.bytes(s.Bytes)),
      card("Connections", fmt.num(s.Connections)), card("From", s.FirstTime ? fmt.time(s.FirstTime).slice(0, 19) : "\u2014"),
      card("To", s.LastTime ? fmt.time(s.LastTime).slice(0, 19) : "\u2014"), card("Span", fmt.duration(dur) || "\u2014")));
    var points = s.Series || [], bucket = s.BucketSeconds || 0;
    for (var i = 1; !bucket && i < points.length; i++) bucket = (points[i].Time - points[i - 1].Time) / 1e7;
    bucket = bucket || 60;
    var time = box("Traffic over time (" + metric.toLowerCase() + " per " + per(bucket) + ")", true);
    time.$b.attr("data-bucket", bucket);
    var protos = box("Protocols"), ips = box("Top IP addresses"), ports = box("Top ports");
    $out.append(ui.el("div", "charts").append(time.$b, protos.$b, ips.$b, ports.$b));
    App.charts.timeBars(time.el, {times: points.map(function (p) { return unix(p.Time); }), bucket: bucket,
      fmt: f, legend: true, height: 200, series: [{label: metric, values: points.map(function (p) { return p[metric]; })}]});
    App.charts.share(protos.$c, (s.Protocols || []).map(function (p) {
      return {label: fmt.proto(p.Protocol), v: p[metric], key: p.Protocol};
    }).sort(function (a, b) { return b.v - a.v; }), {fmt: f, percent: true, onClick: opts.onDrill && function (it) { opts.onDrill("protocol", it.key); }});
    App.charts.share(ips.$c, top(s.TopIps, metric).map(function (p) {
      return {label: p.Ip, v: p[metric], key: p.Ip, color: App.charts.color(0)};
    }), {fmt: f, onClick: opts.onDrill && function (it) { opts.onDrill("ip", it.key); }});
    App.charts.share(ports.$c, top(s.TopPorts, metric).map(function (p) {
      return {label: String(p.Port), v: p[metric], key: p.Port, color: App.charts.color(2)};
    }), {fmt: f, onClick: opts.onDrill && function (it) { opts.onDrill("port", it.key); }});
    if (opts.onDrill) $out.append(ui.el("p", "help", "Click a protocol, IP or port to see its traffic alone."));
  }

  function top(list, metric) {
    return (list || []).slice().sort(function (a, b) { return b[metric] - a[metric]; }).slice(0, 10);
  }

  function localInput(ft) {
    var d = fmt.date(ft) || new Date();
    var s = fmt.time(fmt.toFiletime(d)).slice(0, 16);
    return s.replace(" ", "T");
  }

  /* One capture's statistics with range, metric and drill-down controls. */
  function render($el, cap) {
    var drill = App.stats.drill || null;
    App.stats.drill = null;
    var $range = ui.el("select").attr("aria-label", "range");
    RANGES.forEach(function (r) { $range.append(ui.el("option", "", r[1]).val(r[0])); });
    var $from = ui.el("input").attr({type: "datetime-local", step: 1}).val(localInput(cap.StartTime)).hide();
    var $to = ui.el("input").attr({type: "datetime-local", step: 1}).val(localInput(cap.EndTime || 0)).hide();
    var $metric = ui.el("select").attr("aria-label", "metric").append(ui.el("option", "", "Packets"), ui.el("option", "", "Bytes"));
    var $crumb = ui.el("span", "crumb"), $out = ui.el("div").css({display: "flex", flexDirection: "column", gap: "10px"});
    $el.empty().append(ui.el("div", "toolbar compact").css("padding", "0 0 8px").append(
      ui.el("span", "muted", "Range"), $range, $from, $to, ui.el("span", "muted", "Show"), $metric, $crumb,
      ui.button("Refresh", "small", load)), $out);

    function params() {
      var p = {capture_id: cap.CaptureId}, r = $range.val();
      if (r === "all") return p;
      if (r === "custom") {
        p.start_dtg = fmt.toFiletime(new Date($from.val()));
        p.end_dtg = $to.val() ? fmt.toFiletime(new Date($to.val())) : 0;
      } else {
        p.start_dtg = fmt.toFiletime(new Date(Date.now() - Number(r) * 60000));
        p.end_dtg = 0;
      }
      return p;
    }
    function load() {
      var p = params(), action = p.start_dtg !== undefined ? "stats_by_date" : "stats_by_id";
      $crumb.empty();
      if (drill) {
        // The drill-down actions cover the whole capture (they take no range).
        action = "stats_by_" + drill.kind;
        p = {capture_id: cap.CaptureId};
        p[drill.kind] = drill.value;
        var label = drill.kind === "protocol" ? fmt.proto(drill.value) : drill.kind === "port" ? "port " + drill.value : drill.value;
        $crumb.append(ui.el("span", "badge", "Only " + label), ui.button("\u00d7 all traffic", "small", function () {
          drill = null; load();
        }));
      }
      $out.empty().append(ui.el("p", "muted", "Loading statistics\u2026"));
      var range = p, my = ++loads;   // only the last choice's answer is drawn
      api(action, p).then(function (s) {
        if (my !== loads) return;
        draw($out, s, {metric: $metric.val(), onDrill: function (kind, value) { drill = {kind: kind, value: value}; load(); }});
        if (!drill) {
          var $procs = ui.el("div", "procsection");
          $out.append($procs);
          App.procStats.render($procs, range);
        }
      }, function (r) { if (my !== loads) return; $out.empty().append(ui.el("p", "error", r.ReturnValue)); App.fail(r); });
    }
    var loads = 0;
    $range.on("change", function () { $from.add($to).toggle(this.value === "custom"); load(); });
    $from.add($to).on("change", load);
    $metric.on("change", load);
    load();
  }

  /* The Statistics view: system totals or any capture. */
  var $panel, $scope, $body;
  function fillScope() {
    return $.when(api("capture_list_active"), api("capture_list_completed")).then(function (a, c) {
      var keep = $scope.val();
      $scope.empty().append(ui.el("option", "", "All captures (system totals since reset)").val("totals"));
      a.concat(c).sort(function (x, y) { return y.CaptureId - x.CaptureId; }).forEach(function (cap) {
        $scope.append(ui.el("option", "", "#" + cap.CaptureId + " " + cap.Name + " \u2014 " +
          fmt.captureState(cap.State) + ", " + fmt.num(cap.PacketCount) + " packets").val(cap.CaptureId).data("cap", cap));
      });
      if (keep && $scope.find("option[value='" + keep + "']").length) $scope.val(keep);
    }, App.fail);
  }
  function showScope() {
    var v = $scope.val();
    if (v === "totals" || !v) {
      var $metric = ui.el("select").append(ui.el("option", "", "Packets"), ui.el("option", "", "Bytes"));
      var $out = ui.el("div").css({display: "flex", flexDirection: "column", gap: "10px"});
      var load = function () {
        api("stats_totals").then(function (s) { draw($out, s, {metric: $metric.val()}); }, App.fail);
      };
      $metric.on("change", load);
      $body.empty().append(ui.el("div", "toolbar compact").css("padding", "0 0 8px").append(
        ui.el("span", "muted", "Show"), $metric, ui.button("Refresh", "small", load),
        ui.button("Reset counters", "small danger", function () {
          ui.confirm("Reset statistics", "Reset the system-wide counters? Capture statistics are kept.", "Reset")
            .then(function () { api("stats_reset").then(function () { ui.toast("Statistics reset"); load(); }, App.fail); });
        })), $out);
      load();
    } else {
      render($body, $scope.find("option:selected").data("cap"));
    }
  }

  App.views.stats = {
    title: "Statistics",
    init: function ($p) {
      $panel = $p;
      $scope = ui.el("select").attr("aria-label", "statistics of").css("min-width", "340px").on("change", showScope);
      $body = ui.el("div");
      $panel.append(ui.section("Statistics", ui.button("Reload list", "small", fillScope)).append(
        ui.el("div", "toolbar compact").append(ui.el("span", "muted", "Of"), $scope),
        $body.css("padding", "0 10px 10px")));
    },
    show: function () { fillScope().then(showScope); }
  };
  App.stats = {render: render, draw: draw, drill: null};
})();
