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

  // Charts: moving the pointer over one shows the step under it and each line's value there.
  function fmt(unit, v) {
    if (v === null || v === undefined) return "—";
    if (unit === "share") return (v * 100).toFixed(1) + "%";
    if (unit === "ms") return v >= 1000 ? (v / 1000).toFixed(2) + " s" : v.toFixed(1) + " ms";
    return Math.round(v).toLocaleString("en-US");
  }

  function hover() {
    document.querySelectorAll("figure.chart[data-chart]").forEach(function (fig) {
      var data;
      try { data = JSON.parse(fig.getAttribute("data-chart")); } catch (e) { return; }
      var svg = fig.querySelector("svg");
      if (!svg || !data.ts.length) return;
      var tip = document.createElement("div");
      tip.className = "chart-tip";
      tip.hidden = true;
      tip.setAttribute("aria-hidden", "true");
      fig.appendChild(tip);
      var t0 = data.ts[0], span = data.ts[data.ts.length - 1] + data.step - t0;
      svg.addEventListener("mousemove", function (ev) {
        var r = svg.getBoundingClientRect();
        var frac = ((ev.clientX - r.left) / r.width - data.left) / data.width;
        if (frac < 0 || frac > 1) { tip.hidden = true; return; }
        var i = Math.min(data.ts.length - 1, Math.floor((frac * span) / data.step));
        var when = new Date(data.ts[i]).toISOString().replace("T", " ").slice(0, 16) + " UTC";
        // Built from nodes and text, never HTML strings.
        tip.textContent = "";
        var head = document.createElement("div");
        head.textContent = when;
        tip.appendChild(head);
        data.lines.forEach(function (l) {
          var row = document.createElement("div");
          var sw = document.createElement("span");
          sw.className = "swatch " + l.class;
          var value = document.createElement("strong");
          value.textContent = fmt(data.unit, l.values[i]);
          row.appendChild(sw);
          row.appendChild(document.createTextNode(l.label + ": "));
          row.appendChild(value);
          tip.appendChild(row);
        });
        tip.hidden = false;
        var x = ev.clientX - fig.getBoundingClientRect().left;
        tip.style.left = Math.min(x + 12, fig.clientWidth - tip.offsetWidth - 4) + "px";
      });
      svg.addEventListener("mouseleave", function () { tip.hidden = true; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    autosubmit();
    refresh();
    hover();
  });
})();
