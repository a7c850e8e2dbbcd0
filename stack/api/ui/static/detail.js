// A job's detail: its row in full, the params it was submitted with, its result or error, and
// the picture when the result points at an image among the job's files.

import { api, blobUrl, describe } from "./api.js";
import { h, pretty, TERMINAL } from "./util.js";

const IMAGE = /\.(png|jpe?g|gif|webp|svg)$/i;
const FILES = /^\/?api\/jobs\/[^/]+\/files\//;

let shownUrl = null; // the object URL of the picture on screen, released when replaced

function fact(name, value) {
  return value == null || value === "" ? [] : [h("dt", { text: name }), h("dd", { text: value })];
}

export async function renderDetail(body, taskId) {
  const [job, params] = await Promise.all([
    api(`/api/jobs/${encodeURIComponent(taskId)}`),
    api(`/ui/api/jobs/${encodeURIComponent(taskId)}/params`).catch((error) => ({ error })),
  ]);
  const parts = [
    h(
      "dl",
      { class: "facts" },
      fact("kind", job.kind),
      fact("queue", job.queue),
      fact("status", `${job.status} · ${job.progress}%`),
      fact("message", job.message),
      fact("hint", job.hint),
      fact("attempts", job.attempts),
      fact("worker", job.worker),
      fact("created", job.created_at),
      fact("started", job.started_at),
      fact("finished", job.finished_at),
    ),
    h("h3", { text: "params" }),
    params.error
      ? h("p", { class: "error", text: `params unavailable: ${describe(params.error.detail) || params.error}` })
      : h("pre", { class: "params", text: pretty(params.params) }),
  ];
  if (job.status === "failure") parts.push(h("h3", { text: "error" }), h("pre", { class: "error", text: job.error || "" }));
  if (job.result != null) parts.push(h("h3", { text: "result" }), h("pre", { class: "result", text: pretty(job.result) }));
  const picture = job.result && typeof job.result.url === "string" ? job.result.url : null;
  let img = null;
  if (picture && IMAGE.test(picture) && FILES.test(picture)) {
    img = h("img", { class: "picture", alt: `picture of job ${taskId}` });
    parts.push(h("h3", { text: "picture" }), img);
  }
  if (!TERMINAL.has(job.status)) parts.push(h("p", { class: "muted", text: "updates when the job finishes" }));
  body.replaceChildren(...parts);
  if (img) {
    const objectUrl = await blobUrl(picture);
    if (shownUrl) URL.revokeObjectURL(shownUrl);
    shownUrl = objectUrl;
    img.src = objectUrl;
  }
  return job;
}
