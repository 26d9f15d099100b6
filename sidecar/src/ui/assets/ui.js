// Live update for the Tollgate dashboard: every few seconds, fetch this page
// again and swap its <main>, so the numbers move without a reload. Paused
// while the tab is hidden or a form field in the page has focus. An expired
// session (the server redirects to the login form) reloads the page.
// Without JavaScript, live pages refresh every 30 s (<noscript> meta refresh).
(function () {
  "use strict";
  var main = document.getElementById("live");
  var stamp = document.getElementById("updated");
  var updates = 0;
  function mark() {
    if (stamp) stamp.textContent = "updated " + new Date().toLocaleTimeString();
  }
  mark();
  if (!main || !main.dataset.pollMs) return;
  var every = Math.max(1000, parseInt(main.dataset.pollMs, 10) || 5000);
  function busy() {
    var a = document.activeElement;
    return a && main.contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName);
  }
  function schedule() {
    setTimeout(poll, every);
  }
  function poll() {
    if (document.hidden || busy()) return schedule();
    fetch(location.href, { credentials: "same-origin", redirect: "manual", cache: "no-store" })
      .then(function (r) {
        if (r.type === "opaqueredirect") {
          location.reload();
          return null;
        }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (!html) return;
        var next = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (next) {
          main.innerHTML = next.innerHTML;
          updates += 1;
          main.dataset.updates = String(updates);
          mark();
        }
      })
      .catch(function () {})
      .then(schedule);
  }
  schedule();
})();
