/* The live stream (GET /ws, docs/API.md): one WebSocket per tab, shared by the views.
 *   var sub = App.stream.subscribe({subscribe: "packets", capture_id: 7, last_id: 120},
 *                                  onMessage, onEnd);
 *   sub.close();
 * onMessage gets each message of the subscription ("packets", "flows", "usage",
 * "dropped"); onEnd is called once when the subscription cannot go on (refused, the
 * capture ended, the socket closed): the caller falls back to polling /ajax.
 * The token (the one `login` returned) goes in the first message, never in the URL; the
 * HttpOnly login cookie is sent with the upgrade by the browser itself. */
var App = window.App || (window.App = {});

(function () {
  "use strict";

  var ws = null, open = false, queue = [], pending = [], subs = {}, brokenUntil = 0;

  function fail(all) {
    all.forEach(function (s) { if (!s.done) { s.done = true; s.onEnd(); } });
  }

  function reset() {
    var all = pending.concat(Object.keys(subs).map(function (k) { return subs[k]; }));
    ws = null; open = false; queue = []; pending = []; subs = {};
    fail(all);
  }

  function send(obj) {
    if (open) ws.send(JSON.stringify(obj)); else queue.push(obj);
  }

  function connect() {
    if (ws) return true;
    if (!window.WebSocket || Date.now() < brokenUntil) return false;
    try {
      ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
    } catch (e) {
      ws = null;
      brokenUntil = Date.now() + 30000;
      return false;
    }
    var token = App.api && App.api.token ? App.api.token() : "";
    if (token) queue.unshift({token: token});
    ws.onopen = function () {
      open = true;
      queue.splice(0).forEach(send);
    };
    ws.onmessage = function (ev) {
      var m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      if (m.type === "subscribed") {
        var s = pending.shift();
        if (!s) return;
        s.sid = m.subscription;
        if (s.done) send({unsubscribe: s.sid}); else subs[s.sid] = s;
      } else if (m.type === "error" && m.subscription === undefined) {
        // a refused token or subscription: the oldest request waiting for an answer
        var p = pending.shift();
        if (p) fail([p]); else if (!Object.keys(subs).length) ws.close();
      } else if (m.subscription !== undefined && subs[m.subscription]) {
        var sub = subs[m.subscription];
        if (m.type === "end" || m.type === "error") {
          delete subs[m.subscription];
          fail([sub]);
        } else if (!sub.done) {
          sub.onMessage(m);
        }
      }
    };
    ws.onclose = function () {
      if (!open) brokenUntil = Date.now() + 30000;  // refused: poll for a while
      reset();
    };
    return true;
  }

  App.stream = {
    subscribe: function (request, onMessage, onEnd) {
      var s = {request: request, onMessage: onMessage, onEnd: onEnd, sid: null, done: false};
      s.close = function () {
        if (s.done) return;
        s.done = true;
        if (s.sid !== null) { delete subs[s.sid]; send({unsubscribe: s.sid}); }
      };
      if (!connect()) return null;
      pending.push(s);
      send(request);
      return s;
    }
  };

  /* The packet list's follow mode (capture.js): once caught up by polling, new packets of
   * an active capture come from a `packets` subscription after S.lastId. Returns false when
   * there is no stream (the caller polls). It lets go when the view is hidden, paused or
   * shows another capture; when the stream ends or fails it hands back to pump(), which
   * polls (and, for a capture that ended, reads the rest with capture_read). */
  App.followPackets = function (S, gen, list, pump) {
    var timer = null;
    var sub = App.stream.subscribe({subscribe: "packets", capture_id: S.id, last_id: S.lastId,
                                    interval_ms: 500}, onMessage, onEnd);
    if (!sub) return false;
    S.sub = sub;
    function stale() { return gen !== S.gen || !S.visible || S.paused; }
    function release() {
      clearInterval(timer);
      if (S.sub === sub) S.sub = null;
      sub.close();
    }
    function onMessage(m) {
      if (stale()) return release();
      if (m.type === "dropped") {  // the tab fell behind: poll to catch up from S.lastId
        release();
        return pump(gen);
      }
      if (m.type !== "packets") return;
      var fresh = m.Packets.filter(function (p) { return p.PacketId > S.lastId; });
      if (fresh.length) {
        S.lastId = fresh[fresh.length - 1].PacketId;
        list.append(fresh);
      }
    }
    function onEnd() {
      var wasOurs = S.sub === sub;
      clearInterval(timer);
      if (wasOurs) S.sub = null;
      if (wasOurs && !stale()) pump(gen);
    }
    timer = setInterval(function () { if (stale()) release(); }, 1000);
    return true;
  };

  /* The capture header's counters (capture.js): a `capture` subscription instead of a
   * capture_get_details call each second. Returns true while the stream has them (the
   * caller then skips its poll), false when there is no stream (the caller polls). */
  App.followDetails = function (S, show) {
    var d = S.detailsSub;
    if (d && d.id === S.id && d.gen === S.gen && !d.sub.done) return true;
    if (d) d.sub.close();
    S.detailsSub = null;
    var me = {id: S.id, gen: S.gen, sub: null};
    me.sub = App.stream.subscribe({subscribe: "capture", capture_id: S.id, interval_ms: 1000},
      function (m) {
        if (me.id !== S.id || me.gen !== S.gen || !S.visible) return me.sub.close();
        if (m.type === "capture") show(m.Capture);
      },
      function () { if (S.detailsSub === me) S.detailsSub = null; });
    if (!me.sub) return false;
    S.detailsSub = me;
    return true;
  };
})();
