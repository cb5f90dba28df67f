/* Follow stream: the conversation of one connection (conn_follow), client and server in
 * two colours, as text (printable ASCII, other bytes as '.') or as a hex dump.
 *   App.follow.open(captureId, connectionId) */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;

  function text(bytes) {
    var s = "";
    for (var i = 0; i < bytes.length; i++) {
      var b = bytes[i];
      s += b === 10 || b === 9 || (b >= 32 && b < 127) ? String.fromCharCode(b) : b === 13 ? "" : ".";
    }
    return s;
  }

  function hex(bytes, offset) {
    var lines = [];
    for (var row = 0; row < bytes.length; row += 16) {
      var h = [], a = "";
      for (var i = row; i < row + 16; i++) {
        if (i < bytes.length) {
          h.push((bytes[i] < 16 ? "0" : "") + bytes[i].toString(16));
          a += bytes[i] >= 32 && bytes[i] < 127 ? String.fromCharCode(bytes[i]) : ".";
        } else h.push("  ");
      }
      lines.push(("0000000" + (offset + row).toString(16)).slice(-8) + "  " +
        h.slice(0, 8).join(" ") + "  " + h.slice(8).join(" ") + "  " + a);
    }
    return lines.join("\n") + "\n";
  }

  function draw($out, r, mode) {
    var frag = document.createDocumentFragment();
    r.Segments.forEach(function (s) {
      var span = document.createElement("span");
      span.className = "seg " + (s.Dir === 0 ? "client" : "server");
      span.setAttribute("data-dir", s.Dir);
      if (s.Missing) {
        span.className += " missing";
        span.textContent = "[" + s.Missing + " bytes missing in capture]\n";
      } else {
        var bytes = App.decode.hexToBytes(s.Data);
        span.textContent = mode === "hex" ? hex(bytes, s.Offset) : text(bytes);
      }
      frag.appendChild(span);
    });
    $out.empty().append(frag);
  }

  function open(captureId, connectionId) {
    var $out = ui.el("pre", "followtext").text("Loading connection " + connectionId + "\u2026");
    var $info = ui.el("div", "followinfo muted");
    var mode = "text", result = null;
    var $mode = ui.el("select").attr("aria-label", "follow view").append(
      ui.el("option", "", "Text (ASCII)").val("text"), ui.el("option", "", "Hex dump").val("hex"))
      .on("change", function () { mode = this.value; if (result) draw($out, result, mode); });
    var $body = ui.el("div", "follow").append(
      ui.el("div", "toolbar compact").append($info, ui.el("span", "spacer"), $mode), $out);
    ui.dialog("Follow stream: connection " + connectionId + " of capture " + captureId, $body,
      [{label: "Close", cls: "primary"}]);
    api("conn_follow", {capture_id: captureId, connection_id: connectionId}).then(function (r) {
      result = r;
      $info.empty().append(
        ui.el("span", "client", fmt.endpoint(r.ClientIp, r.ClientPort) + " \u2192 " + fmt.bytes(r.ClientBytes)),
        document.createTextNode(" \u00b7 "),
        ui.el("span", "server", fmt.endpoint(r.ServerIp, r.ServerPort) + " \u2190 " + fmt.bytes(r.ServerBytes)),
        document.createTextNode(" \u00b7 " + fmt.proto(r.Protocol)),
        r.MissingBytes ? ui.el("span", "warn", " \u00b7 " + fmt.num(r.MissingBytes) + " bytes missing") : [],
        r.Truncated ? ui.el("span", "warn truncated", " \u00b7 truncated (byte limit reached)") : []);
      if (!r.Segments.length) $out.text("This connection carried no payload.");
      else draw($out, r, mode);
    }, function (e) {
      $out.empty().append(ui.el("span", "error", String(e.ReturnValue)));
      App.fail(e);
    });
  }

  App.follow = {open: open, text: text};
})();
