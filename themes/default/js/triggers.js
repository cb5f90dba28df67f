/* Triggers (start a capture when a program starts) and actions (run a program or export
 * when a capture ends): trigger_* and action_*. */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var ui = App.ui, fmt = App.ui.fmt, api = App.api;
  var $panel, trigT, actT, triggers = [], actions = [];

  function flagsOf($scope) {
    var f = 0;
    if ($scope.find("[name=resolve]").prop("checked")) f |= CAPTURE_FLAG_RESOLVE_IPS;
    if ($scope.find("[name=children]").prop("checked")) f |= CAPTURE_FLAG_CHILD_PROCESSES;
    return f;
  }
  function names(ids, list, key) {
    if (!ids || !ids.length) return "";
    return ids.map(function (id) {
      var it = list.filter(function (x) { return x[key] === id; })[0];
      return it ? it.Name + " (#" + id + ")" : "#" + id;
    }).join(", ");
  }
  function load() {
    var a = api.has("action_list") ? api("action_list") : $.Deferred().resolve([]).promise();
    return $.when(api("trigger_list"), a).then(function (t, acts) {
      triggers = t; actions = acts;
      trigT.set(triggers);
      if (actT) actT.set(actions);
      fillSelect($panel.find("select[name=trigger]"), triggers, "TriggerId", "system wide (every capture)", 0);
    }, App.fail);
  }
  function fillSelect($sel, list, key, none, noneVal) {
    var keep = $sel.val();
    $sel.empty();
    if (none) $sel.append(ui.el("option", "", none).val(noneVal));
    list.forEach(function (x) { $sel.append(ui.el("option", "", "#" + x[key] + " " + x.Name).val(x[key])); });
    if (keep !== null && keep !== undefined) $sel.val(keep);
    return $sel;
  }
  function done(msg) { return function () { ui.toast(msg); load(); }; }

  function addTrigger() {
    var $f = $panel.find(".trigform");
    var data = {name: $f.find("[name=tname]").val().trim(), trigger_type: TRIGGER_TYPE_ON_START,
      path: $f.find("[name=tpath]").val().trim(), filter: $f.find("[name=tfilter]").val().trim(), flags: flagsOf($f)};
    api("trigger_add", data).then(function () {
      $f.find("input[type!=checkbox]").val("");
      done("Trigger \u201c" + data.name + "\u201d added")();
    }, App.fail);
  }
  function editTrigger(t) {
    var $name = ui.input("name", "", t.Name), $path = ui.input("path", "", t.Path).addClass("mono");
    var $filter = ui.input("filter", "BPF filter", t.Filter).addClass("mono");
    var $body = $().add(ui.field("Name", $name)).add(ui.field("Program or directory", $path))
      .add(ui.field("Capture filter", $filter))
      .add(ui.checkbox("Resolve IPs", "resolve", t.Flags & CAPTURE_FLAG_RESOLVE_IPS))
      .add(ui.checkbox("Child processes", "children", t.Flags & CAPTURE_FLAG_CHILD_PROCESSES));
    ui.dialog("Edit trigger " + t.Name, $body, [{label: "Cancel"}, {label: "Save", cls: "primary", click: function ($d) {
      api("trigger_mod", {trigger_id: t.TriggerId, name: $name.val().trim(), path: $path.val().trim(),
        filter: $filter.val().trim(), flags: flagsOf($d)}).then(done("Trigger saved"), App.fail);
    }}]);
  }
  function linkDialog(title, list, key, none, onPick) {
    if (!list.length && !none) return ui.error("Nothing to link yet: add one first.");
    var $sel = fillSelect(ui.el("select"), list, key, none, 0);
    ui.dialog(title, ui.field("Choose", $sel), [{label: "Cancel"}, {label: "Link", cls: "primary", click: function () {
      onPick(Number($sel.val()));
    }}]);
  }

  function addAction() {
    var $f = $panel.find(".actform");
    var data = {name: $f.find("[name=aname]").val().trim(), action_type: Number($f.find("[name=atype]").val()),
      path: $f.find("[name=apath]").val().trim(), params: $f.find("[name=aparams]").val(),
      trigger_id: Number($f.find("[name=trigger]").val()) || 0};
    api("action_add", data).then(function () {
      $f.find("input").val("");
      done("Action \u201c" + data.name + "\u201d added")();
    }, App.fail);
  }
  function editAction(a) {
    var $name = ui.input("name", "", a.Name), $path = ui.input("path", "", a.Path).addClass("mono");
    var $params = ui.input("params", "", a.Params).addClass("mono");
    ui.dialog("Edit action " + a.Name, $().add(ui.field("Name", $name)).add(ui.field("Path", $path))
      .add(ui.field("Parameters", $params)), [{label: "Cancel"}, {label: "Save", cls: "primary", click: function () {
      api("action_mod", {action_id: a.ActionId, name: $name.val().trim(), path: $path.val().trim(), params: $params.val()})
        .then(done("Action saved"), App.fail);
    }}]);
  }

  function init($p) {
    $panel = $p;
    var $tf = ui.el("div", "toolbar trigform").append(
      ui.field("Name", ui.input("tname", "e.g. browser")),
      ui.field("Program or directory", ui.input("tpath", "/usr/bin/curl or /opt/app/").addClass("mono"), "wide"),
      ui.field("Capture filter (BPF)", ui.input("tfilter", "optional").addClass("mono")),
      ui.checkbox("Resolve IPs", "resolve", true), ui.checkbox("Child processes", "children", false),
      ui.button("Add trigger", "primary", addTrigger));
    trigT = ui.table([
      {title: "ID", get: function (t) { return t.TriggerId; }, cls: "num"},
      {title: "Name", get: function (t) { return t.Name; }},
      {title: "When", get: function (t) { return t.TriggerType === TRIGGER_TYPE_ON_START ? "program starts" : String(t.TriggerType); }},
      {title: "Path", get: function (t) { return t.Path; }, cls: "mono"},
      {title: "Filter", get: function (t) { return t.Filter; }, cls: "mono"},
      {title: "Flags", get: function (t) { return fmt.flags(t.Flags); }},
      {title: "Actions", get: function (t) { return names(t.ActionIds, actions, "ActionId"); }},
      {title: "Fired", get: function (t) { return t.FireCount; }, cls: "num"},
      {title: "Last fired", get: function (t) { return t.LastFired; }, text: function (t) { return fmt.time(t.LastFired); }, cls: "nowrap"},
      {title: "Last capture", get: function (t) { return t.LastCaptureId || 0; }, render: function (t) {
        var $c = t.LastCaptureId ? ui.el("a", "", "#" + t.LastCaptureId).attr("href", "#/capture/" + t.LastCaptureId + "/packets") : $();
        return t.LastError ? $c.add(ui.el("span", "error", t.LastError).css({marginLeft: "4px", padding: "0 4px"})) : $c;
      }},
      {title: "", cls: "actions", render: function (t) {
        var $b = $().add(ui.button("Edit", "small", function () { editTrigger(t); }));
        if (api.has("action_list")) $b = $b.add(ui.button("Link action\u2026", "small", function () {
          linkDialog("Action for trigger " + t.Name, actions, "ActionId", null, function (id) {
            api("trigger_set_action", {trigger_id: t.TriggerId, action_id: id}).then(done("Action linked"), App.fail);
          });
        })).add(ui.button("Clear actions", "small", function () {
          ui.confirm("Clear actions of " + t.Name, "Unlink every action from this trigger? Actions that belong to " +
            "this trigger alone are deleted with the link.", "Clear").then(function () {
            api("trigger_clear_actions", {trigger_id: t.TriggerId}).then(done("Actions cleared"), App.fail);
          });
        }));
        return $b.add(ui.button("Remove", "small danger", function () {
          ui.confirm("Remove trigger " + t.Name, "Remove this trigger? Actions that belong to it alone are deleted too.",
            "Remove").then(function () {
            api("trigger_remove", {trigger_id: t.TriggerId}).then(done("Trigger removed"), App.fail);
          });
        }));
      }}], {key: function (t) { return t.TriggerId; }, empty: "No triggers. A trigger starts a process capture whenever a matching program starts."});
    $panel.append(ui.section("Triggers", ui.button("Refresh", "small", load)).append($tf, trigT));
    if (!api.has("action_list")) return;
    var $type = ui.el("select").attr("name", "atype").append(
      ui.el("option", "", "Execute a program").val(ACTION_TYPE_EXECUTE), ui.el("option", "", "Export to a directory").val(ACTION_TYPE_EXPORT));
    var $af = ui.el("div", "toolbar actform").append(
      ui.field("Name", ui.input("aname", "e.g. notify")), ui.field("Type", $type),
      ui.field("Program / export directory", ui.input("apath", "/usr/local/bin/notify").addClass("mono"), "wide"),
      ui.field("Parameters", ui.input("aparams", "{capture_id} {export_file}").addClass("mono")),
      ui.field("Applies to", ui.el("select").attr("name", "trigger")),
      ui.button("Add action", "primary", addAction));
    actT = ui.table([
      {title: "ID", get: function (a) { return a.ActionId; }, cls: "num"},
      {title: "Name", get: function (a) { return a.Name; }},
      {title: "Type", get: function (a) { return a.ActionType === ACTION_TYPE_EXPORT ? "export" : "execute"; }},
      {title: "Path", get: function (a) { return a.Path; }, cls: "mono"},
      {title: "Parameters", get: function (a) { return a.Params; }, cls: "mono"},
      {title: "Triggers", get: function (a) { return names(a.TriggerIds, triggers, "TriggerId") || "system wide"; }},
      {title: "", cls: "actions", render: function (a) {
        return $().add(ui.button("Edit", "small", function () { editAction(a); }))
          .add(ui.button("Set trigger", "small", function () {
            linkDialog("Trigger for action " + a.Name, triggers, "TriggerId", "system wide (clear triggers)", function (id) {
              api("action_set_trigger", {action_id: a.ActionId, trigger_id: id}).then(done("Trigger set"), App.fail);
            });
          }))
          .add(ui.button("Clear triggers", "small", function () {
            api("action_clear_triggers", {action_id: a.ActionId}).then(done("Triggers cleared"), App.fail);
          }))
          .add(ui.button("Remove", "small danger", function () {
            api("action_remove", {action_id: a.ActionId}).then(done("Action removed"), App.fail);
          }));
      }}], {key: function (a) { return a.ActionId; }, empty: "No actions."});
    $panel.append(ui.section("Actions", ui.button("Refresh", "small", load)).append($af,
      ui.el("p", "help").text("Actions run when a trigger's capture completes. Parameters are split like a shell would (no shell runs); {capture_id}, {pid}, {process_name} and {export_file} are replaced. Programs run with the service's privileges, killed after the action_timeout setting. Their output is in Files → Commands."),
      actT));
  }

  App.views.triggers = {title: "Triggers", init: init, show: load};
})();
