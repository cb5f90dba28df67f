/* Start-up, login/logout and the hash router (#/view/arg…). Loaded last. */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, api = App.api;
  App.views = App.views || {};
  App.info = null;
  var current = null, started = false;

  // Optional actions being added to the server; sections needing a missing one are hidden.
  var OPTIONAL = ["search_list", "search_verify_filter", "trigger_list", "action_list",
    "extract_query", "extract_file_list", "monitor_start", "usage_now"];

  /* Navigate: App.go("capture", 5, "packets") → #/capture/5/packets */
  App.go = function () {
    var h = "#/" + Array.prototype.slice.call(arguments).join("/");
    if (location.hash === h) route(); else location.hash = h;
  };

  function route() {
    if (!started) return;
    var parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
    var home = api.has("usage_now") ? "network" : "processes";  // the landing page
    var name = parts[0] || home;
    var view = App.views[name];
    var $nav = $("#nav a[data-view='" + name + "']");
    if (!view || $nav.hasClass("unavailable")) { name = home; view = App.views[name]; parts = []; }
    if (current && current !== view && current.hide) current.hide();
    $(".view").prop("hidden", true);
    var $panel = $("#view-" + name).prop("hidden", false);
    if (!view.ready) { view.init($panel); view.ready = true; }
    current = view;
    $("#nav a").removeClass("active");
    $("#nav a[data-view='" + (view.nav || name) + "']").addClass("active");
    document.title = "AppPacCap \u2013 " + (view.title || name);
    view.show.apply(view, parts.slice(1));
  }
  $(window).on("hashchange", route);

  /* Called by App.api when the token is refused (missing, unknown or timed out). */
  var lostShown = false;
  App.sessionLost = function (r) {
    if (!App.info || !App.info.AuthEnabled) return;
    api.setToken("");
    if (!lostShown) showLogin(r.ReturnValue);
    lostShown = true;
  };

  function showLogin(message) {
    if (current && current.hide) current.hide();
    current = null; started = false;
    $("#main, #nav, #userbox").prop("hidden", true);
    $("#login").prop("hidden", false);
    $("#loginerror").text(message || "").prop("hidden", !message);
    $("#loginform [name=username]").trigger("focus");
  }

  function showMain() {
    lostShown = false;
    $("#login").prop("hidden", true);
    $("#main, #nav").prop("hidden", false);
    var auth = App.info && App.info.AuthEnabled;
    $("#userbox").prop("hidden", !auth);
    $("#username").text(api.user() ? "\u{1F464} " + api.user() : "");
    api.probe(OPTIONAL).then(function () {
      $("[data-needs]").each(function () {
        var need = $(this).attr("data-needs");
        $(this).toggleClass("unavailable", !api.has(need)).prop("hidden", !api.has(need));
      });
      started = true;
      var open = pageParam("capture_id");   // index.html?capture_id=N opens that capture
      if (!location.hash && /^\d+$/.test(open)) location.hash = "#/capture/" + Number(open);
      route();
    });
    App.refreshLive();
  }

  /* A parameter of this page's URL, read here rather than echoed into the page by the
   * server ({%hd_post_params}), so nothing from a link ever becomes markup or script. */
  function pageParam(name) {
    return window.URLSearchParams ? new URLSearchParams(location.search).get(name) : null;
  }

  /* Header badge: how many captures are running (checked every few seconds). */
  var liveTimer = null;
  App.refreshLive = function () {
    clearTimeout(liveTimer);
    if (!started && $("#main").prop("hidden")) return;
    api("capture_list_active").then(function (list) {
      $("#livebadge").text("\u25cf " + list.length + " capturing").prop("hidden", !list.length)
        .attr("title", list.map(function (c) { return "#" + c.CaptureId + " " + c.Name; }).join("\n"));
    }, function () { /* shown by the views; the badge just stays as it was */ }).always(function () {
      liveTimer = setTimeout(App.refreshLive, 5000);
    });
  };
  $("#livebadge").on("click", function () { App.go("captures"); });

  $("#loginform").on("submit", function (e) {
    e.preventDefault();
    var user = this.username.value, form = this;
    var $b = $(form).find("button").prop("disabled", true).text("Logging in\u2026");
    api("login", {username: user, password: this.password.value}).then(function (t) {
      api.setToken(t, user);
      form.password.value = "";
      showMain();
    }, function (r) {
      $("#loginerror").text(r.ReturnValue).prop("hidden", false);
    }).always(function () { $b.prop("disabled", false).text("Log in"); });
  });

  $("#logout").on("click", function () {
    api("logout").always(function () {
      api.setToken("");
      clearTimeout(liveTimer);
      showLogin("You are logged out.");
    });
  });

  /* With authentication on and no token in this tab, the browser may still hold a session
   * in the server's HttpOnly login cookie (another tab logged in): one call tells. This
   * runs before App.info is set, so a refusal shows the login form without an error. */
  function sessionFromCookie() {
    return api("capture_list_active").then(function () { return true; },
      function () { return $.Deferred().resolve(false).promise(); });
  }

  api("apppaccap").then(function (info) {
    $("#about").text(info.MachineName + " \u00b7 v" + info.AppPacCap).attr("title", info.OS);
    if (!info.AuthEnabled || api.token()) {
      App.info = info;
      return showMain();
    }
    sessionFromCookie().then(function (ok) {
      App.info = info;
      if (ok) showMain(); else showLogin();
    });
  }, function (r) {
    $("#main").prop("hidden", false);
    ui.error(r);
  });
})();
