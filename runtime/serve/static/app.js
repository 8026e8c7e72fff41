// ucofia search page: plain JavaScript modules, no build step, no inline code (the server sends a strict
// CSP). Every URL it asks for is relative to the page ("v1/search", not "/v1/search"), and the links in
// answers carry the server's --root-path, so the page works under a reverse proxy's path prefix.
//
// Modules: api.js (calls with the API key), filters.js (filter controls from the metadata fields),
// cards.js (result cards), download.js (the results as a JSON file). This one holds the search state:
// a query (text, an indexed video or an uploaded file), its filter and the results shown so far.
import {api, apiKey, askKey, setUpKeyDialog} from "./api.js";
import {card, sizeBars} from "./cards.js";
import {downloadJson, fileName} from "./download.js";
import {buildFilters, readFilter} from "./filters.js";

const $ = (id) => document.getElementById(id);
const form = $("search");
const input = $("q");
const select = $("k");
const status = $("status");
const grid = $("results");
const dialog = $("key-dialog");
const filtersBox = $("filters");
const upload = $("upload");
const more = $("more");
const download = $("download");
let info = null;
let fieldsShown = false;
let searchCounter = 0;
// The search shown: {query: {text} | {like} | {query_video, file}, k, filter, hits, data, done}.
let current = null;

const maxTopK = () => (info ? info.limits.max_top_k : 100);

// ---- URL <-> form ----------------------------------------------------------------------------
function readUrl() {
  const params = new URLSearchParams(location.search);
  return {q: params.get("q") || "", like: params.get("like") || "", k: params.get("k") || select.value};
}

function writeUrl(values) {
  const params = new URLSearchParams(values);
  const url = `${location.pathname}?${params}`;
  if (url !== location.pathname + location.search) history.pushState(values, "", url);
}

function urlOf(query, k) {
  if (query.text != null) writeUrl({q: query.text, k});
  else if (query.like != null) writeUrl({like: query.like, k});
}

function chooseK(k) {
  const wanted = String(Math.min(parseInt(k, 10) || 10, maxTopK()));
  if (![...select.options].some((o) => o.value === wanted)) select.add(new Option(wanted, wanted));
  select.value = wanted;
}

// ---- the requests ----------------------------------------------------------------------------
function request(query, filter, topK, offset) {
  if (query.file) {  // multipart; the browser sets its Content-Type and Content-Length
    const body = new FormData();
    body.append("file", query.file, query.file.name);
    body.append("top_k", String(topK));
    body.append("offset", String(offset));
    if (filter) body.append("filter", JSON.stringify(filter));
    return api("v1/search/by-video", {method: "POST", body});
  }
  const body = query.like != null ? {like: query.like} : {queries: [query.text]};
  Object.assign(body, {top_k: topK, offset});
  if (filter) body.filter = filter;
  return api("v1/search", {method: "POST", json: body});
}

function described(query) {
  if (query.text != null) return `for “${query.text}”`;
  if (query.like != null) return `like “${query.like}”`;
  return `like the file “${query.query_video}”`;
}

// ---- rendering -------------------------------------------------------------------------------
function showStatus(data) {
  const n = current.hits.length;
  const cut = data.results[0].truncated ? " (the query was cut to the model's word limit)" : "";
  const filtered = current.filter ? " matching the filters" : "";
  status.textContent = `${n} result${n === 1 ? "" : "s"} ${described(current.query)}${filtered} among ` +
    `${data.snapshot.videos} videos · ${Math.round(data.timings.total_ms)} ms · ` +
    `${data.mode.replace("_", "-")}${cut}`;
}

function showTools() {
  more.hidden = !current || current.done;
  download.hidden = !current;
}

function fail(message, append) {
  status.classList.add("error");
  status.textContent = message;
  if (!append) {
    current = null;
    grid.replaceChildren();
  }
  showTools();
}

// ---- searching -------------------------------------------------------------------------------
// The first page of `query` (append: the next page of the search shown, with its filter).
async function search(query, k, append = false) {
  const mine = ++searchCounter;
  const filter = append ? current.filter : readFilter(filtersBox);
  const offset = append ? current.hits.length : 0;
  const topK = Math.min(Number(k), maxTopK() - offset);
  status.classList.remove("error");
  status.textContent = append ? "Loading more…" : "Searching…";
  grid.setAttribute("aria-busy", "true");
  more.disabled = true;
  try {
    const response = await request(query, filter, topK, offset);
    const data = await response.json().catch(() => ({error: response.statusText}));
    if (mine !== searchCounter) return;  // a newer search is under way
    if (!response.ok) {
      fail(data.error || `search failed (${response.status})`, append);
      return;
    }
    const hits = data.results[0].results;
    if (!append) current = {query, k: Number(k), filter, hits: [], data};
    current.hits.push(...hits);
    current.data = data;
    current.done = hits.length < topK || current.hits.length >= maxTopK();
    const cards = hits.map((hit) => card(hit, moreLikeThis));
    if (append) grid.append(...cards);
    else grid.replaceChildren(...cards);
    sizeBars(grid);
    showStatus(data);
    showTools();
    loadFields();  // once a key works (a wrong one gave none at start)
  } catch (err) {
    if (mine !== searchCounter) return;
    fail(`search failed: ${err.message}`, append);
  } finally {
    if (mine === searchCounter) {
      grid.removeAttribute("aria-busy");
      grid.dataset.search = String(mine);  // which search the grid shows (tests wait for it)
      more.disabled = false;
    }
  }
}

function moreLikeThis(hit) {
  const query = {like: hit.video_id};
  input.value = "";
  upload.value = "";
  urlOf(query, select.value);
  window.scrollTo(0, 0);
  search(query, select.value);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const q = input.value.trim();
  if (!q) return;
  upload.value = "";
  urlOf({text: q}, select.value);
  search({text: q}, select.value);
});

select.addEventListener("change", () => {
  if (!current) return;
  urlOf(current.query, select.value);
  search(current.query, select.value);
});

upload.addEventListener("change", () => {
  const file = upload.files[0];
  if (file) search({query_video: file.name, file}, select.value);
});

more.addEventListener("click", () => {
  if (current && !current.done) search(current.query, current.k, true);
});

download.addEventListener("click", () => {
  if (!current) return;
  const {query} = current;
  downloadJson(fileName(query), {
    query: query.text ?? null, like: query.like ?? null, query_video: query.query_video ?? null,
    filter: current.filter, snapshot: current.data.snapshot, results: current.hits,
  });
});

function fromUrl() {
  const {q, like, k} = readUrl();
  input.value = q;
  chooseK(k);
  if (like) return search({like}, select.value);
  if (q) return search({text: q}, select.value);
  current = null;
  grid.replaceChildren();
  status.textContent = "";
  showTools();
  return null;
}

window.addEventListener("popstate", () => fromUrl());

document.addEventListener("keydown", (event) => {
  const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement ||
    event.target instanceof HTMLTextAreaElement;
  if (event.key === "/" && !typing && !dialog.open) {
    event.preventDefault();
    input.focus();
    input.select();
  }
});

// The filter controls, from the metadata fields (a search-scope route: it needs the key when keys
// are on). Asked for once a key is at hand; a refusal is not retried here (the searches ask for a key).
async function loadFields() {
  if (fieldsShown) return;
  fieldsShown = true;
  try {
    const response = await api("v1/fields", {}, 0);
    if (!response.ok) {
      fieldsShown = false;
      return;
    }
    const data = await response.json();
    buildFilters(filtersBox, data.fields, () => {
      if (current) search(current.query, select.value);
    });
  } catch (err) {
    fieldsShown = false;
  }
}

async function start() {
  setUpKeyDialog();
  try {
    const response = await fetch("v1/info");
    info = await response.json();
    $("gallery").textContent = `${info.snapshot.videos} videos indexed`;
    for (const option of [...select.options]) if (Number(option.value) > maxTopK()) option.remove();
  } catch (err) {
    status.classList.add("error");
    status.textContent = `cannot reach the server: ${err.message}`;
    return;
  }
  if (info.auth_required && !apiKey()) await askKey("");
  loadFields();
  const running = fromUrl();
  if (running) await running;
  else input.focus();
}

start();
