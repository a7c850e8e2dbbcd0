// The jobs table: one row per job, updated in place from three sources — the list (every few
// seconds), a job's own read (which carries its `hint`) and its event stream (each progress
// update as it happens). Rows are kept, not rebuilt, so a bar moves instead of blinking.

import { h, RUNNING, seconds, setAttr, setText, TERMINAL } from "./util.js";

function since(from, to) {
  if (!from) return null;
  const end = to ? Date.parse(to) : Date.now();
  return (end - Date.parse(from)) / 1000;
}

// What a newer piece of news does to what the row shows. Progress never goes back within an
// attempt, so a list read that raced a live event (and says 30% after the stream said 40%)
// must not pull the bar back; a new attempt, or a finished job, always wins.
export function merge(current, incoming) {
  if (!current) return { ...incoming };
  const next = { ...current, ...incoming };
  const sameAttempt = incoming.attempts == null || incoming.attempts === current.attempts;
  if (TERMINAL.has(current.status) && !TERMINAL.has(incoming.status) && sameAttempt) {
    return { ...next, status: current.status, progress: current.progress, message: current.message };
  }
  if (!TERMINAL.has(incoming.status) && sameAttempt && incoming.progress < current.progress) {
    return { ...next, status: current.status, progress: current.progress, message: current.message };
  }
  return next;
}

class Row {
  constructor(job, table) {
    this.job = job;
    this.hint = null;
    this.live = "";
    const cells = {
      kind: h("td", { class: "kind" }),
      queue: h("td", { class: "queue" }),
      status: h("td", { class: "status" }, h("span", { class: "badge" })),
      progress: h("td", { class: "bar-col" }),
      message: h("td", { class: "message" }),
      attempts: h("td", { class: "num attempts" }),
      worker: h("td", { class: "worker" }),
      duration: h("td", { class: "num duration" }),
      actions: h("td", { class: "actions" }),
    };
    this.fill = h("div", { class: "fill" });
    this.percent = h("span", { class: "percent" });
    this.bar = h(
      "div",
      { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": 0 },
      this.fill,
      this.percent,
    );
    cells.progress.append(this.bar);
    this.text = h("div", { class: "text" });
    this.hintEl = h("div", { class: "hint", role: "note", hidden: true });
    cells.message.append(this.text, this.hintEl);
    this.cancel = h("button", {
      type: "button",
      class: "cancel",
      text: "Cancel",
      onclick: (event) => {
        event.stopPropagation();
        table.onCancel(this.job.task_id);
      },
    });
    cells.actions.append(this.cancel);
    this.cells = cells;
    this.tr = h("tr", { "data-job-id": job.task_id, tabindex: 0 }, Object.values(cells));
    this.tr.addEventListener("click", () => table.onSelect(this.job.task_id));
    this.tr.addEventListener("keydown", (event) => {
      if (event.key === "Enter") table.onSelect(this.job.task_id);
    });
    this.render();
  }

  get finished() {
    return TERMINAL.has(this.job.status);
  }

  render() {
    const job = this.job;
    const c = this.cells;
    setText(c.kind, job.kind);
    setText(c.queue, job.queue);
    setAttr(this.tr, "data-status", job.status);
    setText(c.status.firstChild, job.status);
    setAttr(c.status.firstChild, "class", `badge ${job.status}`);
    const progress = Math.max(0, Math.min(100, Number(job.progress) || 0));
    setAttr(this.bar, "aria-valuenow", progress);
    setAttr(this.bar, "aria-valuetext", `${progress}% ${job.status}`);
    setAttr(this.bar, "aria-label", `progress of ${job.kind} ${job.task_id.slice(0, 8)}`);
    setAttr(this.bar, "class", `bar ${job.status}`);
    this.fill.style.width = `${progress}%`;
    setText(this.percent, `${progress}%`);
    setText(this.text, job.status === "failure" && job.error ? job.error : job.message);
    setText(c.attempts, job.attempts ?? "");
    setText(c.worker, job.worker || "");
    setAttr(c.worker, "title", job.worker || "");
    const hint = this.finished ? null : this.hint;
    this.hintEl.hidden = !hint;
    setText(this.hintEl, hint ? `⚠ ${hint}` : "");
    this.cancel.hidden = this.finished;
    this.tick();
  }

  tick() {
    const job = this.job;
    let text = "";
    if (job.started_at) text = seconds(since(job.started_at, job.finished_at));
    else if (!this.finished) text = `waiting ${seconds(since(job.created_at))}`;
    setText(this.cells.duration, text);
  }

  setLive(state) {
    this.live = state;
    setAttr(this.tr, "data-stream", state);
  }
}

export class JobTable {
  constructor(tbody, { onSelect, onCancel, onChange }) {
    this.tbody = tbody;
    this.rows = new Map();
    this.onSelect = onSelect;
    this.onCancel = onCancel;
    this.onChange = onChange;
  }

  // The list read: these jobs, in this order (newest first); others leave the table.
  sync(jobs) {
    const keep = new Set();
    jobs.forEach((job, index) => {
      keep.add(job.task_id);
      const row = this.upsert(job);
      if (this.tbody.children[index] !== row.tr) this.tbody.insertBefore(row.tr, this.tbody.children[index] || null);
    });
    for (const [id, row] of this.rows) {
      if (!keep.has(id)) {
        row.tr.remove();
        this.rows.delete(id);
      }
    }
  }

  // A job read or an event: merged into its row (created at the top when new). Only a job's own
  // read carries its hint (the list's rows say null), so only that one may set or clear it.
  upsert(job, { hint = false } = {}) {
    let row = this.rows.get(job.task_id);
    if (!row) {
      row = new Row(merge(null, job), this);
      if (hint) {
        row.hint = job.hint || null;
        row.render();
      }
      this.rows.set(job.task_id, row);
      this.tbody.prepend(row.tr);
      this.onChange(row.job, null);
      return row;
    }
    const before = row.job;
    row.job = merge(before, job);
    if (hint) row.hint = job.hint || null;
    row.render();
    if (before.status !== row.job.status) this.onChange(row.job, before);
    return row;
  }

  get(id) {
    return this.rows.get(id);
  }

  // Jobs still moving, the ones worth a live stream first: running, then waiting; newest first.
  unfinished() {
    const rows = [...this.rows.values()].filter((row) => !row.finished);
    const rank = (row) => (RUNNING.has(row.job.status) ? 0 : 1);
    return rows.sort((a, b) => rank(a) - rank(b) || Date.parse(b.job.created_at) - Date.parse(a.job.created_at));
  }

  tick() {
    for (const row of this.rows.values()) if (!row.finished || !row.cells.duration.textContent) row.tick();
  }
}
