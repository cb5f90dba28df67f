/* Settings (settings_get_all / _set / _clear), theme choice (server_folders/_pages),
 * file extraction switch, data flush (apc_flush) and information about the server. */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, api = App.api;
  var $panel, table, $themes, $pages, $about;
  var HELP = {theme: "theme served at /", token_timeout: "idle seconds before a login expires",
    upload_max_bytes: "largest accepted upload", geoip_db: "path of a MaxMind .mmdb for IP geolocation",
    extract_enabled: "1 = extract files from captured traffic", extract_max_file_bytes: "largest extracted file",
    action_timeout: "seconds before an action's program is killed",
    trigger_pause: "1 = hold a triggered program until its capture runs",
    trigger_pause_max_ms: "longest hold of a triggered program", trigger_poll_ms: "process scan interval of triggers",
    trigger_stop_grace_ms: "wait after a triggered program exits before its capture completes"};
  var FLUSH = [["CAPTURES", "Captures and their packets"], ["IPS", "IP address list"], ["STATS", "Statistics"],
    ["SEARCHES", "Searches"], ["EXPORTS", "Exported files"], ["EXTRACTED", "Extracted files"], ["PROCESSES", "Process history"]];

  function load() {
    api("settings_get_all").then(function (all) {
      table.set(Object.keys(all).sort().map(function (k) { return {key: k, value: all[k]}; }));
    }, App.fail);
    api("server_folders").then(function (list) {
      var cur = null;
      api("settings_get_by_key", {key_name: "theme"}).then(function (v) { cur = v; }, function () { cur = "default"; })
        .always(function () {
          $themes.empty();
          list.forEach(function (t) { $themes.append(ui.el("option", "", t).val(t)); });
          $themes.val(cur || "default");
          pages();
        });
    }, App.fail);
  }
  function pages() {
    api("server_pages", {theme_name: $themes.val()}).then(function (list) {
      $pages.text(list.length + " pages: " + list.join(", "));
    }, App.fail);
  }

  function set(key, value) {
    return api("settings_set", {key_name: key, value: value}).then(function () {
      ui.toast("Setting " + key + " saved");
      load();
    }, App.fail);
  }

  function flush() {
    var flags = 0, what = [];
    $panel.find(".flush input:checked").each(function () {
      flags |= window["APC_FLUSH_" + this.name];
      what.push($(this).parent().text().trim());
    });
    if (!flags) return ui.error("flags: tick what to delete");
    ui.confirm("Delete saved data", "Permanently delete: " + what.join(", ") + "? Active captures must be stopped first.", "Delete")
      .then(function () {
        api("apc_flush", {flags: flags}).then(function () { ui.toast("Deleted: " + what.join(", ")); }, App.fail);
      });
  }

  function init($p) {
    $panel = $p;
    table = ui.table([
      {title: "Key", get: function (s) { return s.key; }, cls: "mono", width: "220px"},
      {title: "Value", render: function (s) {
        return ui.input("v_" + s.key, "", s.value).addClass("mono").css("width", "100%").attr("aria-label", s.key)
          .on("keydown", function (e) { if (e.key === "Enter") set(s.key, this.value); });
      }},
      {title: "Meaning", get: function (s) { return HELP[s.key] || ""; }, cls: "muted"},
      {title: "", cls: "actions", render: function (s) {
        return ui.button("Save", "small", function () {
          set(s.key, $(this).closest("tr").find("input").val());
        });
      }}], {empty: "No settings."});
    var $add = ui.el("div", "toolbar").append(
      ui.field("New key", ui.input("newkey", "key_name").addClass("mono")),
      ui.field("Value", ui.input("newvalue", "value").addClass("mono"), "wide"),
      ui.button("Set", "primary", function () {
        var k = $panel.find("[name=newkey]").val().trim();
        if (!k) return ui.error("key_name: type a key");
        set(k, $panel.find("[name=newvalue]").val()).then(function () { $panel.find("[name=newkey], [name=newvalue]").val(""); });
      }));
    $themes = ui.el("select").attr("aria-label", "theme").on("change", pages);
    $pages = ui.el("span", "muted");
    var $theme = ui.el("div", "toolbar compact").append(ui.el("span", "", "Theme served at /"), $themes,
      ui.button("Use this theme", "small", function () { set("theme", $themes.val()); }), $pages);
    var $flush = ui.el("div", "toolbar compact flush");
    FLUSH.forEach(function (f) { $flush.append(ui.checkbox(f[1], f[0], false)); });
    $flush.append(ui.button("Delete selected data", "danger", flush));
    $about = ui.el("dl", "kv").css("padding", "8px 10px");
    $panel.append(
      ui.section("Settings", $().add(ui.button("Reset all to defaults", "small danger", function () {
        ui.confirm("Reset settings", "Clear every user-defined setting? Defaults apply again.", "Reset").then(function () {
          api("settings_clear").then(function () { ui.toast("Settings reset"); load(); }, App.fail);
        });
      })).add(ui.button("Refresh", "small", load))).append(table, $add),
      ui.section("Theme").append($theme));
    if (api.has("extract_query")) $panel.append(ui.section("File extraction").append(ui.el("div", "toolbar compact").append(App.extract.toggle())));
    $panel.append(ui.section("Delete saved data").append($flush), ui.section("About this server").append($about));
  }

  function about() {
    api("apppaccap").then(function (i) {
      $about.empty();
      [["AppPacCap", i.AppPacCap], ["Machine", i.MachineName], ["OS", i.OS], ["License", i.LicenseType],
        ["Authentication", i.AuthEnabled ? "on" : "off (loopback only)"], ["Map data", i.MapData ? "yes" : "no"]]
        .forEach(function (kv) { $about.append(ui.el("dt", "", kv[0]), ui.el("dd", "", kv[1])); });
    }, App.fail);
  }

  $(document).on("apc:settings", function () { if ($panel && !$panel.prop("hidden")) load(); });
  App.views.settings = {title: "Settings", init: init, show: function () { load(); about(); }};
})();
