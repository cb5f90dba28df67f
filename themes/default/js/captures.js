/* Captures: the active and completed lists, and the capture operations shared with the
 * capture workspace (stop, export with progress, notes, delete). */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;
  var active, completed, timer = null, $panel, doneRows = [];

  function stop(c) {
    var action = c.Type === CAPTURE_TYPE_SYSTEM ? "capture_stop_system" : "capture_stop_process";
    return api(action, {capture_id: c.CaptureId}).then(function () {
      ui.toast("Capture #" + c.CaptureId + " stopped");
      App.refreshLive();
    }, App.fail);
  }

  /* Export to PCAPNG: capture_export returns a COMMAND, followed until it is done. */
  function exportDialog(c) {
    var $filter = ui.input("filter", "optional display filter, e.g. tcp.port == 80").addClass("mono");
    var $path = ui.input("path", "blank = the server's export directory").addClass("mono");
    var $prog = ui.progress().hide(), $msg = ui.el("div", "");
    var busy = false;
    var $body = $().add(ui.el("p", "muted", "Write capture #" + c.CaptureId + " (" + fmt.num(c.PacketCount) +
      " packets) to a PCAPNG file that Wireshark opens with the process of each packet."))
      .add(ui.field("Filter", $filter)).add(ui.field("File path", $path)).add($prog).add($msg);
    ui.dialog("Export capture #" + c.CaptureId, $body, [
      {label: "Close"},
      {label: "Export", cls: "primary", click: function ($dlg) {
        if (busy) return false;
        busy = true;
        $msg.removeClass("error okmsg").text("");
        $prog.show().set(0, "queued");
        api("capture_export", {capture_id: c.CaptureId, filter: $filter.val().trim(), path: $path.val().trim()})
          .then(function (cmd) {
            return api.command(cmd, function (s) { $prog.set(s.Progress, fmt.commandState(s.State) + " " + s.Progress + " %"); });
          }).then(function (cmd) {
            $prog.set(100, "done");
            $msg.addClass("okmsg").text("Written: " + cmd.Result);
            $dlg.find(".modal-foot button").last().text("Export again");
            ui.toast("Exported capture #" + c.CaptureId + " to " + cmd.Result);
          }, function (r) {
            $prog.hide();
            $msg.addClass("error").text(r.ReturnValue);
          }).always(function () { busy = false; });
        return false;
      }}]);
  }

  /* "Open in Wireshark": export to the export directory (blank path), wait for the
   * command, then download the file (the browser hands a .pcapng to Wireshark). */
  function openInWireshark(c, $btn) {
    if ($btn) $btn.prop("disabled", true).text("Exporting\u2026");
    var $t = ui.toast("Exporting capture #" + c.CaptureId + " for download\u2026");
    return api("capture_export", {capture_id: c.CaptureId, filter: "", path: ""}).then(function (cmd) {
      return api.command(cmd);
    }).then(function (cmd) {
      var name = String(cmd.Result).split("/").pop();
      $t.remove();
      ui.toast("Downloading " + name);
      window.location.assign(api.download.exportUrl(name));
    }, App.fail).always(function () {
      if ($btn) $btn.prop("disabled", false).text("Open in Wireshark");
    });
  }

  function notesDialog(c, done) {
    var $ta = ui.el("textarea").attr({rows: 6, placeholder: "Notes on this capture"}).val(c.Notes || "");
    ui.dialog("Notes on capture #" + c.CaptureId, $ta, [
      {label: "Cancel"},
      {label: "Save", cls: "primary", click: function () {
        api("capture_set_notes", {capture_id: c.CaptureId, notes: $ta.val()}).then(function () {
          c.Notes = $ta.val();
          ui.toast("Notes saved on capture #" + c.CaptureId);
          if (done) done(c);
        }, App.fail);
      }}]);
  }

  function remove(c, done) {
    ui.confirm("Delete capture #" + c.CaptureId, "Delete capture #" + c.CaptureId + " (" + c.Name + ") and its " +
      fmt.num(c.PacketCount) + " packets? This cannot be undone.", "Delete").then(function () {
      api("capture_delete", {capture_id: c.CaptureId}).then(function () {
        ui.toast("Capture #" + c.CaptureId + " deleted");
        if (done) done();
      }, App.fail);
    });
  }

  function what(c) {
    if (c.Type === CAPTURE_TYPE_FILE) return c.SourceFile;
    if (c.Type === CAPTURE_TYPE_SYSTEM) return (c.Adapters || []).join(", ");
    return c.ProcessName + (c.Pid ? " (pid " + c.Pid + (c.ThreadId ? ", tid " + c.ThreadId : "") + ")" : "");
  }

  var common = [
    {title: "ID", get: function (c) { return c.CaptureId; }, cls: "num", width: "50px"},
    {title: "Type", get: function (c) { return fmt.captureType(c.Type); }},
    {title: "Name", get: function (c) { return c.Name; }},
    {title: "Target", get: what, cls: "ellipsis"},
    {title: "Filter", get: function (c) { return c.Filter; }, cls: "mono"},
    {title: "Started", get: function (c) { return c.StartTime; }, text: function (c) { return fmt.time(c.StartTime); }, cls: "nowrap"}];
  var counters = [
    {title: "Packets", get: function (c) { return c.PacketCount; }, text: function (c) { return fmt.num(c.PacketCount); }, cls: "num"},
    {title: "Bytes", get: function (c) { return c.ByteCount; }, text: function (c) { return fmt.bytes(c.ByteCount); }, cls: "num"},
    {title: "Dropped", get: function (c) { return c.DroppedCount; }, text: function (c) { return fmt.num(c.DroppedCount); }, cls: "num"},
    {title: "Conns", get: function (c) { return c.ConnectionCount; }, text: function (c) { return fmt.num(c.ConnectionCount); }, cls: "num"}];

  function loadActive() {
    return api("capture_list_active").then(function (list) { active.set(list); }, App.fail);
  }
  function loadCompleted() {
    return api("capture_list_completed").then(function (list) { doneRows = list; filterCompleted(); }, App.fail);
  }
  function filterCompleted() {
    var q = ($panel.find("[name=capfilter]").val() || "").toLowerCase();
    completed.set(doneRows.filter(function (c) {
      return !q || (c.CaptureId + " " + c.Name + " " + what(c) + " " + c.Notes + " " + c.Filter).toLowerCase().indexOf(q) >= 0;
    }));
  }

  function init($p) {
    $panel = $p;
    active = ui.table(common.concat([
      {title: "Running for", get: function (c) { return c.StartTime; }, text: function (c) {
        return fmt.duration(fmt.toFiletime(new Date()) - c.StartTime); }}], counters, [
      {title: "", cls: "actions", render: function (c) {
        return $().add(ui.button("Open", "small", function () { App.go("capture", c.CaptureId, "packets"); }))
          .add(ui.button("Stop", "small danger", function () { stop(c).then(refresh); }));
      }}]), {key: function (c) { return c.CaptureId; }, sort: 0, sortDir: -1,
      onClick: function (c) { App.go("capture", c.CaptureId, "packets"); }, empty: "No capture is running. Start one from Processes or Adapters."});
    completed = ui.table(common.concat([
      {title: "State", get: function (c) { return c.State; }, render: function (c) { return ui.stateBadge(c.State); }},
      {title: "Ended", get: function (c) { return c.EndTime; }, text: function (c) { return fmt.time(c.EndTime); }, cls: "nowrap"}],
      counters, [{title: "Notes", get: function (c) { return c.Notes; }, cls: "ellipsis"},
      {title: "", cls: "actions", render: function (c) {
        return $().add(ui.button("Open", "small", function () { App.go("capture", c.CaptureId, "packets"); }))
          .add(ui.button("Export", "small", function () { exportDialog(c); }))
          .add(ui.button("Open in Wireshark", "small wireshark", function (e) { e.stopPropagation(); openInWireshark(c, $(this)); })
            .attr("title", "Export to PCAPNG and download it"))
          .add(ui.button("Delete", "small danger", function () { remove(c, refresh); }));
      }}]), {key: function (c) { return c.CaptureId; }, sort: 0, sortDir: -1,
      onClick: function (c) { App.go("capture", c.CaptureId, "packets"); }, empty: "No completed captures yet."});
    $panel.append(
      ui.section("Active captures", $().add(ui.button("Stop all", "small danger", function () {
        api("capture_stop_all").then(function () { ui.toast("Every capture stopped"); refresh(); App.refreshLive(); }, App.fail);
      })).add(ui.button("Refresh", "small", refresh))).append(active),
      ui.section("Completed captures", $().add(ui.input("capfilter", "filter captures").attr("type", "search")
        .on("input", ui.debounce(filterCompleted, 80))).add(ui.button("Refresh", "small", refresh))).append(completed));
  }

  function refresh() { loadActive(); loadCompleted(); }

  App.views.captures = {
    title: "Captures", init: init,
    show: function () {
      refresh();
      clearInterval(timer);
      var n = 0;
      timer = setInterval(function () { loadActive(); if (++n % 5 === 0) loadCompleted(); }, 2000);
    },
    hide: function () { clearInterval(timer); }
  };
  App.captures = {stop: stop, exportDialog: exportDialog, openInWireshark: openInWireshark, notesDialog: notesDialog, remove: remove, what: what};
})();
