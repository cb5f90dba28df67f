/* A small canvas chart helper (no library): time columns, horizontal bars, donut.
 * Each chart redraws itself when the window is resized and shows a tooltip on hover.
 *   App.chart.timeColumns(canvas, [{t: ms, v: number}], {fmt, color, onClick})
 *   App.chart.bars(canvas, [{label, v, title}], {fmt, color, onClick})
 *   App.chart.donut(canvas, [{label, v}], {fmt, onClick}) */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var PALETTE = ["#3a78d4", "#e8833a", "#3aa867", "#c9483b", "#8c62c7", "#2fa4b6", "#d6a41d",
    "#7a8593", "#d36ba6", "#5a9e2f"];
  var FONT = "11px system-ui, -apple-system, Segoe UI, Roboto, sans-serif";
  /* Colours come from the theme's CSS variables (light or dark). */
  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
  var charts = [];

  function setup(canvas, height) {
    var dpr = window.devicePixelRatio || 1;
    var pw = canvas.parentNode.clientWidth, w = pw > 60 ? pw - 20 : 300;
    canvas.style.height = height + "px";
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(height * dpr);
    var ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.font = FONT;
    ctx.textBaseline = "middle";
    return {ctx: ctx, w: w, h: height};
  }

  function register(canvas, draw) {
    canvas._draw = draw;
    if (charts.indexOf(canvas) < 0) charts.push(canvas);
    draw();
  }
  $(window).on("resize", debounceResize);
  var rt;
  function debounceResize() {
    clearTimeout(rt);
    rt = setTimeout(function () {
      charts = charts.filter(function (c) { return document.body.contains(c); });
      charts.forEach(function (c) { if (c.offsetParent) c._draw(); });
    }, 120);
  }

  function tooltip(canvas) {
    var $box = $(canvas).parent(), $tip = $box.children(".charttip");
    if (!$tip.length) $tip = $("<div class='charttip'>").appendTo($box).hide();
    return {
      show: function (x, y, text) {
        $tip.text(text).show();
        var bw = $box.innerWidth(), tw = $tip.outerWidth();
        $tip.css({left: Math.min(Math.max(4, x + 12), bw - tw - 4), top: Math.max(0, y - 10)});
      },
      hide: function () { $tip.hide(); }
    };
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v))), m = v / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 2.5 ? 2.5 : m <= 5 ? 5 : 10) * p;
  }
  function pad(n) { return n < 10 ? "0" + n : String(n); }
  var STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
    43200, 86400, 172800, 604800, 2592000].map(function (s) { return s * 1000; });
  function timeLabel(ms, step) {
    var d = new Date(ms);
    if (step >= 86400000) return (d.getMonth() + 1) + "-" + pad(d.getDate());
    var hm = pad(d.getHours()) + ":" + pad(d.getMinutes());
    return step < 60000 ? hm + ":" + pad(d.getSeconds()) : hm;
  }
  function empty(g, text) {
    g.ctx.fillStyle = css("--muted");
    g.ctx.textAlign = "center";
    g.ctx.fillText(text || "no data", g.w / 2, g.h / 2);
  }

  /* Columns over time: one column per bucket (Series of stats_*). */
  function timeColumns(canvas, points, opts) {
    opts = opts || {};
    var fmt = opts.fmt || String, color = opts.color || PALETTE[0], tip = tooltip(canvas);
    var bucket = opts.bucket || 60000;
    for (var i = 1; i < points.length; i++) bucket = Math.min(bucket, points[i].t - points[i - 1].t || bucket);
    var layout = null;
    register(canvas, function () {
      var g = setup(canvas, opts.height || 190), ctx = g.ctx;
      if (!points.length) return empty(g);
      var max = niceMax(Math.max.apply(null, points.map(function (p) { return p.v; })));
      var L = 64, R = 10, T = 8, B = 22, pw = g.w - L - R, ph = g.h - T - B;
      var t0 = points[0].t, t1 = points[points.length - 1].t + bucket, span = Math.max(t1 - t0, 1);
      var x = function (t) { return L + (t - t0) / span * pw; };
      ctx.strokeStyle = css("--chart-grid"); ctx.fillStyle = css("--muted"); ctx.textAlign = "right";
      for (var k = 0; k <= 4; k++) {
        var yy = T + ph - ph * k / 4;
        ctx.beginPath(); ctx.moveTo(L, Math.round(yy) + .5); ctx.lineTo(L + pw, Math.round(yy) + .5); ctx.stroke();
        ctx.fillText(fmt(max * k / 4), L - 6, yy);
      }
      var step = STEPS.filter(function (s) { return span / s <= 7; })[0] || STEPS[STEPS.length - 1];
      ctx.textAlign = "center";
      var tz = new Date(t0).getTimezoneOffset() * 60000;
      for (var tt = Math.ceil((t0 - tz) / step) * step + tz; tt <= t1; tt += step) {
        var lab = timeLabel(tt, step), lw = ctx.measureText(lab).width / 2;
        if (x(tt) + lw <= g.w && x(tt) - lw >= 0) ctx.fillText(lab, x(tt), g.h - B / 2 + 3);
        ctx.fillRect(Math.round(x(tt)), T + ph, 1, 4);
      }
      var slot = bucket / span * pw, bw = Math.max(1, slot > 4 ? slot - 1 : slot);
      var inset = slot > 120 ? (slot - 120) / 2 : 0;  // a lone bucket is a column, not a wall
      bw -= 2 * inset;
      ctx.fillStyle = color;
      layout = points.map(function (p) {
        var h = p.v / max * ph, px = x(p.t) + inset;
        ctx.fillRect(px, T + ph - h, bw, h);
        return {x0: px, x1: px + Math.max(bw, 3), p: p};
      });
      ctx.fillStyle = css("--chart-axis"); ctx.fillRect(L, T + ph, pw, 1);
    });
    $(canvas).off(".chart").on("mousemove.chart", function (e) {
      var mx = e.offsetX, hit = null;
      (layout || []).forEach(function (l) { if (mx >= l.x0 - 1 && mx <= l.x1 + 1) hit = l; });
      if (!hit) return tip.hide();
      var d = new Date(hit.p.t);
      tip.show(e.offsetX, e.offsetY, d.toLocaleString() + "\n" + (opts.label || "") + " " + fmt(hit.p.v) +
        (hit.p.extra ? "\n" + hit.p.extra : ""));
    }).on("mouseleave.chart", function () { tip.hide(); });
  }

  /* Horizontal bars, largest first (top IPs, top ports). */
  function bars(canvas, items, opts) {
    opts = opts || {};
    var fmt = opts.fmt || String, tip = tooltip(canvas), rows = [];
    var rowH = 20;
    register(canvas, function () {
      var g = setup(canvas, Math.max(60, items.length * rowH + 8)), ctx = g.ctx;
      if (!items.length) return empty(g);
      var labelW = Math.min(170, Math.max.apply(null, items.map(function (it) {
        return ctx.measureText(it.label).width; })) + 10);
      var valW = 70, pw = g.w - labelW - valW - 8;
      var max = Math.max.apply(null, items.map(function (it) { return it.v; })) || 1;
      rows = items.map(function (it, i) {
        var y = 4 + i * rowH, w = Math.max(1, it.v / max * pw);
        ctx.fillStyle = css("--text2"); ctx.textAlign = "right";
        ctx.fillText(clip(ctx, it.label, labelW - 8), labelW - 6, y + rowH / 2);
        ctx.fillStyle = it.color || opts.color || PALETTE[i % PALETTE.length];
        ctx.fillRect(labelW, y + 3, w, rowH - 6);
        ctx.fillStyle = css("--chart-text"); ctx.textAlign = "left";
        ctx.fillText(fmt(it.v), labelW + w + 5, y + rowH / 2);
        return {y0: y, y1: y + rowH, it: it};
      });
    });
    $(canvas).off(".chart").css("cursor", opts.onClick ? "pointer" : "default")
      .on("mousemove.chart", function (e) {
        var r = rows.filter(function (r) { return e.offsetY >= r.y0 && e.offsetY < r.y1; })[0];
        if (!r) return tip.hide();
        tip.show(e.offsetX, e.offsetY, r.it.title || r.it.label + ": " + fmt(r.it.v));
      }).on("mouseleave.chart", function () { tip.hide(); })
      .on("click.chart", function (e) {
        var r = rows.filter(function (r) { return e.offsetY >= r.y0 && e.offsetY < r.y1; })[0];
        if (r && opts.onClick) opts.onClick(r.it);
      });
  }

  function clip(ctx, text, w) {
    text = String(text);
    if (ctx.measureText(text).width <= w) return text;
    while (text.length > 1 && ctx.measureText(text + "\u2026").width > w) text = text.slice(0, -1);
    return text + "\u2026";
  }

  /* Donut with a legend (protocol shares). */
  function donut(canvas, items, opts) {
    opts = opts || {};
    var fmt = opts.fmt || String, tip = tooltip(canvas), arcs = [], center = null, legend = [];
    register(canvas, function () {
      var g = setup(canvas, opts.height || 190), ctx = g.ctx;
      var total = items.reduce(function (s, it) { return s + it.v; }, 0);
      if (!total) return empty(g);
      var r = Math.min(g.h / 2 - 8, 85), cx = r + 12, cy = g.h / 2, a = -Math.PI / 2;
      center = {x: cx, y: cy, r: r};
      arcs = items.map(function (it, i) {
        var da = it.v / total * Math.PI * 2, col = it.color || PALETTE[i % PALETTE.length];
        ctx.beginPath(); ctx.moveTo(cx, cy); ctx.arc(cx, cy, r, a, a + da); ctx.closePath();
        ctx.fillStyle = col; ctx.fill();
        var arc = {a0: a, a1: a + da, it: it, col: col, pct: it.v / total * 100};
        a += da;
        return arc;
      });
      ctx.beginPath(); ctx.arc(cx, cy, r * 0.55, 0, Math.PI * 2); ctx.fillStyle = css("--panel"); ctx.fill();
      ctx.fillStyle = css("--text"); ctx.textAlign = "center"; ctx.font = "600 13px system-ui, sans-serif";
      ctx.fillText(fmt(total), cx, cy); ctx.font = FONT;
      legend = [];
      arcs.slice(0, 9).forEach(function (arc, i) {
        var y = 14 + i * 19, lx = cx + r + 24;
        ctx.fillStyle = arc.col; ctx.fillRect(lx, y - 5, 10, 10);
        ctx.fillStyle = css("--text2"); ctx.textAlign = "left";
        ctx.fillText(arc.it.label + "  " + arc.pct.toFixed(1) + " %  (" + fmt(arc.it.v) + ")", lx + 16, y);
        legend.push({y0: y - 9, y1: y + 9, x0: lx, arc: arc});
      });
    });
    function hit(e) {
      if (!center) return null;
      var dx = e.offsetX - center.x, dy = e.offsetY - center.y, d = Math.sqrt(dx * dx + dy * dy);
      if (d <= center.r && d >= center.r * 0.55) {
        var ang = Math.atan2(dy, dx);
        if (ang < -Math.PI / 2) ang += Math.PI * 2;
        return arcs.filter(function (a) { return ang >= a.a0 && ang < a.a1; })[0] || null;
      }
      var l = legend.filter(function (l) { return e.offsetX >= l.x0 && e.offsetY >= l.y0 && e.offsetY < l.y1; })[0];
      return l ? l.arc : null;
    }
    $(canvas).off(".chart").on("mousemove.chart", function (e) {
      var a = hit(e);
      $(canvas).css("cursor", a && opts.onClick ? "pointer" : "default");
      if (!a) return tip.hide();
      tip.show(e.offsetX, e.offsetY, a.it.label + ": " + fmt(a.it.v) + " (" + a.pct.toFixed(1) + " %)");
    }).on("mouseleave.chart", function () { tip.hide(); })
      .on("click.chart", function (e) { var a = hit(e); if (a && opts.onClick) opts.onClick(a.it); });
  }

  App.chart = {timeColumns: timeColumns, bars: bars, donut: donut, palette: PALETTE};
})();
