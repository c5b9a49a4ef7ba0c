// Review queue keys: j/k move between articles, x selects, a approves, r rejects (the note is
// required: an empty note gets the focus first), o opens the article. Plain forms underneath.
(function () {
  "use strict";
  function items() { return Array.prototype.slice.call(document.querySelectorAll(".review-item")); }
  function current() {
    var list = items(), a = document.activeElement;
    for (var i = 0; i < list.length; i++) if (list[i] === a || list[i].contains(a)) return i;
    return -1;
  }
  function focusItem(i) {
    var list = items();
    if (!list.length) return;
    i = Math.max(0, Math.min(list.length - 1, i));
    list[i].focus();
    list[i].scrollIntoView({ block: "nearest" });
  }
  function typing(t) { return t && (t.tagName === "INPUT" && t.type !== "checkbox" || t.tagName === "TEXTAREA"); }

  document.addEventListener("DOMContentLoaded", function () {
    var all = document.getElementById("select-all");
    if (all) all.addEventListener("change", function () {
      document.querySelectorAll('.review-item input[name="ids"]').forEach(function (c) { c.checked = all.checked; });
    });
    document.querySelectorAll(".review-item textarea").forEach(function (ta) {
      ta.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {  // Ctrl+Enter: reject with this note
          ev.preventDefault();
          ta.closest(".review-item").querySelector('button[value^="reject:"]').click();
        } else if (ev.key === "Escape") { ta.closest(".review-item").focus(); }
      });
    });
  });

  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev.target)) return;
    var i = current(), list = items(), item = list[i];
    switch (ev.key) {
      case "j": focusItem(i + 1); break;
      case "k": focusItem(i < 0 ? 0 : i - 1); break;
      case "x": if (item) { var c = item.querySelector('input[name="ids"]'); c.checked = !c.checked; } break;
      case "a": if (item) item.querySelector('button[value^="approve:"]').click(); break;
      case "r":
        if (!item) break;
        var note = item.querySelector("textarea");
        if (!note.value.trim()) { note.focus(); break; }
        item.querySelector('button[value^="reject:"]').click();
        break;
      case "o": if (item) item.querySelector(".open-article").click(); break;
      default: return;
    }
    ev.preventDefault();
  });
})();
