// ucofia search page: plain JavaScript, no build step, no inline code (the server sends a strict CSP).
// Every URL it asks for is relative to the page ("v1/search", not "/v1/search"), and the links in
// answers carry the server's --root-path, so the page works under a reverse proxy's path prefix.
"use strict";

(() => {
  const KEY_STORAGE = "ucofia.apiKey";
  const SCORE_FIELDS = ["score", "video_sentence", "frame_sentence", "patch_word"];
  const SCORE_LABELS = {score: "fused", video_sentence: "video–sentence", frame_sentence: "frame–sentence",
                        patch_word: "patch–word"};
  // Entry fields not worth a line on a card; every other field is shown (e.g. a window's start/end).
  const HIDDEN_DETAILS = new Set(["sha256", "mtime", "bytes", "frames", "fps", "width", "height", "duration_s",
                                  "start", "end", "window", "stride", "container"]);

  const $ = (id) => document.getElementById(id);
  const form = $("search");
  const input = $("q");
  const select = $("k");
  const status = $("status");
  const grid = $("results");
  const dialog = $("key-dialog");
  let info = null;
  let searchCounter = 0;

  // ---- API key -----------------------------------------------------------------------------
  const apiKey = () => sessionStorage.getItem(KEY_STORAGE) || "";

  // Resolves once the key dialog has closed (focus is back on the page by then).
  function askKey(message) {
    $("key-error").textContent = message || "";
    $("key").value = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(), {once: true});
      if (!dialog.open) dialog.showModal();
      $("key").focus();
    });
  }

  $("key-form").addEventListener("submit", (event) => {
    const key = $("key").value.trim();
    if (!key) {
      event.preventDefault();
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
  });

  async function api(path, options = {}, retries = 2) {
    const headers = {"Content-Type": "application/json"};
    if (apiKey()) headers.Authorization = "Bearer " + apiKey();
    const response = await fetch(path, {...options, headers});
    if (response.status === 401 && retries > 0) {
      sessionStorage.removeItem(KEY_STORAGE);
      await askKey(apiKey() ? "" : "That key was not accepted; check it and try again.");
      return api(path, options, retries - 1);
    }
    return response;
  }

  // ---- URL <-> form --------------------------------------------------------------------------
  function readUrl() {
    const params = new URLSearchParams(location.search);
    return {q: params.get("q") || "", k: params.get("k") || select.value};
  }

  function writeUrl(q, k) {
    const params = new URLSearchParams({q, k});
    const url = `${location.pathname}?${params}`;
    if (url !== location.pathname + location.search) history.pushState({q, k}, "", url);
  }

  function chooseK(k) {
    const wanted = String(parseInt(k, 10) || 10);
    if (![...select.options].some((o) => o.value === wanted)) select.add(new Option(wanted, wanted));
    select.value = wanted;
  }

  // ---- rendering -----------------------------------------------------------------------------
  function fmt(value) {
    return Math.abs(value) >= 100 ? value.toFixed(1) : value.toFixed(3);
  }

  function scoreOf(hit, field) {
    return field === "score" ? hit.score : hit.levels[field];
  }

  function ranges(hits) {
    const out = {};
    for (const field of SCORE_FIELDS) {
      const values = hits.map((h) => scoreOf(h, field));
      out[field] = [Math.min(...values), Math.max(...values)];
    }
    return out;
  }

  function addRow(list, term, content) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    if (typeof content === "string") dd.textContent = content;
    else dd.append(...content);
    list.append(dt, dd);
  }

  function scoreRow(list, field, value, range) {
    const [lo, hi] = range;
    // bar length: the score's place between the lowest and highest shown here (10 % to 100 %)
    const share = hi > lo ? 0.1 + 0.9 * (value - lo) / (hi - lo) : 1;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = "fill " + field;
    fill.style.width = `${(share * 100).toFixed(1)}%`;
    bar.append(fill);
    const number = document.createElement("span");
    number.className = "value";
    number.textContent = fmt(value);
    addRow(list, SCORE_LABELS[field], [bar, number]);
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

  function card(hit, scoreRanges) {
    const node = $("card").content.firstElementChild.cloneNode(true);
    node.dataset.videoId = hit.video_id;
    node.querySelector(".rank").textContent = `#${hit.rank}`;
    node.querySelector(".vid").textContent = hit.video_id;
    const button = node.querySelector(".play");
    button.setAttribute("aria-label", `Play ${hit.video_id} (rank ${hit.rank})`);
    const img = node.querySelector(".thumb");
    img.addEventListener("error", () => button.classList.add("no-thumb"));
    img.src = hit.links.thumbnail;
    button.addEventListener("click", () => play(button, hit));
    const scores = node.querySelector(".scores");
    for (const field of SCORE_FIELDS) scoreRow(scores, field, scoreOf(hit, field), scoreRanges[field]);
    details(node.querySelector(".details"), hit.entry || {});
    // grouped by file: the card is the file's best window; list the other good windows' spans
    if (hit.windows && hit.windows.length > 1) {
      const others = hit.windows.slice(1).map((w) => `${w.start}–${w.end} s (${fmt(w.score)})`);
      addRow(node.querySelector(".details"), "also", others.join(", "));
    }
    return node;
  }

  function render(q, data) {
    const query = data.results[0];
    const hits = query.results;
    const scoreRanges = ranges(hits);
    grid.replaceChildren(...hits.map((hit) => card(hit, scoreRanges)));
    const plural = hits.length === 1 ? "" : "s";
    const cut = query.truncated ? " (the query was cut to the model's word limit)" : "";
    status.textContent = `${hits.length} result${plural} for “${q}” among ${data.snapshot.videos} videos · ` +
      `${Math.round(data.timings.total_ms)} ms · ${data.mode.replace("_", "-")}${cut}`;
  }

  // ---- searching -----------------------------------------------------------------------------
  async function search(q, k) {
    const mine = ++searchCounter;
    status.classList.remove("error");
    status.textContent = "Searching…";
    grid.setAttribute("aria-busy", "true");
    try {
      const response = await api("v1/search", {method: "POST", body: JSON.stringify({queries: [q], top_k: Number(k)})});
      const data = await response.json().catch(() => ({error: response.statusText}));
      if (mine !== searchCounter) return;  // a newer search is under way
      if (!response.ok) {
        status.classList.add("error");
        status.textContent = data.error || `search failed (${response.status})`;
        grid.replaceChildren();
        return;
      }
      render(q, data);
    } catch (err) {
      if (mine !== searchCounter) return;
      status.classList.add("error");
      status.textContent = `search failed: ${err.message}`;
    } finally {
      if (mine === searchCounter) grid.removeAttribute("aria-busy");
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = input.value.trim();
    if (!q) return;
    writeUrl(q, select.value);
    search(q, select.value);
  });

  select.addEventListener("change", () => {
    const q = input.value.trim();
    if (q) form.requestSubmit();
  });

  window.addEventListener("popstate", () => {
    const {q, k} = readUrl();
    input.value = q;
    chooseK(k);
    if (q) search(q, select.value);
    else grid.replaceChildren();
  });

  document.addEventListener("keydown", (event) => {
    const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement ||
      event.target instanceof HTMLTextAreaElement;
    if (event.key === "/" && !typing && !dialog.open) {
      event.preventDefault();
      input.focus();
      input.select();
    }
  });

  async function start() {
    try {
      const response = await fetch("v1/info");
      info = await response.json();
      $("gallery").textContent = `${info.snapshot.videos} videos indexed`;
      const max = info.limits.max_top_k;
      for (const option of [...select.options]) if (Number(option.value) > max) option.remove();
    } catch (err) {
      status.classList.add("error");
      status.textContent = `cannot reach the server: ${err.message}`;
      return;
    }
    if (info.auth_required && !apiKey()) await askKey("");
    const {q, k} = readUrl();
    chooseK(k);
    if (q) {
      input.value = q;
      await search(q, select.value);
    } else {
      input.focus();
    }
  }

  start();
})();
