/* The capture view's quick filter: a display filter (the language of Search, docs/FILTERS.md)
 * checked by the server as you type (search_verify_filter, debounced): red with the server's
 * message when invalid, green when valid; Enter applies it, and the packets are then read
 * from the server page by page (capture_filter_packets: each request scans a bounded part
 * of the capture, LastId/More say where to go on), never the whole capture at once.
 *   var qf = App.quickFilter.create({captureId(), active(), list, onState()})
 *   qf.$el (box + message), qf.$more (Load more), qf.apply(text), qf.reset(), qf.more() */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, api = App.api;
  var PAGE = 1000, SCREEN = 500;  // packets per request; matches wanted before stopping

  function create(host) {
    var F = {text: "", gen: 0, lastId: 0, maxId: 0, more: false, busy: false, timer: null, error: ""};
    var $input = ui.input("quick", "display filter, e.g. tcp.port == 443 && proc.name == \"curl\"  (Enter applies)")
      .attr({type: "search", spellcheck: "false", "aria-label": "quick filter"}).addClass("mono");
    var $msg = ui.el("div", "qfmsg");
    var $el = ui.el("div", "quickfilter").append($input, $msg);
    var $more = ui.button("Load more", "small", function () { more(); }).attr("title", "Read the next matches from the server").hide();
    var seq = 0;

    function mark(valid, text) {
      $input.toggleClass("valid", valid === true).toggleClass("invalid", valid === false);
      $msg.text(text || "").toggleClass("error", valid === false).attr("title", text || "");
    }
    function verify() {
      var f = $input.val(), my = ++seq;
      if (!f.trim()) { mark(null, ""); return $.Deferred().resolve({Valid: true}); }
      return api("search_verify_filter", {filter: f}).then(function (r) {
        if (my === seq) mark(!!r.Valid, r.Valid ? "" : r.Error);
        return r;
      }, function (r) { if (my === seq) mark(false, String(r.ReturnValue)); return {Valid: false}; });
    }
    $input.on("input", ui.debounce(function () {
      if (!$input.val().trim() && F.text) apply("");  // an emptied box shows every packet again
      else verify();
    }, 250)).on("keydown", function (e) {
      if (e.key !== "Enter") return;
      e.preventDefault();
      var text = $input.val();
      verify().then(function (r) { if (r && r.Valid) apply(text); });
    });

    function state() {
      host.list.setEmpty(F.text && !F.more && !F.busy ? "No packet matches " + F.text : F.text ? "Filtering\u2026" : "");
      host.onState();
      $more.toggle(!!F.text && F.more && !F.busy);
    }

    /* Read pages until SCREEN more matches arrived or the capture is scanned. */
    function more() {
      if (!F.text || F.busy || !F.more) return;
      var gen = F.gen, target = host.list.count() + SCREEN;
      F.busy = true;
      state();
      function step() {
        api("capture_filter_packets", {capture_id: host.captureId(), filter: F.text, last_id: F.lastId, limit: PAGE})
          .then(function (r) {
            if (gen !== F.gen) return;
            F.lastId = r.LastId; F.maxId = r.MaxId; F.more = r.More;
            host.list.append(r.Packets);
            if (r.More && host.list.count() < target) return step();
            F.busy = false;
            state();
            // an active capture grows: look for new matches now and then
            if (!r.More && host.active()) F.timer = setTimeout(function () { F.more = true; more(); }, 1500);
          }, function (r) {
            if (gen !== F.gen) return;
            F.busy = false; F.more = false;
            mark(false, String(r.ReturnValue));
            state();
            App.fail(r);
          });
      }
      step();
    }

    /* Apply a filter ("" = none): the owner clears the list and calls more() or reloads. */
    function apply(text) {
      text = (text || "").trim();
      F.gen++;
      clearTimeout(F.timer);
      $input.val(text);
      var was = F.text;
      F.text = text; F.lastId = 0; F.maxId = 0; F.more = !!text; F.busy = false;
      if (text) verify();
      else mark(null, "");
      if (text || was) host.onApply(text);
      state();
    }

    return {
      $el: $el, $more: $more, $input: $input, apply: apply, more: more,
      active: function () { return !!F.text; },
      status: function () { return F; },
      /* A new capture: no filter, nothing pending. */
      reset: function () { F.gen++; clearTimeout(F.timer); F.text = ""; F.more = false; F.busy = false; $input.val(""); mark(null, ""); state(); },
      stop: function () { clearTimeout(F.timer); },
      /* Look again from LastId (the view is shown again, or the capture grew or ended). */
      resume: function () { if (F.text && !F.busy) { clearTimeout(F.timer); F.more = true; more(); } }
    };
  }

  App.quickFilter = {create: create};
})();
