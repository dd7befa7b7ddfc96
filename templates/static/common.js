/*
 * Shared helpers for every UI page, exposed as window.Gateway.
 *
 * Rules the rest of the UI relies on:
 * - every state-changing request carries the CSRF token from <meta name="csrf-token">;
 * - a 401 from a page API sends the browser to the login page, coming back here after;
 * - DOM is built with createElement/textContent only, so user and model text is never
 *   parsed as HTML.
 */
(function () {
  "use strict";

  const LOGIN_PATH = "/ui/login";
  const UNSAFE_METHODS = new Set(["POST", "PUT", "PATCH", "DELETE"]);

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") || "" : "";
  }

  /** An error from the UI API, carrying the HTTP status and the error envelope. */
  class ApiError extends Error {
    constructor(message, status, details) {
      super(message);
      this.name = "ApiError";
      this.status = status;
      this.details = details || {};
    }
  }

  function goToLogin() {
    const here = location.pathname + location.search + location.hash;
    location.assign(LOGIN_PATH + "?next=" + encodeURIComponent(here));
  }

  /**
   * fetch() with the UI conventions: same-origin cookies, JSON body, CSRF header.
   * Resolves to the raw Response when it is OK (the caller may stream it); otherwise
   * throws an ApiError with the server's message. On 401 it also redirects to the
   * login page unless options.redirectOn401 is false (the login form itself).
   */
  async function request(url, options) {
    const opts = options || {};
    const method = (opts.method || "GET").toUpperCase();
    const headers = { Accept: opts.accept || "application/json" };
    if (UNSAFE_METHODS.has(method)) {
      headers["X-CSRF-Token"] = csrfToken();
      headers["Content-Type"] = "application/json";
    }
    let response;
    try {
      response = await fetch(url, {
        method: method,
        headers: headers,
        credentials: "same-origin",
        body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
        signal: opts.signal,
      });
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError("Cannot reach the gateway. Check your connection and try again.", 0);
    }
    if (response.ok) return response;

    const error = await errorFrom(response);
    if (response.status === 401 && opts.redirectOn401 !== false) goToLogin();
    throw error;
  }

  /** Build an ApiError from a failed response, reading the {"error": {...}} envelope. */
  async function errorFrom(response) {
    let details = {};
    let message = "";
    try {
      const body = await response.json();
      if (body && body.error) {
        details = body.error;
        message = typeof body.error === "string" ? body.error : body.error.message || "";
      }
    } catch (_) {
      // Not JSON (a proxy error page, say): fall back to the status text below.
    }
    if (!message) message = "Request failed (" + response.status + " " + response.statusText + ")";
    if (response.status === 429) {
      const retry = response.headers.get("Retry-After");
      if (retry && /^\d+$/.test(retry)) message += " Try again in " + retry + " s.";
    }
    return new ApiError(message, response.status, details);
  }

  /** request() and parse the JSON body; resolves to null for 204 or an empty body. */
  async function fetchJSON(url, options) {
    const response = await request(url, options);
    if (response.status === 204) return null;
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  }

  /**
   * Create an element. attrs: {className, text, dataset: {...}, any other attribute}.
   * Children may be nodes or strings (added as text nodes). Event-handler attributes are
   * refused so this can never smuggle in script.
   */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "className") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else if (/^on/i.test(name)) throw new Error("el(): event attributes are not allowed");
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  /** Remove every child of a node. */
  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  /**
   * Return url unchanged if it resolves to http(s) (or is a data: image when allowData),
   * else null. Keeps javascript: and friends out of href/src.
   */
  function safeUrl(url, allowData) {
    if (typeof url !== "string" || !url) return null;
    let parsed;
    try {
      parsed = new URL(url, location.href);
    } catch (_) {
      return null;
    }
    if (parsed.protocol === "http:" || parsed.protocol === "https:") return url;
    if (allowData && parsed.protocol === "data:" && /^data:image\//i.test(url)) return url;
    return null;
  }

  /** Show a message in a status/alert element; an empty message hides it. */
  function say(node, message, kind) {
    if (!node) return;
    node.textContent = message || "";
    node.hidden = !message;
    node.classList.toggle("is-error", kind === "error");
    node.classList.toggle("is-ok", kind === "ok");
  }

  function messageOf(err) {
    return (err && err.message) || "Something went wrong.";
  }

  function setUpLogout() {
    const button = document.getElementById("logout");
    if (!button) return;
    button.addEventListener("click", async function () {
      button.disabled = true;
      try {
        await request("/ui/api/auth/logout", { method: "POST", redirectOn401: false });
      } catch (_) {
        // Already logged out or the session expired: the login page is right either way.
      }
      location.assign(LOGIN_PATH);
    });
  }

  /**
   * A playground's history of generated items (kind "image" or "music"): listed from
   * the server, each drawn by render(item) with a Delete button that forgets it.
   */
  function history(kind, listEl, statusEl, render) {
    function add(item, first) {
      const remove = el("button", { type: "button", className: "button-quiet button-small button-danger delete-item" }, "Delete");
      const node = render(item, remove);
      node.dataset.itemId = String(item.id);
      node.classList.add("history-item");
      remove.addEventListener("click", async function () {
        if (!window.confirm("Delete this from your history? Its file goes too when nothing else uses it.")) return;
        remove.disabled = true;
        try {
          await fetchJSON("/ui/api/history/items/" + encodeURIComponent(item.id), { method: "DELETE" });
          node.remove();
          say(statusEl, listEl.children.length ? "" : "Nothing yet.");
        } catch (err) {
          remove.disabled = false;
          say(statusEl, "Could not delete: " + messageOf(err), "error");
        }
      });
      if (first) listEl.prepend(node);
      else listEl.appendChild(node);
      say(statusEl, "");
    }
    async function load() {
      try {
        const body = await fetchJSON("/ui/api/history/" + kind);
        clear(listEl);
        for (const item of (body && body.data) || []) add(item, false);
        say(statusEl, listEl.children.length ? "" : "Nothing yet.");
        listEl.dataset.loaded = "true";
      } catch (err) {
        say(statusEl, "Could not load your history: " + messageOf(err), "error");
      }
    }
    return { add: add, load: load };
  }

  window.Gateway = {
    history: history,
    ApiError: ApiError,
    clear: clear,
    csrfToken: csrfToken,
    el: el,
    fetchJSON: fetchJSON,
    goToLogin: goToLogin,
    messageOf: messageOf,
    request: request,
    safeUrl: safeUrl,
    say: say,
  };

  setUpLogout();
})();
