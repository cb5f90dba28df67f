/* The packet list: a virtual table that keeps only the visible rows in the DOM.
 * Two ways to fill it:
 *  - live: list.append(packets) as capture_stream delivers them (follows the newest);
 *  - paged: list.paged(total, firstId, fetch) for a stored capture — rows are fetched in
 *    blocks when they scroll into view, so a capture of any size opens at once.
 * A quick filter (words, or key:value with pid tid proc conn ip port proto dir note)
 * narrows the list; on a paged capture it first loads the remaining blocks.
 *   var list = App.packets.create($into, {onSelect(packet), onStatus(shown, total, loaded)}) */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt;
  var RH = 20;      // row height in px, as --row in app.css
  var BLOCK = 2000; // packets per capture_read in paged mode
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
      var key = m[1].toLowerCase(), val = m[2], n = Number(val), proto = fmt.protoNumber(val);
      var by = {
        pid: function (p) { return p.Pid === n; },
        tid: function (p) { return p.ThreadId === n; },
        thread: function (p) { return p.ThreadId === n; },
        proc: function (p) { return String(p.ProcessName).toLowerCase().indexOf(val.toLowerCase()) >= 0; },
        conn: function (p) { return p.ConnectionId === n; },
        ip: function (p) { return p.SrcIp === val || p.DstIp === val; },
        port: function (p) { return p.SrcPort === n || p.DstPort === n; },
        proto: function (p) { return p.Protocol === proto; },
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
    // rows[pos]: the packet at position pos (holes = not fetched yet, paged mode only).
    // view: positions shown, or null for "all of rows in order".
    var rows = [], view = null, filter = null, selPos = -1, atEnd = true, pool = [], raf = 0;
    var loaded = 0, firstId = 1, byId = {}, source = null, blocks = {}, queue = [], inflight = 0, wantAll = false;
    var $list = ui.el("div", "plist"), $head = ui.el("div", "prow phead");
    COLS.forEach(function (c) { $head.append(ui.el("span", c[0], c[1])); });
    var $vp = ui.el("div", "pviewport").attr({tabindex: 0, "aria-label": "packets"});
    var $sizer = ui.el("div", "psizer"), $rows = ui.el("div", "prows");
    $list.append($head, $vp.append($sizer.append($rows)));
    $into.append($list);
    var vp = $vp[0];

    function shown() { return view ? view.length : rows.length; }
    function posAt(idx) { return view ? view[idx] : idx; }
    function idxOf(pos) { return view ? view.indexOf(pos) : pos; }
    function posOf(id) { return source ? id - firstId : (byId[id] === undefined ? -1 : byId[id]); }

    function rowFor(i) {
      while (pool.length <= i) {
        var r = document.createElement("div");
        for (var c = 0; c < COLS.length; c++) r.appendChild(document.createElement("span")).className = COLS[c][0];
        r.addEventListener("click", onRowClick);
        $rows[0].appendChild(r);
        pool.push(r);
      }
      return pool[i];
    }

    function fill(r, p, pos) {
      var s = r.childNodes, cls = "prow";
      r.setAttribute("data-pos", pos);
      if (!p) {  // not fetched yet
        r.className = "prow pending" + (pos === selPos ? " selected" : "");
        for (var i = 0; i < s.length; i++) s[i].textContent = "";
        s[0].textContent = firstId + pos;
        s[9].textContent = "loading\u2026";
        return;
      }
      cls += " p" + (p.Protocol === 6 || p.Protocol === 17 || p.Protocol === 1 || p.Protocol === 58 ? p.Protocol : 0);
      if (p.Protocol === 6 && / \[[^\]]*RST/.test(p.Summary)) cls += " rst";
      if (pos === selPos) cls += " selected";
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
      var n = shown();
      $sizer[0].style.height = n * RH + "px";
      var top = vp.scrollTop, h = vp.clientHeight || 400;
      var first = Math.max(0, Math.floor(top / RH) - 2), count = Math.ceil(h / RH) + 5, missing = [];
      $rows[0].style.top = first * RH + "px";
      for (var i = 0; i < count; i++) {
        var r = rowFor(i), idx = first + i;
        if (idx < n) {
          var pos = posAt(idx);
          r.style.display = "";
          fill(r, rows[pos], pos);
          if (!rows[pos]) missing.push(Math.floor(pos / BLOCK));
        } else r.style.display = "none";
      }
      for (i = count; i < pool.length; i++) pool[i].style.display = "none";
      $head[0].style.paddingRight = (vp.offsetWidth - vp.clientWidth) + "px";
      if (source) want(missing);
      if (opts.onStatus) opts.onStatus(n, rows.length, loaded);
    }
    function schedule() { if (!raf) raf = requestAnimationFrame(render); }

    /* Paged mode: fetch the visible blocks first (newest request first), then — when a
     * filter needs every packet — the rest in order. */
    function want(visible) {
      queue = visible.filter(function (k, i) { return visible.indexOf(k) === i && !blocks[k]; });
      if (wantAll) {
        for (var k = 0; k * BLOCK < rows.length; k++) if (!blocks[k] && queue.indexOf(k) < 0) queue.push(k);
      }
      fetchMore();
    }
    function fetchMore() {
      while (inflight < 2 && queue.length) {
        var k = queue.shift();
        if (blocks[k]) continue;
        blocks[k] = "pending";
        inflight++;
        fetchBlock(k, source);
      }
    }
    function fetchBlock(k, src) {
      src(firstId + k * BLOCK - 1, Math.min(BLOCK, rows.length - k * BLOCK)).then(function (pkts) {
        if (src !== source) return;
        blocks[k] = "done";
        pkts.forEach(function (p) {
          var pos = p.PacketId - firstId;
          if (pos >= 0 && pos < rows.length && !rows[pos]) { rows[pos] = p; loaded++; }
        });
        if (filter) recompute();
      }, function (r) {
        if (src !== source) return;
        blocks[k] = "failed";  // shown as "loading…" rows; not retried in a loop
        App.fail(r);
      }).always(function () {
        if (src !== source) return;
        inflight--;
        if (wantAll && loaded >= rows.length) wantAll = false;
        schedule();
        if (!raf) fetchMore();
      });
    }

    function recompute() {
      if (!filter) { view = null; return; }
      view = [];
      for (var i = 0; i < rows.length; i++) if (rows[i] && filter(rows[i])) view.push(i);
    }

    function onRowClick() { selectPos(Number(this.getAttribute("data-pos")), false); vp.focus(); }

    function selectPos(pos, scroll) {
      var idx = idxOf(pos);
      if (idx < 0 || pos >= rows.length) return;
      selPos = pos;
      if (scroll) {
        var y = idx * RH;
        if (y < vp.scrollTop) vp.scrollTop = y;
        else if (y + RH > vp.scrollTop + vp.clientHeight) vp.scrollTop = y + RH - vp.clientHeight;
      }
      atEnd = false;
      render();
      if (opts.onSelect) opts.onSelect(rows[pos] || {PacketId: firstId + pos});
    }

    $vp.on("scroll", function () {
      // Following resumes when the user scrolls back to the bottom.
      atEnd = vp.scrollTop + vp.clientHeight >= vp.scrollHeight - RH;
      schedule();
    });
    $vp.on("keydown", function (e) {
      var cur = selPos >= 0 ? idxOf(selPos) : -1, page = Math.max(1, Math.floor(vp.clientHeight / RH) - 1);
      var to = {ArrowDown: cur + 1, ArrowUp: cur - 1, PageDown: cur + page, PageUp: cur - page,
        Home: 0, End: shown() - 1}[e.key];
      if (to === undefined || !shown()) return;
      e.preventDefault();
      selectPos(posAt(Math.max(0, Math.min(shown() - 1, to))), true);
    });
    $(window).on("resize", schedule);

    var list = {
      /* Live mode: add packets in PacketId order. */
      append: function (packets) {
        var follow = atEnd;
        for (var i = 0; i < packets.length; i++) {
          var p = packets[i];
          if (byId[p.PacketId] !== undefined) continue;
          byId[p.PacketId] = rows.length;
          rows.push(p);
          loaded++;
          if (view && filter(p)) view.push(rows.length - 1);
        }
        render();
        if (follow && opts.follow && opts.follow()) vp.scrollTop = vp.scrollHeight;
      },
      /* Paged mode: `total` packets with ids firstId…; fetch(lastId, limit) → promise of packets. */
      paged: function (total, first, fetch) {
        list.clear();
        rows = new Array(total);
        firstId = first;
        source = fetch;
        render();
      },
      clear: function () {
        rows = []; view = null; byId = {}; selPos = -1; atEnd = true; loaded = 0; firstId = 1;
        source = null; blocks = {}; queue = []; inflight = 0; wantAll = false;
        vp.scrollTop = 0;
        render();
      },
      setFilter: function (text) {
        filter = parseFilter(text);
        if (filter && source && loaded < rows.length) wantAll = true;
        recompute();
        if (selPos >= 0 && idxOf(selPos) < 0) selPos = -1;
        render();
        if (selPos >= 0) selectPos(selPos, true);
      },
      /* Select a packet by PacketId (clearing the filter if it hides it). */
      selectId: function (id) {
        var pos = posOf(id);
        if (pos < 0 || pos >= rows.length) return false;
        if (idxOf(pos) < 0) { list.setFilter(""); if (opts.onFilterCleared) opts.onFilterCleared(); }
        selectPos(pos, true);
        return true;
      },
      update: function (p) { var pos = posOf(p.PacketId); if (rows[pos]) rows[pos].Notes = p.Notes; render(); },
      count: function () { return rows.length; },
      loaded: function () { return loaded; },
      shown: shown,
      refresh: render,
      scrollToEnd: function () { atEnd = true; vp.scrollTop = vp.scrollHeight; render(); }
    };
    render();
    return list;
  }

  App.packets = {create: create, parseFilter: parseFilter, BLOCK: BLOCK};
})();
