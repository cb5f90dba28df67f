/* A capture's traffic per program (stats_by_process): bytes over time stacked per program,
 * and a table, most bytes first, with the in/out split. Part of the capture's Statistics.
 *   App.procStats.render($el, {capture_id, start_dtg?, end_dtg?}) */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;
  var TOP = 8;

  function unix(ft) { return ft / 1e7 - 11644473600; }
  function label(p) { return (p.Name || "<unknown>") + (p.Pid ? " (" + p.Pid + ")" : ""); }

  /* One time axis for every program: all buckets from the first to the last, zero-filled. */
  function columns(procs, bucket) {
    var t0 = Infinity, t1 = -Infinity;
    procs.forEach(function (p) {
      p.Series.forEach(function (s) { var t = unix(s.Time); t0 = Math.min(t0, t); t1 = Math.max(t1, t); });
    });
    if (t0 > t1) return {times: [], index: {}};
    var times = [], index = {};
    for (var t = t0; t <= t1 + 1e-6 && times.length < 5000; t += bucket) { index[Math.round(t)] = times.length; times.push(t); }
    return {times: times, index: index};
  }

  function render($el, params) {
    var $chart = ui.el("div", "chart"), $table = ui.el("div", "scroll procstats");
    var $box = ui.el("div", "chartbox wide").append(ui.el("h3", "", "Traffic per program"), $chart);
    $el.empty().append(ui.el("div", "charts").append($box), $table);
    return api("stats_by_process", params).then(function (r) {
      var procs = r.Processes || [], bucket = r.BucketSeconds || 60;
      $box.find("h3").text("Traffic per program (bytes per " + ({1: "second", 60: "minute", 3600: "hour", 86400: "day"}[bucket] || bucket + " s") + ")");
      $box.attr("data-bucket", bucket);
      var shown = procs.slice(0, TOP), rest = procs.slice(TOP);
      var axis = columns(procs, bucket);
      function values(list) {
        var v = axis.times.map(function () { return 0; });
        list.forEach(function (p) {
          p.Series.forEach(function (s) { var i = axis.index[Math.round(unix(s.Time))]; if (i !== undefined) v[i] += s.Bytes; });
        });
        return v;
      }
      var series = shown.map(function (p) { return {label: label(p), values: values([p])}; });
      if (rest.length) series.push({label: rest.length + " others", values: values(rest), color: "#9aa3ae"});
      App.charts.timeBars($chart[0], {times: axis.times, bucket: bucket, stacked: true, fmt: fmt.bytes,
        series: series, height: 220, empty: "No per-program counters for this capture."});
      var max = procs.reduce(function (m, p) { return Math.max(m, p.Bytes); }, 0) || 1;
      var table = ui.table([
        {title: "Program", get: function (p) { return (p.Name || "").toLowerCase(); }, render: function (p) { return ui.procName(p.Name); }},
        {title: "PID", get: function (p) { return p.Pid; }, cls: "num"},
        {title: "\u2193 In", get: function (p) { return p.BytesIn; }, text: function (p) { return fmt.bytes(p.BytesIn); }, cls: "num"},
        {title: "\u2191 Out", get: function (p) { return p.BytesOut; }, text: function (p) { return fmt.bytes(p.BytesOut); }, cls: "num"},
        {title: "Bytes", get: function (p) { return p.Bytes; }, text: function (p) { return fmt.bytes(p.Bytes); }, cls: "num"},
        {title: "Packets", get: function (p) { return p.Packets; }, text: function (p) { return fmt.num(p.Packets); }, cls: "num"},
        {title: "In / out", cls: "splitcell", render: function (p) {
          return ui.el("span", "sbar").attr("title", fmt.bytes(p.BytesIn) + " in, " + fmt.bytes(p.BytesOut) + " out").append(
            ui.el("span", "spart d0").css("width", (p.BytesIn / max * 100) + "%"),
            ui.el("span", "spart d1").css("width", (p.BytesOut / max * 100) + "%"));
        }}
      ], {key: function (p) { return p.ProcessId; }, sort: 4, sortDir: -1, empty: "No program traffic in this range."});
      $table.append(table.set(procs));
    }, function (e) { $el.empty().append(ui.el("p", "error", e.ReturnValue)); });
  }

  App.procStats = {render: render};
})();
