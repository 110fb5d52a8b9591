// The dashboard's one script: parts marked data-live refresh themselves, copy buttons copy,
// and buttons with data-confirm ask first. The pages work without it, only without refreshing.
"use strict";

(function () {
  const status = () => document.getElementById("live-status");

  function say(ok) {
    const el = status();
    if (!el) return;
    el.className = "live-status " + (ok ? "on" : "lost");
    el.textContent = ok
      ? "live · " + new Date().toLocaleTimeString([], { hour12: false })
      : "connection lost, retrying";
  }

  function uids(el) {
    return new Set(Array.from(el.querySelectorAll("tr[data-uid]"), (tr) => tr.dataset.uid));
  }

  async function refresh(el) {
    if (document.hidden) return;
    // A part whose <details> the operator opened keeps it open across refreshes.
    const open = Array.from(el.querySelectorAll("details[id]"))
      .filter((d) => d.open)
      .map((d) => d.id);
    try {
      const response = await fetch(el.dataset.live, {
        headers: { Accept: "text/html" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (response.redirected && new URL(response.url).pathname === "/login") {
        window.location.assign("/login");
        return;
      }
      if (!response.ok) throw new Error(response.status);
      const html = await response.text();
      say(true);
      if (html === el.dataset.last) return;
      const before = uids(el);
      el.innerHTML = html; // rendered and escaped by the server's templates
      el.dataset.last = html;
      for (const id of open) {
        const d = document.getElementById(id);
        if (d) d.open = true;
      }
      if (before.size || el.dataset.seen) {
        for (const tr of el.querySelectorAll("tr[data-uid]")) {
          if (!before.has(tr.dataset.uid)) tr.classList.add("fresh");
        }
      }
      el.dataset.seen = "1";
    } catch (err) {
      say(false);
    }
  }

  function copy(button) {
    const text = button.dataset.copy;
    const done = () => {
      button.classList.add("copied");
      button.textContent = "copied";
      setTimeout(() => {
        button.classList.remove("copied");
        button.textContent = "copy";
      }, 1500);
    };
    const byHand = () => {
      // Plain HTTP to another machine has no clipboard API: select and copy the old way.
      const area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      document.execCommand("copy");
      area.remove();
      done();
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, byHand);
    } else {
      byHand();
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button.copy");
    if (button) {
      event.preventDefault();
      copy(button);
    }
  });

  document.addEventListener("submit", (event) => {
    const button = event.submitter;
    if (button && button.dataset.confirm && !window.confirm(button.dataset.confirm)) {
      event.preventDefault();
    }
  });

  document.addEventListener("DOMContentLoaded", () => {
    for (const el of document.querySelectorAll("[data-live]")) {
      el.dataset.last = el.innerHTML;
      el.dataset.seen = "1";
      const every = Number(el.dataset.every || 3) * 1000;
      setInterval(() => refresh(el), every);
    }
    if (document.querySelector("[data-live]")) say(true);
  });
})();
