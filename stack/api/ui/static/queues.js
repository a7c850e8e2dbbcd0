// The queues panel, from GET /api/queues: per queue its depth, its pending and running jobs, the
// age of its oldest pending job and the live workers consuming it. A queue with work and no
// worker is the "stuck at 0%" of the issue: its row turns red and says so in words.

import { h, seconds } from "./util.js";

// Jobs wait there and nobody will take them.
export function starved(queue) {
  const waiting = (queue.pending || 0) > 0 || (queue.depth || 0) > 0;
  return waiting && (queue.workers || []).length === 0;
}

export function renderQueues(data, { queuesBody, workersBody, brokerState }) {
  brokerState.textContent = data.broker_ok ? "broker ok" : "broker unreachable";
  brokerState.className = `pill ${data.broker_ok ? "ok" : "bad"}`;
  const rows = (data.queues || []).map((queue) => {
    const alarm = starved(queue);
    const workers = queue.workers || [];
    return h(
      "tr",
      { "data-queue": queue.name, class: alarm ? "alarm" : null },
      h("td", { class: "queue", text: queue.name }),
      h("td", { class: "kinds", text: (queue.kinds || []).join(", ") }),
      h("td", { class: "num depth", text: queue.depth == null ? "?" : queue.depth }),
      h("td", { class: "num pending", text: queue.pending ?? 0 }),
      h("td", { class: "num running", text: queue.running ?? 0 }),
      h("td", { class: "num oldest", text: seconds(queue.oldest_pending_seconds) || "—" }),
      h(
        "td",
        { class: "workers" },
        alarm
          ? h("strong", { text: "no worker consumes this queue" })
          : workers.length
            ? `${workers.length}: ${workers.join(", ")}`
            : "none",
      ),
    );
  });
  queuesBody.replaceChildren(...rows);
  const workers = (data.workers || []).map((worker) =>
    h(
      "tr",
      { "data-worker": worker.name, class: worker.alive ? null : "dead" },
      h("td", { text: worker.name }),
      h("td", { text: (worker.queues || []).join(", ") }),
      h("td", { class: "num", text: (worker.running || []).length }),
      h("td", {
        text: `${seconds(worker.last_heartbeat_seconds)} ago${worker.alive ? "" : " (dead)"}`,
      }),
    ),
  );
  workersBody.replaceChildren(...workers);
}
