/* Login form: POST the credentials, then go to the page the user came from. */
(function () {
  "use strict";
  const G = window.Gateway;
  const form = document.getElementById("login-form");
  if (!form) return;
  const username = document.getElementById("username");
  const password = document.getElementById("password");
  const button = document.getElementById("login");
  const errorBox = document.getElementById("login-error");

  /**
   * Only same-origin paths under /ui are accepted as the destination, so a crafted
   * ?next= cannot send the user to another site ("//evil", "/\\evil", "https://...").
   */
  function destination() {
    const next = form.dataset.next || "";
    if (!/^\/ui(?:[/?#]|$)/.test(next) || next.indexOf("\\") !== -1) return "/ui";
    try {
      const url = new URL(next, location.origin);
      if (url.origin !== location.origin) return "/ui";
      if (url.pathname === "/ui/login") return "/ui";
      return url.pathname + url.search + url.hash;
    } catch (_) {
      return "/ui";
    }
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    G.say(errorBox, "");
    if (!username.value.trim() || !password.value) {
      G.say(errorBox, "Enter your username and password.", "error");
      (username.value.trim() ? password : username).focus();
      return;
    }
    button.disabled = true;
    try {
      await G.fetchJSON("/ui/api/auth/login", {
        method: "POST",
        body: { username: username.value.trim(), password: password.value },
        redirectOn401: false,
      });
      location.assign(destination());
    } catch (err) {
      password.value = "";
      G.say(errorBox, G.messageOf(err), "error");
      password.focus();
      button.disabled = false;
    }
  });
})();
