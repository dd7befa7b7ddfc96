/*
 * Status page: polls /ui/api/status every POLL_MS and redraws the backend cards. Admins
 * get limits, queues, last errors and the config's last reload; everyone else health.
 * Polling pauses while the tab is hidden and resumes (with a fresh read) when it shows.
 */
(function () {
  "use strict";
  const G = window.Gateway;
  const POLL_MS = 2000;
  const backendsEl = document.getElementById("backends");
  const updatedEl = document.getElementById("status-updated");
  const errorEl = document.getElementById("status-error");
  const configSection = document.getElementById("config-section");
  const configEl = document.getElementById("config");
  const HEALTH = { ready: "Ready", unknown: "Checking", not_ready: "Not ready", down: "Down" };
  let timer = null;

  function when(seconds) {
    if (typeof seconds !== "number") return "never";
    return new Date(seconds * 1000).toLocaleTimeString();
  }

  function facts(pairs) {
    const list = G.el("dl", { className: "facts" });
    for (const [name, value] of pairs) list.append(G.el("dt", null, name), G.el("dd", null, value));
    return list;
  }

  function card(backend) {
    const state = String(backend.health || "unknown");
    const badge = G.el("span", { className: "health health-" + state.replace(/[^a-z_]/g, "") }, HEALTH[state] || state);
    const node = G.el("article", { className: "card backend-card", dataset: { backend: backend.name, health: state } },
      G.el("h2", null, G.el("span", null, backend.name), badge));
    if (backend.capabilities) {
      const pairs = [];
      for (const [capability, c] of Object.entries(backend.capabilities)) {
        pairs.push([capability, c.in_flight + " in flight / " + c.limit + " limit, " + c.queued + " queued (max " + c.queue_max + ")"]);
      }
      pairs.push(["Last check", when(backend.checked_at)]);
      pairs.push(["Last error", backend.last_error || "none"]);
      node.appendChild(facts(pairs));
    }
    return node;
  }

  function showConfig(config) {
    configSection.hidden = !config;
    if (!config) return;
    const last = config.last_reload || {};
    const result = last.ok ? "applied" : "refused (" + (last.issues || 1) + " issue" + (last.issues === 1 ? "" : "s") + "); the last good config is kept";
    G.clear(configEl);
    const pairs = [
      ["Serving", config.digest + ", loaded " + when(config.loaded_at)],
      ["Last reload", result + " at " + when(last.at) + " (" + last.reason + ")"],
    ];
    if (!last.ok && last.error) pairs.push(["Reload error", last.error]);
    for (const [name, value] of pairs) configEl.append(G.el("dt", null, name), G.el("dd", { className: name === "Reload error" ? "reload-error" : "" }, value));
  }

  async function refresh() {
    timer = null;
    try {
      const body = await G.fetchJSON("/ui/api/status");
      G.clear(backendsEl);
      for (const backend of body.backends || []) backendsEl.appendChild(card(backend));
      if (!(body.backends || []).length) backendsEl.appendChild(G.el("p", { className: "muted" }, "No backends are configured."));
      showConfig(body.config);
      G.say(errorEl, "");
      updatedEl.textContent = "Updated " + when(body.at) + (body.admin ? "" : " · health only (admins see limits and errors)");
    } catch (err) {
      G.say(errorEl, "Could not read the status: " + G.messageOf(err), "error");
    }
    if (!document.hidden) timer = setTimeout(refresh, POLL_MS);
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && timer === null) refresh();
  });
  refresh();
})();
