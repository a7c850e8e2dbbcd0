// Every call to the API goes through here, so every one carries the token and every 401 shows.
//
// The token lives in sessionStorage: it survives a reload but not the tab, and no other site can
// read it (unlike a cookie, nothing sends it without this script, so no CSRF either).

const KEY = "stack.token";
// The API's root, from the page's own address (/ui → /, /prefix/ui → /prefix/).
export const base = new URL(".", document.baseURI);

export function url(path) {
  return new URL(path.replace(/^\//, ""), base);
}

const listeners = new Set();
export const auth = {
  state: "unknown", // "ok" | "401" | "403" | "unknown"
  detail: "",
  get token() {
    return sessionStorage.getItem(KEY) || "";
  },
  set token(value) {
    if (value) sessionStorage.setItem(KEY, value);
    else sessionStorage.removeItem(KEY);
    this.report("unknown", "");
  },
  headers() {
    const token = this.token;
    return token ? { Authorization: `Bearer ${token}` } : {};
  },
  report(state, detail) {
    // 403 is about one action (a read-only token cancelling); the page as a whole still works.
    if (state === this.state && detail === this.detail) return;
    this.state = state;
    this.detail = detail;
    for (const listener of listeners) listener(state, detail);
  },
  subscribe(listener) {
    listeners.add(listener);
  },
};

export class ApiError extends Error {
  constructor(status, detail, body) {
    super(`${status}: ${describe(detail)}`);
    this.status = status;
    this.detail = detail;
    this.body = body;
  }
}

export function describe(detail) {
  if (detail == null) return "";
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
  if (typeof detail === "object" && detail.message) return detail.message;
  return JSON.stringify(detail);
}

// fetch() with the token, JSON in and out. Resolves to the parsed body (null for 204), throws
// ApiError for any other status.
export async function api(path, { method = "GET", body, signal } = {}) {
  const headers = { Accept: "application/json", ...auth.headers() };
  const init = { method, headers, signal, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json"; // the API refuses any other body (415)
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url(path), init);
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = text;
  }
  if (response.status === 401) auth.report("401", describe(parsed && parsed.detail));
  else if (response.ok && auth.state !== "ok") auth.report("ok", "");
  if (!response.ok) throw new ApiError(response.status, parsed && parsed.detail, parsed);
  return parsed;
}

// A file of a job (its picture) as an object URL: an <img src> cannot send the token.
export async function blobUrl(path) {
  const response = await fetch(url(path), { headers: auth.headers(), cache: "no-store" });
  if (!response.ok) throw new ApiError(response.status, `${path} answered ${response.status}`);
  return URL.createObjectURL(await response.blob());
}
