/* Network (the landing page): which program uses the network now, to which hosts, and how
 * much over a range. usage_now every second (rates, connections, top hosts, the last 60 s
 * as a sparkline), usage_by_process for the range's totals and the stacked per-program
 * chart, usage_by_remote for a program's hosts. One row per program (executable path),
 * its PIDs folded under it; only programs with traffic are listed. */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;
  var RANGES = [["5m", "5 min"], ["1h", "1 hour"], ["24h", "24 hours"], ["7d", "7 days"], ["30d", "30 days"]];
  var TOP = 8;
  var S = {range: "5m", now: null, hist: null, sort: "rate", dir: -1, open: {}, selected: null,
    sparks: {}, timer: null, histTimer: null, visible: false, enabled: null, setting: null};
  var $panel, $switch, $state, $chart, $chartTitle, $tbody, $head, $detail, $ranges;

  function rate(n) { return fmt.bytes(Math.round(n)) + "/s"; }
  function unix(ft) { return ft / 1e7 - 11644473600; }
  function keyOf(p) { return p.Path || p.Name || "#" + p.ProcessId; }
  function pidsOf(p) { return p.Processes && p.Processes.length ? p.Processes : [{ProcessId: p.ProcessId, Pid: p.Pid}]; }

  /* Programs by key (executable path), from the live answer and the range's totals. */
  function programs() {
    var by = {};
    function get(p) {
      var k = keyOf(p), g = by[k];
      if (!g) g = by[k] = {key: k, name: p.Name || "<unknown>", path: p.Path || "", pids: {}, rateIn: 0,
        rateOut: 0, conns: 0, remotes: [], spark: null, totalIn: 0, totalOut: 0};
      pidsOf(p).forEach(function (q) {
        if (!g.pids[q.ProcessId]) g.pids[q.ProcessId] = {ProcessId: q.ProcessId, Pid: q.Pid, rateIn: null, rateOut: null};
      });
      return g;
    }
    ((S.now && S.now.Programs) || []).forEach(function (p) {
      var g = get(p);
      g.rateIn += p.BytesInPerSec; g.rateOut += p.BytesOutPerSec; g.conns += p.Connections;
      g.remotes = g.remotes.concat(p.TopRemotes || []);
      var spark = [p.Series.map(function (s) { return s.BytesIn; }), p.Series.map(function (s) { return s.BytesOut; })];
      g.spark = g.spark ? g.spark.map(function (a, d) { return a.map(function (v, i) { return v + (spark[d][i] || 0); }); }) : spark;
      var own = pidsOf(p);
      if (own.length === 1) {  // one process (group=process): its own rate
        var q = g.pids[own[0].ProcessId];
        q.rateIn = (q.rateIn || 0) + p.BytesInPerSec; q.rateOut = (q.rateOut || 0) + p.BytesOutPerSec;
      }
    });
    ((S.hist && S.hist.Programs) || []).forEach(function (p) {
      if (!(p.BytesIn + p.BytesOut)) return;
      var g = get(p);
      g.totalIn += p.BytesIn; g.totalOut += p.BytesOut;
    });
    return Object.keys(by).map(function (k) {
      var g = by[k];
      g.remotes.sort(function (a, b) { return b.BytesIn + b.BytesOut - a.BytesIn - a.BytesOut; });
      return g;
    }).filter(function (g) { return g.rateIn + g.rateOut + g.totalIn + g.totalOut > 0 || g.spark; });
  }

  var COLS = [
    {id: "name", title: "Program", get: function (g) { return g.name.toLowerCase(); }},
    {id: "in", title: "\u2193 Now", cls: "num", get: function (g) { return g.rateIn; }},
    {id: "out", title: "\u2191 Now", cls: "num", get: function (g) { return g.rateOut; }},
    {id: "spark", title: "Last 60 s", cls: "sparkcell"},
    {id: "total", title: "Total", cls: "num", get: function (g) { return g.totalIn + g.totalOut; }},
    {id: "conns", title: "Conns", cls: "num", get: function (g) { return g.conns; }},
    {id: "hosts", title: "Hosts, last minute", cls: "hosts prio-2", get: function (g) { return g.remotes.length ? g.remotes[0].Ip : ""; }}
  ];
  COLS.push({id: "rate", hidden: true, get: function (g) { return g.rateIn + g.rateOut + (g.totalIn + g.totalOut) * 1e-12; }});

  function header() {
    var $tr = ui.el("tr");
    COLS.forEach(function (c) {
      if (c.hidden) return;
      var $th = ui.el("th", c.cls, c.id === "total" ? "Total (" + S.range + ")" : c.title).attr("data-col", c.id);
      if (c.get) $th.addClass("sortable").on("click", function () {
        S.dir = S.sort === c.id ? -S.dir : (c.id === "name" ? 1 : -1); S.sort = c.id; draw();
      });
      if (S.sort === c.id) $th.addClass(S.dir > 0 ? "asc" : "desc");
      $tr.append($th);
    });
    $head.empty().append($tr);
  }

  function sparkFor(g) {
    var s = S.sparks[g.key];
    if (!s) {
      var $box = ui.el("div", "spark");
      s = S.sparks[g.key] = {$box: $box, chart: null};
    }
    s.seen = true;
    return s;
  }

  function draw() {
    header();
    var list = programs(), col = COLS.filter(function (c) { return c.id === S.sort; })[0];
    list.sort(function (a, b) { var x = col.get(a), y = col.get(b); return (x < y ? -1 : x > y ? 1 : 0) * S.dir; });
    Object.keys(S.sparks).forEach(function (k) { S.sparks[k].$box.detach(); S.sparks[k].seen = false; });
    $tbody.empty();
    list.forEach(function (g) {
      var open = !!S.open[g.key], pids = Object.keys(g.pids).map(function (k) { return g.pids[k]; });
      var $tr = ui.el("tr", "clickable prog").attr({"data-key": g.key, "data-pids": pids.map(function (q) { return q.Pid; }).join(" "),
        "data-active-pids": pids.filter(function (q) { return q.rateIn + q.rateOut > 0; }).map(function (q) { return q.Pid; }).join(" ")}).toggleClass("selected", S.selected === g.key);
      var $name = ui.el("td", "name").attr("title", g.path || g.name).append(
        ui.el("button", "fold small", open ? "\u25be" : "\u25b8").attr({type: "button", title: "PIDs", "aria-expanded": open})
          .on("click", function () { S.open[g.key] = !open; draw(); }),
        ui.procName(g.name), ui.el("span", "muted pidcount", pids.length > 1 ? " \u00d7" + pids.length : ""));
      var $spark = ui.el("td", "sparkcell");
      if (g.spark) {
        var s = sparkFor(g);
        $spark.append(s.$box);
        if (!s.chart) s.chart = App.charts.spark(s.$box[0], {values: g.spark}); else s.chart.update(g.spark);
      }
      var hosts = g.remotes.slice(0, 2).map(function (r) { return fmt.endpoint(r.Ip, r.Port); });
      $tr.append($name, ui.el("td", "num rin", rate(g.rateIn)), ui.el("td", "num rout", rate(g.rateOut)), $spark,
        ui.el("td", "num total", fmt.bytes(g.totalIn + g.totalOut)).attr("title", "\u2193 " + fmt.bytes(g.totalIn) + "  \u2191 " + fmt.bytes(g.totalOut)),
        ui.el("td", "num", fmt.num(g.conns)), ui.el("td", "hosts prio-2 mono", hosts.join("  ")).attr("title", hosts.join("\n")));
      $tr.on("click", function (e) {
        if ($(e.target).closest("button").length) return;
        S.selected = g.key; $tbody.children().removeClass("selected"); $tr.addClass("selected");
        App.networkDetail.show($detail, g, S);
      });
      $tbody.append($tr);
      if (open) pids.forEach(function (q) {
        $tbody.append(ui.el("tr", "pidrow").attr("data-pid", q.Pid).append(
          ui.el("td", "name", "pid " + q.Pid), ui.el("td", "num", q.rateIn === null ? "" : rate(q.rateIn)),
          ui.el("td", "num", q.rateOut === null ? "" : rate(q.rateOut)), ui.el("td"), ui.el("td"), ui.el("td"),
          ui.el("td", "actions prio-2").append(ui.button("Capture", "small rec", function () {
            App.networkDetail.capture(q.Pid, g.name);
          }))));
      });
    });
    Object.keys(S.sparks).forEach(function (k) { if (!S.sparks[k].seen) delete S.sparks[k]; });
    if (!list.length) $tbody.append(ui.el("tr", "empty").append(ui.el("td", "",
      S.setting === false ? "Usage accounting is off." : "No program has used the network yet.").attr("colspan", 7)));
  }

  /* The stacked chart: the range's top programs (by bytes) and the rest, in bytes/s. */
  function drawChart() {
    var h = S.hist;
    if (!h) return;
    var bucket = h.BucketSeconds || 60, t0 = Math.floor(unix(h.Start) / bucket) * bucket, t1 = unix(h.End);
    var times = [], index = {};
    for (var t = t0; t < t1 && times.length < 5000; t += bucket) { index[t] = times.length; times.push(t); }
    var progs = {};
    (h.Programs || []).forEach(function (p) {
      var k = keyOf(p), g = progs[k] || (progs[k] = {label: p.Name || "<unknown>", path: p.Path || "", bytes: 0, values: times.map(function () { return 0; })});
      g.bytes += p.BytesIn + p.BytesOut;
      p.Series.forEach(function (s) {
        var i = index[Math.floor(unix(s.Time) / bucket) * bucket];
        if (i !== undefined) g.values[i] += (s.BytesIn + s.BytesOut) / bucket;
      });
    });
    var list = Object.keys(progs).map(function (k) { return progs[k]; }).filter(function (g) { return g.bytes > 0; })
      .sort(function (a, b) { return b.bytes - a.bytes; });
    // Two executables with one name (e.g. two curls): the folder tells them apart.
    var seen = {};
    list.forEach(function (g) { seen[g.label] = (seen[g.label] || 0) + 1; });
    list.forEach(function (g) {
      if (seen[g.label] > 1 && g.path) g.label += " (" + g.path.split("/").slice(-2, -1)[0] + ")";
    });
    var series = list.slice(0, TOP);
    if (list.length > TOP) {
      var rest = {label: (list.length - TOP) + " others", color: "#9aa3ae", values: times.map(function () { return 0; })};
      list.slice(TOP).forEach(function (g) { g.values.forEach(function (v, i) { rest.values[i] += v; }); });
      series.push(rest);
    }
    var per = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}[bucket] || bucket + " s";
    $chartTitle.text("Bandwidth per program, last " + $ranges.find(".active").text() + " (average per " + per + ")");
    $chart.attr({"data-bucket": bucket, "data-programs": series.length});
    App.charts.timeBars($chart[0], {times: list.length ? times : [], bucket: bucket, stacked: true, series: series,
      fmt: rate, height: 210, axisSize: 74, empty: "No traffic in this range."});
  }

  function showNow(r) {
    S.now = r;
    S.nowFailed = false;
    setEnabled(r.Enabled);
    $state.text(r.Enabled ? (r.Dropped ? fmt.num(r.Dropped) + " packets dropped by libpcap" : "") : "");
    draw();
  }

  /* Once a second, one request at a time; an error is shown once, not every second. */
  function loadNow() {
    if (S.nowBusy) return;
    S.nowBusy = true;
    api("usage_now", {seconds: 3, group: "process"}).then(showNow, function (r) {
      if (!S.nowFailed) App.fail(r);
      S.nowFailed = true;
    }).always(function () { S.nowBusy = false; });
  }
  /* The rates come by the stream (a `usage` subscription, one message a second); without a
   * stream, or when it ends, usage_now is polled every second instead. */
  function follow() {
    clearInterval(S.timer);
    if (S.sub) S.sub.close();
    S.sub = App.stream ? App.stream.subscribe({subscribe: "usage", seconds: 3, group: "process",
                                               interval_ms: 1000}, onUsage, poll) : null;
    if (!S.sub) poll();
  }
  function onUsage(m) {
    if (m.type === "usage" && S.visible) showNow(m.Usage);
  }
  function poll() {
    S.sub = null;
    clearInterval(S.timer);
    if (S.visible) S.timer = setInterval(function () { if (!document.hidden) loadNow(); }, 1000);
  }

  function loadHist() {
    clearTimeout(S.histTimer);
    // Only the newest request draws and re-arms the timer: a slow answer for the range
    // before a click must not replace the new one's chart, nor start a second poll.
    var seq = S.histSeq = (S.histSeq || 0) + 1;
    return api("usage_by_process", {relative_time: S.range, group: "process"}).then(function (r) {
      if (seq !== S.histSeq) return;
      S.hist = r;
      drawChart();
      draw();
    }, function (r) { if (seq === S.histSeq) App.fail(r); }).always(function () {
      if (S.visible && seq === S.histSeq) S.histTimer = setTimeout(loadHist, S.range === "5m" ? 5000 : 30000);
    });
  }

  /* The switch shows the setting; the notice says whether the recorder runs (it starts or
   * stops within a few seconds of the setting, and may fail to start: the server logs why). */
  function setEnabled(running) {
    S.enabled = running;
    var $note = $panel.find(".usageoff");
    if (running || S.setting === null) return $note.prop("hidden", true);
    $note.prop("hidden", false).toggleClass("starting", S.setting).text(S.setting
      ? "Usage accounting is on but not counting yet (the recorder is starting; if this stays, the server log says why)."
      : "Usage accounting is off: nothing is being counted. Turn it on to see which programs use the network; " +
        "what was counted before stays below.");
  }
  function setSetting(on) {
    S.setting = on;
    $switch.find("input").prop("checked", on);
    setEnabled(S.enabled);
  }

  function init($p) {
    $panel = $p;
    $ranges = ui.el("div", "segmented").attr("role", "group").attr("aria-label", "range");
    RANGES.forEach(function (r) {
      $ranges.append(ui.button(r[1], "small" + (r[0] === S.range ? " active" : ""), function () {
        S.range = r[0]; $ranges.children().removeClass("active"); $(this).addClass("active"); loadHist();
      }).attr("data-range", r[0]));
    });
    $switch = ui.checkbox("Usage accounting", "usage_enabled", true).addClass("switch");
    $switch.find("input").on("change", function () {
      var on = this.checked;
      api("settings_set", {key_name: "usage_enabled", value: on ? "1" : "0"}).then(function () {
        ui.toast(on ? "Usage accounting on" : "Usage accounting off");
        setSetting(on);
        draw();
      }, function (r) { App.fail(r); setSetting(!on); });
    });
    $state = ui.el("span", "muted");
    $chartTitle = ui.el("h3", "", "Bandwidth per program");
    $chart = ui.el("div", "chart netchart");
    $head = ui.el("thead"); $tbody = ui.el("tbody");
    $detail = ui.el("div", "panel netdetail").append(ui.el("p", "help", "Click a program to see the hosts it talked to."));
    $p.append(ui.section("Network", [$ranges, $switch]).append(
      ui.el("p", "usageoff notice").prop("hidden", true),
      ui.el("div", "chartbox netbox").append($chartTitle, $chart), ui.el("div", "toolbar compact").append($state)),
      ui.el("div", "cols netcols").append(
        ui.el("div", "panel").append(ui.el("div", "scroll").append(ui.el("table", "grid nettable").append($head, $tbody))),
        $detail));
    draw();
  }

  App.views.network = {
    title: "Network", init: init,
    show: function () {
      S.visible = true;
      api("settings_get_by_key", {key_name: "usage_enabled"}).then(function (v) { setSetting(v === "1" || v === 1); }, App.fail);
      loadNow(); loadHist();
      follow();
    },
    hide: function () {
      S.visible = false;
      clearInterval(S.timer); clearTimeout(S.histTimer);
      if (S.sub) { S.sub.close(); S.sub = null; }
    }
  };
})();
