/* The packet list: a virtual table that keeps only the visible rows in the DOM.
 * Two ways to fill it:
 *  - append: list.append(packets) in PacketId order — a live capture as capture_stream
 *    delivers it (follows the newest), or the pages of a quick filter (capture_filter_packets);
 *  - paged: list.paged(total, firstId, fetch) for a stored capture — rows are fetched in
 *    blocks when they scroll into view, so a capture of any size opens at once.
 * Columns (packetcols.js) are sortable (click a title: ascending, descending, off), resizable
 * (drag a title's right edge) and can be hidden (the Columns menu); the choice and the time
 * format (relative to the first packet, or absolute) are kept in localStorage. Sorting works
 * on the packets in the browser: a stored capture sorted by a column reads its first
 * SORT_MAX packets for it (narrow it with the quick filter to sort just the matches).
 * A narrow list drops its least important columns first.
 *   var list = App.packets.create($into, {onSelect(packet), onStatus(shown, total, loaded),
 *                                          follow(), onNearEnd()}) */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, PC = App.packetCols, COLS = PC.COLS;
  var RH = 20;      // row height in px, as --row in app.css
  var BLOCK = 2000; // packets per capture_read in paged mode
  var MIN_W = 36, INFO_MIN = 120;
  var SORT_MAX = 50000; // a sorted stored capture: at most this many packets are read to sort

  function create($into, opts) {
    opts = opts || {};
    // rows[pos]: the packet at position pos (holes = not fetched yet, paged mode only).
    // view: positions shown (sorted), or null for "all of rows in order".
    var rows = [], view = null, dirty = false, selPos = -1, atEnd = true, pool = [], raf = 0;
    var loaded = 0, firstId = 1, byId = {}, source = null, blocks = {}, queue = [], inflight = 0;
    var cfg = PC.load(), origin = 0, shownCols = [], nearEndAsked = false, laidOut = -1;
    var $list = ui.el("div", "plist"), $head = ui.el("div", "prow phead");
    COLS.forEach(function (c) {
      var $h = ui.el("span", "c-" + c.id + (c.cls ? " " + c.cls : "")).attr({"data-col": c.id, title: "Sort by " + c.title});
      $h.append(ui.el("span", "lbl", c.title));
      if (!c.flex) $h.append(ui.el("span", "rz").attr("title", "Drag to resize"));
      $head.append($h);
    });
    var $vp = ui.el("div", "pviewport").attr({tabindex: 0, "aria-label": "packets"});
    var $sizer = ui.el("div", "psizer"), $rows = ui.el("div", "prows"), $empty = ui.el("div", "pempty").prop("hidden", true);
    $list.append($head, $vp.append($sizer.append($rows), $empty));
    var emptyText = "";
    $into.append($list);
    var vp = $vp[0];

    /* -- columns ------------------------------------------------------------------------ */
    function widthKey(c) { return c.id === "time" && cfg.absolute ? "timeAbs" : c.id; }
    function width(c) {
      var w = Number(cfg.widths[widthKey(c)]);
      return w >= MIN_W ? w : (c.id === "time" && cfg.absolute ? c.wAbs : c.w);
    }
    function layout() {
      var chosen = COLS.filter(function (c) { return cfg.hidden.indexOf(c.id) < 0; });
      if (!chosen.length) chosen = [PC.byId("info")];
      var avail = vp.clientWidth || $list.width() || 1200, cols = chosen.slice();
      laidOut = vp.clientWidth;
      function need() {
        return cols.reduce(function (s, c) { return s + (c.flex ? INFO_MIN : width(c)); }, 0);
      }
      // a narrow window: drop the least important columns (highest prio) until the rest fit
      while (need() > avail && cols.some(function (c) { return c.prio > 1; })) {
        var worst = cols.reduce(function (a, c) { return c.prio > a.prio ? c : a; });
        cols.splice(cols.indexOf(worst), 1);
      }
      shownCols = cols;
      // still too wide: every fixed column gives up the same share (never below MIN_W)
      var flex = cols.some(function (c) { return c.flex; }), fixed = need() - (flex ? INFO_MIN : 0);
      var scale = need() > avail && fixed > 0 ? Math.max(0.3, (avail - (flex ? INFO_MIN : 0)) / fixed) : 1;
      function w(c) { return Math.max(MIN_W, Math.floor(width(c) * scale)); }
      var tpl = cols.map(function (c, i) {
        if (c.flex) return "minmax(" + INFO_MIN + "px, 1fr)";
        return !flex && i === cols.length - 1 ? "minmax(" + w(c) + "px, 1fr)" : w(c) + "px";
      }).join(" ");
      $list[0].style.setProperty("--pcols", tpl);
      var on = {};
      cols.forEach(function (c) { on[c.id] = true; });
      var all = [$head[0]].concat(pool);
      for (var r = 0; r < all.length; r++) {
        for (var k = 0; k < COLS.length; k++) all[r].childNodes[k].style.display = on[COLS[k].id] ? "" : "none";
      }
      $head.children().removeClass("asc desc");
      if (cfg.sort) $head.children("[data-col='" + cfg.sort.col + "']").addClass(cfg.sort.dir > 0 ? "asc" : "desc");
    }

    function setSort(id) {
      var s = cfg.sort;
      cfg.sort = !s || s.col !== id ? {col: id, dir: 1} : s.dir > 0 ? {col: id, dir: -1} : null;
      if (cfg.sort && cfg.sort.col === "no" && cfg.sort.dir > 0) cfg.sort = null;  // No. ascending = unsorted
      PC.save(cfg);
      dirty = true;
      layout();
      render();
      if (selPos >= 0) selectPos(selPos, true, true);
    }
    $head.on("click", "> span", function (e) {
      if ($(e.target).hasClass("rz") || resizing) return;
      setSort($(this).attr("data-col"));
    });

    var resizing = null;
    $head.on("mousedown", ".rz", function (e) {
      e.preventDefault();
      var c = PC.byId($(this).parent().attr("data-col"));
      resizing = {c: c, x: e.clientX, w: width(c)};
      $(document).on("mousemove.prz", function (ev) {
        cfg.widths[widthKey(c)] = Math.max(MIN_W, Math.round(resizing.w + ev.clientX - resizing.x));
        layout();
      }).on("mouseup.prz", function () {
        $(document).off(".prz");
        PC.save(cfg);
        setTimeout(function () { resizing = null; }, 0);  // the click that ends a drag does not sort
      });
    });

    /* The Columns menu: show/hide each column, time format, reset. */
    function menu() {
      var $wrap = ui.el("span", "colmenu-wrap"), $pop = ui.el("div", "colmenu").prop("hidden", true);
      var $btn = ui.button("Columns \u25be", "small colbtn", function (e) {
        e.stopPropagation();
        fillMenu();
        $pop.prop("hidden", !$pop.prop("hidden"));
      }).attr("aria-haspopup", "true");
      function fillMenu() {
        $pop.empty();
        COLS.forEach(function (c) {
          var $c = ui.checkbox(c.title, "col-" + c.id, cfg.hidden.indexOf(c.id) < 0);
          if (cfg.hidden.indexOf(c.id) < 0 && shownCols.indexOf(c) < 0) $c.append(ui.el("span", "muted", " (no room)"));
          $c.find("input").on("change", function () {
            cfg.hidden = cfg.hidden.filter(function (x) { return x !== c.id; });
            if (!this.checked) cfg.hidden.push(c.id);
            PC.save(cfg);
            layout(); render();
          });
          $pop.append($c);
        });
        var $time = ui.el("select").attr({name: "timefmt", "aria-label": "time format"}).append(
          ui.el("option", "", "Seconds since the first packet").val("rel"),
          ui.el("option", "", "Date and time of day").val("abs")).val(cfg.absolute ? "abs" : "rel")
          .on("change", function () { cfg.absolute = this.value === "abs"; PC.save(cfg); layout(); render(); });
        $pop.append(ui.el("label", "field").append(ui.el("span", "", "Time"), $time),
          ui.button("Reset columns", "small", function () {
            cfg = PC.reset(); dirty = true; layout(); render(); fillMenu();
          }));
      }
      $pop.on("click", function (e) { e.stopPropagation(); });
      $(document).on("click", function () { $pop.prop("hidden", true); });
      return $wrap.append($btn, $pop);
    }

    /* -- rows --------------------------------------------------------------------------- */
    function shown() { return view ? view.length : rows.length; }
    function posAt(idx) { return view ? view[idx] : idx; }
    function idxOf(pos) { return view ? view.indexOf(pos) : pos; }
    function posOf(id) { return source ? id - firstId : (byId[id] === undefined ? -1 : byId[id]); }

    function recompute() {
      dirty = false;
      if (!cfg.sort) { view = null; return; }
      var c = PC.byId(cfg.sort.col), dir = cfg.sort.dir, g = c ? c.get : null;
      if (!g) { view = null; return; }
      var keyed = [];
      for (var i = 0; i < rows.length; i++) if (rows[i]) keyed.push([g(rows[i]), rows[i].PacketId, i]);
      keyed.sort(function (a, b) {
        var x = a[0], y = b[0];
        return (x < y ? -1 : x > y ? 1 : a[1] - b[1]) * dir;
      });
      view = keyed.map(function (k) { return k[2]; });
    }

    function rowFor(i) {
      while (pool.length <= i) {
        var r = document.createElement("div");
        for (var c = 0; c < COLS.length; c++) {
          var s = r.appendChild(document.createElement("span"));
          s.className = "c-" + COLS[c].id + (COLS[c].cls ? " " + COLS[c].cls : "");
        }
        r.addEventListener("click", onRowClick);
        $rows[0].appendChild(r);
        pool.push(r);
        layoutRow(r);
      }
      return pool[i];
    }
    function layoutRow(r) {
      for (var k = 0; k < COLS.length; k++) r.childNodes[k].style.display = shownCols.indexOf(COLS[k]) >= 0 ? "" : "none";
    }

    function fill(r, p, pos) {
      var s = r.childNodes, o = {absolute: cfg.absolute, origin: origin};
      r.setAttribute("data-pos", pos);
      if (!p) {  // not fetched yet
        r.className = "prow pending" + (pos === selPos ? " selected" : "");
        r.removeAttribute("data-id");
        for (var i = 0; i < s.length; i++) s[i].textContent = "";
        s[0].textContent = firstId + pos;
        s[COLS.length - 1].textContent = "loading\u2026";
        return;
      }
      r.className = "prow " + PC.colour(p) + (pos === selPos ? " selected" : "");
      r.setAttribute("data-id", p.PacketId);
      for (var k = 0; k < COLS.length; k++) {
        var c = COLS[k];
        if (s[k].style.display === "none") continue;
        s[k].textContent = c.text(p, o);
      }
      var unknown = !p.ProcessName || p.ProcessName === "<unknown>";
      s[2].className = "c-proc" + (unknown ? " unknown" : "");
      var info = s[COLS.length - 1];
      info.className = "c-info" + (p.Notes ? " note" : "");
      info.title = p.Notes ? "Notes: " + p.Notes : "";
    }

    function render() {
      raf = 0;
      if (vp.clientWidth !== laidOut) layout();  // shown for the first time, or resized
      if (dirty) recompute();
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
      if (source && cfg.sort) {
        // sorting a stored capture needs its packets here: read them in order, up to SORT_MAX
        for (var k = 0; k * BLOCK < Math.min(rows.length, SORT_MAX) && missing.length < 2; k++) if (!blocks[k]) missing.push(k);
      }
      if (source) want(missing);
      $empty.text(emptyText).prop("hidden", !!n || !emptyText);
      if (opts.onStatus) opts.onStatus(n, rows.length, loaded);
      // near the end of an appended list: the owner may have more to give (load more)
      if (opts.onNearEnd && !source && n && first + count >= n - 20) {
        if (!nearEndAsked) { nearEndAsked = true; opts.onNearEnd(); }
      } else nearEndAsked = false;
    }
    function schedule() { if (!raf) raf = requestAnimationFrame(render); }

    /* Paged mode: fetch the visible blocks first (newest request first). */
    function want(visible) {
      queue = visible.filter(function (k, i) { return visible.indexOf(k) === i && !blocks[k]; });
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
        if (cfg.sort) dirty = true;
      }, function (r) {
        if (src !== source) return;
        blocks[k] = "failed";  // shown as "loading…" rows; not retried in a loop
        App.fail(r);
      }).always(function () {
        if (src !== source) return;
        inflight--;
        schedule();
        if (!raf) fetchMore();
      });
    }

    function onRowClick() { selectPos(Number(this.getAttribute("data-pos")), false); vp.focus(); }

    function selectPos(pos, scroll, quiet) {
      if (dirty) recompute();
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
      if (!quiet && opts.onSelect) opts.onSelect(rows[pos] || {PacketId: firstId + pos});
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
    $(window).on("resize", function () { layout(); schedule(); });

    var list = {
      /* Append mode: add packets in PacketId order. */
      append: function (packets) {
        var follow = atEnd;
        for (var i = 0; i < packets.length; i++) {
          var p = packets[i];
          if (byId[p.PacketId] !== undefined) continue;
          byId[p.PacketId] = rows.length;
          rows.push(p);
          loaded++;
        }
        if (cfg.sort) dirty = true;
        render();
        if (follow && !cfg.sort && opts.follow && opts.follow()) vp.scrollTop = vp.scrollHeight;
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
        source = null; blocks = {}; queue = []; inflight = 0; dirty = !!cfg.sort;
        vp.scrollTop = 0;
        render();
      },
      /* The capture's first packet time: relative times count from it (0 = not known yet). */
      setOrigin: function (ft) { origin = ft || 0; render(); },
      /* What an empty list says ("" = nothing). */
      setEmpty: function (text) { emptyText = text || ""; render(); },
      /* Select a packet by PacketId (false when it is not in the list). */
      selectId: function (id) {
        var pos = posOf(id);
        if (pos < 0 || pos >= rows.length) return false;
        if (dirty) recompute();
        if (idxOf(pos) < 0) return false;
        selectPos(pos, true);
        return true;
      },
      update: function (p) { var pos = posOf(p.PacketId); if (rows[pos]) rows[pos].Notes = p.Notes; render(); },
      count: function () { return rows.length; },
      loaded: function () { return loaded; },
      sorted: function () { return !!cfg.sort; },
      shown: shown,
      refresh: function () { layout(); render(); },
      scrollToEnd: function () { atEnd = true; vp.scrollTop = vp.scrollHeight; render(); },
      $menu: menu()
    };
    layout();
    render();
    return list;
  }

  App.packets = {create: create, BLOCK: BLOCK};
})();
