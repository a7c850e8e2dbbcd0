// Server-sent events over fetch().
//
// Why not EventSource: it cannot send an Authorization header, and the API's streams require
// the same bearer token as every other call (a token in the query string would land in access
// logs). So the stream is read with fetch() and a ReadableStream reader, parsed here as the
// text/event-stream format says, and resumed the way EventSource resumes: after the server's
// `retry:` delay, with `Last-Event-ID`. The API answers 204 to a reconnect after the finished
// job, which ends the stream for good, as it ends an EventSource.

import { auth, url } from "./api.js";

const DEFAULT_RETRY_MS = 2000;
const MAX_BACKOFF_MS = 30000;

// Feeds text chunks, calls onEvent({event, data, id}) for each complete event. Exported for tests.
export class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.data = [];
    this.event = "";
    this.lastEventId = "";
    this.retry = null;
  }

  push(chunk) {
    this.buffer += chunk;
    // Lines end with \r\n, \n or \r; keep a trailing \r back, its \n may be in the next chunk.
    const lines = this.buffer.split(/\r\n|\n|\r(?!$)/);
    this.buffer = lines.pop();
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") {
      if (this.data.length) {
        this.onEvent({ event: this.event || "message", data: this.data.join("\n"), id: this.lastEventId });
      }
      this.data = [];
      this.event = "";
      return;
    }
    if (line.startsWith(":")) return; // a comment: the API's keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

// Follows `path` until close() or the end of the job. onEvent(name, data) gets each event's JSON
// (returning true ends the stream: the job finished); onEnd() once it ended on its own;
// onState("live" | "reconnecting" | "refused" | "gone") for the row's indicator.
export function follow(path, { onEvent, onEnd = () => {}, onState = () => {} }) {
  const controller = new AbortController();
  const { signal } = controller;
  let lastEventId = "";
  let retry = DEFAULT_RETRY_MS;
  let failures = 0;

  async function once() {
    const headers = { Accept: "text/event-stream", ...auth.headers() };
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;
    const response = await fetch(url(path), { headers, signal, cache: "no-store" });
    if (response.status === 204) return "end"; // the finished job was the last event we got
    if (response.status === 404) return "gone";
    if (response.status === 401) auth.report("401", "the event stream needs a token");
    if (response.status === 503) {
      // Too many streams on that API process: wait as told, then try again.
      const after = Number(response.headers.get("Retry-After")) || 5;
      return { wait: after * 1000 };
    }
    if (!response.ok || !response.body) return { wait: null, refused: response.status === 401 };
    failures = 0;
    onState("live");
    let done = false;
    const parser = new SseParser((event) => {
      if (done) return;
      lastEventId = event.id;
      if (event.event !== "job") return;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      if (onEvent(event.event, data)) done = true;
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      while (!done) {
        const { value, done: closed } = await reader.read();
        if (closed) break;
        parser.push(value);
        if (parser.retry != null) retry = parser.retry;
      }
    } finally {
      if (done) reader.cancel().catch(() => {});
    }
    return done ? "end" : { wait: retry }; // the stream's lifetime ended: resume after `retry`
  }

  (async () => {
    while (!signal.aborted) {
      let outcome;
      try {
        outcome = await once();
      } catch (error) {
        if (signal.aborted) return;
        outcome = { wait: null }; // network error: the API restarts, the laptop sleeps
      }
      if (outcome === "end") return onEnd();
      if (outcome === "gone") return onState("gone");
      onState(outcome.refused ? "refused" : "reconnecting");
      failures += 1;
      const backoff = Math.min(MAX_BACKOFF_MS, retry * 2 ** Math.min(failures - 1, 4));
      await sleep(outcome.wait ?? backoff, signal);
    }
  })();

  return { close: () => controller.abort() };
}
