// Insignia console: live events (server-sent events) and the authority timeline's refresh.
// Every page works without this file; it only adds what cannot be done without a script.
"use strict";

(function () {
  const list = document.getElementById("live-events");
  if (!list && !document.getElementById("timeline")) {
    return;
  }
  let refreshing = false;
  let again = false;

  function refreshTimeline() {
    if (refreshing) {
      again = true;
      return;
    }
    refreshing = true;
    fetch("/timeline", { credentials: "same-origin", cache: "no-store" })
      .then((response) => (response.ok ? response.text() : ""))
      .then((html) => {
        const fresh = new DOMParser().parseFromString(html, "text/html").getElementById("timeline");
        const current = document.getElementById("timeline");
        if (fresh && current) {
          current.replaceWith(document.importNode(fresh, true));
        }
      })
      .finally(() => {
        refreshing = false;
        if (again) {
          again = false;
          refreshTimeline();
        }
      });
  }

  const source = new EventSource("/events/stream");
  source.addEventListener("change", (message) => {
    const event = JSON.parse(message.data);
    if (list) {
      const item = document.createElement("li");
      item.className = "event event-" + event.kind;
      item.textContent = event.at + "  " + event.text;
      list.prepend(item);
      while (list.children.length > 200) {
        list.lastElementChild.remove();
      }
    }
    if (event.kind === "ca_key" || event.kind === "bundle") {
      refreshTimeline();
    }
  });
  // A stream that ends (session over, server restart) is reconnected by EventSource itself;
  // data-live says whether one is open now.
  source.addEventListener("open", () => {
    document.documentElement.dataset.live = "open";
  });
  source.addEventListener("error", () => {
    document.documentElement.dataset.live = "closed";
  });
})();
