/*
 * Chat page: conversation list, streamed replies, per-user settings.
 *
 * The open conversation lives in location.hash as #c=<id> so a reload reopens it.
 * Replies arrive as Server-Sent Events over a fetch() POST (EventSource cannot POST),
 * and every delta is appended as text to the assistant bubble: model output never
 * reaches innerHTML.
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
  const chatStatus = document.getElementById("chat-status");
  const settingsForm = document.getElementById("settings-form");
  const settingsStatus = document.getElementById("settings-status");

  const NEW_TITLE = "New conversation";
  const ROLES = new Set(["user", "assistant", "system"]);

  /** Conversations by id (string), in the order the server listed them. */
  const conversations = new Map();
  let currentId = null;
  // True while a reply streams. Switching conversation does not cancel it: the stream
  // runs on (into a detached bubble) so the server can store the whole reply.
  let streaming = false;

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
    try {
      const conv = await G.fetchJSON(API + "/" + encodeURIComponent(id));
      if (!conversations.has(String(conv.id))) upsertFirst(conv);
      setCurrent(conv);
      clearMessages();
      for (const message of conv.messages || []) appendMessage(message.role, message.content);
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

  /** Append a .message bubble whose whole text content is `text`. */
  function appendMessage(role, text) {
    const safeRole = ROLES.has(role) ? role : "other";
    const bubble = G.el("div", { className: "message " + safeRole }, typeof text === "string" ? text : "");
    messagesEl.appendChild(bubble);
    hintEl.hidden = true;
    return bubble;
  }

  /** Show an error after `bubble` (only if that bubble is still on screen). */
  function appendError(bubble, text) {
    if (!bubble.isConnected) return;
    const box = G.el("div", { className: "message error", role: "alert" }, text);
    bubble.after(box);
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
    sendButton.disabled = busy;
    messagesEl.setAttribute("aria-busy", busy ? "true" : "false");
  }

  async function send() {
    const content = promptEl.value;
    if (streaming || !content.trim()) return;
    G.say(chatStatus, "");
    streaming = true;
    setBusy(true);

    let bubble = null;
    let finished = false;
    try {
      const id = await ensureConversation();
      appendMessage("user", content);
      promptEl.value = "";
      bubble = appendMessage("assistant", "");
      bubble.classList.add("streaming");
      scrollToEnd(true);

      const body = { content: content };
      if (modelSelect.value) body.model = modelSelect.value;
      const response = await G.request(API + "/" + encodeURIComponent(id) + "/messages", {
        method: "POST",
        body: body,
        accept: "text/event-stream",
      });

      let text = null; // one text node, grown with appendData as deltas arrive
      await readEvents(response, function (event) {
        if (event.type === "delta" && typeof event.content === "string") {
          const nearEnd = isNearEnd();
          if (!text) text = bubble.appendChild(document.createTextNode(""));
          text.appendData(event.content);
          scrollToEnd(false, nearEnd);
        } else if (event.type === "done") {
          finished = true;
          if (event.message_id !== undefined) bubble.dataset.messageId = String(event.message_id);
          const conv = conversations.get(id);
          if (conv) {
            if (event.title) conv.title = event.title;
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
      if (bubble) appendError(bubble, "Error: " + G.messageOf(err));
      else G.say(chatStatus, G.messageOf(err), "error"); // the prompt is still in the box
    } finally {
      if (bubble) {
        bubble.classList.remove("streaming");
        if (!bubble.textContent) bubble.remove();
      }
      streaming = false;
      setBusy(false);
    }
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
      if (!currentId && hasModel(saved.default_model)) modelSelect.value = saved.default_model;
      G.say(settingsStatus, "Settings saved.", "ok");
    } catch (err) {
      G.say(settingsStatus, "Could not save: " + G.messageOf(err), "error");
    }
  }

  // ---- wiring ------------------------------------------------------------------------

  listEl.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-id]");
    if (button && button.dataset.id !== currentId) openConversation(button.dataset.id);
  });
  newButton.addEventListener("click", startNew);
  renameButton.addEventListener("click", renameCurrent);
  deleteButton.addEventListener("click", deleteCurrent);
  modelSelect.addEventListener("change", saveModel);
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
      if (!sendButton.disabled) chatForm.requestSubmit();
    }
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
  })();
})();
