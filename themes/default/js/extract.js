/* Extracted files of a capture: the detected streams (extract_query) with a button to
 * write each one (extract_file_write), the written files (extract_file_list/_delete/_clear)
 * and the global switch (extract_enable / extract_disable). */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;

  /* A checkbox bound to the global extraction flag (setting extract_enabled). */
  function toggle() {
    var $l = ui.checkbox("File extraction on (all captures; adds overhead)", "extract", false);
    var $c = $l.find("input");
    api("settings_get_by_key", {key_name: "extract_enabled"}).then(function (v) {
      $c.prop("checked", v === "1" || v === "true");
    }, function () { /* never set: off */ });
    $c.on("change", function () {
      var on = this.checked;
      api(on ? "extract_enable" : "extract_disable").then(function () {
        ui.toast("File extraction " + (on ? "enabled" : "disabled") + " for captures started from now on");
        $(document).trigger("apc:settings");
      }, function (r) { $c.prop("checked", !on); App.fail(r); });
    });
    return $l;
  }

  function render($el, captureId) {
    var files = ui.table([
      {title: "ID", get: function (f) { return f.FileId; }, cls: "num"},
      {title: "File", get: function (f) { return f.FileName; }, cls: "mono"},
      {title: "Type", get: function (f) { return f.MimeType; }},
      {title: "Size", get: function (f) { return f.Size; }, text: function (f) { return fmt.bytes(f.Size); }, cls: "num"},
      {title: "Path on the server", get: function (f) { return f.Path; }, cls: "mono ellipsis"},
      {title: "SHA-256", get: function (f) { return f.Sha256; }, cls: "mono ellipsis"},
      {title: "", cls: "actions", render: function (f) {
        return ui.el("a", "button small dl", "Download")
          .attr({href: api.download.extractUrl(captureId, f.FileId), download: f.FileName})
          .add(ui.button("Delete", "small danger", function () {
          api("extract_file_delete", {capture_id: captureId, file_id: f.FileId}).then(loadFiles, App.fail);
        }));
      }}], {key: function (f) { return f.FileId; }, empty: "No file written yet."});
    var streams = ui.table([
      {title: "Stream", get: function (s) { return s.StreamId; }, cls: "num"},
      {title: "Conn", get: function (s) { return s.ConnectionId; }, cls: "num"},
      {title: "Protocol", get: function (s) { return typeof s.Protocol === "number" ? fmt.proto(s.Protocol) : s.Protocol; }},
      {title: "File name", get: function (s) { return s.FileName; }, cls: "mono", render: function (s) {
        return ui.el("span", "", s.FileName).attr("title", s.OriginalName || s.FileName); }},
      {title: "From", get: function (s) {
        return (s.Method ? s.Method + " " : "") + (s.Host || "") + (s.Uri || "") + (s.Status ? " → " + s.Status : "");
      }, cls: "mono ellipsis"},
      {title: "Type", get: function (s) { return s.MimeType; }},
      {title: "Size", get: function (s) { return s.Size; }, text: function (s) { return fmt.bytes(s.Size); }, cls: "num"},
      {title: "Complete", get: function (s) { return s.Complete ? "yes" : s.Truncated ? "cut at size limit" : "partial"; }},
      {title: "Time", get: function (s) { return s.Time; }, text: function (s) { return fmt.time(s.Time); }, cls: "nowrap"},
      {title: "", cls: "actions", render: function (s) {
        return ui.button("Extract", "small", function () {
          api("extract_file_write", {capture_id: captureId, stream_id: s.StreamId}).then(function (f) {
            ui.toast("Wrote " + f.Path + " (" + fmt.bytes(f.Size) + ", sha256 " + String(f.Sha256).slice(0, 12) + "\u2026)");
            loadFiles();
          }, App.fail);
        });
      }}], {key: function (s) { return s.StreamId; }, empty: "No files detected in this capture (is file extraction on?)."});
    function loadStreams() {
      api.all("extract_query", {capture_id: captureId}, "StreamId", "Streams").then(function (l) { streams.set(l); }, App.fail);
    }
    function loadFiles() {
      api("extract_file_list", {capture_id: captureId}).then(function (l) { files.set(l); }, App.fail);
    }
    $el.empty().append(
      ui.el("div", "toolbar compact").append(ui.el("h3", "", "Files detected in capture #" + captureId),
        ui.button("Refresh", "small", function () { loadStreams(); loadFiles(); })),
      streams,
      ui.el("div", "toolbar compact").append(ui.el("h3", "", "Written files"),
        ui.button("Delete all", "small danger", function () {
          api("extract_file_clear", {capture_id: captureId}).then(function (n) {
            ui.toast(n + " extracted files deleted"); loadFiles();
          }, App.fail);
        })),
      files);
    loadStreams();
    loadFiles();
  }

  App.extract = {render: render, toggle: toggle};
})();
