/* Files: ingest (a path on the server, or an upload through pcap_ingest_post), the
 * exported PCAPNG files (export_list / export_delete), every command with its progress,
 * and extracted files of a capture (extract.js). */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;
  var $panel, exportsT, commandsT, $ingestOut, timer = null, $extractScope, $extractBody;

  function ingestDone($row, $prog) {
    return function (cmd) {
      var id = Number(cmd.Result);
      $prog.set(100, "done");
      $row.append(ui.el("a", "", "Open capture #" + id).attr("href", "#/capture/" + id + "/packets"));
      ui.toast("Ingested into capture #" + id);
      loadCommands();
    };
  }
  function ingestFailed($row, $prog) {
    return function (r) { $prog.hide(); $row.append(ui.el("span", "error", r.ReturnValue)); loadCommands(); };
  }
  function ingestRow(label) {
    var $prog = ui.progress().css("width", "200px");
    var $row = ui.el("div", "toolbar compact").append(ui.el("span", "mono", label), $prog);
    $ingestOut.prepend($row);
    return {$row: $row, $prog: $prog};
  }

  function ingestPath() {
    var path = $panel.find("[name=ingestpath]").val().trim();
    if (!path) return ui.error("path: type the path of a .pcap or .pcapng file on the server");
    var r = ingestRow(path);
    r.$prog.set(0, "queued");
    api("pcap_ingest_file", {path: path}).then(function (cmd) {
      return api.command(cmd, function (c) { r.$prog.set(c.Progress, "ingesting " + c.Progress + " %"); });
    }).then(ingestDone(r.$row, r.$prog), ingestFailed(r.$row, r.$prog));
  }

  function upload() {
    var input = $panel.find("[name=upload]")[0];
    if (!input.files.length) return ui.error("file: choose a .pcap or .pcapng file to upload");
    Array.prototype.forEach.call(input.files, function (file) {
      var r = ingestRow(file.name + " (" + fmt.bytes(file.size) + ")");
      api.upload("pcap_ingest_post", file, function (pct) { r.$prog.set(pct, "uploading " + Math.round(pct) + " %"); })
        .then(function (cmd) {
          return api.command(cmd, function (c) { r.$prog.set(c.Progress, "ingesting " + c.Progress + " %"); });
        }).then(ingestDone(r.$row, r.$prog), ingestFailed(r.$row, r.$prog));
    });
    input.value = "";
  }

  function loadExports() {
    return api("export_list").then(function (l) { exportsT.set(l); }, App.fail);
  }
  function loadCommands() {
    return api("command_list").then(function (l) {
      commandsT.set(l);
      clearTimeout(timer);
      if (l.some(function (c) { return c.State === COMMAND_STATE_QUEUED || c.State === COMMAND_STATE_RUNNING; })) {
        timer = setTimeout(function () { loadCommands(); loadExports(); }, 1000);
      }
    }, App.fail);
  }

  function resultCell(c) {
    if (!c.Result) return "";
    if (typeof c.Result === "object") {  // an EXECUTE action: {ExitCode, Output}
      return ui.el("span", "mono", "exit " + c.Result.ExitCode + (c.Result.Output ? ": " + c.Result.Output.slice(0, 80) : ""))
        .attr("title", c.Result.Output || "");
    }
    if (c.Type === "INGEST" && /^\d+$/.test(String(c.Result))) {
      return ui.el("a", "", "capture #" + c.Result).attr("href", "#/capture/" + c.Result + "/packets");
    }
    return ui.el("span", "mono", c.Result);
  }

  function fillExtractScope() {
    if (!$extractScope) return;
    $.when(api("capture_list_completed"), api("capture_list_active")).then(function (done, act) {
      var keep = $extractScope.val();
      $extractScope.empty().append(ui.el("option", "", "choose a capture").val(""));
      done.concat(act).sort(function (a, b) { return b.CaptureId - a.CaptureId; }).forEach(function (c) {
        $extractScope.append(ui.el("option", "", "#" + c.CaptureId + " " + c.Name).val(c.CaptureId));
      });
      if (keep) $extractScope.val(keep);
    }, App.fail);
  }

  function init($p) {
    $panel = $p;
    $ingestOut = ui.el("div");
    var $ingest = ui.section("Ingest a capture file").append(
      ui.el("div", "toolbar").append(
        ui.field("File on the server", ui.input("ingestpath", "/path/to/file.pcapng").addClass("mono"), "wide"),
        ui.button("Ingest", "primary", ingestPath),
        ui.el("span", "muted").css("padding", "0 10px").text("or"),
        ui.field("Upload from this computer", ui.el("input").attr({type: "file", name: "upload", multiple: true,
          accept: ".pcap,.pcapng,.cap,application/vnd.tcpdump.pcap"})),
        ui.button("Upload and ingest", "primary", upload)),
      $ingestOut.css("padding", "0 0 6px"));
    exportsT = ui.table([
      {title: "File", get: function (f) { return f.FileName; }, cls: "mono"},
      {title: "Size", get: function (f) { return f.Size; }, text: function (f) { return fmt.bytes(f.Size); }, cls: "num"},
      {title: "Created", get: function (f) { return f.Created; }, text: function (f) { return fmt.time(f.Created); }, cls: "nowrap"},
      {title: "", cls: "actions", render: function (f) {
        return ui.el("a", "button small dl", "Download").attr({href: api.download.exportUrl(f.FileName), download: f.FileName})
          .add(ui.button("Delete", "small danger", function () {
          api("export_delete", {filename: f.FileName}).then(function () { ui.toast("Deleted " + f.FileName); loadExports(); }, App.fail);
        }));
      }}
    ], {key: function (f) { return f.FileName; }, sort: 2, sortDir: -1,
      empty: "No exported files. Export a capture from its page or from the Captures list."});
    commandsT = ui.table([
      {title: "Type", get: function (c) { return c.Type; }},
      {title: "State", get: function (c) { return c.State; }, render: function (c) {
        return ui.badge(fmt.commandState(c.State), "cmd-" + c.State); }},
      {title: "Progress", get: function (c) { return c.Progress; }, render: function (c) {
        return ui.progress().set(c.Progress).css("width", "140px"); }},
      {title: "Message", get: function (c) { return c.Message; }, cls: "ellipsis"},
      {title: "Result", get: function (c) { return c.Result; }, render: resultCell},
      {title: "Created", get: function (c) { return c.Created; }, text: function (c) { return fmt.time(c.Created); }, cls: "nowrap"},
      {title: "Finished", get: function (c) { return c.Finished; }, text: function (c) { return fmt.time(c.Finished); }, cls: "nowrap"},
      {title: "", cls: "actions", render: function (c) {
        var live = c.State === COMMAND_STATE_QUEUED || c.State === COMMAND_STATE_RUNNING;
        return ui.button(live ? "Cancel" : "Remove", "small" + (live ? " danger" : ""), function () {
          api("command_delete", {command_uid: c.CommandUid}).then(loadCommands, App.fail);
        });
      }}
    ], {key: function (c) { return c.CommandUid; }, sort: 5, sortDir: -1, empty: "No commands."});
    $panel.append($ingest,
      ui.section("Exported files", $().add(ui.button("Delete all", "small danger", function () {
        ui.confirm("Delete exports", "Delete every exported file in the export directory?", "Delete all").then(function () {
          api("export_delete", {filename: ""}).then(function (n) { ui.toast(n + " files deleted"); loadExports(); }, App.fail);
        });
      })).add(ui.button("Refresh", "small", loadExports))).append(exportsT),
      ui.section("Commands (ingest, export, actions)", ui.button("Refresh", "small", loadCommands)).append(commandsT));
    if (api.has("extract_query")) {
      $extractScope = ui.el("select").attr("aria-label", "capture for extracted files").on("change", function () {
        if (this.value) App.extract.render($extractBody, Number(this.value)); else $extractBody.empty();
      });
      $extractBody = ui.el("div");
      $panel.append(ui.section("Extracted files", $().add(App.extract.toggle())).append(
        ui.el("div", "toolbar compact").append(ui.el("span", "muted", "Capture"), $extractScope), $extractBody));
    }
  }

  App.views.files = {
    title: "Files", init: init,
    show: function () { loadExports(); loadCommands(); fillExtractScope(); },
    hide: function () { clearTimeout(timer); }
  };
})();
