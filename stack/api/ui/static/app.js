// The /ui page: wiring of the panels, the refresh loops and the live streams.

import { api, auth, describe } from "./api.js";
import { renderDetail } from "./detail.js";
import { buildFields, collect, fieldErrors, kindsFrom, showErrors } from "./form.js";
import { JobTable } from "./jobs.js";
import { renderQueues } from "./queues.js";
import { follow } from "./sse.js";
import { h, TERMINAL } from "./util.js";

// A browser opens at most 6 HTTP/1.1 connections to one host, and each open stream holds one:
// more streams than this would queue the page's own reads (list, hints, cancel) behind them.
// The rest of the jobs move with the list refresh, every LIST_EVERY ms.
const MAX_STREAMS = 4;
const LIST_EVERY = 2000;
const HINTS_EVERY = 3000;
const QUEUES_EVERY = 3000;
const HINTS_PER_ROUND = 12;

const $ = (id) => document.getElementById(id);
const state = { kinds: [], queueOf: new Map(), selected: null, queuesMissing: false };
const streams = new Map(); // task id → {close}

const table = new JobTable($("jobs").tBodies[0], {
  onSelect: (id) => select(id),
  onCancel: (id) => cancel(id),
  onChange: (job, before) => {
    if (before && state.selected === job.task_id && TERMINAL.has(job.status)) select(job.task_id);
  },
});

function notice(text, kind = "") {
  const el = $("notice");
  el.textContent = text;
  el.className = `banner ${kind}`;
  el.hidden = !text;
}

// --- authentication ---------------------------------------------------------------------------
auth.subscribe((status, detail) => {
  const banner = $("auth-banner");
  if (status === "401") {
    banner.textContent = auth.token
      ? `401: the API refused this token — enter another (${detail || "unknown token"})`
      : "401: enter a token — this API requires one (Authorization: Bearer, from STACK_API_TOKENS)";
    banner.hidden = false;
    document.body.dataset.auth = "401";
    $("token").focus();
  } else {
    banner.hidden = true;
    document.body.dataset.auth = status;
  }
});

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  auth.token = $("token").value.trim();
  $("token").value = "";
  restart();
});
$("token-clear").addEventListener("click", () => {
  auth.token = "";
  restart();
});

// --- jobs ---------------------------------------------------------------------------------------
function filters() {
  return {
    status: $("filter-status").value,
    kind: $("filter-kind").value,
    queue: $("filter-queue").value,
    limit: $("filter-limit").value,
  };
}

async function refreshJobs() {
  if (!state.kinds.length) await loadKinds(); // the first try failed (API down at page load)
  const f = filters();
  const query = new URLSearchParams({ limit: f.limit });
  if (f.status) query.set("status", f.status);
  if (f.kind) query.set("kind", f.kind);
  const list = await api(`/api/jobs?${query}`);
  // The API filters by status and kind; the queue filter is applied here.
  const jobs = f.queue ? list.jobs.filter((job) => job.queue === f.queue) : list.jobs;
  table.sync(jobs);
  $("jobs-count").textContent = `(${jobs.length})`;
  $("jobs-empty").hidden = jobs.length > 0;
  reconcileStreams();
}

// Live streams for the jobs most worth watching; the others close.
function reconcileStreams() {
  const wanted = new Set(table.unfinished().slice(0, MAX_STREAMS).map((row) => row.job.task_id));
  for (const [id, stream] of streams) {
    if (!wanted.has(id)) {
      stream.close();
      streams.delete(id);
      table.get(id)?.setLive("");
    }
  }
  for (const id of wanted) {
    if (streams.has(id)) continue;
    const stream = follow(`/api/jobs/${encodeURIComponent(id)}/events`, {
      onEvent: (_name, data) => {
        table.upsert({ task_id: id, ...data });
        return TERMINAL.has(data.status);
      },
      onEnd: () => {
        streams.delete(id);
        table.get(id)?.setLive("done");
        reconcileStreams();
      },
      onState: (s) => table.get(id)?.setLive(s),
    });
    streams.set(id, stream);
  }
}

// Each unfinished job's own read: it says why the job waits (`hint`).
async function refreshHints() {
  for (const row of table.unfinished().slice(0, HINTS_PER_ROUND)) {
    try {
      table.upsert(await api(`/api/jobs/${encodeURIComponent(row.job.task_id)}`), { hint: true });
    } catch (error) {
      if (error.status === 401) return;
    }
  }
}

async function cancel(id) {
  try {
    table.upsert(await api(`/api/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" }));
    notice("");
  } catch (error) {
    notice(`cancel: ${error.message}`, error.status === 409 ? "" : "error");
  }
}

async function select(id) {
  state.selected = id;
  for (const tr of $("jobs").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.jobId === id);
  $("detail-panel").hidden = false;
  document.querySelector("main").classList.add("with-detail");
  $("detail-id").textContent = id;
  try {
    await renderDetail($("detail-body"), id);
  } catch (error) {
    $("detail-body").replaceChildren(h("p", { class: "error", text: error.message }));
  }
}
$("detail-close").addEventListener("click", () => {
  state.selected = null;
  $("detail-panel").hidden = true;
  document.querySelector("main").classList.remove("with-detail");
  for (const tr of $("jobs").tBodies[0].rows) tr.classList.remove("selected");
});

for (const id of ["filter-status", "filter-kind", "filter-queue", "filter-limit"]) {
  $(id).addEventListener("change", () => refreshJobs().catch(report));
}

// --- queues -------------------------------------------------------------------------------------
async function refreshQueues() {
  try {
    const data = await api("/api/queues");
    state.queuesMissing = false;
    $("queues-note").hidden = true;
    $("queues").hidden = false;
    renderQueues(data, {
      queuesBody: $("queues").tBodies[0],
      workersBody: $("workers").tBodies[0],
      brokerState: $("broker-state"),
    });
    for (const queue of data.queues || []) addOption($("filter-queue"), queue.name);
  } catch (error) {
    if (error.status !== 404) throw error;
    state.queuesMissing = true; // an API without GET /api/queues: say so, ask again rarely
    $("queues-note").textContent = "This API has no GET /api/queues: queue depths and workers unavailable.";
    $("queues-note").hidden = false;
    $("queues").hidden = true;
  }
}

// --- submit form --------------------------------------------------------------------------------
function addOption(select, value) {
  if (![...select.options].some((o) => o.value === value)) select.append(h("option", { value, text: value }));
}

async function loadKinds() {
  const [openapi, index] = await Promise.all([api("/openapi.json"), api("/").catch(() => ({}))]);
  state.kinds = kindsFrom(openapi);
  for (const [kind, queue] of Object.entries(index.kinds || {})) state.queueOf.set(kind, queue);
  const select = $("submit-kind");
  const chosen = select.value;
  select.replaceChildren(...state.kinds.map((k) => h("option", { value: k.name, text: k.name })));
  if (chosen && state.kinds.some((k) => k.name === chosen)) select.value = chosen;
  for (const kind of state.kinds) {
    addOption($("filter-kind"), kind.name);
    if (state.queueOf.has(kind.name)) addOption($("filter-queue"), state.queueOf.get(kind.name));
  }
  showKind();
}

function showKind() {
  const kind = state.kinds.find((k) => k.name === $("submit-kind").value);
  if (!kind) return;
  const queue = state.queueOf.get(kind.name);
  const description = kind.description.split("\n\n")[0] || kind.summary;
  $("submit-description").textContent = queue ? `${description} (queue: ${queue})` : description;
  buildFields($("submit-fields"), kind);
  $("submit-status").textContent = "";
}
$("submit-kind").addEventListener("change", showKind);

$("submit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const kind = state.kinds.find((k) => k.name === $("submit-kind").value);
  if (!kind) return;
  const fields = $("submit-fields");
  const { body, errors } = collect(fields);
  showErrors(fields, errors);
  const status = $("submit-status");
  if (Object.keys(errors).length) {
    status.textContent = "fix the fields in red";
    return;
  }
  $("submit-button").disabled = true;
  try {
    const job = await api(kind.path, { method: "POST", body });
    status.textContent = `${job.status}: ${job.task_id}`;
    status.dataset.taskId = job.task_id;
    table.upsert(job);
    await refreshJobs();
  } catch (error) {
    if (error.status === 422) {
      const byField = fieldErrors(error.detail);
      showErrors(fields, byField);
      status.textContent = `422: ${byField[""] || "invalid params (see the fields in red)"}`;
    } else status.textContent = error.message;
  } finally {
    $("submit-button").disabled = false;
  }
});

// --- loops --------------------------------------------------------------------------------------
function report(error) {
  if (error.status === 401) return; // the banner says it
  state.apiError = true;
  notice(error.status ? error.message : `the API does not answer (${describe(error.message)})`, "error");
}

let generation = 0; // a new token restarts every loop; the old ones see a newer generation and stop

function loop(fn, every, current) {
  const run = async () => {
    if (current !== generation) return;
    try {
      await fn();
      if (state.apiError) {
        state.apiError = false;
        notice("");
      }
    } catch (error) {
      report(error);
    }
    const slow = auth.state === "401" || (fn === refreshQueues && state.queuesMissing);
    setTimeout(run, slow ? Math.max(every, 10000) : every);
  };
  run();
}

function restart() {
  generation += 1;
  for (const stream of streams.values()) stream.close();
  streams.clear();
  const current = generation;
  loadKinds()
    .catch(report)
    .finally(() => {
      loop(refreshJobs, LIST_EVERY, current);
      loop(refreshHints, HINTS_EVERY, current);
      loop(refreshQueues, QUEUES_EVERY, current);
    });
}

setInterval(() => table.tick(), 1000);
restart();
