// Live pages. Three pieces, no inline script anywhere (the pages run under a strict CSP):
//  1. Live regions: a page whose <main> has data-live-url is refreshed from the server's one
//     snapshot of it (webapp/web/snapshot.py). The answer is HTML per region id, morphed into
//     the page with Idiomorph, so focus, scroll and text selection stay where the user left
//     them; an unchanged page costs a 204. Polled every few seconds, and at once when the run's
//     log websocket reports a line (something happened).
//  2. The log viewer: follows the tail over a websocket, resumes after the last line it has,
//     scrolls only while the reader is at the bottom ("Jump to latest" otherwise), pages
//     backwards on request, falls back to polling when the server refuses another socket.
//  3. Small things: dismissible flash messages (a message about a run goes away when the run
//     moves on) and confirmations declared with data-confirm.
(function () {
  "use strict";
  var POLL_MS = 2000, HIDDEN_POLL_MS = 10000, FALLBACK_POLL_MS = 3000, MAX_LINES = 5000;
  var ERROR_LINE = /FAILED|attempt \d+ failed|[Ee]rror|unavailable|[Ii]nsufficient|Run failed/;
  // Close codes that mean "do not retry" (see webapp/web/sockets.py).
  var FINAL = {4401: "not logged in", 4403: "refused (origin)", 4404: "not available"};

  function wsUrl(path) {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
  }

  function note(text) {
    var el = document.getElementById("live-note");
    if (!el) return;
    el.textContent = text || "";
    el.hidden = !text;
  }

  // -- 1. live regions ---------------------------------------------------------------------------
  var live = {
    root: null, version: "", timer: null, soon: null, busy: false, again: false, stopped: false,

    start: function () {
      this.root = document.querySelector("main[data-live-url]");
      if (!this.root) return;
      this.version = this.root.dataset.liveVersion || "";
      var self = this;
      // Hidden tabs poll slowly; coming back to one refreshes it at once.
      document.addEventListener("visibilitychange", function () { if (!document.hidden) self.requestSoon(); });
      this.schedule();
    },
    schedule: function () {
      var self = this;
      clearTimeout(this.timer);
      if (this.stopped) return;
      this.timer = setTimeout(function () { self.refresh(); }, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
    },
    // Something happened (a log line): refresh shortly, coalescing bursts of lines.
    requestSoon: function () {
      var self = this;
      if (!this.root || this.soon) return;
      this.soon = setTimeout(function () { self.soon = null; self.refresh(); }, 400);
    },
    refresh: function () {
      var self = this;
      if (!this.root || this.stopped) return;
      if (this.busy) { this.again = true; return; }
      this.busy = true;
      var url = this.root.dataset.liveUrl + "?v=" + encodeURIComponent(this.version);
      fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}, cache: "no-store"})
        .then(function (resp) {
          if (resp.status === 204) return null;
          var type = resp.headers.get("Content-Type") || "";
          if (resp.redirected || type.indexOf("application/json") < 0) {
            // The session ended (the login page answered): stop, say so.
            self.stopped = true;
            note("Your session has ended: reload the page to log in again.");
            return null;
          }
          if (!resp.ok) throw new Error("HTTP " + resp.status);
          return resp.json();
        })
        .then(function (data) { if (data) self.apply(data); })
        .catch(function () { /* network blip: the next poll retries */ })
        .then(function () {
          self.busy = false;
          if (self.again) { self.again = false; self.requestSoon(); }
          self.schedule();
        });
    },
    apply: function (data) {
      Object.keys(data.regions).forEach(function (id) {
        var el = document.getElementById(id);
        if (!el) return;
        if (window.Idiomorph) {
          window.Idiomorph.morph(el, data.regions[id], {morphStyle: "innerHTML"});
        } else {
          el.innerHTML = data.regions[id];
        }
      });
      this.version = data.version;
      // A count of applied refreshes, for tests and for anyone debugging a page.
      var html = document.documentElement;
      html.dataset.liveRefreshes = String(parseInt(html.dataset.liveRefreshes || "0", 10) + 1);
      afterUpdate();
    }
  };

  function afterUpdate() {
    pruneFlashes();
    logViewer.sync();
  }

  // -- 3. flashes and confirmations --------------------------------------------------------------
  function pruneFlashes() {
    document.querySelectorAll(".flash[data-run-id]").forEach(function (flash) {
      var shown = document.querySelectorAll('main [data-run-status][data-run-id="' + flash.dataset.runId + '"]');
      var states = [];
      shown.forEach(function (el) { if (!el.closest(".flash")) states.push(el.dataset.runStatus); });
      if (states.length && states.indexOf(flash.dataset.runStatus) < 0) flash.remove();
    });
  }

  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest && ev.target.closest(".flash-close");
    if (btn) btn.closest(".flash").remove();
  });
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) ev.preventDefault();
  });

  // -- 2. the log viewer -------------------------------------------------------------------------
  var logViewer = {
    el: null, jump: null, status: null, runId: "", wsPath: "", next: 0, ws: null, retry: null, following: false,
    delay: 500, pollTimer: null, unread: 0,

    start: function () {
      this.el = document.getElementById("log-tail");
      if (!this.el) return;
      var self = this;
      this.jump = document.getElementById("log-jump");
      this.status = document.getElementById("log-status");
      this.runId = this.el.dataset.run || "";
      this.next = parseInt(this.el.dataset.next || "0", 10);
      this.el.addEventListener("scroll", function () { if (self.atBottom()) self.caughtUp(); });
      if (this.jump) this.jump.addEventListener("click", function () { self.toBottom(); self.el.focus(); });
      var earlier = document.getElementById("log-earlier");
      if (earlier) earlier.addEventListener("click", function (ev) { ev.preventDefault(); self.loadEarlier(earlier); });
      this.toBottom();
      // The run page names its socket on the log itself; the site page in #log-meta (sync()).
      if (this.el.dataset.ws) this.connect(this.el.dataset.ws);
      else this.sync();
    },
    // The site page follows whichever run the latest snapshot names (a run started anywhere).
    sync: function () {
      if (!this.el) return;
      var meta = document.querySelector("#log-meta [data-log-run]");
      if (!meta) return;
      var runId = meta.dataset.logRun || "";
      if (runId === this.runId && (this.following || !runId)) return;
      if (runId === this.runId) { this.connect(meta.dataset.logWs); return; }
      this.stop();
      if (!runId) {
        // The run ended: its last lines stay readable until another run starts.
        if (this.runId) this.setStatus("run ended");
        return;
      }
      this.runId = runId;
      this.el.dataset.run = runId;
      this.el.hidden = false;
      // A different run: start from its last lines, numbered, then follow after them.
      var self = this;
      this.el.textContent = "";
      this.next = 0;
      this.fetchLines("lines=100", function (data) {
        if (self.runId !== runId) return;
        self.append(data.lines, data.first_line);
        self.connect(meta.dataset.logWs);
      });
    },
    fetchLines: function (query, done) {
      var url = "/api/v1/automation/logs/?run_id=" + encodeURIComponent(this.runId) + "&" + query;
      fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (body) { if (body && body.success) done(body.data); })
        .catch(function () {});
    },
    connect: function (path) {
      var self = this;
      this.wsPath = path;
      if (!path) return;
      this.following = true;
      var ws = new WebSocket(wsUrl(path + "?after=" + this.next));
      this.ws = ws;
      ws.onopen = function () { self.delay = 500; self.setStatus("live"); };
      ws.onmessage = function (ev) {
        if (ws !== self.ws) return;
        // A replay cut short (webapp/web/live.py: replay_marker): shown once, and the numbering
        // goes on from the last line skipped.
        var cut = /^\[lines (\d+)-(\d+) not replayed/.exec(ev.data);
        if (cut) { self.append([ev.data]); self.next = parseInt(cut[2], 10); live.requestSoon(); return; }
        self.append([ev.data]);
        live.requestSoon();
      };
      ws.onclose = function (ev) {
        if (ws !== self.ws) return;  // replaced by a newer socket
        self.ws = null;
        if (FINAL[ev.code]) { self.setStatus(FINAL[ev.code]); return; }  // stays "following": no retry
        if (ev.code === 4429) {
          // Over the per-user cap: poll instead, and say why.
          note((ev.reason || "Too many live connections for your user") +
               ": this page updates every few seconds instead of live.");
          self.setStatus("updating every few seconds");
          self.poll();
          return;
        }
        self.setStatus("reconnecting…");
        self.retry = setTimeout(function () { self.connect(self.wsPath); }, self.delay);
        self.delay = Math.min(self.delay * 2, 10000);
      };
    },
    poll: function () {
      var self = this, runId = this.runId;
      clearTimeout(this.pollTimer);
      this.fetchLines("after=" + this.next + "&lines=500", function (data) {
        if (self.runId !== runId) return;
        if (data.lines.length) { self.append(data.lines, data.first_line); live.requestSoon(); }
      });
      this.pollTimer = setTimeout(function () { self.poll(); }, FALLBACK_POLL_MS);
    },
    stop: function () {
      this.following = false;
      clearTimeout(this.retry);
      clearTimeout(this.pollTimer);
      this.pollTimer = null;
      if (this.ws) { var ws = this.ws; this.ws = null; try { ws.close(1000); } catch (e) { /* closed */ } }
    },
    setStatus: function (text) { if (this.status) this.status.textContent = text; },
    atBottom: function () { return this.el.scrollHeight - this.el.scrollTop - this.el.clientHeight < 8; },
    toBottom: function () { this.el.scrollTop = this.el.scrollHeight; this.caughtUp(); },
    caughtUp: function () { this.unread = 0; if (this.jump) this.jump.hidden = true; },
    line: function (text, n) {
      var div = document.createElement("div");
      div.className = "ln" + (ERROR_LINE.test(text) ? " ln-error" : "");
      div.dataset.n = n;
      div.textContent = text;
      return div;
    },
    append: function (lines, first) {
      if (!lines.length) return;
      var follow = this.atBottom(), frag = document.createDocumentFragment(), self = this;
      if (first) this.next = first - 1;
      lines.forEach(function (text) { self.next += 1; frag.appendChild(self.line(text, self.next)); });
      this.el.appendChild(frag);
      if (follow) {
        // Keep memory bounded, but only trim while following: trimming above a reader who
        // scrolled up would move the text under their eyes.
        while (this.el.childElementCount > MAX_LINES) this.el.removeChild(this.el.firstElementChild);
        this.toBottom();
      } else if (this.jump) {
        this.unread += lines.length;
        this.jump.hidden = false;
        this.jump.textContent = "Jump to latest (" + this.unread + " new)";
      }
    },
    loadEarlier: function (link) {
      var self = this, first = parseInt(this.el.dataset.first || "1", 10);
      if (first <= 1) return;
      fetch(link.dataset.api + "&before=" + first, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (body) {
          if (!body || !body.success) return;
          var data = body.data, frag = document.createDocumentFragment();
          data.lines.forEach(function (text, i) { frag.appendChild(self.line(text, data.first_line + i)); });
          // Keep the lines the reader is looking at in place while the new ones go above.
          var before = self.el.scrollHeight, top = self.el.scrollTop;
          self.el.insertBefore(frag, self.el.firstChild);
          self.el.scrollTop = top + (self.el.scrollHeight - before);
          self.el.dataset.first = data.first_line;
          link.href = link.href.replace(/before=\d+/, "before=" + data.first_line);
          var box = document.getElementById("log-hidden"), text = document.getElementById("log-hidden-text");
          if (data.first_line <= 1) { if (box) box.hidden = true; }
          else if (text) text.textContent = "Lines 1–" + (data.first_line - 1) + " of " + data.total_lines + " are hidden.";
        })
        .catch(function () {});
    }
  };

  // An invitation link carries its one-time token in the fragment (/invite#TOKEN): browsers
  // never send a fragment, so it stays out of every access log and proxy. Into the form it
  // goes, and out of the address bar.
  function inviteToken() {
    var field = document.getElementById("invite-token");
    if (!field || !location.hash || location.hash.length < 2) return;
    field.value = decodeURIComponent(location.hash.slice(1));
    var box = document.getElementById("invite-token-box");
    if (box) box.hidden = true;
    if (history.replaceState) history.replaceState(null, "", location.pathname + location.search);
  }

  // -- forms larger than the server takes (MAX_CONTENT_LENGTH) -----------------------------------
  // The server refuses such a body before reading it (413), so nothing it sent back could hold
  // the text: check here instead and keep the form as it is, with a message next to it.
  function guardFormSizes() {
    var forms = document.querySelectorAll("form[data-max-bytes]");
    Array.prototype.forEach.call(forms, function (form) {
      form.addEventListener("submit", function (ev) {
        var max = parseInt(form.dataset.maxBytes, 10), size = 0;
        Array.prototype.forEach.call(form.elements, function (el) {
          if (el.type === "file" && el.files) {
            Array.prototype.forEach.call(el.files, function (f) { size += f.size; });
          } else if (typeof el.value === "string" && el.name) {
            size += new Blob([el.value]).size;
          }
        });
        var msg = form.querySelector(".js-size-error");
        if (size > max) {
          ev.preventDefault();
          if (!msg) {
            msg = document.createElement("p");
            msg.className = "field-error js-size-error";
            msg.setAttribute("role", "alert");
            form.insertBefore(msg, form.querySelector("button[type=submit]"));
          }
          msg.textContent = "This is " + (size / 1048576).toFixed(1) + " MB; the server takes at most " +
            (max / 1048576).toFixed(1) + " MB at once. Nothing was sent and your text is still here: " +
            "split it into smaller parts, or upload several CSV files.";
        } else if (msg) {
          msg.remove();
        }
      });
    });
  }

  function start() {
    live.start();
    logViewer.start();
    pruneFlashes();
    inviteToken();
    guardFormSizes();
  }
  document.addEventListener("DOMContentLoaded", start);
})();
