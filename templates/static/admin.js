/* Admin: list users, add one, and per-row disable/enable, admin toggle, password reset,
 * delete. Every destructive action (disable, remove admin, reset password, delete) asks
 * first in a modal <dialog>. The last enabled admin's row cannot lose its admin: the
 * server refuses it (409 last_admin) and the buttons say so before anyone tries. */
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
  const dialog = document.getElementById("confirm");
  const dialogTitle = document.getElementById("confirm-title");
  const dialogText = document.getElementById("confirm-text");
  const dialogOk = document.getElementById("confirm-ok");
  const passwordField = document.getElementById("confirm-password-field");
  const passwordInput = document.getElementById("confirm-password");
  const LAST_ADMIN = "The last enabled admin: make another user an admin first.";

  /* Ask in the modal dialog; resolves to true (confirmed) or false (cancel, Escape). With
   * askPassword, resolves to the typed password, or null when cancelled. */
  function ask(title, text, okLabel, askPassword) {
    dialogTitle.textContent = title;
    dialogText.textContent = text;
    dialogOk.textContent = okLabel;
    passwordField.hidden = !askPassword;
    passwordInput.value = "";
    passwordInput.required = !!askPassword;
    dialog.returnValue = "";
    return new Promise(function (resolve) {
      dialog.addEventListener(
        "close",
        function () {
          const confirmed = dialog.returnValue === "confirm";
          if (askPassword) resolve(confirmed ? passwordInput.value : null);
          else resolve(confirmed);
          passwordInput.value = "";
        },
        { once: true }
      );
      dialog.showModal();
      (askPassword ? passwordInput : document.getElementById("confirm-cancel")).focus();
    });
  }

  function formatDate(value) {
    if (!value) return "";
    // created_at may be ISO text or Unix seconds.
    const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
    return isNaN(date) ? String(value) : date.toLocaleString();
  }

  function actionButton(label, onClick, blockedWhy) {
    const button = G.el("button", { type: "button", className: "button-small" }, label);
    if (blockedWhy) {
      button.disabled = true;
      button.title = blockedWhy;
    }
    button.addEventListener("click", onClick);
    return button;
  }

  function row(user, lastAdmin) {
    const name = user.username;
    const blocked = lastAdmin ? LAST_ADMIN : "";
    const actions = G.el(
      "td",
      { className: "row-actions" },
      actionButton(
        user.disabled ? "Enable" : "Disable",
        async function () {
          if (!user.disabled) {
            const sure = await ask("Disable " + name + "?", name + " is logged out at once and cannot log in until enabled again.", "Disable");
            if (!sure) return;
          }
          update(name, { disabled: !user.disabled }, user.disabled ? "Enabled " + name + "." : "Disabled " + name + ".");
        },
        user.disabled ? "" : blocked
      ),
      actionButton(
        user.is_admin ? "Remove admin" : "Make admin",
        async function () {
          if (user.is_admin) {
            const sure = await ask("Remove admin from " + name + "?", name + " can no longer manage users; their sessions end.", "Remove admin");
            if (!sure) return;
          }
          update(name, { is_admin: !user.is_admin }, (user.is_admin ? "Removed admin from " : "Made admin: ") + name + ".");
        },
        user.is_admin ? blocked : ""
      ),
      actionButton("Reset password", async function () {
        const password = await ask("Reset the password of " + name + "?", "Their sessions end at once.", "Reset password", true);
        if (password === null) return;
        if (!password) {
          G.say(errorEl, "The password cannot be empty.", "error");
          return;
        }
        update(name, { password: password }, "Password reset for " + name + ".");
      }),
      actionButton(
        "Delete",
        async function () {
          const sure = await ask("Delete " + name + "?", name + "'s account, settings and conversations are removed for good.", "Delete");
          if (sure) remove(name);
        },
        blocked
      )
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
      const enabledAdmins = users.filter(function (user) { return user.is_admin && !user.disabled; });
      for (const user of users) {
        tbody.appendChild(row(user, enabledAdmins.length === 1 && enabledAdmins[0] === user));
      }
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

  async function remove(username) {
    G.say(errorEl, "");
    statusEl.textContent = "";
    try {
      await G.fetchJSON(API + "/" + encodeURIComponent(username), { method: "DELETE" });
      statusEl.textContent = "Deleted " + username + ".";
      await load();
    } catch (err) {
      G.say(errorEl, "Could not delete " + username + ": " + G.messageOf(err), "error");
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
