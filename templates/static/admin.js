/* Admin: list users, add one, and per-row disable/enable, admin toggle, password reset. */
(function () {
  "use strict";
  const G = window.Gateway;
  const API = "/ui/api/admin/users";
  const tbody = document.querySelector("#users tbody");
  const statusEl = document.getElementById("admin-status");
  const errorEl = document.getElementById("admin-error");
  const form = document.getElementById("new-user");
  const usernameEl = document.getElementById("new-username");
  const passwordEl = document.getElementById("new-password");
  const isAdminEl = document.getElementById("new-is-admin");
  const createButton = document.getElementById("create-user");

  function formatDate(value) {
    if (!value) return "";
    // created_at may be ISO text or Unix seconds.
    const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
    return isNaN(date) ? String(value) : date.toLocaleString();
  }

  function actionButton(label, onClick) {
    const button = G.el("button", { type: "button", className: "button-small" }, label);
    button.addEventListener("click", onClick);
    return button;
  }

  function row(user) {
    const name = user.username;
    const actions = G.el(
      "td",
      { className: "row-actions" },
      actionButton(user.disabled ? "Enable" : "Disable", function () {
        update(name, { disabled: !user.disabled }, user.disabled ? "Enabled " + name + "." : "Disabled " + name + ".");
      }),
      actionButton(user.is_admin ? "Remove admin" : "Make admin", function () {
        update(name, { is_admin: !user.is_admin }, (user.is_admin ? "Removed admin from " : "Made admin: ") + name + ".");
      }),
      actionButton("Reset password", function () {
        const password = window.prompt("New password for " + name + " (their sessions end at once):");
        if (password === null) return;
        if (!password) {
          G.say(errorEl, "The password cannot be empty.", "error");
          return;
        }
        update(name, { password: password }, "Password reset for " + name + ".");
      })
    );
    return G.el(
      "tr",
      { dataset: { username: name }, className: user.disabled ? "is-disabled" : "" },
      G.el("th", { scope: "row" }, name),
      G.el("td", null, user.is_admin ? "Admin" : "User"),
      G.el("td", null, user.disabled ? "Disabled" : "Active"),
      G.el("td", null, formatDate(user.created_at)),
      actions
    );
  }

  async function load() {
    try {
      const body = await G.fetchJSON(API);
      const users = (body && body.data) || [];
      G.clear(tbody);
      for (const user of users) tbody.appendChild(row(user));
      if (!users.length) {
        tbody.appendChild(G.el("tr", null, G.el("td", { colspan: 5, className: "muted" }, "No users yet.")));
      }
    } catch (err) {
      G.say(errorEl, "Could not load users: " + G.messageOf(err), "error");
    }
  }

  async function update(username, changes, done) {
    G.say(errorEl, "");
    statusEl.textContent = "";
    try {
      await G.fetchJSON(API + "/" + encodeURIComponent(username), { method: "PATCH", body: changes });
      statusEl.textContent = done;
      await load();
    } catch (err) {
      G.say(errorEl, "Could not update " + username + ": " + G.messageOf(err), "error");
    }
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    G.say(errorEl, "");
    statusEl.textContent = "";
    const username = usernameEl.value.trim();
    if (!username || !passwordEl.value) {
      G.say(errorEl, "Enter a username and a password.", "error");
      (username ? passwordEl : usernameEl).focus();
      return;
    }
    createButton.disabled = true;
    try {
      await G.fetchJSON(API, {
        method: "POST",
        body: { username: username, password: passwordEl.value, is_admin: isAdminEl.checked },
      });
      form.reset();
      statusEl.textContent = "Added " + username + ".";
      await load();
      usernameEl.focus();
    } catch (err) {
      G.say(errorEl, "Could not add " + username + ": " + G.messageOf(err), "error");
    } finally {
      createButton.disabled = false;
    }
  });

  load();
})();
