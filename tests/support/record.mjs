// What the viewer pages (player.html, swarmcloud.html) record alike, in the page.

// A SHA-256 (hex) of a buffer, counted in `viewer.hashing` while it is computed, so
// the driver reads the viewer's final state only once every hash has settled.
export const hasher = (viewer) => async (buffer) => {
  viewer.hashing++;
  try {
    const digest = await crypto.subtle.digest("SHA-256", buffer);
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  } finally {
    viewer.hashing--;
  }
};

// Plays `manifest` with `hls` (an hls.js instance of class `Hls`) in `video`, keeping
// in `viewer` what the audience sees: hls.js's errors (a fatal one fails the viewer),
// when playing started, the seconds played since, and stalls (the picture stopped
// because nothing was buffered); and a line of it on the page, for whoever looks.
export const play = (Hls, hls, video, viewer, manifest) => {
  hls.on(Hls.Events.ERROR, (_event, data) => {
    viewer.errors.push(`${data.fatal ? "fatal " : ""}${data.type}/${data.details}`);
    if (data.fatal) viewer.failed = data.details;
  });
  video.addEventListener("waiting", () => { if (viewer.started) viewer.stalls++; });
  video.addEventListener("playing", () => { viewer.started = true; });
  video.addEventListener("playing", () => { viewer.startedAt ??= video.currentTime; }, { once: true });
  video.addEventListener("timeupdate", () => {
    if (viewer.started) viewer.playedSeconds = video.currentTime - viewer.startedAt;
  });
  setInterval(() => {
    document.getElementById("status").textContent = JSON.stringify({
      played: viewer.playedSeconds.toFixed(1),
      peers: viewer.peers,
      p2p: viewer.loaded.filter((s) => s.source === "p2p").length,
      http: viewer.loaded.filter((s) => s.source === "http").length,
    });
  }, 500);
  hls.attachMedia(video);
  hls.loadSource(manifest);
  hls.on(Hls.Events.MANIFEST_PARSED, () => {
    video.play().catch((error) => { viewer.failed = `play: ${error.message}`; });
  });
};
