/* The one AJAX helper. Every request of this theme goes through App.api():
 *   App.api("capture_list_active").then(function (list) { ... }, App.fail);
 * It posts to /ajax with the token first (the one `login` returned, kept for this tab),
 * resolves with ReturnValue on ERROR_SERVE_SUCCESS and rejects with
 * {ErrorCode, ReturnValue, action} otherwise, so callers always get the server's words.
 * The token only ever travels in POST bodies (and the server's login cookie), never in a
 * URL: URLs end up in history, bookmarks, logs and Referer headers. */
var App = window.App || (window.App = {});

(function () {
  "use strict";

  var KEY = "apppaccap_token", USER_KEY = "apppaccap_user";
  var ERROR_NAMES = ["SUCCESS", "GENERIC_ERROR", "NO_TOKEN", "NO_PAGE", "MALFORMED_REQUEST",
    "SESSION_TIMEOUT", "NOT_FOUND", "BUSY", "INVALID_PERMISSIONS", "INVALID_CREDENTIALS",
    "UNSUPPORTED", "IO_ERROR", "INVALID_LICENSE"];
  var errorNames = {};
  ERROR_NAMES.forEach(function (n) {
    var v = window["ERROR_SERVE_" + n];
    if (typeof v === "number") errorNames[v] = n;
  });

  // The token `login` returned, kept for this tab only (sessionStorage, not a URL).
  var token = sessionStorage.getItem(KEY) || "";

  // A link that carries ?token= (made for themes using the reference placeholders) is not
  // used here; the token is only taken out of the address bar, so it is not bookmarked.
  if (window.history && window.URLSearchParams) {
    var query = new URLSearchParams(location.search);
    if (query.has("token")) {
      query.delete("token");
      var rest = query.toString();
      history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
    }
  }

  // Unexpected exceptions inside promise callbacks must not vanish (jQuery warns by default).
  // (jQuery also passes plain rejection values through here when a .then has no failure
  // handler; those are API answers, handled further down the chain, not bugs.)
  $.Deferred.exceptionHook = function (err, asyncStack) {
    if (!(err instanceof Error) || !window.console) return;
    console.error("AppPacCap UI: " + (err.stack || err) + (asyncStack ? "\n" + asyncStack : ""));
  };

  function rejected(r) { return $.Deferred().reject(r).promise(); }

  function envelope(action, r) {
    if (!r || typeof r.ErrorCode !== "number") {
      return rejected({ErrorCode: -1, ReturnValue: "unexpected answer to " + action, action: action});
    }
    if (r.ErrorCode !== ERROR_SERVE_SUCCESS) {
      r.action = action;
      if (r.ErrorCode === ERROR_SERVE_NO_TOKEN || r.ErrorCode === ERROR_SERVE_SESSION_TIMEOUT) {
        if (action !== "login" && App.sessionLost) App.sessionLost(r);
      }
      return rejected(r);
    }
    return r.ReturnValue;
  }

  function transportError(action) {
    return function (xhr, status) {
      var what = xhr && xhr.status ? "HTTP " + xhr.status : (status || "no answer");
      return rejected({ErrorCode: -1, action: action,
        ReturnValue: action + ": the server did not answer (" + what + ")"});
    };
  }

  /* POST one action; data values may be arrays (sent as key[]=…). */
  function api(action, data) {
    var body = $.extend({}, token ? {token: token} : {}, {action: action}, data || {});
    return $.ajax({url: "/ajax", type: "post", data: body, dataType: "json"})
      .then(function (r) { return envelope(action, r); }, transportError(action));
  }

  /* A requester whose later call makes its earlier ones moot (the detail of the row
   * selected last): answers can come back out of order, and one to a superseded call never
   * settles (neither resolves nor rejects), so it cannot fill what the newer one fills. */
  api.latest = function () {
    var asked = 0;
    return function (action, data) {
      var mine = ++asked, moot = function () { return $.Deferred().promise(); };
      return api(action, data).then(function (r) { return mine === asked ? r : moot(); },
        function (r) { return mine === asked ? rejected(r) : moot(); });
    };
  };

  /* Multipart upload (pcap_ingest_post's `file` part) with upload progress 0-100. The token
   * travels in a header: the server reads no byte of an upload before it knows the caller. */
  api.upload = function (action, file, onProgress) {
    var fd = new FormData();
    fd.append("action", action);
    fd.append("file", file, file.name);
    return $.ajax({
      url: "/ajax", type: "post", data: fd, processData: false, contentType: false,
      dataType: "json", headers: token ? {"X-AppPacCap-Token": token} : {},
      xhr: function () {
        var xhr = new XMLHttpRequest();
        if (xhr.upload && onProgress) {
          xhr.upload.addEventListener("progress", function (e) {
            if (e.lengthComputable) onProgress(100 * e.loaded / e.total);
          });
        }
        return xhr;
      }
    }).then(function (r) { return envelope(action, r); }, transportError(action));
  };

  /* Follow a COMMAND (ingest, export, action run) with command_query until it ends.
   * Resolves with the final COMMAND when COMPLETED; rejects with its Message otherwise. */
  api.command = function (cmd, onProgress, interval) {
    var d = $.Deferred();
    function step(c) {
      if (onProgress) onProgress(c);
      if (c.State === COMMAND_STATE_COMPLETED) return d.resolve(c);
      if (c.State === COMMAND_STATE_FAILED || c.State === COMMAND_STATE_CANCELLED) {
        var state = c.State === COMMAND_STATE_FAILED ? "failed" : "was cancelled";
        return d.reject({ErrorCode: -1, action: "command_query",
          ReturnValue: c.Type.toLowerCase() + " " + state + (c.Message ? ": " + c.Message : "")});
      }
      setTimeout(function () {
        api("command_query", {command_uid: c.CommandUid}).then(step, d.reject);
      }, interval || 300);
    }
    step(cmd);
    return d.promise();
  };

  /* Which optional actions does this server have? An unknown action answers NO_PAGE;
   * any other answer (even MALFORMED_REQUEST for missing parameters) means it exists.
   * Only read-only actions (or ones refused without parameters) are probed. */
  var available = {};
  api.probe = function (actions) {
    return $.when.apply($, actions.map(function (a) {
      var d = $.Deferred();
      $.ajax({url: "/ajax", type: "post", dataType: "json",
        data: $.extend({}, token ? {token: token} : {}, {action: a})})
        .done(function (r) { available[a] = !(r && r.ErrorCode === ERROR_SERVE_NO_PAGE); })
        .fail(function () { available[a] = false; })
        .always(function () { d.resolve(); });
      return d.promise();
    })).then(function () { return available; });
  };
  api.has = function (action) { return available[action] !== false; };

  api.errorName = function (code) { return errorNames[code] || (code < 0 ? "NETWORK" : "ERROR " + code); };
  api.token = function () { return token; };
  api.user = function () { return sessionStorage.getItem(USER_KEY) || ""; };
  api.setToken = function (t, user) {
    token = t || "";
    if (token) {
      sessionStorage.setItem(KEY, token);
      sessionStorage.setItem(USER_KEY, user || "");
    } else {
      sessionStorage.removeItem(KEY);
      sessionStorage.removeItem(USER_KEY);
    }
  };

  /* Read every page of a `last_id` action. `key` names the id field of the items,
   * `pick` the array inside the answer (null when the answer is the array itself). */
  api.all = function (action, params, key, pick, onPage) {
    var out = [], d = $.Deferred();
    function page(last) {
      api(action, $.extend({}, params, {last_id: last, limit: 1000})).then(function (r) {
        var items = pick ? r[pick] : r;
        out.push.apply(out, items);
        if (onPage) onPage(out);
        var more = pick ? r.More : items.length === 1000;
        var next = pick ? r.LastId : (items.length ? items[items.length - 1][key] : last);
        if (more && next > last) page(next); else d.resolve(out);
      }, d.reject);
    }
    page(0);
    return d.promise();
  };

  /* Download links (GET /download/...): the browser's login cookie authorises them, the
   * token never goes into the link. */
  api.download = {
    exportUrl: function (name) { return "/download/export/" + encodeURIComponent(name); },
    extractUrl: function (captureId, fileId) {
      return "/download/extract/" + encodeURIComponent(captureId) + "/" + encodeURIComponent(fileId);
    }
  };

  App.api = api;
})();
