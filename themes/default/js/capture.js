/* The capture workspace (#/capture/ID/tab[/packetId]): header with counters and actions,
 * the live packet list following capture_stream by last_id (capture_read once completed),
 * packet detail, and the tabs of capturetabs.js, stats.js and extract.js. */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;
  var $panel, $head, $tabs, panes = {}, list, qf, $detail, $status, $follow, $pause, $loadbar;
  var S = {id: 0, cap: null, lastId: 0, paused: false, gen: 0, running: false, visible: false,
    tab: "packets", pendingSelect: 0, detailsTimer: null, pumpTimer: null, ticks: 0, origin: 0};
  var TABS = [{id: "packets", label: "Packets"}, {id: "conns", label: "Connections"},
    {id: "procs", label: "Processes"}, {id: "ips", label: "IP addresses"},
    {id: "stats", label: "Statistics"}, {id: "files", label: "Files", needs: "extract_query"}];

  function isActive() { return S.cap && S.cap.State === CAPTURE_STATE_ACTIVE; }

  function renderHead() {
    var c = S.cap;
    $head.empty();
    if (!c) return;
    var title = "#" + c.CaptureId + " " + c.Name;
    $head.append(ui.el("a", "", "\u2190 Captures").attr("href", "#/captures"),
      ui.el("span", "title", title), ui.stateBadge(c.State),
      ui.el("span", "muted", fmt.captureType(c.Type) + " capture \u00b7 " + App.captures.what(c) +
        (c.Filter ? " \u00b7 filter: " + c.Filter : "") + (c.Flags ? " \u00b7 " + fmt.flags(c.Flags) : "")));
    var end = c.EndTime || (isActive() ? fmt.toFiletime(new Date()) : 0);
    var $cnt = ui.el("div", "counters");
    var items = [["Packets", fmt.num(c.PacketCount)], ["Bytes", fmt.bytes(c.ByteCount)], ["Dropped", fmt.num(c.DroppedCount)],
      ["Connections", fmt.num(c.ConnectionCount)]];
    if (c.FirstPacketTime) {  // CAPTUREMETA of a stored capture: the packets' own time span
      items.push(["Processes", fmt.num(c.ProcessCount)], ["IPs", fmt.num(c.IpCount)],
        ["First packet", fmt.time(c.FirstPacketTime)], ["Span", fmt.duration(c.LastPacketTime - c.FirstPacketTime) || "0 s"]);
    } else {
      items.push(["Started", fmt.time(c.StartTime)], ["Duration", fmt.duration(end - c.StartTime)]);
    }
    items.forEach(function (kv) {
      $cnt.append(ui.el("span", "", kv[0] + " ").append(ui.el("b", "", kv[1])));
    });
    var $tools = ui.el("div", "tools").css({marginLeft: "auto", display: "flex", gap: "6px"});
    if (isActive()) {
      $pause = ui.button(S.paused ? "Resume" : "Pause", S.paused ? "active-toggle" : "", togglePause)
        .attr("title", "Stop or resume following new packets (the capture keeps running)");
      $tools.append($pause, ui.button("Stop capture", "danger", function () {
        App.captures.stop(c).then(refreshDetails);
      }));
    } else {
      $tools.append(ui.button("Export PCAPNG", "primary", function () { App.captures.exportDialog(c); }),
        ui.button("Open in Wireshark", "wireshark", function () { App.captures.openInWireshark(c, $(this)); })
          .attr("title", "Export to PCAPNG and download it"));
    }
    $tools.append(ui.button("Notes", "", function () { App.captures.notesDialog(c, renderHead); }));
    if (api.has("search_list")) $tools.append(ui.button("Search\u2026", "", function () { App.go("search", "capture", c.CaptureId); }));
    if (!isActive()) $tools.append(ui.button("Delete", "danger", function () {
      App.captures.remove(c, function () { S.id = 0; App.go("captures"); });
    }));
    $head.append($cnt, $tools);
    if (c.Notes) $head.append(ui.el("div", "muted").css("flex-basis", "100%").text("\u270e " + c.Notes));
    if (c.Message) $head.append(ui.el("div", "error").css("flex-basis", "100%").text(c.Message));
  }

  function togglePause() {
    S.paused = !S.paused;
    renderHead();
    updateStatus();
    if (!S.paused) pump(S.gen);
  }

  function updateStatus(shown, total, loaded) {
    shown = shown === undefined ? list.shown() : shown;
    total = total === undefined ? list.count() : total;
    loaded = loaded === undefined ? list.loaded() : loaded;
    var txt, F = qf.status(), loading = false, have = 0, of = 1, label = "";
    if (qf.active()) {
      if (F.more || F.busy) {
        txt = fmt.num(total) + " matching packets so far";
        if (F.maxId) txt += " \u00b7 scanned " + fmt.num(F.lastId) + " of " + fmt.num(F.maxId);
        if (!F.busy) txt += " \u00b7 more: scroll down or Load more";
      } else txt = fmt.num(total) + " matching packets \u00b7 all found (" + fmt.num(F.maxId) + " scanned)";
      if (list.sorted()) txt += " \u00b7 sorted";
      loading = F.busy;
      have = F.lastId; of = Math.max(1, F.maxId); label = "Filtering " + fmt.num(have) + " / " + fmt.num(of);
    } else {
      txt = "Displayed " + fmt.num(shown) + " of " + fmt.num(total) + " packets";
      if (S.cap && S.cap.PacketCount > total) txt += " \u00b7 " + fmt.num(S.cap.PacketCount - total) + " more in the capture";
      if (S.paged && list.sorted()) txt += " \u00b7 sorted: the " + fmt.num(loaded) + " read so far";
      loading = S.draining;
      have = list.count(); of = Math.max(total, S.cap ? S.cap.PacketCount : 0);
      label = "Loading " + fmt.num(have) + " / " + fmt.num(of);
    }
    if (isActive()) txt += S.paused ? " \u00b7 paused" : " \u00b7 live";
    $status.text(txt);
    $follow.toggle(isActive() && !qf.active());
    $loadbar.toggle(!!loading);
    if (loading) $loadbar.set(100 * have / Math.max(1, of), label);
  }

  /* Relative times count from the capture's first packet: read it once. */
  function ensureOrigin(gen) {
    if (S.origin) return;
    api(isActive() ? "capture_stream" : "capture_read", {capture_id: S.id, last_id: 0, limit: 1}).then(function (r) {
      if (gen !== S.gen || S.origin || !r.Packets.length) return;
      S.origin = r.Packets[0].Time;
      list.setOrigin(S.origin);
    }, function () { /* a capture that just ended: the next page sets it */ });
  }

  /* What the list shows without a quick filter: the live stream or the stored capture. */
  function reload(gen) {
    list.clear();
    S.lastId = 0; S.running = false; S.paged = false;
    clearTimeout(S.pumpTimer);
    if (isActive()) pump(gen); else openStored(gen);
  }

  /* Active capture: follow capture_stream by last_id (waiting 1 s once caught up). When it
   * has ended meanwhile, read what is left with capture_read until More is false. */
  function pump(gen) {
    if (gen !== S.gen || S.running || !S.visible || S.paged || qf.active() || S.sub) return;  // S.sub: stream.js
    if (isActive() && S.paused) return;
    var live = isActive();
    S.running = true;
    S.draining = !live;
    api(live ? "capture_stream" : "capture_read", {capture_id: S.id, last_id: S.lastId, limit: live ? 5000 : 10000})
      .then(function (r) {
        S.running = false;
        if (gen !== S.gen) return;
        if (r.LastId > S.lastId) S.lastId = r.LastId;
        S.draining = !live && r.More;
        if (!S.origin && r.Packets.length && r.Packets[0].PacketId === 1) { S.origin = r.Packets[0].Time; list.setOrigin(S.origin); }
        if (!S.origin) ensureOrigin(gen);
        list.append(r.Packets);
        if (S.pendingSelect && list.selectId(S.pendingSelect)) S.pendingSelect = 0;
        if (r.More) pump(gen);
        else if (live && !(App.followPackets && App.followPackets(S, gen, list, pump))) {
          S.pumpTimer = setTimeout(function () { pump(gen); }, 1000);  // no stream: poll
        }
      }, function (r) {
        S.running = false;
        if (gen !== S.gen) return;
        if (live && r.ErrorCode === ERROR_SERVE_BUSY) {
          // The capture ended: read what is left from the stored capture.
          return refreshDetails().then(function () { pump(gen); });
        }
        App.fail(r);
      });
  }

  /* A stored capture opens paged: blocks of packets are read when they scroll into view.
   * That needs ids first…first+count-1; otherwise it is read sequentially like a live one. */
  function openStored(gen) {
    var read = function (lastId, limit) {
      return api("capture_read", {capture_id: S.id, last_id: lastId, limit: limit});
    };
    var count = S.cap.PacketCount;
    api("capture_open", {capture_id: S.id}).then(function (meta) {  // adds the packet time span
      if (gen === S.gen) { S.cap = meta; renderHead(); }
    }, App.fail);
    return read(0, 1).then(function (r) {
      if (gen !== S.gen) return;
      if (!r.Packets.length) { S.paged = false; list.clear(); return; }
      var first = r.Packets[0].PacketId;
      S.origin = r.Packets[0].Time;
      list.setOrigin(S.origin);
      return read(first + count - 2, 2).then(function (tail) {
        if (gen !== S.gen) return;
        var ok = tail.Packets.length === 1 && tail.Packets[0].PacketId === first + count - 1 && !tail.More;
        S.paged = ok;
        if (!ok) return pump(gen);  // ids with gaps: read it all in order instead
        list.paged(count, first, function (lastId, limit) {
          return read(lastId, limit).then(function (page) { return page.Packets; });
        });
        if (S.pendingSelect && list.selectId(S.pendingSelect)) S.pendingSelect = 0;
      });
    }, App.fail);
  }

  function refreshDetails() {
    return api("capture_get_details", {capture_id: S.id}).then(showDetails, App.fail);
  }

  function showDetails(c) {  // a CAPTURE from capture_get_details or the stream (stream.js)
    var was = S.cap && S.cap.State;
    S.cap = c;
    renderHead();
    updateStatus();
    if (was === CAPTURE_STATE_ACTIVE && c.State !== CAPTURE_STATE_ACTIVE) {
      ui.toast("Capture #" + c.CaptureId + " is " + fmt.captureState(c.State));
      App.refreshLive();
      if (qf.active()) qf.resume(); else pump(S.gen);  // drain the rest, still in live (append) mode
    }
    return c;
  }

  function open(id) {
    S.gen++;
    S.id = id; S.cap = null; S.lastId = 0; S.paused = false; S.running = false; S.pendingSelect = 0;
    S.paged = false; S.draining = false; S.origin = 0;
    clearTimeout(S.pumpTimer);
    qf.reset();
    list.clear();
    list.setOrigin(0);
    $detail.empty().prop("hidden", true);  // shown once a packet is selected
    $loadbar.hide();
    Object.keys(panes).forEach(function (k) { panes[k].loaded = false; });
    var gen = S.gen;
    return api("capture_get_details", {capture_id: id}).then(function (c) {
      if (gen !== S.gen) return;
      S.cap = c;
      renderHead();
      updateStatus();
      if (isActive()) pump(gen); else openStored(gen);
      ensureOrigin(gen);
      if (S.tab !== "packets") showTab(S.tab);
    }, function (r) {
      $head.empty().append(ui.el("a", "", "\u2190 Captures").attr("href", "#/captures"), ui.el("span", "error", r.ReturnValue));
      App.fail(r);
    });
  }

  function showTab(id) {
    S.tab = id;
    Object.keys(panes).forEach(function (k) { panes[k].$el.prop("hidden", k !== id); });
    $tabs.children().removeClass("active").filter("[data-tab='" + id + "']").addClass("active");
    var p = panes[id];
    if (id === "packets") { list.refresh(); return; }
    if (!S.cap) return;
    if (!p.loaded || isActive()) { p.loaded = true; p.load(S.cap); }
  }

  /* Jump to the packet list with a quick filter (from connections, processes, IPs). */
  function filterPackets(text) {
    qf.apply(text);
    $tabs.show("packets");
  }

  function packetsPane() {
    var $pane = ui.el("div", "pane");
    $follow = ui.checkbox("Follow new packets", "follow", true);
    $loadbar = ui.progress().hide().css({width: "200px"});
    var $listBox = ui.el("div", "plist-host").css({flex: "1", minHeight: "0", display: "flex", flexDirection: "column"});
    $status = ui.el("div", "pstatus").attr("title", "Click a packet (or use the arrow keys) to see its layers, bytes and notes");
    $detail = ui.el("div", "pdetail");
    list = App.packets.create($listBox, {
      follow: function () { return isActive() && $follow.find("input").prop("checked"); },
      onStatus: function (shown, total, loaded) { if (qf) updateStatus(shown, total, loaded); },
      onNearEnd: function () { if (qf && qf.active()) qf.more(); },
      onSelect: function (p) {
        $detail.prop("hidden", false);
        App.detail.render($detail, S.id, p.PacketId, {onNotes: function (q) { list.update(q); }});
      }
    });
    qf = App.quickFilter.create({
      list: list, captureId: function () { return S.id; }, active: isActive,
      onState: function () { updateStatus(); },
      onApply: function (text) {
        S.gen++;
        clearTimeout(S.pumpTimer);
        S.running = false;
        $detail.empty().prop("hidden", true);
        if (text) { S.paged = false; list.clear(); list.setOrigin(S.origin); ensureOrigin(S.gen); qf.more(); } else reload(S.gen);
      }
    });
    var $tools = ui.el("div", "toolbar compact ptools").append(qf.$el, qf.$more, list.$menu, $follow,
      ui.button("\u2913 Last", "small", function () { list.scrollToEnd(); }).attr("title", "Scroll to the newest packet"),
      $loadbar);
    $pane.append($tools, $listBox, $status, $detail);
    return $pane;
  }

  function init($p) {
    $panel = $p.addClass("fill");
    $head = ui.el("div", "caphead");
    $tabs = ui.tabs(TABS.filter(function (t) { return !t.needs || api.has(t.needs); }), function (id) {
      if (S.tab !== id && S.id) history.replaceState(null, "", "#/capture/" + S.id + "/" + id);
      showTab(id);
    });
    var $body = ui.el("div", "capbody");
    panes.packets = {$el: packetsPane()};
    var parts = App.captureTabs;
    panes.conns = parts.connections(filterPackets);
    panes.procs = parts.processes(filterPackets);
    panes.ips = parts.ips(filterPackets, function (ip) { App.stats.drill = {kind: "ip", value: ip}; $tabs.show("stats"); });
    panes.stats = {$el: ui.el("div", "pane").css("padding", "10px"), load: function (c) { App.stats.render(panes.stats.$el, c); }};
    panes.files = {$el: ui.el("div", "pane"), load: function (c) { App.extract.render(panes.files.$el, c.CaptureId); }};
    Object.keys(panes).forEach(function (k) { panes[k].$el.addClass("pane"); $body.append(panes[k].$el); });
    $panel.append(ui.el("div", "panel").css({flex: "1", minHeight: "0"}).append($head, $tabs, $body));
  }

  App.views.capture = {
    title: "Capture", nav: "captures", init: init,
    show: function (id, tab, packetId) {
      id = Number(id) || 0;
      tab = panes[tab] ? tab : "packets";
      S.visible = true;
      var same = id === S.id && S.cap;
      S.tab = tab;
      if (!same) open(id); else { renderHead(); if (qf.active()) qf.resume(); else pump(S.gen); }
      $tabs.show(tab);
      if (packetId) {
        S.pendingSelect = Number(packetId);
        if (list.selectId(S.pendingSelect)) S.pendingSelect = 0;
      }
      clearInterval(S.detailsTimer);
      S.detailsTimer = setInterval(function () {
        if (isActive() && !document.hidden) {
          if (!(App.followDetails && App.followDetails(S, showDetails))) refreshDetails();
          if (S.tab !== "packets" && S.tab !== "files" && ++S.ticks % 3 === 0) panes[S.tab].load(S.cap);
        }
      }, 1000);
    },
    hide: function () {
      S.visible = false;
      qf.stop();
      clearTimeout(S.pumpTimer);
      clearInterval(S.detailsTimer);
    }
  };
  App.capture = {state: S, list: function () { return list; }};
})();
