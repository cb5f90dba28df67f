/* Processes: the running list (filterable; kernel threads only when asked), one click to
 * capture a process with the filter/flags of the toolbar, and the selected process's
 * details and threads. */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;
  var $panel, table, threads, $detail, $opts, all = [], capturing = {}, selected = null, timer = null;

  /* Capture options shared by the one-click buttons: BPF filter, flags, adapters. */
  function options() {
    var flags = 0;
    if ($opts.find("[name=resolve]").prop("checked")) flags |= CAPTURE_FLAG_RESOLVE_IPS;
    if ($opts.find("[name=children]").prop("checked")) flags |= CAPTURE_FLAG_CHILD_PROCESSES;
    var adapter = $opts.find("[name=adapter]").val();
    return {filter: $opts.find("[name=bpf]").val().trim(), flags: flags, adapter: adapter ? [adapter] : []};
  }

  function startCapture(params, label) {
    var data = $.extend(options(), params);
    if (data.thread_id) data.flags |= CAPTURE_FLAG_THREAD_CAPTURE;
    return api("capture_start_process", data).then(function (cap) {
      ui.toast("Capturing " + label + " \u2192 capture #" + cap.CaptureId);
      App.refreshLive();
      App.go("capture", cap.CaptureId, "packets");
    }, App.fail);
  }

  function capButton(p) {
    return ui.button("Capture", "small rec", function () {
      startCapture({pid: p.Pid}, p.Name + " (pid " + p.Pid + ")");
    }).attr("title", "Start a process capture of pid " + p.Pid);
  }

  function applyFilter() {
    var q = $panel.find("input[name=procfilter]").val().trim().toLowerCase();
    var rows = !q ? all : all.filter(function (p) {
      return (p.Pid + " " + p.Name + " " + p.Path + " " + p.User + " " + p.CommandLine).toLowerCase().indexOf(q) >= 0;
    });
    table.set(rows);
    $panel.find(".proccount").text(rows.length + " of " + all.length + " processes");
  }

  function load() {
    var kernel = $opts.find("[name=kthreads]").prop("checked") ? 1 : 0;
    return $.when(api("process_list_running", {kernel_threads: kernel}), api("process_list_capture")).then(function (list, caps) {
      all = list;
      capturing = {};
      caps.forEach(function (p) { capturing[p.Pid] = true; });
      applyFilter();
    }, App.fail);
  }

  function showDetail(p) {
    selected = p;
    $detail.empty();
    var $dl = ui.el("dl", "kv");
    [["Name", p.Name], ["PID", p.Pid], ["Parent PID", p.ParentPid], ["User", p.User], ["Path", p.Path],
      ["Command line", p.CommandLine], ["Started", fmt.time(p.StartTime)], ["Our ProcessId", p.ProcessId],
      ["Captured", capturing[p.Pid] ? "yes \u2014 being captured now" : "no"]].forEach(function (kv) {
      $dl.append(ui.el("dt", "", kv[0]), ui.el("dd", kv[0] === "Command line" || kv[0] === "Path" ? "mono" : "", kv[1]));
    });
    $detail.append(ui.el("div", "panel-body").append($dl,
      ui.el("div", "toolbar compact").css("padding", "8px 0 0").append(
        ui.button("Capture this process", "primary rec", function () {
          startCapture({pid: p.Pid}, p.Name + " (pid " + p.Pid + ")");
        }),
        ui.button("Capture with children", "", function () {
          startCapture({pid: p.Pid, flags: options().flags | CAPTURE_FLAG_CHILD_PROCESSES}, p.Name + " and children");
        }))));
    var $th = ui.section("Threads", ui.button("Refresh", "small", function () { loadThreads(p); }));
    threads = ui.table([
      {title: "TID", get: function (t) { return t.ThreadId; }, cls: "num"},
      {title: "Name", get: function (t) { return t.Name; }},
      {title: "State", get: function (t) { return t.Live ? "live" : "ended"; }},
      {title: "Packets", get: function (t) { return t.PacketCount; }, text: function (t) { return fmt.num(t.PacketCount); }, cls: "num"},
      {title: "", cls: "actions", render: function (t) {
        return t.Live ? ui.button("Capture thread", "small rec", function () {
          startCapture({pid: p.Pid, thread_id: t.ThreadId}, "thread " + t.ThreadId + " of " + p.Name);
        }) : "";
      }}], {empty: "No threads."});
    $th.append(ui.el("div", "scroll").css("max-height", "40vh").append(threads));
    $detail.append($th);
    loadThreads(p);
  }

  var threadsOf = api.latest();  // the process selected last: its threads, not an earlier one's

  function loadThreads(p) {
    threadsOf("process_list_threads", {pid: p.Pid, flags: 1}).then(function (list) { threads.set(list); }, App.fail);
  }

  function init($p) {
    $panel = $p.addClass("fill");
    var adapters = ui.el("select").attr("name", "adapter").append(ui.el("option", "", "all up adapters").val(""));
    api("adapter_list").then(function (list) {
      list.filter(function (a) { return a.Capturable !== false; }).forEach(function (a) {
        adapters.append(ui.el("option", "", a.Name).val(a.Name));
      });
    }, App.fail);
    $opts = ui.el("div", "toolbar").append(
      ui.field("Filter processes", ui.input("procfilter", "name, pid, path, user\u2026").attr("type", "search")
        .on("input", ui.debounce(applyFilter, 80))),
      ui.field("Capture filter (BPF, optional)", ui.input("bpf", "e.g. tcp port 443").addClass("mono"), "wide"),
      ui.field("Adapter", adapters),
      ui.checkbox("Resolve IPs", "resolve", true),
      ui.checkbox("Child processes", "children", false),
      ui.checkbox("Kernel threads", "kthreads", false).attr("title", "Also list the kernel's own threads (kthreadd and its children)"),
      ui.button("Refresh", "", load),
      ui.el("span", "muted proccount"));
    $opts.on("change", "[name=kthreads]", load);
    table = ui.table([
      {title: "PID", get: function (p) { return p.Pid; }, cls: "num", width: "70px"},
      {title: "Name", cls: "name", get: function (p) { return p.Name.toLowerCase(); }, render: function (p) {
        var $s = ui.el("span", "", p.Name);
        return capturing[p.Pid] ? $s.add(ui.badge("capturing", "live").css("margin-left", "6px")) : $s;
      }},
      {title: "User", get: function (p) { return p.User; }},
      {title: "Path", get: function (p) { return p.Path; }, cls: "mono ellipsis"},
      {title: "Started", get: function (p) { return p.StartTime; }, text: function (p) { return fmt.time(p.StartTime); }, cls: "nowrap"},
      {title: "", cls: "actions", render: capButton}
    ], {key: function (p) { return p.Pid; }, onClick: showDetail, sort: 1,
      rowClass: function (p) { return capturing[p.Pid] ? "capturing" : ""; }, empty: "No process matches."});
    var $list = ui.section("Running processes").append(ui.el("div", "scroll").css("flex", "1").append(table));
    $list.css({flex: "2"});
    $detail = ui.el("div", "panel").css({flex: "1", overflow: "auto"});
    $detail.append(ui.el("p", "help", "Select a process to see its command line and threads."));
    $panel.append(ui.el("div", "panel").css("flex", "none").append($opts),
      ui.el("div", "cols").css({flex: "1"}).append($list, $detail));
  }

  App.views.processes = {
    title: "Processes", init: init,
    show: function () {
      load();
      clearInterval(timer);
      timer = setInterval(function () { if (!document.hidden) load(); }, 10000);
    },
    hide: function () { clearInterval(timer); }
  };
  App.processes = {start: startCapture};
})();
