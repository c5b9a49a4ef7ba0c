// Times, timers and forms (no inline script: CSP). Works on whatever the live refresh
// morphs in, since it re-scans the page on every tick.
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  function relative(date, now) {
    var secs = (now - date) / 1000, future = secs < 0, s = Math.abs(secs), text;
    if (s < 45) return future ? "in a moment" : "just now";
    if (s < 90 * 60) text = Math.max(1, Math.round(s / 60)) + " min";
    else if (s < 36 * 3600) text = Math.round(s / 3600) + " h";
    else text = Math.round(s / 86400) + " days";
    return future ? "in " + text : text + " ago";
  }

  function fmtSeconds(v) {
    if (v < 1) return "< 1 s";
    var s = Math.round(v);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + String(s % 60).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + " min";
  }

  // <span data-since="ISO">: time elapsed since then; <span data-until="ISO">: time left until then.
  function tick() {
    var now = Date.now();
    document.querySelectorAll("time.rel[datetime]").forEach(function (el) {
      var d = Date.parse(el.getAttribute("datetime"));
      if (!isNaN(d)) { var t = relative(d, now); if (el.textContent !== t) el.textContent = t; }
    });
    document.querySelectorAll("[data-since]").forEach(function (el) {
      var at = Date.parse(el.dataset.since);
      if (!isNaN(at)) el.textContent = fmtSeconds(Math.max(0, now - at) / 1000);
    });
    document.querySelectorAll("[data-until]").forEach(function (el) {
      var at = Date.parse(el.dataset.until);
      if (!isNaN(at)) el.textContent = at - now > 0 ? fmtSeconds((at - now) / 1000) : "any moment";
    });
  }

  function dayPickers() {
    var freq = document.getElementById("frequency");
    if (!freq) return;
    function sync() {
      document.querySelectorAll(".day-pick").forEach(function (box) {
        if (box.dataset.for === freq.value) box.removeAttribute("data-inactive");
        else box.setAttribute("data-inactive", "");
      });
    }
    freq.addEventListener("change", sync);
    sync();
  }

  function focusErrors() {
    var summary = document.getElementById("config-errors");
    if (summary) { summary.focus(); summary.scrollIntoView({block: "start"}); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    dayPickers();
    focusErrors();
    tick();
    setInterval(tick, 1000);
  });
})();
