/* The packet list: a virtual table that keeps only the visible rows in the DOM, so it stays
 * fast at hundreds of thousands of packets. Rows are appended as they stream in; a quick
 * filter (words, or key:value with pid tid proc conn ip port proto dir note) narrows it.
 *   var list = App.packets.create($into, {onSelect: function (packet) {...}}); */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt;
  var RH = 20;  // row height in px, as --row in app.css
  var COLS = [["c-no", "No."], ["c-time", "Time"], ["c-proc", "Process"], ["c-pid", "PID"],
    ["c-src", "Source"], ["c-dst", "Destination"], ["c-proto", "Protocol"], ["c-len", "Length"],
    ["c-dir", "Dir"], ["c-info", "Info"]];

  function parseFilter(text) {
    var tests = [];
    (text || "").trim().split(/\s+/).filter(Boolean).forEach(function (tok) {
      var m = /^(\w+):(.*)$/.exec(tok), v;
      if (!m) {
        v = tok.toLowerCase();
        tests.push(function (p) {
          return (p.Summary + " " + p.ProcessName + " " + p.SrcIp + " " + p.DstIp).toLowerCase().indexOf(v) >= 0;
        });
        return;
      }
      var key = m[1].toLowerCase(), val = m[2], n = Number(val);
      var by = {
        pid: function (p) { return p.Pid === n; },
        tid: function (p) { return p.ThreadId === n; },
        thread: function (p) { return p.ThreadId === n; },
        proc: function (p) { return String(p.ProcessName).toLowerCase().indexOf(val.toLowerCase()) >= 0; },
        conn: function (p) { return p.ConnectionId === n; },
        ip: function (p) { return p.SrcIp === val || p.DstIp === val; },
        port: function (p) { return p.SrcPort === n || p.DstPort === n; },
        proto: function (p) { return p.Protocol === fmt.protoNumber(val); },
        dir: function (p) { return fmt.dir(p.Direction) === val.toLowerCase(); },
        note: function (p) { return !!p.Notes; }
      }[key];
      tests.push(by || function () { return false; });
    });
    if (!tests.length) return null;
    return function (p) {
      for (var i = 0; i < tests.length; i++) if (!tests[i](p)) return false;
      return true;
    };
  }

  function create($into, opts) {
    opts = opts || {};
    var all = [], view = [], filter = null, selected = -1, follow = true, pool = [], raf = 0;
    var byId = {};
    var $list = ui.el("div", "plist");
    var $head = ui.el("div", "prow phead");
    COLS.forEach(function (c) { $head.append(ui.el("span", c[0], c[1])); });
    var $vp = ui.el("div", "pviewport").attr({tabindex: 0, "aria-label": "packets"});
    var $sizer = ui.el("div", "psizer"), $rows = ui.el("div", "prows");
    $vp.append($sizer.append($rows));
    $list.append($head, $vp);
    $into.append($list);
    var vp = $vp[0];

    function rowFor(i) {
      while (pool.length <= i) {
        var r = document.createElement("div");
        r.className = "prow";
        for (var c = 0; c < COLS.length; c++) {
          var s = document.createElement("span");
          s.className = COLS[c][0];
          r.appendChild(s);
        }
        r.addEventListener("click", onRowClick);
        $rows[0].appendChild(r);
        pool.push(r);
      }
      return pool[i];
    }

    function fill(r, p, idx) {
      var s = r.childNodes;
      r.setAttribute("data-idx", idx);
      var cls = "prow p" + (p.Protocol === 6 || p.Protocol === 17 || p.Protocol === 1 || p.Protocol === 58 ? p.Protocol : 0);
      if (p.Protocol === 6 && p.Summary.indexOf("RST") >= 0) cls += " rst";
      if (idx === selected) cls += " selected";
      r.className = cls;
      s[0].textContent = p.PacketId;
      s[1].textContent = fmt.time(p.Time);
      var unknown = !p.ProcessName || p.ProcessName === "<unknown>";
      s[2].textContent = p.ProcessName || "<unknown>";
      s[2].className = "c-proc" + (unknown ? " unknown" : "");
      s[3].textContent = p.Pid || "";
      s[4].textContent = fmt.endpoint(p.SrcIp, p.SrcPort);
      s[5].textContent = fmt.endpoint(p.DstIp, p.DstPort);
      s[6].textContent = fmt.proto(p.Protocol);
      s[7].textContent = p.Length;
      s[8].textContent = p.Direction === 0 ? "\u2193 in" : p.Direction === 1 ? "\u2191 out" : "";
      s[9].textContent = p.Summary;
      s[9].className = "c-info" + (p.Notes ? " note" : "");
      s[9].title = p.Notes ? "Notes: " + p.Notes : "";
    }

    function render() {
      raf = 0;
      $sizer[0].style.height = view.length * RH + "px";
      var top = vp.scrollTop, h = vp.clientHeight || 400;
      var first = Math.max(0, Math.floor(top / RH) - 2), n = Math.ceil(h / RH) + 5;
      $rows[0].style.top = first * RH + "px";
      for (var i = 0; i < n; i++) {
        var r = rowFor(i), idx = first + i;
        if (idx < view.length) { r.style.display = ""; fill(r, all[view[idx]], idx); }
        else r.style.display = "none";
      }
      for (i = n; i < pool.length; i++) pool[i].style.display = "none";
      $head[0].style.paddingRight = (vp.offsetWidth - vp.clientWidth) + "px";
      if (opts.onStatus) opts.onStatus(view.length, all.length);
    }
    function schedule() { if (!raf) raf = requestAnimationFrame(render); }

    function onRowClick() { select(Number(this.getAttribute("data-idx"))); vp.focus(); }

    function select(idx, scroll) {
      if (idx < 0 || idx >= view.length) return;
      selected = idx;
      if (scroll) {
        var y = idx * RH;
        if (y < vp.scrollTop) vp.scrollTop = y;
        else if (y + RH > vp.scrollTop + vp.clientHeight) vp.scrollTop = y + RH - vp.clientHeight;
      }
      follow = false;
      render();
      if (opts.onSelect) opts.onSelect(all[view[idx]]);
    }

    $vp.on("scroll", function () {
      // Following resumes when the user scrolls back to the bottom.
      follow = vp.scrollTop + vp.clientHeight >= vp.scrollHeight - RH;
      schedule();
    });
    $vp.on("keydown", function (e) {
      var page = Math.max(1, Math.floor(vp.clientHeight / RH) - 1);
      var to = {ArrowDown: selected + 1, ArrowUp: selected - 1, PageDown: selected + page,
        PageUp: selected - page, Home: 0, End: view.length - 1}[e.key];
      if (to === undefined) return;
      e.preventDefault();
      select(Math.max(0, Math.min(view.length - 1, to)), true);
    });
    $(window).on("resize", schedule);

    var api = {
      /* Add packets (in PacketId order). */
      append: function (packets) {
        var atBottom = follow;
        for (var i = 0; i < packets.length; i++) {
          var p = packets[i];
          if (byId[p.PacketId] !== undefined) continue;
          byId[p.PacketId] = all.length;
          all.push(p);
          if (!filter || filter(p)) view.push(all.length - 1);
        }
        render();
        if (atBottom && opts.follow && opts.follow()) vp.scrollTop = vp.scrollHeight;
      },
      clear: function () { all = []; view = []; byId = {}; selected = -1; follow = true; vp.scrollTop = 0; render(); },
      setFilter: function (text) {
        var keep = selected >= 0 ? view[selected] : -1;
        filter = parseFilter(text);
        view = [];
        for (var i = 0; i < all.length; i++) if (!filter || filter(all[i])) view.push(i);
        selected = keep >= 0 ? view.indexOf(keep) : -1;
        render();
        if (selected >= 0) select(selected, true);
      },
      /* Select a packet by PacketId (clearing the filter if it hides it). */
      selectId: function (id) {
        var at = byId[id];
        if (at === undefined) return false;
        var idx = view.indexOf(at);
        if (idx < 0) { api.setFilter(""); idx = view.indexOf(at); if (opts.onFilterCleared) opts.onFilterCleared(); }
        select(idx, true);
        return true;
      },
      update: function (p) { if (byId[p.PacketId] !== undefined) all[byId[p.PacketId]].Notes = p.Notes; render(); },
      count: function () { return all.length; },
      shown: function () { return view.length; },
      refresh: render,
      scrollToEnd: function () { follow = true; vp.scrollTop = vp.scrollHeight; render(); },
      domRows: function () { return $rows[0].childNodes.length; }
    };
    render();
    return api;
  }

  App.packets = {create: create, parseFilter: parseFilter};
})();
