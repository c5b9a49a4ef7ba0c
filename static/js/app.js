// Live views: the log tail and the processing state over websockets, with reconnects that
// resume after the last line received (no line lost or repeated). Everything else is htmx.
(function () {
  "use strict";
  function wsUrl(path) {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
  }

  function follow(el, onMessage, statusEl, buildPath) {
    var delay = 500, closedForGood = false;
    function connect() {
      var ws = new WebSocket(wsUrl(buildPath()));
      ws.onopen = function () { delay = 500; if (statusEl) statusEl.textContent = "live"; };
      ws.onmessage = function (ev) { onMessage(ev.data); };
      ws.onclose = function (ev) {
        if (ev.code === 4401 || ev.code === 4404) { closedForGood = true; if (statusEl) statusEl.textContent = "not available"; return; }
        if (statusEl) statusEl.textContent = "reconnecting…";
        setTimeout(connect, delay);
        delay = Math.min(delay * 2, 10000);
      };
    }
    connect();
  }

  function startLog() {
    var el = document.getElementById("log-tail");
    if (!el || el.dataset.live) return;
    el.dataset.live = "1";
    var next = parseInt(el.dataset.next || "0", 10);
    var status = document.getElementById("log-status");
    follow(el, function (line) {
      next += 1;
      el.textContent += line + "\n";
      var lines = el.textContent.split("\n");
      if (lines.length > 2000) el.textContent = lines.slice(-1500).join("\n");
      el.scrollTop = el.scrollHeight;
    }, status, function () { return el.dataset.ws + "?after=" + next; });
    el.scrollTop = el.scrollHeight;
  }

  function startProcessing() {
    var el = document.getElementById("processing");
    if (!el || !el.dataset.ws || window.__processingLive === el.dataset.ws) return;
    window.__processingLive = el.dataset.ws;
    follow(el, function (data) {
      var s = JSON.parse(data), box = document.getElementById("processing");
      if (!box) return;
      if (!s) { box.innerHTML = ""; return; }
      box.innerHTML = "";
      var rows = [
        ["Now", "stage " + s.stage_number + " · " + s.stage_name + " — " + s.percentage + "% (" + s.processed_items + "/" + s.total_items + ")"],
        ["Processing", (s.currently_processing || []).join(", ") || "—"],
        ["Up next", ((s.up_next || []).join(", ") || "—") + " (" + s.remaining_count + " remaining)"]
      ];
      rows.forEach(function (r) {
        var p = document.createElement("p"), b = document.createElement("strong");
        b.textContent = r[0] + ": "; p.appendChild(b); p.appendChild(document.createTextNode(r[1])); box.appendChild(p);
      });
    }, null, function () { return el.dataset.ws; });
  }

  // Confirmation for forms marked data-confirm (an inline onsubmit would break the CSP).
  document.addEventListener("submit", function (ev) {
    var msg = ev.target && ev.target.getAttribute && ev.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) ev.preventDefault();
  }, true);

  function start() { startLog(); startProcessing(); }
  document.addEventListener("DOMContentLoaded", start);
  document.addEventListener("htmx:afterSwap", start);
})();
