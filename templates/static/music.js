/* Music playground: POST the song request, then play and offer the WAV it returns. */
(function () {
  "use strict";
  const G = window.Gateway;
  const form = document.getElementById("music-form");
  const promptEl = document.getElementById("music-prompt");
  const tagsEl = document.getElementById("music-tags");
  const lyricsEl = document.getElementById("music-lyrics");
  const durationEl = document.getElementById("music-duration");
  const button = document.getElementById("generate-music");
  const statusEl = document.getElementById("music-status");
  const errorEl = document.getElementById("music-error");
  const result = document.getElementById("music-result");
  const kept = G.history("music", document.getElementById("music-history"),
    document.getElementById("music-history-status"), function (item, remove) {
      const src = G.safeUrl(item.url) || "";
      const audio = G.el("audio", { controls: true, preload: "none", src: src });
      const seconds = item.details && item.details.duration ? " · " + item.details.duration + " s" : "";
      return G.el("li", { className: "card stack" },
        G.el("p", null, G.el("span", { className: "history-prompt" }, item.prompt || "(no description)"), seconds),
        audio,
        G.el("div", { className: "actions" }, G.el("a", { href: src, download: fileNameOf(src), className: "button-link" }, "Download"), remove));
    });

  function fileNameOf(src) {
    const last = new URL(src, location.href).pathname.split("/").pop();
    return last || "song.wav";
  }

  function showSong(src, seconds) {
    G.clear(result);
    const audio = G.el("audio", { controls: true, preload: "metadata", src: src });
    // Browsers without WAV support show this text instead of the player.
    audio.appendChild(document.createTextNode("Your browser cannot play this audio; use the download link."));
    const link = G.el("a", { href: src, download: fileNameOf(src), className: "button-link" }, "Download WAV");
    const facts = seconds ? G.el("p", { className: "muted" }, "Length: " + seconds + " s") : null;
    result.appendChild(G.el("div", { className: "card stack" }, audio, G.el("p", null, link), facts));
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    G.say(errorEl, "");
    const duration = Number(durationEl.value);
    if (!Number.isInteger(duration) || duration < 1 || duration > 300) {
      G.say(errorEl, "Duration must be a whole number of seconds from 1 to 300.", "error");
      durationEl.focus();
      return;
    }
    button.disabled = true;
    statusEl.textContent = "Generating… (about as long as the song)";
    try {
      const body = await G.fetchJSON("/ui/api/music", {
        method: "POST",
        body: {
          prompt: promptEl.value.trim(),
          tags: tagsEl.value.trim(),
          lyrics: lyricsEl.value,
          duration: duration,
        },
      });
      const src = G.safeUrl(body && body.audio_url);
      if (!src) throw new Error("The gateway answered without a song to play.");
      showSong(src, body.duration);
      for (const item of body.history || []) kept.add(item, true);
      statusEl.textContent = "Your song is ready.";
    } catch (err) {
      statusEl.textContent = "";
      G.say(errorEl, "Could not generate: " + G.messageOf(err), "error");
    } finally {
      button.disabled = false;
    }
  });
  kept.load();
})();
