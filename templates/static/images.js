/* Image playground: POST the prompt, show each returned image from its URL. */
(function () {
  "use strict";
  const G = window.Gateway;
  const form = document.getElementById("images-form");
  const promptEl = document.getElementById("image-prompt");
  const sizeEl = document.getElementById("image-size");
  const countEl = document.getElementById("image-n");
  const button = document.getElementById("generate-image");
  const statusEl = document.getElementById("image-status");
  const errorEl = document.getElementById("image-error");
  const results = document.getElementById("image-results");
  const kept = G.history("image", document.getElementById("image-history"),
    document.getElementById("image-history-status"), function (item, remove) {
      const src = G.safeUrl(item.url) || "";
      const img = G.el("img", { src: src, alt: item.prompt, loading: "lazy", decoding: "async" });
      const caption = G.el("figcaption", null, G.el("span", { className: "history-prompt" }, item.prompt));
      return G.el("figure", { className: "image-card" }, img, caption, G.el("div", { className: "actions" }, remove));
    });

  /** The image's address: a URL from the server, or inline base64 if that is what came. */
  function sourceOf(item) {
    if (item && item.url) return G.safeUrl(item.url, true);
    if (item && item.b64_json) return G.safeUrl("data:image/png;base64," + item.b64_json, true);
    return null;
  }

  function figure(src, prompt, index, total) {
    const img = G.el("img", { src: src, alt: prompt, loading: "lazy", decoding: "async" });
    const caption = G.el(
      "figcaption",
      null,
      total > 1 ? "Image " + (index + 1) + " of " + total + " · " : "",
      src.startsWith("data:") ? "" : G.el("a", { href: src, target: "_blank", rel: "noopener" }, "Open full size")
    );
    return G.el("figure", { className: "image-card" }, img, caption);
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    G.say(errorEl, "");
    const prompt = promptEl.value.trim();
    const n = Number(countEl.value || 1);
    if (!prompt) {
      G.say(errorEl, "Describe the image you want.", "error");
      promptEl.focus();
      return;
    }
    if (!Number.isInteger(n) || n < 1 || n > 10) {
      G.say(errorEl, "Number of images must be a whole number from 1 to 10.", "error");
      countEl.focus();
      return;
    }
    button.disabled = true;
    statusEl.textContent = "Generating " + (n === 1 ? "1 image" : n + " images") + "…";
    try {
      const body = await G.fetchJSON("/ui/api/images", {
        method: "POST",
        body: { prompt: prompt, size: sizeEl.value, n: n },
      });
      const sources = ((body && body.data) || []).map(sourceOf).filter(Boolean);
      G.clear(results);
      sources.forEach(function (src, i) {
        results.appendChild(figure(src, prompt, i, sources.length));
      });
      for (const item of (body && body.history) || []) kept.add(item, true);
      statusEl.textContent = sources.length
        ? "Done: " + (sources.length === 1 ? "1 image." : sources.length + " images.")
        : "The backend returned no images.";
    } catch (err) {
      statusEl.textContent = "";
      G.say(errorEl, "Could not generate: " + G.messageOf(err), "error");
    } finally {
      button.disabled = false;
    }
  });
  kept.load();
})();
