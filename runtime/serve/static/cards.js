// Result cards: thumbnail (click or Enter plays the clip inline), rank and id, the scores as bars,
// the clip's details, its metadata and a "More like this" button. Every value from the server is
// set as text (textContent), never parsed as HTML.

const SCORE_FIELDS = ["score", "video_sentence", "frame_sentence", "patch_word"];
const SCORE_LABELS = {score: "fused", video_sentence: "video–sentence", frame_sentence: "frame–sentence",
                      patch_word: "patch–word"};
// Entry fields not worth a line on a card; every other field is shown (e.g. a window's start/end).
const HIDDEN_DETAILS = new Set(["sha256", "mtime", "bytes", "frames", "fps", "width", "height", "duration_s",
                                "start", "end", "window", "stride", "container"]);

export function fmt(value) {
  return Math.abs(value) >= 100 ? value.toFixed(1) : value.toFixed(3);
}

// A query by example has no level scores: its score (a cosine) is the one bar.
const fieldsOf = (hit) => (Object.keys(hit.levels || {}).length ? SCORE_FIELDS : ["score"]);
const scoreOf = (hit, field) => (field === "score" ? hit.score : hit.levels[field]);

function addRow(list, term, content) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  if (typeof content === "string") dd.textContent = content;
  else dd.append(...content);
  list.append(dt, dd);
  return dd;
}

function scoreRow(list, field, value, label) {
  const bar = document.createElement("span");
  bar.className = "bar";
  bar.setAttribute("aria-hidden", "true");
  const fill = document.createElement("span");
  fill.className = "fill " + field;
  fill.dataset.field = field;
  fill.dataset.value = String(value);
  bar.append(fill);
  const number = document.createElement("span");
  number.className = "value";
  number.textContent = fmt(value);
  addRow(list, label, [bar, number]);
}

function details(list, entry) {
  const parts = [];
  if (entry.duration_s != null) parts.push(`${Number(entry.duration_s).toFixed(1)} s`);
  if (entry.width && entry.height) parts.push(`${entry.width}×${entry.height}`);
  if (entry.fps) parts.push(`${Math.round(entry.fps)} fps`);
  if (parts.length) addRow(list, "clip", parts.join(" · "));
  if (entry.start != null && entry.end != null) addRow(list, "span", `${entry.start}–${entry.end} s`);
  for (const [name, value] of Object.entries(entry)) {
    if (!HIDDEN_DETAILS.has(name) && value !== null && typeof value !== "object") addRow(list, name, String(value));
  }
}

/** A metadata value as shown on a card (lists joined by commas). */
export function metadataText(value) {
  return Array.isArray(value) ? value.join(", ") : String(value);
}

function metadata(list, values) {
  for (const [name, value] of Object.entries(values || {})) {
    addRow(list, name, metadataText(value)).dataset.field = name;
  }
  list.hidden = list.childElementCount === 0;
}

function play(button, hit) {
  const video = document.createElement("video");
  video.className = "player";
  video.controls = true;
  video.autoplay = true;
  video.playsInline = true;
  video.preload = "auto";
  video.src = hit.links.media;
  video.setAttribute("aria-label", `Video ${hit.video_id}`);
  video.addEventListener("error", () => {
    const note = document.createElement("p");
    note.className = "error";
    note.textContent = "This clip cannot be played here.";
    video.after(note);
  });
  button.replaceWith(video);
  video.focus();
  video.play().catch(() => {});
}

/** The card of one result; `onLike(hit)` runs when its "More like this" button is pressed. */
export function card(hit, onLike) {
  const node = document.getElementById("card").content.firstElementChild.cloneNode(true);
  node.dataset.videoId = hit.video_id;
  node.dataset.rank = String(hit.rank);
  node.querySelector(".rank").textContent = `#${hit.rank}`;
  node.querySelector(".vid").textContent = hit.video_id;
  const button = node.querySelector(".play");
  button.setAttribute("aria-label", `Play ${hit.video_id} (rank ${hit.rank})`);
  const img = node.querySelector(".thumb");
  img.addEventListener("error", () => button.classList.add("no-thumb"));
  img.src = hit.links.thumbnail;
  button.addEventListener("click", () => play(button, hit));
  const scores = node.querySelector(".scores");
  const fields = fieldsOf(hit);
  for (const field of fields) {
    scoreRow(scores, field, scoreOf(hit, field), fields.length === 1 ? "similarity" : SCORE_LABELS[field]);
  }
  details(node.querySelector(".details"), hit.entry || {});
  // grouped by file: the card is the file's best window; list the other good windows' spans
  if (hit.windows && hit.windows.length > 1) {
    const others = hit.windows.slice(1).map((w) => `${w.start}–${w.end} s (${fmt(w.score)})`);
    addRow(node.querySelector(".details"), "also", others.join(", "));
  }
  metadata(node.querySelector(".meta"), hit.metadata);
  const like = node.querySelector(".like");
  like.setAttribute("aria-label", `More like ${hit.video_id}`);
  like.addEventListener("click", () => onLike(hit));
  return node;
}

/**
 * Size the score bars of every card in `grid`: a score's place between the lowest and highest of
 * its kind shown (10 % to 100 % of the bar), so appended pages rescale the earlier ones.
 */
export function sizeBars(grid) {
  const fills = [...grid.querySelectorAll(".fill")];
  const ranges = {};
  for (const fill of fills) {
    const value = Number(fill.dataset.value);
    const [lo, hi] = ranges[fill.dataset.field] || [value, value];
    ranges[fill.dataset.field] = [Math.min(lo, value), Math.max(hi, value)];
  }
  for (const fill of fills) {
    const [lo, hi] = ranges[fill.dataset.field];
    const value = Number(fill.dataset.value);
    const share = hi > lo ? 0.1 + 0.9 * (value - lo) / (hi - lo) : 1;
    fill.style.width = `${(share * 100).toFixed(1)}%`;
  }
}
