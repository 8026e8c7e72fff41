// Filter controls built from the index's metadata fields (GET v1/info "metadata_fields"), and the
// filter object they make (the API's MongoDB-style `filter`): a select for a string or list field
// with few values, a text box (exact value) for one with many, min / max for a number field, a
// checkbox (only videos where it is true) for a boolean field. A field of mixed kinds gets none.

/** Fill `fieldset` with a control per field; `onChange` runs when a control changes. */
export function buildFilters(fieldset, fields, onChange) {
  const controls = [];
  fields.forEach((field, i) => {
    const control = makeControl(field, `filter-${i}`);
    if (control) controls.push(control);
  });
  fieldset.querySelector(".filter-list").replaceChildren(...controls);
  fieldset.hidden = controls.length === 0;
  fieldset.addEventListener("change", () => onChange());
  fieldset.querySelector(".clear-filters").addEventListener("click", () => {
    for (const input of fieldset.querySelectorAll("[data-field]")) {
      if (input.type === "checkbox") input.checked = false;
      else input.value = "";
    }
    onChange();
  });
}

function labelled(text, id) {
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = text;
  return label;
}

function tagged(input, field, op) {
  input.dataset.field = field.name;
  input.dataset.op = op;
  return input;
}

function makeControl(field, id) {
  const box = document.createElement("div");
  box.className = "filter";
  box.dataset.kind = field.kind;
  if ((field.kind === "string" || field.kind === "list") && field.values) {
    const select = tagged(document.createElement("select"), field, "$eq");
    select.id = id;
    select.add(new Option("any", ""));
    for (const value of field.values) select.add(new Option(value, value));
    box.append(labelled(field.name, id), select);
  } else if (field.kind === "string" || field.kind === "list") {
    const input = tagged(document.createElement("input"), field, "$eq");
    input.id = id;
    input.type = "text";
    input.placeholder = "any";
    box.append(labelled(field.name, id), input);
  } else if (field.kind === "number") {
    const low = numberInput(field, "$gte", `${id}-min`, field.min);
    const high = numberInput(field, "$lte", `${id}-max`, field.max);
    low.setAttribute("aria-label", `${field.name} at least`);
    high.setAttribute("aria-label", `${field.name} at most`);
    const dash = document.createElement("span");
    dash.textContent = "–";
    dash.setAttribute("aria-hidden", "true");
    box.append(labelled(field.name, low.id), low, dash, high);
  } else if (field.kind === "boolean") {
    const input = tagged(document.createElement("input"), field, "$eq");
    input.id = id;
    input.type = "checkbox";
    box.append(input, labelled(field.name, id));
  } else {
    return null;
  }
  return box;
}

function numberInput(field, op, id, hint) {
  const input = tagged(document.createElement("input"), field, op);
  input.id = id;
  input.type = "number";
  input.step = "any";
  if (hint != null) input.placeholder = String(hint);
  return input;
}

/** The filter the controls in `fieldset` make, or null when they make none. */
export function readFilter(fieldset) {
  const filter = {};
  for (const input of fieldset.querySelectorAll("[data-field]")) {
    const name = input.dataset.field;
    const op = input.dataset.op;
    if (input.type === "checkbox") {
      if (input.checked) filter[name] = true;
    } else if (input.type === "number") {
      if (input.value === "" || !Number.isFinite(Number(input.value))) continue;
      filter[name] = {...(filter[name] || {}), [op]: Number(input.value)};
    } else if (input.value !== "") {
      filter[name] = input.value;
    }
  }
  return Object.keys(filter).length ? filter : null;
}
