/*
 * Status page: polls /ui/api/status every POLL_MS and redraws the backend cards and the
 * models the gateway loads on demand. Admins get limits, queues, last errors, the config's
 * last reload, each model's load facts and Load / Unload buttons; everyone else health
 * and model states. Polling pauses while the tab is hidden and resumes (with a fresh
 * read) when it shows. There is one loop: one timer, and never two reads at once (a read
 * asked for during one runs right after it).
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
  const modelsSection = document.getElementById("models-section");
  const modelsEl = document.getElementById("models");
  const modelErrorEl = document.getElementById("models-error");
  const HEALTH = { ready: "Ready", unknown: "Checking", not_ready: "Not ready", down: "Down" };
  const STATE = { unloaded: "Unloaded", loading: "Loading", loaded: "Loaded", draining: "Draining", failed: "Failed" };
  const STATE_LOOK = { loaded: "health-ready", loading: "health-unknown", draining: "health-unknown", failed: "health-down" };
  let timer = null;
  let inFlight = false;
  let again = false;

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

  function seconds(value) {
    return typeof value === "number" ? value.toFixed(1) + " s" : "—";
  }

  function modelCard(model, admin) {
    const state = String(model.state || "unloaded");
    const badge = G.el("span", { className: "health model-state " + (STATE_LOOK[state] || "") }, STATE[state] || state);
    const node = G.el("article", { className: "card model-card", dataset: { model: model.id, backend: model.backend, state: state } },
      G.el("h2", null, G.el("span", null, model.id), badge));
    if (!admin) return node;
    const memory = typeof model.reported_memory_mb === "number" ? model.reported_memory_mb + " MB (reported)"
      : typeof model.memory_mb === "number" ? model.memory_mb + " MB" : "—";
    const pairs = [
      ["Backend", model.backend],
      ["Loaded since", state === "loaded" || state === "draining" ? when(model.loaded_since) : "—"],
      ["Idle for", seconds(model.idle_s)],
      ["Memory", memory],
      ["Group", model.group || "none"],
      ["Last load", seconds(model.last_load_s)],
    ];
    if (model.error) pairs.push(["Last error", model.error]);
    node.appendChild(facts(pairs));
    const actions = G.el("div", { className: "actions" },
      G.el("button", { type: "button", className: "model-load", dataset: { action: "load" }, disabled: state === "loaded" || state === "loading" }, "Load"),
      G.el("button", { type: "button", className: "model-unload button-quiet", dataset: { action: "unload" }, disabled: state === "unloaded" }, "Unload"));
    node.appendChild(actions);
    return node;
  }

  function showModels(models, admin) {
    modelsSection.hidden = !models.length;
    G.clear(modelsEl);
    for (const model of models) modelsEl.appendChild(modelCard(model, admin));
  }

  modelsEl.addEventListener("click", async function (event) {
    const button = event.target.closest("button[data-action]");
    const card = button && button.closest(".model-card");
    if (!card) return;
    button.disabled = true;
    try {
      await G.fetchJSON("/ui/api/models/" + encodeURIComponent(card.dataset.model) + "/" + button.dataset.action, { method: "POST", body: {} });
      G.say(modelErrorEl, "");
    } catch (err) {
      G.say(modelErrorEl, "Could not " + button.dataset.action + " " + card.dataset.model + ": " + G.messageOf(err), "error");
    }
    refresh();
  });

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
    if (inFlight) {  // one read at a time: this one follows the read under way
      again = true;
      return;
    }
    if (timer !== null) clearTimeout(timer);
    timer = null;
    inFlight = true;
    try {
      const body = await G.fetchJSON("/ui/api/status");
      G.clear(backendsEl);
      for (const backend of body.backends || []) backendsEl.appendChild(card(backend));
      if (!(body.backends || []).length) backendsEl.appendChild(G.el("p", { className: "muted" }, "No backends are configured."));
      showModels(body.models || [], !!body.admin);
      showConfig(body.config);
      G.say(errorEl, "");
      updatedEl.textContent = "Updated " + when(body.at) + (body.admin ? "" : " · health only (admins see limits and errors)");
    } catch (err) {
      G.say(errorEl, "Could not read the status: " + G.messageOf(err), "error");
    }
    inFlight = false;
    if (timer !== null) clearTimeout(timer);
    timer = null;
    if (again || !document.hidden) timer = setTimeout(refresh, again ? 0 : POLL_MS);
    again = false;
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && timer === null) refresh();
  });
  refresh();
})();
