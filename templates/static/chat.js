/*
 * Chat page: conversation list, streamed replies, per-user settings.
 *
 * The open conversation lives in location.hash as #c=<id> so a reload reopens it.
 * Replies arrive as Server-Sent Events over a fetch() POST (EventSource cannot POST).
 * The reply's markdown is rendered into DOM nodes by markdown.js (never innerHTML), at
 * most every RENDER_MS while it streams and once more at its end. Stop aborts the fetch;
 * the server then keeps the partial reply marked as stopped. Regenerate and Edit ask
 * the server to rewind the conversation (it drops the later messages itself).
 */
(function () {
  "use strict";
  const G = window.Gateway;
  const API = "/ui/api/conversations";

  const listEl = document.getElementById("conversations");
  const listStatus = document.getElementById("conversations-status");
  const newButton = document.getElementById("new-conversation");
  const titleEl = document.getElementById("conversation-title");
  const renameButton = document.getElementById("rename-conversation");
  const deleteButton = document.getElementById("delete-conversation");
  const messagesEl = document.getElementById("messages");
  const hintEl = document.getElementById("chat-hint");
  const chatForm = document.getElementById("chat-form");
  const modelSelect = document.getElementById("model");
  const promptEl = document.getElementById("prompt");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const layout = document.getElementById("chat-layout");
  const openDrawer = document.getElementById("open-drawer");
  const closeDrawer = document.getElementById("close-drawer");
  const chatStatus = document.getElementById("chat-status");
  const settingsForm = document.getElementById("settings-form");
  const settingsStatus = document.getElementById("settings-status");

  const NEW_TITLE = "New conversation";
  const ROLES = new Set(["user", "assistant", "system"]);
  const RENDER_MS = 100; // re-render a streaming reply at most this often
  const MODELS_POLL_MS = 10000; // how often the picker learns which backends are down
  const IDLE_PLACEHOLDER = promptEl.placeholder;
  const BUSY_PLACEHOLDER = "Reply streaming… Stop or wait";

  /** Conversations by id (string), in the order the server listed them. */
  const conversations = new Map();
  let currentId = null;
  // True while a reply streams. Switching conversation does not cancel it: the stream
  // runs on (into a detached bubble) so the server can store the whole reply.
  let streaming = false;
  let controller = null; // aborts the streaming reply (Stop)
  /** The raw text of each bubble (what Copy copies). */
  const rawText = new WeakMap();

  // ---- conversation list -------------------------------------------------------------

  function titleOf(conv) {
    return (conv && conv.title) || NEW_TITLE;
  }

  function renderList() {
    G.clear(listEl);
    for (const conv of conversations.values()) {
      const id = String(conv.id);
      const button = G.el("button", { type: "button", className: "conversation", dataset: { id: id } }, titleOf(conv));
      if (id === currentId) button.setAttribute("aria-current", "true");
      listEl.appendChild(G.el("li", null, button));
    }
    G.say(listStatus, conversations.size ? "" : "No conversations yet.");
  }

  /** Put a conversation first in the list (it was just created or updated). */
  function upsertFirst(conv) {
    conversations.delete(String(conv.id));
    const rest = Array.from(conversations.entries());
    conversations.clear();
    conversations.set(String(conv.id), conv);
    for (const [id, c] of rest) conversations.set(id, c);
    renderList();
  }

  async function loadList() {
    try {
      const body = await G.fetchJSON(API);
      conversations.clear();
      for (const conv of (body && body.data) || []) conversations.set(String(conv.id), conv);
      renderList();
    } catch (err) {
      G.say(listStatus, "Could not load conversations: " + G.messageOf(err), "error");
    }
  }

  // ---- the open conversation ---------------------------------------------------------

  /** Show conv (or a blank new conversation when null) as the current one. */
  function setCurrent(conv) {
    currentId = conv ? String(conv.id) : null;
    titleEl.textContent = titleOf(conv);
    renameButton.disabled = deleteButton.disabled = !conv;
    if (conv && conv.model && hasModel(conv.model)) modelSelect.value = conv.model;
    else if (!conv) selectDefaultModel();
    // replaceState, not location.hash =, so no hashchange fires for our own updates.
    const hash = conv ? "#c=" + encodeURIComponent(currentId) : "";
    if (location.hash !== hash) history.replaceState(null, "", location.pathname + location.search + hash);
    for (const button of listEl.querySelectorAll("button[data-id]")) {
      if (button.dataset.id === currentId) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  }

  function hasModel(name) {
    return Array.from(modelSelect.options).some(function (o) { return o.value === name; });
  }

  /** A new conversation starts on the user's default model (if it is offered and up). */
  function selectDefaultModel() {
    const preferred = modelSelect.dataset.default;
    const usable = Array.from(modelSelect.options).filter(function (o) { return !o.disabled; });
    if (preferred && usable.some(function (o) { return o.value === preferred; })) modelSelect.value = preferred;
    else if (modelSelect.selectedOptions[0] && modelSelect.selectedOptions[0].disabled && usable.length) {
      modelSelect.value = usable[0].value;
    }
  }

  /** Grey out models whose backend is down; polled while the page is open. */
  async function refreshModels() {
    let body;
    try {
      body = await G.fetchJSON("/ui/api/models");
    } catch (_) {
      return; // the next poll tries again; the picker keeps what it showed
    }
    const known = new Map(((body && body.data) || []).map(function (m) { return [m.id, m]; }));
    for (const option of modelSelect.options) {
      const model = known.get(option.value);
      const down = !model || !model.available;
      option.disabled = down;
      option.textContent = option.value + (down ? " (down)" : "");
    }
    for (const [id, model] of known) {
      if (!hasModel(id)) {
        const option = G.el("option", { value: id }, id + (model.available ? "" : " (down)"));
        option.disabled = !model.available;
        modelSelect.appendChild(option);
      }
    }
  }

  function clearMessages() {
    G.clear(messagesEl);
    hintEl.hidden = false;
  }

  function startNew() {
    setCurrent(null);
    clearMessages();
    G.say(chatStatus, "");
    promptEl.focus();
  }

  async function openConversation(id) {
    G.say(chatStatus, "");
    setDrawer(false);
    try {
      const conv = await G.fetchJSON(API + "/" + encodeURIComponent(id));
      if (!conversations.has(String(conv.id))) upsertFirst(conv);
      setCurrent(conv);
      clearMessages();
      for (const message of conv.messages || []) {
        const bubble = appendMessage(message.role, message.content, message.id);
        if (message.stopped) markStopped(bubble);
      }
      updateActions();
      scrollToEnd(true);
    } catch (err) {
      if (err.status === 404) {
        conversations.delete(String(id));
        renderList();
        startNew();
        G.say(chatStatus, "That conversation no longer exists.", "error");
      } else {
        G.say(chatStatus, "Could not open the conversation: " + G.messageOf(err), "error");
      }
    }
  }

  function idFromHash() {
    return new URLSearchParams(location.hash.slice(1)).get("c");
  }

  // ---- messages ----------------------------------------------------------------------

  /**
   * Append a turn: the .message bubble (whose text is exactly the message: a user's as
   * typed, an assistant's rendered from markdown) and its actions below it.
   */
  function appendMessage(role, text, id) {
    const safeRole = ROLES.has(role) ? role : "other";
    const bubble = G.el("div", { className: "message " + safeRole });
    const turn = G.el("div", { className: "turn " + safeRole }, bubble);
    if (id !== undefined && id !== null) turn.dataset.messageId = String(id);
    setText(bubble, typeof text === "string" ? text : "");
    const actions = G.el(
      "div",
      { className: "message-actions" },
      G.el("button", { type: "button", className: "button-quiet button-small copy-message" }, "Copy")
    );
    if (safeRole === "user") {
      actions.appendChild(G.el("button", { type: "button", className: "button-quiet button-small edit-message" }, "Edit"));
    } else if (safeRole === "assistant") {
      actions.appendChild(G.el("button", { type: "button", className: "button-quiet button-small regenerate" }, "Regenerate"));
    }
    turn.appendChild(actions);
    messagesEl.appendChild(turn);
    hintEl.hidden = true;
    return bubble;
  }

  /** Show `text` in a bubble: markdown for the assistant, plain text for everyone else. */
  function setText(bubble, text) {
    rawText.set(bubble, text);
    if (bubble.classList.contains("assistant") && window.Markdown) {
      bubble.replaceChildren(window.Markdown.render(text));
    } else {
      bubble.replaceChildren(document.createTextNode(text));
    }
  }

  function markStopped(bubble) {
    const turn = bubble.closest(".turn");
    if (!turn || turn.querySelector(".stopped-note")) return;
    bubble.classList.add("stopped");
    turn.insertBefore(G.el("p", { className: "stopped-note" }, "Stopped"), bubble.nextSibling);
  }

  /** Regenerate is offered on the last reply only; Edit on messages the server knows. */
  function updateActions() {
    const turns = messagesEl.querySelectorAll(".turn");
    const last = turns[turns.length - 1];
    for (const turn of turns) {
      const regenerate = turn.querySelector(".regenerate");
      if (regenerate) regenerate.hidden = turn !== last;
      const edit = turn.querySelector(".edit-message");
      if (edit) edit.hidden = !turn.dataset.messageId;
    }
    for (const button of messagesEl.querySelectorAll(".regenerate, .edit-message")) button.disabled = streaming;
  }

  /** Copy to the clipboard; the old execCommand path where the async API is missing. */
  async function copyText(text, button) {
    let copied = false;
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        copied = true;
      }
    } catch (_) {
      copied = false;
    }
    if (!copied) {
      const area = G.el("textarea", { className: "visually-hidden", readonly: true, "aria-hidden": "true" });
      area.value = text;
      document.body.appendChild(area);
      area.select();
      try {
        copied = document.execCommand("copy");
      } catch (_) {
        copied = false;
      }
      area.remove();
    }
    const label = button.textContent;
    button.textContent = copied ? "Copied" : "Copy failed";
    button.dataset.copied = copied ? "true" : "false";
    setTimeout(function () { button.textContent = label; }, 1500);
  }

  /** Show an error after `bubble` (only if that bubble is still on screen). */
  function appendError(bubble, text) {
    if (!bubble.isConnected) return;
    const box = G.el("div", { className: "message error", role: "alert" }, text);
    (bubble.closest(".turn") || bubble).after(box);
    scrollToEnd(true);
  }

  function isNearEnd() {
    return messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight < 48;
  }

  /** Keep the newest text in view, unless the user scrolled up to read (force overrides). */
  function scrollToEnd(force, wasNearEnd) {
    if (force || wasNearEnd) messagesEl.scrollTop = messagesEl.scrollHeight;
  }

  // ---- sending and streaming ---------------------------------------------------------

  async function ensureConversation() {
    if (currentId) return currentId;
    const body = {};
    if (modelSelect.value) body.model = modelSelect.value;
    const conv = await G.fetchJSON(API, { method: "POST", body: body });
    upsertFirst(conv);
    setCurrent(conv);
    return currentId;
  }

  /**
   * Read an SSE body and call onEvent(parsedJSON) for each `data:` frame. Frames are
   * separated by a blank line; one network chunk may hold several frames or part of one,
   * so the unfinished tail is kept in `pending` until the next chunk arrives.
   */
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    function handle(frame) {
      const data = frame
        .split(/\r?\n/)
        .filter(function (line) { return line.startsWith("data:"); })
        .map(function (line) { return line.slice(5).replace(/^ /, ""); })
        .join("\n");
      if (!data || data === "[DONE]") return;
      let event;
      try {
        event = JSON.parse(data);
      } catch (_) {
        return; // not one of ours; ignore rather than break the reply
      }
      onEvent(event);
    }
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += decoder.decode(value, { stream: true });
      const frames = pending.split(/\r?\n\r?\n/);
      pending = frames.pop();
      frames.forEach(handle);
    }
    pending += decoder.decode();
    if (pending.trim()) handle(pending);
  }

  function setBusy(busy) {
    sendButton.hidden = busy;
    stopButton.hidden = !busy;
    promptEl.placeholder = busy ? BUSY_PLACEHOLDER : IDLE_PLACEHOLDER;
    messagesEl.setAttribute("aria-busy", busy ? "true" : "false");
    updateActions();
  }

  /** Drop every turn from `turn` on (the server drops the same messages). */
  function removeFrom(turn) {
    while (turn) {
      const next = turn.nextElementSibling;
      turn.remove();
      turn = next;
    }
  }

  function send() {
    const content = promptEl.value;
    if (!content.trim()) return;
    if (streaming) {
      G.say(chatStatus, "A reply is still streaming: press Stop or wait for it to finish.");
      return;
    }
    promptEl.value = "";
    return ask({ content: content }, content);
  }

  /**
   * Send one request for a reply and stream it into a new assistant bubble. `body` is
   * what the server gets ({content} | {content, edit} | {regenerate}); `shown` is the
   * user message to add to the page first (null when regenerating).
   */
  async function ask(body, shown) {
    G.say(chatStatus, "");
    streaming = true;
    setBusy(true);
    controller = new AbortController();

    let bubble = null;
    let userBubble = null;
    let finished = false;
    let stopped = false;
    let text = "";
    let rendered = 0; // when the bubble was last rendered
    let cost = 0; // how long that took: a reply that is slow to render is rendered less often
    let timer = null;
    function render() {
      timer = null;
      const started = performance.now();
      const nearEnd = isNearEnd();
      setText(bubble, text);
      scrollToEnd(false, nearEnd);
      cost = performance.now() - started;
      rendered = Date.now();
    }
    function scheduleRender() {
      if (timer !== null) return;
      const wait = Math.max(0, Math.max(RENDER_MS, 4 * cost) - (Date.now() - rendered));
      timer = setTimeout(render, wait);
    }
    try {
      const id = await ensureConversation();
      if (shown !== null) {
        userBubble = appendMessage("user", shown);
      }
      bubble = appendMessage("assistant", "");
      bubble.classList.add("streaming");
      updateActions();
      scrollToEnd(true);

      if (modelSelect.value) body.model = modelSelect.value;
      const response = await G.request(API + "/" + encodeURIComponent(id) + "/messages", {
        method: "POST",
        body: body,
        accept: "text/event-stream",
        signal: controller.signal,
      });
      const questionId = response.headers.get("X-User-Message-Id");
      if (userBubble && questionId) userBubble.closest(".turn").dataset.messageId = questionId;

      await readEvents(response, function (event) {
        if (event.type === "delta" && typeof event.content === "string") {
          text += event.content;
          scheduleRender();
        } else if (event.type === "done") {
          finished = true;
          if (event.message_id !== undefined) bubble.closest(".turn").dataset.messageId = String(event.message_id);
          const conv = conversations.get(id);
          if (conv) {
            if (event.title) conv.title = event.title;
            conv.model = body.model || conv.model;
            upsertFirst(conv);
            if (currentId === id) titleEl.textContent = titleOf(conv);
          }
        } else if (event.type === "error") {
          finished = true;
          appendError(bubble, "Error: " + (event.message || "the model did not answer."));
        }
      });
      if (!finished) appendError(bubble, "The reply was cut off before it finished.");
    } catch (err) {
      if (err && err.name === "AbortError") {
        stopped = true;
      } else if (bubble) {
        appendError(bubble, "Error: " + G.messageOf(err));
      } else {
        G.say(chatStatus, G.messageOf(err), "error");
        if (shown !== null && !promptEl.value) promptEl.value = shown; // nothing was sent
      }
    } finally {
      if (timer !== null) clearTimeout(timer);
      if (bubble) {
        setText(bubble, text);
        bubble.classList.remove("streaming");
        if (!text) bubble.closest(".turn").remove();
        else if (stopped) markStopped(bubble);
      }
      if (stopped) G.say(chatStatus, text ? "Stopped; the partial reply is kept." : "Stopped.");
      controller = null;
      streaming = false;
      setBusy(false);
    }
  }

  function stop() {
    if (controller) controller.abort();
  }

  function regenerate(turn) {
    if (streaming) return;
    removeFrom(turn);
    ask({ regenerate: true }, null);
  }

  /** Turn a sent message into an editor; saving resends from there. */
  function edit(turn) {
    if (streaming || turn.querySelector("form")) return;
    const bubble = turn.querySelector(".message");
    const form = G.el("form", { className: "edit-form stack" });
    const area = G.el("textarea", { rows: "3", "aria-label": "Edit message" });
    area.value = rawText.get(bubble) || bubble.textContent;
    const save = G.el("button", { type: "submit", className: "button-primary button-small" }, "Save and send");
    const cancel = G.el("button", { type: "button", className: "button-quiet button-small" }, "Cancel");
    form.append(area, G.el("div", { className: "actions" }, save, cancel));
    bubble.hidden = true;
    turn.appendChild(form);
    area.focus();
    cancel.addEventListener("click", function () {
      form.remove();
      bubble.hidden = false;
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      const content = area.value;
      if (!content.trim() || streaming) return;
      const messageId = Number(turn.dataset.messageId);
      removeFrom(turn);
      ask({ content: content, edit: messageId }, content);
    });
  }

  // ---- rename, delete, model ---------------------------------------------------------

  async function renameCurrent() {
    const conv = conversations.get(currentId);
    if (!conv) return;
    const title = window.prompt("Rename conversation", titleOf(conv));
    if (title === null || !title.trim()) return;
    try {
      const updated = await G.fetchJSON(API + "/" + encodeURIComponent(currentId), {
        method: "PATCH",
        body: { title: title.trim() },
      });
      Object.assign(conv, updated || { title: title.trim() });
      renderList();
      titleEl.textContent = titleOf(conv);
    } catch (err) {
      G.say(chatStatus, "Could not rename: " + G.messageOf(err), "error");
    }
  }

  async function deleteCurrent() {
    const conv = conversations.get(currentId);
    if (!conv) return;
    if (!window.confirm("Delete “" + titleOf(conv) + "”? This cannot be undone.")) return;
    try {
      if (streaming) stop();
      await G.fetchJSON(API + "/" + encodeURIComponent(currentId), { method: "DELETE" });
      conversations.delete(currentId);
      renderList();
      startNew();
    } catch (err) {
      G.say(chatStatus, "Could not delete: " + G.messageOf(err), "error");
    }
  }

  /** Remember the model picked for an open conversation. */
  async function saveModel() {
    const conv = conversations.get(currentId);
    if (!conv || !modelSelect.value || conv.model === modelSelect.value) return;
    try {
      const updated = await G.fetchJSON(API + "/" + encodeURIComponent(currentId), {
        method: "PATCH",
        body: { model: modelSelect.value },
      });
      Object.assign(conv, updated || { model: modelSelect.value });
    } catch (err) {
      G.say(chatStatus, "Could not change the model: " + G.messageOf(err), "error");
    }
  }

  // ---- settings ----------------------------------------------------------------------

  async function saveSettings(event) {
    event.preventDefault();
    const form = settingsForm.elements;
    const temperature = Number(form.temperature.value);
    if (form.temperature.value === "" || !(temperature >= 0 && temperature <= 2)) {
      G.say(settingsStatus, "Temperature must be a number from 0 to 2.", "error");
      form.temperature.focus();
      return;
    }
    const body = {
      default_model: form.default_model.value,
      system_prompt: form.system_prompt.value,
      temperature: temperature,
    };
    try {
      const saved = (await G.fetchJSON("/ui/api/user/settings", { method: "PUT", body: body })) || body;
      if (saved.temperature !== undefined && saved.temperature !== null) form.temperature.value = saved.temperature;
      modelSelect.dataset.default = saved.default_model || "";
      if (!currentId && hasModel(saved.default_model)) modelSelect.value = saved.default_model;
      G.say(settingsStatus, "Settings saved.", "ok");
    } catch (err) {
      G.say(settingsStatus, "Could not save: " + G.messageOf(err), "error");
    }
  }

  // ---- wiring ------------------------------------------------------------------------

  function setDrawer(open) {
    layout.classList.toggle("drawer-open", open);
    openDrawer.setAttribute("aria-expanded", open ? "true" : "false");
  }

  listEl.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-id]");
    if (button && button.dataset.id !== currentId) openConversation(button.dataset.id);
    else if (button) setDrawer(false);
  });
  newButton.addEventListener("click", function () {
    setDrawer(false);
    startNew();
  });
  openDrawer.addEventListener("click", function () { setDrawer(true); });
  closeDrawer.addEventListener("click", function () { setDrawer(false); });
  renameButton.addEventListener("click", renameCurrent);
  deleteButton.addEventListener("click", deleteCurrent);
  modelSelect.addEventListener("change", saveModel);
  stopButton.addEventListener("click", stop);
  messagesEl.addEventListener("click", function (event) {
    const button = event.target.closest("button");
    if (!button) return;
    const turn = button.closest(".turn");
    if (button.classList.contains("copy-code")) {
      const code = button.closest(".code-block").querySelector("code");
      copyText(code ? code.textContent : "", button);
    } else if (button.classList.contains("copy-message") && turn) {
      const bubble = turn.querySelector(".message");
      copyText(rawText.get(bubble) || bubble.textContent, button);
    } else if (button.classList.contains("regenerate") && turn) {
      regenerate(turn);
    } else if (button.classList.contains("edit-message") && turn) {
      edit(turn);
    }
  });
  settingsForm.addEventListener("submit", saveSettings);
  settingsForm.addEventListener("input", function () {
    G.say(settingsStatus, ""); // an old "saved" would be wrong once the form is edited again
  });
  chatForm.addEventListener("submit", function (event) {
    event.preventDefault();
    send();
  });
  promptEl.addEventListener("keydown", function (event) {
    // Enter sends, Shift+Enter is a newline; leave Enter alone while an IME is composing.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && layout.classList.contains("drawer-open")) setDrawer(false);
  });
  window.addEventListener("hashchange", function () {
    const id = idFromHash();
    if (id && id !== currentId) openConversation(id);
    else if (!id && currentId) startNew();
  });

  (async function init() {
    await loadList();
    const id = idFromHash();
    if (id) await openConversation(id);
    else setCurrent(null);
    setInterval(refreshModels, MODELS_POLL_MS);
  })();
})();
