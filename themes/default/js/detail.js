/* Packet detail: the dissection tree, a hex/ASCII dump (clicking a field highlights its
 * bytes) and the packet's notes (capture_set_notes).
 *   App.detail.render($into, captureId, packetId, {onNotes(packet)})
 *   App.detail.open(captureId, packetId)  — the same in a dialog (search results). */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;

  function hexdump(bytes) {
    var pre = document.createElement("pre"), hexs = [], ascs = [];
    pre.className = "hexdump";
    for (var row = 0; row < bytes.length; row += 16) {
      var off = document.createElement("span");
      off.className = "off";
      off.textContent = ("000" + row.toString(16)).slice(-4) + "  ";
      pre.appendChild(off);
      var i, asc = [];
      for (i = row; i < row + 16; i++) {
        if (i === row + 8) pre.appendChild(document.createTextNode(" "));
        if (i < bytes.length) {
          var h = document.createElement("span");
          h.textContent = (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
          h.setAttribute("data-i", i);
          hexs[i] = h;
          pre.appendChild(h);
          pre.appendChild(document.createTextNode(" "));
          var a = document.createElement("span");
          a.textContent = bytes[i] >= 32 && bytes[i] < 127 ? String.fromCharCode(bytes[i]) : ".";
          a.setAttribute("data-i", i);
          ascs[i] = a;
          asc.push(a);
        } else {
          pre.appendChild(document.createTextNode("   "));
        }
      }
      pre.appendChild(document.createTextNode(" "));
      asc.forEach(function (a) { pre.appendChild(a); });
      pre.appendChild(document.createTextNode("\n"));
    }
    var lit = [];
    pre.highlight = function (off, len) {
      lit.forEach(function (s) { s.classList.remove("hl"); });
      lit = [];
      for (var j = off; j < off + len && j < bytes.length; j++) {
        lit.push(hexs[j], ascs[j]);
        hexs[j].classList.add("hl"); ascs[j].classList.add("hl");
      }
      if (lit.length) lit[0].scrollIntoView({block: "nearest"});
    };
    return pre;
  }

  function treeNodes(nodes, pre, $tree) {
    return nodes.map(function (n) {
      var $n;
      if (n.kids && n.kids.length) {
        $n = $("<details>").append(ui.el("summary", "", n.label));
        $n.append(treeNodes(n.kids, pre, $tree));
        $n.children("summary").on("click", function () { pick($(this), n); });
      } else {
        $n = ui.el("div", "leaf", n.label).on("click", function () { pick($(this), n); });
      }
      return $n;
    });
    function pick($el, n) {
      $tree.find(".on").removeClass("on");
      $el.addClass("on");
      pre.highlight(n.off, n.len);
    }
  }

  function meta(p) {
    var rows = [
      ["Packet", "#" + p.PacketId + " of capture " + p.CaptureId],
      ["Time", fmt.time(p.Time)],
      ["Length", p.Length + " bytes on wire, " + p.CapturedLength + " captured"],
      ["Adapter", p.Adapter + " \u00b7 " + fmt.linkType(p.LinkType)],
      ["Direction", fmt.dirArrow(p.Direction)],
      ["Protocol", fmt.proto(p.Protocol) + " (" + p.Protocol + ")"],
      ["Source", fmt.endpoint(p.SrcIp, p.SrcPort)],
      ["Destination", fmt.endpoint(p.DstIp, p.DstPort)],
      ["Process", null],
      ["Thread", p.ThreadId ? String(p.ThreadId) : "\u2014"],
      ["Connection", p.ConnectionId ? "#" + p.ConnectionId : "\u2014"]
    ];
    var $dl = ui.el("dl", "kv");
    rows.forEach(function (r) {
      var $dd = ui.el("dd");
      if (r[0] === "Process") $dd.append(ui.procName(p.ProcessName), document.createTextNode(p.Pid ? " (pid " + p.Pid + ")" : ""));
      else $dd.text(r[1]);
      $dl.append(ui.el("dt", "", r[0]), $dd);
    });
    return $dl;
  }

  function notesBox(p, opts) {
    var $ta = ui.el("textarea").attr({placeholder: "Notes on this packet", rows: 2, "aria-label": "packet notes"}).val(p.Notes || "");
    var $save = ui.button("Save notes", "small", function () {
      api("capture_set_notes", {capture_id: p.CaptureId, packet_id: p.PacketId, notes: $ta.val()}).then(function () {
        p.Notes = $ta.val();
        ui.toast("Notes saved on packet " + p.PacketId);
        if (opts && opts.onNotes) opts.onNotes(p);
      }, App.fail);
    });
    return ui.el("div", "notesbox").append($ta, $save);
  }

  function build($into, p, opts) {
    var bytes = App.decode.hexToBytes(p.Data || "");
    var pre = hexdump(bytes);
    var $tree = ui.el("div", "tree");
    $tree.append(ui.el("div", "summary mono", p.Summary).css({marginBottom: "4px", fontWeight: 600}));
    $tree.append(treeNodes(App.decode(bytes, p.LinkType), pre, $tree));
    $tree.children("details").slice(-2).attr("open", true);
    $tree.append($("<details>").attr("open", true).append(ui.el("summary", "", "AppPacCap: process and capture"), meta(p)));
    if (p.ConnectionId && App.follow && api.has("conn_follow")) {
      $tree.append(ui.el("div", "toolbar compact").append(ui.button("Follow stream", "small followbtn", function () {
        App.follow.open(p.CaptureId, p.ConnectionId);
      }).attr("title", "The conversation of connection #" + p.ConnectionId + " as text or hex")));
    }
    $tree.append(notesBox(p, opts));
    $into.empty().append($tree, ui.el("div", "hex").append(pre));
  }

  function render($into, captureId, packetId, opts) {
    // each box asks through its own api.latest(): only the packet asked for last fills it
    var ask = $into.data("detailApi");
    if (!ask) $into.data("detailApi", ask = api.latest());
    $into.empty().append(ui.el("div", "tree muted", "Loading packet " + packetId + "\u2026"));
    return ask("capture_get_packet", {capture_id: captureId, packet_id: packetId}).then(function (p) {
      build($into, p, opts);
      return p;
    }, function (r) {
      $into.empty().append(ui.el("div", "tree error", r.ReturnValue));
      App.fail(r);
    });
  }

  function open(captureId, packetId) {
    var $box = ui.el("div", "pdetail").css({height: "60vh", width: "min(1180px, 90vw)"});
    ui.dialog("Packet " + packetId + " of capture " + captureId, $box, [
      {label: "Open in capture", click: function () { App.go("capture", captureId, "packets", packetId); }},
      {label: "Close", cls: "primary"}]);
    render($box, captureId, packetId);
  }

  App.detail = {render: render, open: open, hexdump: hexdump};
})();
