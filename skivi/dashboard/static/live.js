// Skivi dashboard: live refresh, hand-written, no dependencies. Every few seconds (body's
// data-refresh, 0 = never) it fetches this page again and swaps in the fresh copy of each
// element marked data-live (by id). It waits while the tab is hidden, while text is
// selected, while a checkbox is ticked (a selection in progress) and while a form field has
// the focus, so nothing the user is doing is replaced under them. The pages work without it.
(function () {
  "use strict";
  var seconds = Number(document.body.getAttribute("data-refresh") || "0");
  if (!seconds || !window.fetch || !window.DOMParser) { return; }
  var status = document.getElementById("live-status");

  function busy() {
    if (document.hidden) { return "hidden"; }
    var selection = window.getSelection ? window.getSelection() : null;
    if (selection && !selection.isCollapsed && String(selection).length) { return "selecting"; }
    if (document.querySelector("input[type=checkbox]:checked")) { return "selecting"; }
    var active = document.activeElement;
    if (active && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName)) { return "editing"; }
    return "";
  }

  function show(text) { if (status) { status.textContent = text; } }

  function refresh() {
    var why = busy();
    if (why) { show("paused (" + why + ")"); return; }
    fetch(window.location.href, {credentials: "same-origin",
                                 headers: {"X-Skivi-Refresh": "1"}})
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) { show("refresh failed"); return; }
        if (busy()) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (old) {
          var next = old.id && fresh.getElementById(old.id);
          if (next) { old.replaceWith(document.importNode(next, true)); }
        });
        show("live");
      })
      .catch(function () { show("refresh failed"); });
  }

  window.setInterval(refresh, seconds * 1000);
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) { refresh(); }
  });
})();
