/* Group-by explorer on the Statistics page (stats_group_by): choose the data (usage
 * accounting or a capture), the group, the metric, direction and range; a top-N table with
 * a sparkline per row (App.charts.spark), then Other and Total. It adds its own panel to the Statistics view
 * (wrapping that view's init), so js/stats.js knows nothing of it. */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;
  var KEYS = [["program", "Program"], ["process", "Process"], ["remote_ip", "Remote IP"], ["ip", "Local IP"],
    ["port", "Remote port"], ["protocol", "Protocol"], ["country", "Country"], ["hostname", "Host name"],
    ["conn", "Connection"], ["app", "Application (nDPI)"], ["app_proto", "App protocol (nDPI)"],
    ["category", "Category (nDPI)"]];
  var USAGE_KEYS = {program: 1, process: 1, remote_ip: 1, port: 1, protocol: 1, country: 1, hostname: 1,
    app: 1, app_proto: 1, category: 1};
  var RANGES = [["15m", "Last 15 minutes"], ["1h", "Last hour"], ["24h", "Last day"], ["7d", "Last week"],
    ["5m", "Last 5 minutes"], ["", "Whole capture"]];

  function select(label, values) {
    var $s = ui.el("select").attr("aria-label", label);
    values.forEach(function (v) { $s.append(ui.el("option", "", v[1]).val(v[0])); });
    return $s;
  }

  /* A row's series as the shared uPlot sparkline (js/charts.js), x = seconds from its first
   * point (FILETIME ticks are too large for a float's precision to spare). */
  function sparkline(series, metric) {
    var key = metric === "packets" ? "Packets" : "Bytes";
    var el = ui.el("div", "sparkline").attr("title", series.length + " points")[0];
    if (!series.length) return el;
    var t0 = series[0].Time;
    App.charts.spark(el, {width: 120, height: 22,
      x: series.map(function (p) { return (p.Time - t0) / 1e7; }),
      values: [series.map(function (p) { return p[key]; })]});
    return el;
  }

  function mount($panel) {
    var $source = ui.el("select").attr("aria-label", "group-by data").css("min-width", "240px");
    var $group = select("group by", KEYS), $metric = select("metric", [["bytes", "Bytes"], ["packets", "Packets"], ["connections", "Connections"]]);
    var $dir = select("direction", [["both", "Both ways"], ["out", "Out"], ["in", "In"]]);
    var $range = select("range", RANGES), $top = select("rows", [["10", "Top 10"], ["25", "Top 25"], ["100", "Top 100"]]);
    var $filter = ui.input("gbfilter", "filter, e.g. tcp.port == 443").addClass("mono").css("min-width", "200px");
    var $status = ui.el("span", "muted");
    var metric = "bytes";
    var table = ui.table([
      {title: "Name", get: function (r) { return r.Name || String(r.Key); }, render: function (r) {
        return ui.el("span", r.other ? "muted" : "", r.Name || (r.Key === "" ? "\u2014" : String(r.Key))).attr("title", String(r.Key));
      }},
      {title: "Packets", get: function (r) { return r.Packets; }, text: function (r) { return fmt.num(r.Packets); }, cls: "num"},
      {title: "Bytes", get: function (r) { return r.Bytes; }, text: function (r) { return fmt.bytes(r.Bytes); }, cls: "num"},
      {title: "Conns", get: function (r) { return r.Connections; }, text: function (r) { return fmt.num(r.Connections); }, cls: "num"},
      {title: "Over time", cls: "spark", render: function (r) { return r.Series ? $(sparkline(r.Series, metric)) : $(); }}
    ], {key: function (r) { return String(r.Key) + (r.other || ""); }, empty: "No traffic in this range.",
      rowClass: function (r) { return r.other ? "muted" : ""; }});

    function fillSources() {
      return $.when(api("capture_list_active"), api("capture_list_completed")).then(function (a, c) {
        var keep = $source.val();
        $source.empty().append(ui.el("option", "", "Usage accounting (every program)").val("0"));
        a.concat(c).sort(function (x, y) { return y.CaptureId - x.CaptureId; }).forEach(function (cap) {
          $source.append(ui.el("option", "", "#" + cap.CaptureId + " " + cap.Name).val(cap.CaptureId));
        });
        if (keep && $source.find("option[value='" + keep + "']").length) $source.val(keep);
      });
    }
    function syncOptions() {
      var usage = $source.val() === "0";
      $group.find("option").each(function () { $(this).prop("disabled", usage && !USAGE_KEYS[this.value]); });
      if (usage && !USAGE_KEYS[$group.val()]) $group.val("program");
      $range.find("option[value='']").prop("disabled", usage);
      if (usage && !$range.val()) $range.val("1h");
    }
    function load() {
      syncOptions();
      metric = $metric.val();
      var p = {capture_id: Number($source.val()) || 0, group_by: $group.val(), metric: metric, direction: $dir.val(),
        top: Number($top.val()), series: 1, filter: $filter.val().trim()};
      if ($range.val()) p.relative_time = $range.val();
      $status.text("Loading\u2026");
      // choices made in a row each ask; answers can come back in any order (kept-alive
      // connections run side by side), and only the last choice's may be drawn
      var my = ++seq;
      api("stats_group_by", p).then(function (g) {
        if (my !== seq) return;
        var rows = g.Rows.slice();
        if (g.Other.Groups) rows.push($.extend({Key: "", Name: "Other (" + g.Other.Groups + " more)", other: "o"}, g.Other));
        rows.push($.extend({Key: "", Name: "Total", other: "t"}, g.Total));
        table.set(rows);
        $status.text(g.Total.Groups + " groups \u00b7 per " + fmt.duration(g.BucketSeconds * 1e7) + " in the sparklines");
      }, function (r) { if (my !== seq) return; table.set([]); $status.text(""); ui.error(r); });
    }
    var seq = 0;
    $source.add($group).add($metric).add($dir).add($range).add($top).on("change", load);
    $filter.on("keydown", function (e) { if (e.key === "Enter") load(); });
    var $section = ui.section("Group by", ui.button("Refresh", "small", function () { fillSources().then(load); })).addClass("groupby").append(
      ui.el("div", "toolbar compact").append(ui.el("span", "muted", "Of"), $source, ui.el("span", "muted", "by"), $group,
        $metric, $dir, $range, $top, $filter, $status), table);
    $panel.append($section);
    fillSources().then(load, App.fail);
  }

  /* The hook: after the Statistics view builds its panel, add ours below it. */
  var stats = App.views.stats;
  if (stats) {
    var init = stats.init;
    stats.init = function ($p) { init.apply(this, arguments); mount($p); };
  }
  App.groupby = {mount: mount, sparkline: sparkline};
})();
