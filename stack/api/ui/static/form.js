// The submit form, generated from the API's own contract: each kind is a `POST /api/jobs/<kind>`
// in /openapi.json whose request body references a model in components.schemas. Types, defaults,
// bounds and enums (Literal) come from there, so a new kind gets its form with no change here.

import { h, pretty } from "./util.js";

const KIND_PATH = /^\/api\/jobs\/([^/{}]+)$/;
const LONG_TEXT = 500; // strings allowed to be longer than this get a textarea

function resolve(schema, components) {
  let s = schema || {};
  for (let i = 0; i < 10 && s.$ref; i++) s = components[s.$ref.split("/").pop()] || {};
  if (s.allOf && s.allOf.length === 1) return resolve({ ...s, ...s.allOf[0], allOf: undefined }, components);
  return s;
}

// {name, path, summary, description, schema} for each kind, in the contract's order.
export function kindsFrom(openapi) {
  const components = (openapi.components && openapi.components.schemas) || {};
  const kinds = [];
  for (const [path, item] of Object.entries(openapi.paths || {})) {
    const match = KIND_PATH.exec(path);
    const body = item.post && item.post.requestBody;
    const schema = body && body.content && body.content["application/json"];
    if (!match || !schema) continue;
    kinds.push({
      name: decodeURIComponent(match[1]),
      path,
      summary: item.post.summary || "",
      description: item.post.description || "",
      schema: resolve(schema.schema, components),
      components,
    });
  }
  return kinds;
}

// A property as one plain type: `X | None` (anyOf with null) becomes X, optional.
export function normalise(property, components) {
  let p = resolve(property, components);
  let nullable = false;
  const variants = p.anyOf || p.oneOf;
  if (variants) {
    const concrete = variants.map((v) => resolve(v, components)).filter((v) => v.type !== "null");
    nullable = concrete.length < variants.length;
    if (concrete.length === 1) p = { ...concrete[0], ...p, anyOf: undefined, oneOf: undefined, type: concrete[0].type };
    else p = { ...p, type: "json" };
  }
  if (p.const !== undefined && !p.enum) p = { ...p, enum: [p.const] };
  return { ...p, nullable };
}

function bounds(p) {
  const parts = [];
  if (p.minimum != null || p.maximum != null) parts.push(`${p.minimum ?? "…"}–${p.maximum ?? "…"}`);
  if (p.exclusiveMinimum != null) parts.push(`> ${p.exclusiveMinimum}`);
  if (p.exclusiveMaximum != null) parts.push(`< ${p.exclusiveMaximum}`);
  if (p.maxLength != null) parts.push(`up to ${p.maxLength.toLocaleString()} characters`);
  return parts.join(", ");
}

function control(name, p, required) {
  const id = `field-${name}`;
  const base = { id, name, "data-field": name, "aria-describedby": `${id}-help ${id}-error` };
  const hasDefault = p.default !== undefined && p.default !== null;
  if (p.enum) {
    const options = p.enum.map((v) => h("option", { value: JSON.stringify(v), text: String(v) }));
    if (!required && !hasDefault) options.unshift(h("option", { value: "", text: "—" }));
    const select = h("select", base, options);
    if (hasDefault) select.value = JSON.stringify(p.default);
    return select;
  }
  if (p.type === "boolean") {
    return h("input", { ...base, type: "checkbox", checked: p.default === true });
  }
  if (p.type === "integer" || p.type === "number") {
    return h("input", {
      ...base,
      type: "number",
      min: p.minimum ?? (p.exclusiveMinimum != null ? p.exclusiveMinimum : null),
      max: p.maximum ?? (p.exclusiveMaximum != null ? p.exclusiveMaximum : null),
      step: p.type === "integer" ? 1 : "any",
      value: hasDefault ? p.default : null,
      required: required || null,
    });
  }
  if (p.type === "string") {
    const long = p.maxLength == null || p.maxLength > LONG_TEXT;
    const attrs = { ...base, maxlength: p.maxLength, minlength: p.minLength, required: required || null };
    const el = long ? h("textarea", { ...attrs, rows: 3 }) : h("input", { ...attrs, type: "text" });
    if (hasDefault) el.value = p.default;
    return el;
  }
  // Objects, arrays, unions: typed as JSON.
  const el = h("textarea", { ...base, rows: 2, "data-json": true, placeholder: p.type === "array" ? "[]" : "{}" });
  if (hasDefault) el.value = pretty(p.default);
  return el;
}

// A file picker next to a base64 field: picking an image fills it with a data: URL.
function filePicker(target) {
  const input = h("input", { type: "file", accept: "image/*", "aria-label": `file for ${target.name}` });
  input.addEventListener("change", () => {
    const file = input.files && input.files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => {
      target.value = reader.result;
    };
    reader.readAsDataURL(file);
  });
  return input;
}

export function buildFields(container, kind) {
  const properties = kind.schema.properties || {};
  const required = new Set(kind.schema.required || []);
  const fields = [];
  for (const [name, raw] of Object.entries(properties)) {
    const p = normalise(raw, kind.components);
    const isRequired = required.has(name);
    const input = control(name, p, isRequired);
    const help = [p.description, bounds(p), p.nullable && !isRequired ? "optional" : ""].filter(Boolean).join(" · ");
    const base64 = p.type === "string" && /base64/i.test(`${p.description || ""} ${p.title || ""}`);
    fields.push(
      h(
        "div",
        { class: "field", "data-name": name },
        h("label", { for: input.id }, p.title || name, isRequired ? h("span", { class: "required", text: " *" }) : null),
        input,
        base64 ? filePicker(input) : null,
        h("small", { id: `${input.id}-help`, class: "muted", text: help }),
        h("small", { id: `${input.id}-error`, class: "error", "aria-live": "polite" }),
      ),
    );
    input.__schema = { ...p, required: isRequired };
  }
  container.replaceChildren(...fields);
}

// The body to send, or {errors} naming the fields the browser can already tell are wrong. Empty
// optional fields are left out: the API fills in its defaults.
export function collect(container) {
  const body = {};
  const errors = {};
  for (const input of container.querySelectorAll("[data-field]")) {
    const name = input.dataset.field;
    const p = input.__schema || {};
    if (input.type === "checkbox") {
      body[name] = input.checked;
      continue;
    }
    const raw = input.value;
    if (raw === "") {
      if (p.required) errors[name] = "required";
      continue;
    }
    if (input.tagName === "SELECT") body[name] = JSON.parse(raw);
    else if (p.type === "integer" || p.type === "number") {
      const value = Number(raw);
      if (!Number.isFinite(value) || (p.type === "integer" && !Number.isInteger(value))) {
        errors[name] = p.type === "integer" ? "a whole number" : "a number";
      } else body[name] = value;
    } else if (input.dataset.json !== undefined) {
      try {
        body[name] = JSON.parse(raw);
      } catch {
        errors[name] = "not valid JSON";
      }
    } else body[name] = raw;
  }
  return { body, errors };
}

export function showErrors(container, errors) {
  for (const el of container.querySelectorAll(".field .error")) el.textContent = "";
  for (const field of container.querySelectorAll(".field")) field.classList.remove("invalid");
  for (const [name, message] of Object.entries(errors)) {
    const field = container.querySelector(`.field[data-name="${CSS.escape(name)}"]`);
    if (!field) continue;
    field.classList.add("invalid");
    field.querySelector(".error").textContent = message;
  }
}

// A 422's detail as {field: message}; errors about the whole body under "".
export function fieldErrors(detail) {
  const errors = {};
  for (const item of Array.isArray(detail) ? detail : []) {
    const loc = (item.loc || []).filter((part) => part !== "body");
    const key = loc.length ? String(loc[0]) : "";
    errors[key] = errors[key] ? `${errors[key]}; ${item.msg}` : item.msg;
  }
  return errors;
}
