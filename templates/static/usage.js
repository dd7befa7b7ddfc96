/* Usage: tokens per day as an SVG bar chart, and tables per key, user and model. */
(function () {
  "use strict";
  const G = window.Gateway;
  const API = "/ui/api/usage";
  const SVG = "http://www.w3.org/2000/svg";
  const form = document.getElementById("usage-range");
  const sinceEl = document.getElementById("usage-since");
  const untilEl = document.getElementById("usage-until");
  const chart = document.getElementById("usage-chart");
  const statusEl = document.getElementById("usage-status");
  const errorEl = document.getElementById("usage-error");
  const LABELS = { keys: "key", users: "user", models: "model" };
  const NONE = { key: "(UI, no key)", user: "(API, no user)", model: "(none)" };

  function isoDay(date) {
    return date.toISOString().slice(0, 10);
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function number(value) {
    return Number(value || 0).toLocaleString();
  }

  /** Every day from since to until (UTC), so days without use show as gaps. */
  function daysBetween(since, until) {
    const days = [];
    const day = new Date(since + "T00:00:00Z");
    const end = new Date(until + "T00:00:00Z");
    while (day <= end && days.length < 400) {
      days.push(isoDay(day));
      day.setUTCDate(day.getUTCDate() + 1);
    }
    return days;
  }

  function drawChart(rows, since, until) {
    G.clear(chart);
    const byDay = new Map(rows.map(function (row) { return [row.day, row]; }));
    const days = daysBetween(since, until);
    const max = Math.max(1, ...rows.map(function (r) { return r.prompt_tokens + r.completion_tokens; }));
    const width = 720, height = 220, left = 56, bottom = 24, top = 8;
    const slot = (width - left) / Math.max(1, days.length);
    const bar = Math.max(1, slot * 0.8);
    const scale = (height - bottom - top) / max;
    const root = svg("svg", {
      viewBox: "0 0 " + width + " " + height,
      role: "img",
      "aria-label": "Tokens per day from " + since + " to " + until,
      class: "chart",
    });
    root.appendChild(svg("text", { x: left - 6, y: top + 10, class: "axis", "text-anchor": "end" }, number(max)));
    root.appendChild(svg("text", { x: left - 6, y: height - bottom, class: "axis", "text-anchor": "end" }, "0"));
    root.appendChild(svg("line", { x1: left, y1: height - bottom, x2: width, y2: height - bottom, class: "baseline" }));
    days.forEach(function (day, index) {
      const row = byDay.get(day);
      const x = left + index * slot + (slot - bar) / 2;
      if (row) {
        const prompt = row.prompt_tokens * scale;
        const completion = row.completion_tokens * scale;
        const group = svg("g", { class: "day", "data-day": day });
        group.appendChild(svg("title", null,
          day + ": " + number(row.prompt_tokens) + " prompt, " + number(row.completion_tokens) +
          " completion tokens, " + number(row.requests) + " requests"));
        group.appendChild(svg("rect", { x: x, y: height - bottom - prompt, width: bar, height: prompt, class: "bar-prompt" }));
        group.appendChild(svg("rect", { x: x, y: height - bottom - prompt - completion, width: bar, height: completion, class: "bar-completion" }));
        root.appendChild(group);
      }
      if (index === 0 || index === days.length - 1 || (days.length <= 14)) {
        root.appendChild(svg("text", { x: x + bar / 2, y: height - 6, class: "axis", "text-anchor": "middle" }, day.slice(5)));
      }
    });
    chart.appendChild(root);
    if (!rows.length) chart.appendChild(G.el("p", { className: "muted" }, "No usage in these days."));
  }

  function fillTable(name, rows) {
    const field = LABELS[name];
    const tbody = document.querySelector("#usage-" + name + " tbody");
    G.clear(tbody);
    for (const row of rows) {
      tbody.appendChild(G.el(
        "tr",
        null,
        G.el("th", { scope: "row" }, row[field] === null ? NONE[field] : String(row[field])),
        G.el("td", null, number(row.requests)),
        G.el("td", null, number(row.prompt_tokens) + (row.estimated ? " *" : "")),
        G.el("td", null, number(row.completion_tokens)),
        G.el("td", null, number(row.errors))
      ));
    }
    if (!rows.length) {
      tbody.appendChild(G.el("tr", null, G.el("td", { colspan: 5, className: "muted" }, "Nothing yet.")));
    }
  }

  async function load() {
    G.say(errorEl, "");
    statusEl.textContent = "Loading…";
    const query = new URLSearchParams({ since: sinceEl.value, until: untilEl.value });
    try {
      const body = await G.fetchJSON(API + "?" + query.toString());
      drawChart(body.days || [], body.since, body.until);
      for (const name of Object.keys(LABELS)) fillTable(name, body[name] || []);
      const estimated = (body.days || []).some(function (r) { return r.estimated; });
      statusEl.textContent = estimated ? "* includes estimated counts (the backend reported none)." : "";
    } catch (err) {
      statusEl.textContent = "";
      G.say(errorEl, "Could not load usage: " + G.messageOf(err), "error");
    }
  }

  const today = new Date();
  untilEl.value = isoDay(today);
  sinceEl.value = isoDay(new Date(today.getTime() - 29 * 86400000));
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    load();
  });
  load();
})();
