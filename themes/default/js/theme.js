/* Light or dark: follows the system (prefers-color-scheme) until the header's toggle picks
 * one, which is remembered in localStorage. Loaded in <head> so the first paint is right;
 * sets <html data-theme="light|dark">, which app.css reads. */
(function () {
  "use strict";
  var KEY = "apppaccap_theme";
  var media = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;

  function stored() {
    try { var v = localStorage.getItem(KEY); return v === "dark" || v === "light" ? v : ""; } catch (e) { return ""; }
  }
  function current() { return stored() || (media && media.matches ? "dark" : "light"); }
  function apply() {
    var t = current();
    document.documentElement.setAttribute("data-theme", t);
    var b = document.getElementById("themetoggle");
    if (b) {
      b.textContent = t === "dark" ? "\u2600" : "\u263e";
      b.title = t === "dark" ? "Switch to the light theme" : "Switch to the dark theme";
      b.setAttribute("aria-label", b.title);
    }
    if (window.jQuery) window.jQuery(window).trigger("resize");  // charts redraw in the new colours
  }
  function toggle() {
    var next = current() === "dark" ? "light" : "dark";
    try { localStorage.setItem(KEY, next); } catch (e) { /* private mode: this page only */ }
    if (!stored()) document.documentElement.setAttribute("data-theme", next);
    else apply();
  }
  apply();
  if (media) {
    if (media.addEventListener) media.addEventListener("change", apply);
    else if (media.addListener) media.addListener(apply);
  }
  document.addEventListener("DOMContentLoaded", function () {
    var b = document.getElementById("themetoggle");
    if (b) b.addEventListener("click", toggle);
    apply();
  });
  window.AppTheme = {current: current, toggle: toggle};
})();
