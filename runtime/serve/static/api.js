// The page's calls to the API: the API key (asked for in a dialog, kept in the tab's sessionStorage)
// goes with every call as a Bearer key; a 401 asks for the key again and retries.
// Paths are relative to the page ("v1/search"), so the page works under a reverse proxy's prefix.

const KEY_STORAGE = "ucofia.apiKey";
const $ = (id) => document.getElementById(id);

/** The key of this tab ("" when none was given). */
export const apiKey = () => sessionStorage.getItem(KEY_STORAGE) || "";

/** Show the key dialog; resolves once it has closed (focus is back on the page by then). */
export function askKey(message) {
  const dialog = $("key-dialog");
  $("key-error").textContent = message || "";
  $("key").value = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(), {once: true});
    if (!dialog.open) dialog.showModal();
    $("key").focus();
  });
}

/** Keep the key the dialog's form submits. */
export function setUpKeyDialog() {
  $("key-form").addEventListener("submit", (event) => {
    const key = $("key").value.trim();
    if (!key) {
      event.preventDefault();
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
  });
}

/**
 * fetch(path) with the API key. options.json: a value sent as a JSON body; options.body a FormData
 * (multipart: the browser sets its Content-Type with the boundary).
 */
export async function api(path, options = {}, retries = 2) {
  const {json, ...rest} = options;
  const headers = {};
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    rest.body = JSON.stringify(json);
  }
  if (apiKey()) headers.Authorization = "Bearer " + apiKey();
  const response = await fetch(path, {...rest, headers});
  if (response.status === 401 && retries > 0) {
    sessionStorage.removeItem(KEY_STORAGE);
    await askKey(apiKey() ? "" : "That key was not accepted; check it and try again.");
    return api(path, options, retries - 1);
  }
  return response;
}
