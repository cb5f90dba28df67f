/* Small UI toolkit shared by every view: formatting, tables, dialogs, messages.
 * Every value goes into the DOM through .text() / textContent, never as HTML. */
var App = window.App || (window.App = {});

(function () {
  "use strict";

  var fmt = {};
  var EPOCH_DIFF_MS = 11644473600000;  // 1601-01-01 → 1970-01-01
  function pad(n, w) { n = String(n); while (n.length < (w || 2)) n = "0" + n; return n; }

  /* FILETIME (100-ns ticks since 1601, UTC) → Date; 0 means "none". */
  fmt.date = function (ft) { return ft ? new Date(ft / 1e4 - EPOCH_DIFF_MS) : null; };
  fmt.toFiletime = function (date) { return Math.round((date.getTime() + EPOCH_DIFF_MS) * 1e4); };
  /* Local date and time with milliseconds: 2026-11-23 13:46:06.066 */
  fmt.time = function (ft) {
    var d = fmt.date(ft);
    if (!d) return "";
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." +
      pad(d.getMilliseconds(), 3);
  };
  fmt.clock = function (ft) { return fmt.time(ft).slice(11); };
  fmt.duration = function (ticks) {
    if (!(ticks > 0)) return "";
    var s = ticks / 1e7;
    if (s < 1) return (s * 1000).toFixed(1) + " ms";
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
    var m = Math.floor(s / 60), h = Math.floor(m / 60);
    if (h) return h + " h " + pad(m % 60) + " m";
    return m + " m " + pad(Math.floor(s % 60)) + " s";
  };
  fmt.num = function (n) {
    if (n === undefined || n === null || n === "") return "";
    return Number(n).toLocaleString("en-US");
  };
  fmt.bytes = function (n) {
    n = Number(n) || 0;
    if (n < 1024) return n + " B";
    var u = ["KB", "MB", "GB", "TB"], i = -1;
    do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
    return n.toFixed(n < 10 ? 2 : 1) + " " + u[i];
  };
  var PROTO = {1: "ICMP", 2: "IGMP", 6: "TCP", 17: "UDP", 41: "IPv6", 47: "GRE", 50: "ESP",
    51: "AH", 58: "ICMPv6", 89: "OSPF", 103: "PIM", 112: "VRRP", 132: "SCTP"};
  fmt.proto = function (p) { return PROTO[p] || (p === 0 || p === null || p === undefined ? "—" : "IP/" + p); };
  fmt.protoNumber = function (name) {
    name = String(name).toUpperCase();
    for (var k in PROTO) if (PROTO[k] === name) return Number(k);
    return /^\d+$/.test(name) ? Number(name) : null;
  };
  fmt.dir = function (d) { return d === 0 ? "in" : d === 1 ? "out" : "?"; };
  fmt.dirArrow = function (d) { return d === 0 ? "\u2193 in" : d === 1 ? "\u2191 out" : "?"; };
  fmt.endpoint = function (ip, port) {
    if (!ip) return "";
    var host = ip.indexOf(":") >= 0 && port ? "[" + ip + "]" : ip;
    return port ? host + ":" + port : host;
  };
  var LINK = {0: "BSD loopback", 1: "Ethernet", 101: "Raw IP", 105: "802.11", 113: "Linux SLL",
    127: "802.11 radiotap", 228: "Raw IPv4", 229: "Raw IPv6", 276: "Linux SLL2"};
  fmt.linkType = function (l) { return LINK[l] ? LINK[l] + " (" + l + ")" : String(l); };
  fmt.captureType = function (t) {
    return {1: "system", 2: "process", 3: "thread", 4: "file"}[t] || String(t);
  };
  fmt.captureState = function (s) {
    return {1: "active", 2: "completed", 3: "failed", 4: "interrupted"}[s] || String(s);
  };
  fmt.commandState = function (s) {
    return {1: "queued", 2: "running", 3: "completed", 4: "failed", 5: "cancelled"}[s] || String(s);
  };
  fmt.flags = function (f) {
    var out = [];
    if (f & CAPTURE_FLAG_RESOLVE_IPS) out.push("resolve IPs");
    if (f & CAPTURE_FLAG_THREAD_CAPTURE) out.push("thread");
    if (f & CAPTURE_FLAG_CHILD_PROCESSES) out.push("children");
    return out.join(", ");
  };

  var ui = {fmt: fmt};

  /* $("<tag class=cls>").text(text) */
  ui.el = function (tag, cls, text) {
    var $e = $("<" + tag + ">");
    if (cls) $e.addClass(cls);
    if (text !== undefined && text !== null) $e.text(text);
    return $e;
  };
  ui.button = function (label, cls, onClick) {
    return ui.el("button", cls, label).attr("type", "button").on("click", onClick);
  };
  /* A process name, with "<unknown>" dimmed. */
  ui.procName = function (name) {
    var unknown = !name || name === "<unknown>";
    return ui.el("span", unknown ? "unknown" : "", name || "<unknown>");
  };
  ui.badge = function (text, cls) { return ui.el("span", "badge " + (cls || ""), text); };
  ui.stateBadge = function (state) {
    return ui.badge(fmt.captureState(state), "state-" + fmt.captureState(state));
  };
  ui.debounce = function (fn, ms) {
    var t;
    return function () {
      var self = this, args = arguments;
      clearTimeout(t);
      t = setTimeout(function () { fn.apply(self, args); }, ms);
    };
  };

  /* Messages: errors stay until closed, notices fade. */
  ui.toast = function (text, kind) {
    var $t = ui.el("div", "toast " + (kind || "notice")).append(ui.el("span", "msg", text));
    $t.append(ui.button("\u00d7", "close", function () { $t.remove(); }).attr("title", "Dismiss"));
    $("#toasts").append($t);
    if (kind !== "error") {
      setTimeout(function () { $t.fadeOut(300, function () { $t.remove(); }); }, 3500);
      var $notes = $("#toasts .toast.notice");
      if ($notes.length > 3) $notes.first().remove();
    }
    return $t;
  };
  ui.error = function (r) {
    // A refused token already brought up the login form with the reason.
    if (r && (r.ErrorCode === ERROR_SERVE_NO_TOKEN || r.ErrorCode === ERROR_SERVE_SESSION_TIMEOUT) &&
        !$("#login").prop("hidden")) return null;
    var msg = typeof r === "string" ? r : r && r.ReturnValue !== undefined ? String(r.ReturnValue) : "request failed";
    var code = r && typeof r.ErrorCode === "number" ? App.api.errorName(r.ErrorCode) + ": " : "";
    var $t = ui.toast(code + msg, "error");
    if ($("#toasts .toast.error").length > 5) $("#toasts .toast.error").first().remove();
    return $t;
  };
  App.fail = function (r) { ui.error(r); };

  /* Progress bar: ui.progress().set(40, "writing…") */
  ui.progress = function () {
    var $p = ui.el("div", "progress").append(ui.el("div", "bar"), ui.el("span", "label"));
    $p.set = function (pct, label) {
      pct = Math.max(0, Math.min(100, pct || 0));
      $p.find(".bar").css("width", pct + "%");
      $p.find(".label").text(label !== undefined ? label : Math.round(pct) + " %");
      return $p;
    };
    return $p.set(0);
  };

  /* Modal dialog. buttons: [{label, cls, click: fn($dlg) → false keeps it open}] */
  ui.dialog = function (title, $body, buttons) {
    var $back = ui.el("div", "modal-back");
    var $dlg = ui.el("div", "modal").attr("role", "dialog");
    var $foot = ui.el("div", "modal-foot");
    $dlg.append(ui.el("div", "modal-head").append(ui.el("h3", "", title),
      ui.button("\u00d7", "close", function () { close(); })), ui.el("div", "modal-body").append($body), $foot);
    function close() { $back.remove(); $(document).off("keydown.modal"); }
    $dlg.close = close;
    (buttons || [{label: "Close"}]).forEach(function (b) {
      $foot.append(ui.button(b.label, b.cls || "", function () {
        if (!b.click || b.click($dlg) !== false) close();
      }));
    });
    $(document).on("keydown.modal", function (e) { if (e.key === "Escape") close(); });
    $back.append($dlg).appendTo("body");
    $dlg.find("input, textarea, select").first().trigger("focus");
    return $dlg;
  };
  ui.confirm = function (title, text, label) {
    var d = $.Deferred();
    ui.dialog(title, ui.el("p", "", text), [
      {label: "Cancel", click: function () { d.reject(); }},
      {label: label || "OK", cls: "danger", click: function () { d.resolve(); }}]);
    return d.promise();
  };

  /* Column priorities for narrow windows: 1 always shown, 2 hidden below 1000 px, 3 hidden
   * below 1300 px (app.css, .prio-2/.prio-3). A column's `prio` wins over this default by title. */
  var PRIO = {
    "Dropped": 3, "Scanned": 3, "Message": 3, "MAC": 3, "Kind": 3, "Link type": 3, "SHA-256": 3,
    "\u2191 Pkts out": 3, "\u2193 Pkts in": 3, "First": 3, "Last": 3, "Finished": 3, "Parameters": 3,
    "Flags": 3, "Last capture": 3, "Complete": 3, "Notes": 3, "Conns": 3, "Description": 3,
    "Path": 2, "Path on the server": 2, "User": 2, "Filter": 2, "Started": 2, "Ended": 2, "Created": 2,
    "Local": 2, "Last fired": 2, "Adapters": 2, "From": 2, "Packets": 2, "Hostname": 2
  };
  function prioOf(c) { return c.prio || PRIO[c.title] || 1; }

  /* Sortable table.
   * cols: [{title, get(row) → sort value, text(row) → string, render(row) → node, cls, width, prio}]
   * opts: {key(row), onClick(row, $tr), empty: "text", rowClass(row)} */
  ui.table = function (cols, opts) {
    opts = opts || {};
    var $t = ui.el("table", "grid"), $head = ui.el("tr"), $body = ui.el("tbody");
    var rows = [], sortCol = opts.sort === undefined ? -1 : opts.sort, sortDir = opts.sortDir || 1, selected = null;
    cols.forEach(function (c, i) {
      var $th = ui.el("th", c.cls, c.title).addClass("prio-" + prioOf(c));
      if (c.width) $th.css("width", c.width);
      if (c.get) $th.addClass("sortable").on("click", function () {
        sortDir = sortCol === i ? -sortDir : 1; sortCol = i; draw();
      });
      $head.append($th);
    });
    $t.append(ui.el("thead").append($head), $body);
    function draw() {
      $head.children().removeClass("asc desc");
      var list = rows.slice();
      if (sortCol >= 0 && cols[sortCol].get) {
        var g = cols[sortCol].get;
        list.sort(function (a, b) {
          var x = g(a), y = g(b);
          return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
        });
        $head.children().eq(sortCol).addClass(sortDir > 0 ? "asc" : "desc");
      }
      var frag = document.createDocumentFragment();
      list.forEach(function (r) {
        var $tr = $("<tr>");
        if (opts.key) $tr.attr("data-key", opts.key(r));
        if (opts.rowClass) $tr.addClass(opts.rowClass(r));
        if (opts.key && selected !== null && opts.key(r) === selected) $tr.addClass("selected");
        cols.forEach(function (c) {
          var $td = $("<td>").addClass(c.cls || "").addClass("prio-" + prioOf(c));
          if (c.render) $td.append(c.render(r));
          else $td.text(c.text ? c.text(r) : c.get ? c.get(r) : "");
          $tr.append($td);
        });
        if (opts.onClick) $tr.addClass("clickable").on("click", function (e) {
          if ($(e.target).closest("button, a, input, select").length) return;
          $body.children().removeClass("selected");
          $tr.addClass("selected");
          if (opts.key) selected = opts.key(r);
          opts.onClick(r, $tr);
        });
        frag.appendChild($tr[0]);
      });
      $body.empty()[0].appendChild(frag);
      if (!list.length) $body.append($("<tr>").addClass("empty").append(
        ui.el("td", "", opts.empty || "Nothing here.").attr("colspan", cols.length)));
    }
    $t.set = function (list) { rows = list || []; draw(); return $t; };
    $t.rows = function () { return rows; };
    $t.select = function (key) { selected = key; draw(); };
    $t.set([]);
    return $t;
  };

  /* Sub-tabs: ui.tabs([{id, label}], onSwitch) → $bar with .show(id) */
  ui.tabs = function (items, onSwitch) {
    var $bar = ui.el("div", "subtabs");
    items.forEach(function (it) {
      $bar.append(ui.button(it.label, "", function () { $bar.show(it.id); }).attr("data-tab", it.id));
    });
    $bar.show = function (id) {
      $bar.children().removeClass("active").filter("[data-tab='" + id + "']").addClass("active");
      onSwitch(id);
    };
    return $bar;
  };

  /* A labelled form field. */
  ui.field = function (label, $input, cls) {
    return ui.el("label", "field " + (cls || "")).append(ui.el("span", "", label), $input);
  };
  ui.input = function (name, placeholder, value) {
    return ui.el("input").attr({name: name, placeholder: placeholder || "", autocomplete: "off"}).val(value || "");
  };
  ui.checkbox = function (label, name, checked) {
    var $c = ui.el("input").attr({type: "checkbox", name: name}).prop("checked", !!checked);
    return ui.el("label", "check").append($c, document.createTextNode(" " + label));
  };
  ui.section = function (title, $tools) {
    var $s = ui.el("div", "panel");
    $s.append(ui.el("div", "panel-head").append(ui.el("h2", "", title), ui.el("div", "tools").append($tools || [])));
    return $s;
  };

  App.ui = ui;
  App.views = App.views || {};
})();
