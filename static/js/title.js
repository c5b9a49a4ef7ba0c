// The browser tab's title follows the site's run: "▶ 45 % · Run #6" while it runs (share of
// the seven stages done), "⏸ Paused · Run #6", then its end ("✓ Completed · Run #6") until the
// next run starts. Reads the same JSON routes as API clients, with the session cookie.
(function () {
  "use strict";
  var el = document.getElementById("tab-title");
  if (!el || el.dataset.started) return;
  el.dataset.started = "1";
  var site = el.dataset.siteId, base = document.title, lastRun = null;
  var ENDS = { completed: "✓ Completed", failed: "✗ Failed", cancelled: "■ Cancelled" };

  function get(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (j) { return j && j.success ? j.data : null; });
  }
  function show(text) { document.title = text ? text + " — " + base : base; }

  function overall(state) {
    if (!state) return null;
    var done = (state.stage_number - 1) + (state.percentage || 0) / 100;
    return Math.max(0, Math.min(100, Math.round(done * 100 / 7)));
  }

  function tick() {
    get("/api/v1/automation/current_run/?site_id=" + site).then(function (data) {
      var run = data && data.run;
      if (run) {
        lastRun = run.run_id;
        if (run.status === "paused") { show("⏸ Paused · Run #" + run.run_id); return null; }
        return get("/api/v1/automation/current_processing/?site_id=" + site + "&run_id=" + run.run_id)
          .then(function (p) {
            var pct = overall(p && p.state);
            show("▶ " + (pct === null ? "" : pct + " % · ") + "Run #" + run.run_id);
          });
      }
      if (data && lastRun) {
        var ended = lastRun;
        lastRun = null;
        return get("/api/v1/automation/run/?run_id=" + ended).then(function (r) {
          var status = r && r.run && r.run.status;
          show((ENDS[status] || "Ended") + " · Run #" + ended);
        });
      }
      return null;
    }).catch(function () { /* offline a moment: try again on the next tick */ })
      .then(function () { setTimeout(tick, document.hidden ? 6000 : 3000); });
  }
  tick();
})();
