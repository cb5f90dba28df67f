/* Search: a display-filter box checked as you type (search_verify_filter, with the error
 * position marked), running searches with progress, results that open the packet, export.
 * #/search/capture/ID starts with `capture.id == ID`. */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;
  var $panel, $input, $msg, $start, $scope, $since, searches, results, $resHead, $more, $state, timer = null, current = null, lastId = 0;
  var EXAMPLES = ["tcp.port == 443", "ip.addr == 10.0.0.0/8", "proc.name == \"curl\"", "udp && !dns",
    "http contains \"GET\"", "frame.time >= \"2026-01-01 00:00\"", "proc.pid == 1234 && tcp.flags.syn == 1"];

  function running(s) {
    return s.State === COMMAND_STATE_QUEUED || s.State === COMMAND_STATE_RUNNING ||
      s.State === "queued" || s.State === "running";
  }
  function stateText(s) { return typeof s.State === "number" ? fmt.commandState(s.State) : String(s.State); }

  var verifySeq = 0;
  function verify() {
    var f = $input.val(), seq = ++verifySeq;
    if (!f.trim()) { $input.removeClass("valid invalid"); $msg.empty(); return $.Deferred().resolve(null); }
    return api("search_verify_filter", {filter: f}).then(function (r) {
      if (seq !== verifySeq) return r;
      $input.toggleClass("valid", !!r.Valid).toggleClass("invalid", !r.Valid);
      $msg.empty();
      if (r.Valid) $msg.append(ui.el("span", "okmsg", "\u2713 valid filter"));
      else {
        var pos = Math.max(0, Math.min(f.length, Number(r.Position) || 0));
        $msg.append(ui.el("span", "error", r.Error || "invalid filter").css({background: "none", padding: 0}),
          document.createTextNode("\n" + f + "\n" + new Array(pos + 1).join(" ")), ui.el("span", "caret", "^"),
          document.createTextNode(" at position " + pos));
      }
      return r;
    }, function (r) { if (seq === verifySeq) { $msg.empty().append(ui.el("span", "error", r.ReturnValue)); } return null; });
  }

  function start() {
    var f = $input.val().trim();  // blank = every packet
    $start.prop("disabled", true);
    var params = {filter: f, capture_id: Number($scope.val()) || 0};
    if ($since.val()) params.relative_time = $since.val();
    api("search_start", params).then(function (s) {
      ui.toast("Search #" + s.SearchId + " started");
      current = null;
      loadList().then(function () {
        var fresh = searches.rows().filter(function (x) { return x.SearchId === s.SearchId; })[0];
        openSearch(fresh || s);
        if (running(fresh || s)) { clearTimeout(timer); timer = setTimeout(loadList, 500); }
      });
    }, App.fail).always(function () { $start.prop("disabled", false); });
  }

  function loadList() {
    return api("search_list").then(function (list) {
      searches.set(list);
      if (current) {
        var now = list.filter(function (s) { return s.SearchId === current.SearchId; })[0];
        if (now) {
          var was = running(current);
          current = now;
          showHead();
          if (was || running(now)) readMore();  // new matches keep arriving while it runs
        }
      }
      clearTimeout(timer);
      if (list.some(running)) timer = setTimeout(loadList, 1000);
    }, App.fail);
  }

  function fillScope(select) {
    return $.when(api("capture_list_completed"), api("capture_list_active")).then(function (done, act) {
      var keep = select !== undefined ? String(select) : $scope.val();
      $scope.empty().append(ui.el("option", "", "every stored capture").val("0"));
      done.concat(act).sort(function (a, b) { return b.CaptureId - a.CaptureId; }).forEach(function (c) {
        $scope.append(ui.el("option", "", "#" + c.CaptureId + " " + c.Name + (c.State === CAPTURE_STATE_ACTIVE ? " (active)" : "")).val(c.CaptureId));
      });
      $scope.val(keep && $scope.find("option[value='" + keep + "']").length ? keep : "0");
    }, App.fail);
  }

  function scopeText(s) {
    var t = s.CaptureId ? "capture #" + s.CaptureId : "all stored captures";
    return s.StartTime || s.EndTime ? t + ", " + fmt.time(s.StartTime).slice(0, 16) + " – " + fmt.time(s.EndTime).slice(0, 16) : t;
  }

  function progressCell(s) {
    var pct = Number(s.Progress) || 0;
    return ui.progress().set(pct, stateText(s) + (running(s) ? " " + Math.round(pct) + " %" : ""));
  }

  /* The results panel says which of these it is: no search open, running, finished with
   * no matches, finished (with matches: the table), failed or cancelled. */
  function showState() {
    var s = current, kind, title, text;
    if (!s) {
      kind = "none"; title = "No search open";
      text = "Start a search above, or click one in the list of searches to see its results.";
    } else if (running(s)) {
      kind = "running"; title = "Searching\u2026 " + Math.round(Number(s.Progress) || 0) + " %";
      text = fmt.num(s.ResultCount) + " matches so far in " + fmt.num(s.ScannedPackets) + " packets scanned; results appear as they are found.";
    } else if (s.State === COMMAND_STATE_FAILED || s.State === COMMAND_STATE_CANCELLED) {
      kind = "stopped"; title = "Search #" + s.SearchId + " " + stateText(s);
      text = (s.Message ? s.Message + " \u2014 " : "") + fmt.num(s.ResultCount) + " matches before it stopped.";
    } else if (!s.ResultCount) {
      kind = "empty"; title = "No matches";
      text = "Search #" + s.SearchId + " finished: no packet in " + scopeText(s) + " matches " + (s.Filter || "(every packet)") +
        " (" + fmt.num(s.ScannedPackets) + " packets scanned).";
    } else {
      kind = "done"; title = ""; text = "";
    }
    $state.attr("data-state", kind).prop("hidden", kind === "done").empty()
      .append(ui.el("span", "icon"), ui.el("b", "", title), ui.el("span", "", text));
    results.toggle(kind !== "none" && kind !== "empty");
  }

  function showHead() {
    var s = current;
    showState();
    if (!s) { $resHead.empty(); return; }
    $resHead.empty().append(ui.el("h2", "", "Results of search #" + s.SearchId),
      ui.el("code", "", s.Filter || "(every packet)"), ui.el("span", "muted", "in " + scopeText(s)), progressCell(s).css("width", "180px"),
      ui.el("span", "muted", fmt.num(s.ResultCount) + " matches in " + fmt.num(s.ScannedPackets) + " packets scanned"));
  }

  var reading = false;
  function readMore() {
    if (!current || reading) return;
    reading = true;
    var id = current.SearchId;
    api("search_read", {search_id: id, last_id: lastId, limit: 1000}).then(function (r) {
      if (!current || current.SearchId !== id) return;
      results.set(results.rows().concat(r.Results));
      if (r.LastId > lastId) lastId = r.LastId;
      $more.toggle(!!r.More);
    }, App.fail).always(function () { reading = false; });
  }

  function openSearch(s) {
    current = s; lastId = 0;
    results.set([]);
    showHead();
    readMore();
  }

  function exportSearch(s) {
    var $prog = ui.progress();
    var $t = ui.toast("Exporting search #" + s.SearchId + "\u2026");
    $t.find(".msg").append($prog);
    api("search_export", {search_id: s.SearchId}).then(function (cmd) {
      return api.command(cmd, function (c) { $prog.set(c.Progress); });
    }).then(function (cmd) {
      $t.remove();
      ui.toast("Search #" + s.SearchId + " exported to " + cmd.Result);
    }, function (r) { $t.remove(); App.fail(r); });
  }

  function init($p) {
    $panel = $p;
    $input = ui.input("filter", "display filter, e.g. tcp.port == 443 && proc.name == \"curl\"")
      .attr({"aria-label": "search filter", spellcheck: "false"})
      .on("input", ui.debounce(verify, 250))
      .on("keydown", function (e) { if (e.key === "Enter") start(); });
    $msg = ui.el("div", "filtermsg");
    $start = ui.button("Search", "primary", start);
    var $chips = ui.el("div", "chips").append(ui.el("span", "muted", "Examples:"));
    EXAMPLES.forEach(function (x) {
      $chips.append(ui.button(x, "", function () { $input.val(x).trigger("focus"); verify(); }));
    });
    $scope = ui.el("select").attr("aria-label", "search in");
    $since = ui.el("select").attr("aria-label", "time range");
    [["", "any time"], ["15m", "last 15 minutes"], ["1h", "last hour"], ["1d", "last day"], ["1w", "last week"]]
      .forEach(function (o) { $since.append(ui.el("option", "", o[1]).val(o[0])); });
    var $box = ui.el("div", "toolbar").append(ui.el("div", "filterbox").append($input, $msg),
      ui.field("In", $scope), ui.field("When", $since), $start);
    searches = ui.table([
      {title: "ID", get: function (s) { return s.SearchId; }, cls: "num"},
      {title: "Filter", get: function (s) { return s.Filter || "(every packet)"; }, cls: "mono ellipsis"},
      {title: "In", get: scopeText},
      {title: "Progress", get: function (s) { return s.Progress; }, render: progressCell},
      {title: "Matches", get: function (s) { return s.ResultCount; }, text: function (s) { return fmt.num(s.ResultCount); }, cls: "num"},
      {title: "Scanned", get: function (s) { return s.ScannedPackets; }, text: function (s) { return fmt.num(s.ScannedPackets); }, cls: "num"},
      {title: "Started", get: function (s) { return s.Started; }, text: function (s) { return fmt.time(s.Started); }, cls: "nowrap"},
      {title: "Finished", get: function (s) { return s.Finished; }, text: function (s) { return fmt.time(s.Finished); }, cls: "nowrap"},
      {title: "Message", get: function (s) { return s.Message || ""; }, cls: "ellipsis"},
      {title: "", cls: "actions", render: function (s) {
        var $b = $().add(ui.button("Results", "small", function () { openSearch(s); }));
        if (running(s)) $b = $b.add(ui.button("Cancel", "small", function () {
          api("search_cancel", {search_id: s.SearchId}).then(loadList, App.fail);
        }));
        else $b = $b.add(ui.button("Export", "small", function () { exportSearch(s); }));
        return $b.add(ui.button("Delete", "small danger", function () {
          api("search_delete", {search_id: s.SearchId}).then(function () {
            if (current && current.SearchId === s.SearchId) { current = null; results.set([]); showHead(); }
            loadList();
          }, App.fail);
        }));
      }}
    ], {key: function (s) { return s.SearchId; }, sort: 0, sortDir: -1, empty: "No searches yet.",
      onClick: function (s) { openSearch(s); }});
    results = ui.table([
      {title: "Time", get: function (r) { return r.Time; }, text: function (r) { return fmt.time(r.Time); }, cls: "nowrap"},
      {title: "Capture", get: function (r) { return r.CaptureId; }, cls: "num", prio: 3},
      {title: "Packet", get: function (r) { return r.PacketId; }, cls: "num"},
      {title: "Process", get: function (r) { return String(r.ProcessName || "").toLowerCase(); }, render: function (r) { return ui.procName(r.ProcessName); }},
      {title: "PID", get: function (r) { return r.Pid || 0; }, text: function (r) { return r.Pid || ""; }, cls: "num"},
      {title: "Protocol", get: function (r) { return fmt.proto(r.Protocol); }},
      {title: "Source", get: function (r) { return fmt.endpoint(r.SrcIp, r.SrcPort); }, cls: "mono addrcell", prio: 3},
      {title: "Destination", get: function (r) { return fmt.endpoint(r.DstIp, r.DstPort); }, cls: "mono addrcell", prio: 2},
      {title: "Info", get: function (r) { return App.packetCols.info(r); }, cls: "mono ellipsis wide-info"},
      {title: "", cls: "actions", render: function (r) {
        return ui.button("In capture", "small", function () { App.go("capture", r.CaptureId, "packets", r.PacketId); });
      }}
    ], {key: function (r) { return r.ItemId; }, empty: "No results read yet.",
      onClick: function (r) { App.detail.open(r.CaptureId, r.PacketId); }});
    $resHead = ui.el("div", "panel-head");
    $state = ui.el("div", "searchstate").attr({role: "status", "aria-live": "polite"});
    $more = ui.button("Load more results", "", readMore).hide();
    $panel.append(ui.section("Search packets").append($box, ui.el("div", "help").append($chips),
      ui.el("p", "help").text("Wireshark display-filter syntax plus process fields: proc.name, proc.pid, proc.path, thread.id, capture.id. Blank = every packet. Active captures are searched only when chosen under In. Click a result to open the packet.")),
      ui.section("Searches", ui.button("Refresh", "small", loadList)).append(searches),
      ui.el("div", "panel searchresults").append($resHead, $state, ui.el("div", "scroll").append(results),
        ui.el("div", "toolbar compact").append($more)));
    showHead();
  }

  App.views.search = {
    title: "Search", init: init,
    show: function (kind, id) {
      fillScope(kind === "capture" && id ? Number(id) : undefined);
      $input.trigger("focus");
      loadList();
    },
    hide: function () { clearTimeout(timer); }
  };
})();
