// Download what the page shows as a JSON file, made in the browser (a Blob; nothing is fetched).

/** Save `payload` as the JSON file `name`. */
export function downloadJson(name, payload) {
  const blob = new Blob([JSON.stringify(payload, null, 2) + "\n"], {type: "application/json"});
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** A file name for the results of `query` (letters, digits and dashes from its text). */
export function fileName(query) {
  const text = query.text ?? (query.like ? `like-${query.like}` : `like-${query.query_video}`);
  const slug = String(text).toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 60);
  return `ucofia-${slug || "results"}.json`;
}
