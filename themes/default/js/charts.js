/* Charts on the vendored uPlot (js/uPlot-*.iife.min.js, README.md): time series as bars,
 * stacked per program or single, and sparklines; plus "share" lists (label, bar, value) in
 * plain HTML for top-N breakdowns. Colours come from the theme's CSS variables, and every
 * live chart is rebuilt when the theme changes (uPlot bakes colours in at construction)
 * and resized with its container.
 *   App.charts.timeBars(el, {times, series: [{label, values, color}], bucket, fmt, stacked, height})
 *   App.charts.spark(el, {values: [[in...], [out...]] or [[v...]], x, width, height, color})
 *     → {update(values, x)}
 *   App.charts.share($el, [{label, v, title, parts: [a, b]}], {fmt, onClick}) */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var PALETTE = ["#3a78d4", "#e8833a", "#3aa867", "#c9483b", "#8c62c7", "#2fa4b6", "#d6a41d",
    "#7a8593", "#d36ba6", "#5a9e2f"];
  var IN_OUT = ["--rate-in", "--rate-out"];
  var FONT = "11px system-ui, -apple-system, Segoe UI, Roboto, sans-serif";
  var live = [];  // {el, build} of charts on the page, rebuilt on a theme change

  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
  function color(i) { return PALETTE[i % PALETTE.length]; }
  function inOut(d) { return css(IN_OUT[d]) || PALETTE[d]; }

  /* Rebuild when <html data-theme> flips; drop charts whose element left the page. */
  new MutationObserver(function () {
    live = live.filter(function (c) { return document.body.contains(c.el); });
    live.forEach(function (c) { c.build(); });
  }).observe(document.documentElement, {attributes: true, attributeFilter: ["data-theme"]});

  function keep(el, build) {
    live = live.filter(function (c) { return c.el !== el && document.body.contains(c.el); });
    live.push({el: el, build: build});
    build();
  }

  /* Width follows the container; ResizeObserver calls back after layout, never in it. */
  function fit(u, el, height) {
    if (el._ro) el._ro.disconnect();
    el._ro = new ResizeObserver(function () {
      var w = Math.floor(el.clientWidth);
      if (w > 0 && Math.abs(w - u.width) > 1) u.setSize({width: w, height: height});
    });
    el._ro.observe(el);
  }

  function pad(n) { return n < 10 ? "0" + n : String(n); }
  /* One-line local times, as precise as the tick step: 14:05:30, 14:05 or 12-06. */
  function timeTicks(u, splits, _ax, _space, incr) {
    return splits.map(function (t) {
      var d = new Date(t * 1000), hm = pad(d.getHours()) + ":" + pad(d.getMinutes());
      if (incr >= 86400) return pad(d.getMonth() + 1) + "-" + pad(d.getDate());
      return incr < 60 ? hm + ":" + pad(d.getSeconds()) : hm;
    });
  }

  function axis(fmtValue, size) {
    var grid = {stroke: css("--chart-grid"), width: 1};
    return [
      {stroke: css("--chart-text"), grid: grid, ticks: {stroke: css("--chart-axis"), width: 1}, font: FONT,
        values: timeTicks, space: 56},
      {stroke: css("--chart-text"), grid: grid, ticks: {stroke: css("--chart-axis"), width: 1}, font: FONT,
        size: size || 64, values: function (u, vals) { return vals.map(fmtValue); }}
    ];
  }

  function clockOf(bucket) {
    return bucket >= 86400 ? "{YYYY}-{MM}-{DD}" : bucket >= 60 ? "{YYYY}-{MM}-{DD} {HH}:{mm}"
      : "{HH}:{mm}:{ss}";
  }

  /* Columns over time, one per bucket (each starts at its Time and is `bucket` s wide);
   * stacked: series drawn as running sums, the legend and cursor show each one's own value. */
  function timeBars(el, o) {
    var bucket = o.bucket || 60, height = o.height || 200;
    var sig = [bucket, !!o.stacked, o.times.length > 0].concat(o.series.map(function (s) { return s.label; })).join("\n");
    el._o = o;  // the legend's values read the newest answer
    // The same shape as drawn: new data only, so the cursor and legend stay where they are.
    if (el._u && el._sig === sig && document.body.contains(el)) { el._u.setData(columns(o)); return; }
    el._sig = sig;
    keep(el, function () {
      if (el._u) { el._u.destroy(); el._u = null; }
      $(el).empty();
      var cur = el._o, fmtV = cur.fmt || String;
      if (!cur.times.length) { $(el).append(App.ui.el("p", "muted chartempty", cur.empty || "no data")); return; }
      var clock = uPlot.fmtDate(clockOf(bucket));
      var series = [{value: function (u, v) { return v === null || v === undefined ? "" : clock(new Date(v * 1000)); }}];
      order(cur).forEach(function (k) {
        var col = cur.series[k].color || color(k);
        series.push({label: cur.series[k].label, stroke: col, fill: col, width: 0, points: {show: false},
          paths: uPlot.paths.bars({size: [0.86, 120], align: 1}),
          value: function (u, v, si, i) {
            return i === null || i === undefined ? "" : (el._o.fmt || String)(el._o.series[k].values[i] || 0);
          }});
      });
      var opts = {
        width: Math.max(200, Math.floor(el.clientWidth)), height: height, series: series,
        axes: axis(fmtV, cur.axisSize), cursor: {points: {show: false}, drag: {x: false, y: false}},
        legend: {show: cur.legend !== false, live: true},
        scales: {x: {time: true, range: function () {
          // from the data itself: uPlot widens a single point's range on its own
          var t = el._o.times;
          return [t[0], t[t.length - 1] + bucket];
        }},
          y: {range: function (u, min, max) { return [0, max > 0 ? max * 1.08 : 1]; }}}
      };
      el._u = new uPlot(opts, columns(cur), el);
      fit(el._u, el, height);
    });
  }

  /* Stacked: tallest running sum first, so each later (lower) column is painted over it. */
  function order(o) {
    var out = [];
    for (var k = o.series.length - 1; k >= 0; k--) out.push(k);
    return o.stacked ? out : out.reverse();
  }
  function columns(o) {
    var data = [o.times], sums = o.times.map(function () { return 0; });
    var stacked = o.series.map(function (s) {
      sums = sums.map(function (v, i) { return v + (s.values[i] || 0); });
      return sums;
    });
    order(o).forEach(function (k) { data.push(o.stacked ? stacked[k] : o.series[k].values); });
    return data;
  }

  /* A tiny chart without axes or legend: in/out (the last minute of a program), or one
   * series (a group-by row); `x` gives uneven positions (default: 0, 1, 2, ...). */
  function spark(el, o) {
    var w = o.width || 96, h = o.height || 22, u = null;
    function data() {
      var x = o.x || o.values[0].map(function (_, i) { return i; });
      return [x].concat(o.values);
    }
    function build() {
      if (u) u.destroy();
      var one = o.values[0].length === 1;  // a lone point draws no line: show it as a dot
      u = new uPlot({width: w, height: h, pxAlign: false, legend: {show: false},
        cursor: {show: false}, select: {show: false},
        scales: {x: {time: false, range: function (self, min, max) { return min < max ? [min, max] : [min - 1, max + 1]; }},
          y: {range: function (self, min, max) { return [0, max > 0 ? max : 1]; }}},
        axes: [{show: false}, {show: false}],
        series: [{}].concat(o.values.map(function (_, d) {
          var c = o.color || inOut(d);
          return {stroke: c, fill: c + "55", width: 1, points: {show: one, size: 4}};
        }))}, data(), el);
    }
    keep(el, build);
    return {update: function (values, x) {
      o.values = values; o.x = x;
      if (u) u.setData(data());
    }};
  }

  /* Top-N as rows of label, bar and value; `parts` splits a bar in two (in/out). */
  function share($el, items, o) {
    o = o || {};
    var fmtV = o.fmt || String;
    var max = Math.max.apply(null, items.map(function (it) { return it.v; }).concat([0])) || 1;
    var total = items.reduce(function (s, it) { return s + it.v; }, 0) || 1;
    $el.empty().addClass("share");
    if (!items.length) return $el.append(App.ui.el("p", "muted chartempty", "no data"));
    items.forEach(function (it, i) {
      var $bar = App.ui.el("span", "sbar");
      if (it.parts) {
        it.parts.forEach(function (p, d) {
          $bar.append(App.ui.el("span", "spart d" + d).css("width", (p / max * 100) + "%"));
        });
      } else {
        $bar.append(App.ui.el("span", "spart").css({width: (it.v / max * 100) + "%", background: it.color || color(i)}));
      }
      var $row = App.ui.el("div", "srow").attr("title", it.title || it.label + ": " + fmtV(it.v)).append(
        App.ui.el("span", "slabel", it.label), $bar,
        App.ui.el("span", "sval", fmtV(it.v) + (o.percent ? "  " + (it.v / total * 100).toFixed(1) + " %" : "")));
      if (o.onClick) $row.addClass("clickable").on("click", function () { o.onClick(it); });
      $el.append($row);
    });
    return $el;
  }

  App.charts = {timeBars: timeBars, spark: spark, share: share, color: color, inOut: inOut};
})();
