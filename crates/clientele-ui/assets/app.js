// Progressive enhancement only: every page works without this file.
// - Auto-refresh: reloads the page every `data-refresh` seconds, but not while the tab is
//   hidden or someone is typing in a form, and says when the next refresh is due.
// - The time-range and filter selects submit their form when changed; the custom from/to
//   fields show only when "Custom…" is chosen.
(function () {
  "use strict";

  function autosubmit() {
    document.querySelectorAll("select[data-autosubmit]").forEach(function (sel) {
      sel.addEventListener("change", function () {
        if (sel.name === "range" && sel.value === "custom") {
          showCustom(sel.form, true);
          var from = sel.form.querySelector("input[name=from]");
          if (from) from.focus();
          return;
        }
        if (sel.name === "range") {
          // A preset replaces any custom window.
          sel.form.querySelectorAll(".custom input").forEach(function (i) { i.disabled = true; });
        }
        sel.form.requestSubmit ? sel.form.requestSubmit() : sel.form.submit();
      });
    });
    document.querySelectorAll("form.range").forEach(function (form) {
      var range = form.querySelector("select[name=range]");
      showCustom(form, range && range.value === "custom");
      form.addEventListener("submit", function () {
        if (range && range.value !== "custom") {
          form.querySelectorAll(".custom input").forEach(function (i) { i.disabled = true; });
        }
      });
    });
  }

  function showCustom(form, show) {
    var custom = form.querySelector(".custom");
    if (custom) custom.hidden = !show;
  }

  function refresh() {
    var seconds = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
    if (!(seconds > 0)) return;
    var status = document.querySelector(".refresh-status");
    var due = Date.now() + seconds * 1000;
    function busy() {
      var a = document.activeElement;
      return document.hidden || (a && (a.tagName === "INPUT" || a.tagName === "TEXTAREA"));
    }
    setInterval(function () {
      var left = Math.max(0, Math.round((due - Date.now()) / 1000));
      if (status) status.textContent = busy() ? "Auto-refresh paused" : "Refreshing in " + left + " s";
      if (Date.now() >= due) {
        if (busy()) {
          due = Date.now() + 5000;
        } else {
          window.location.reload();
        }
      }
    }, 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    autosubmit();
    refresh();
  });
})();
