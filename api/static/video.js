// Frames of videos on the page: a result card or an image that is a frame says where in its
// video it is, and the image page plays the video from there.
import { el } from "/static/common.js";

/** Seconds as people write a time in a video: 0:05, 12:30, 1:02:03. */
export function clock(seconds) {
  const whole = Math.floor(seconds);
  const h = Math.floor(whole / 3600);
  const m = Math.floor((whole % 3600) / 60);
  const s = String(whole % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

function fileName(source) {
  return source ? source.split("/").pop() : "video";
}

/** Mark a result card (common.js resultCard) whose image is a frame: "▶ 0:05" on its thumbnail. */
export function markFrame(card, result) {
  if (!result.video) return card;
  const at = clock(result.video.timestamp);
  card.classList.add("frame");
  card.dataset.videoId = result.video.id;
  card.dataset.timestamp = result.video.timestamp;
  card.setAttribute("aria-label", `${card.getAttribute("aria-label")}, ${fileName(result.video.source)} at ${at}`);
  card.querySelector(".thumb").append(el("span", {
    class: "badge video-ts", text: `▶ ${at}`, title: `frame of ${fileName(result.video.source)} at ${at}`,
    style: "position:absolute;left:.3rem;bottom:.3rem;background:rgb(0 0 0 / 70%);color:#fff;border-color:transparent",
  }));
  return card;
}

/**
 * The player of a frame's video, starting at the frame's time (the browser fetches the video
 * with Range requests, so it can start there without loading what comes before).
 */
export function framePlayer(detail, alt) {
  const v = detail.video;
  const at = clock(v.timestamp);
  const video = el("video", {
    id: "video", controls: true, preload: "metadata", playsinline: true, poster: detail.original_url,
    src: `${v.url}#t=${v.timestamp}`, "aria-label": `${fileName(v.source)}, from ${at}`,
    style: "max-width:100%;max-height:70vh;display:block",
  });
  video.dataset.timestamp = v.timestamp;
  // The media fragment (#t=) starts it there; some formats ignore it, so the time is set once known too.
  video.addEventListener("loadedmetadata", () => {
    if (Math.abs(video.currentTime - v.timestamp) > 0.5) video.currentTime = v.timestamp;
  }, { once: true });
  const note = el("p", { class: "small muted", id: "video-note" },
    `Frame at ${at} of `, el("a", { href: v.url, id: "video-link", text: fileName(v.source) }),
    v.duration_s ? ` (${clock(v.duration_s)} long)` : "", ". ",
    el("button", { type: "button", class: "link-button", id: "play-from", text: `Play from ${at}`, onclick: () => {
      video.currentTime = v.timestamp;
      video.play().catch(() => {});
    } }));
  video.addEventListener("error", async () => {
    // Not stored here (a frame from `pgclip import` comes without its video's bytes), or not playable.
    const stored = await fetch(v.url, { headers: { Range: "bytes=0-0" } }).then((r) => r.status !== 404, () => true);
    note.replaceChildren(...(stored
      ? [`This browser cannot play this video (${v.mime}); the frame at ${at} is shown. `,
        el("a", { href: v.url, id: "video-link", text: `Download ${fileName(v.source)}` })]
      : [`Frame at ${at} of ${fileName(v.source)}, whose bytes are not stored in this database (it came from \`pgclip import\`).`]));
    const still = el("img", { src: detail.original_url, alt, style: "max-width:100%;max-height:70vh" });
    still.addEventListener("error", () => { if (detail.thumbnail_url && still.src !== new URL(detail.thumbnail_url, location.href).href) still.src = detail.thumbnail_url; });
    video.replaceWith(still);
  });
  return el("div", { class: "frame-player", style: "display:flex;flex-direction:column;gap:.4rem;width:100%" },
    el("div", { class: "original" }, video), note);
}
