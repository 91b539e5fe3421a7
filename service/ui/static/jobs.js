// The jobs list (filters, live progress) and one job: a live chart fed by the event stream, the
// status timeline, events, checkpoints with serve/chat, what the job resolved, and its controls.

import { api, sse } from "./api.js";
import { LossChart } from "./chart.js";
import { badge, bytes, clear, errorBox, eta, facts, h, progressBar, TERMINAL, when } from "./dom.js";

const STATUSES = ["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"];
const POLL_MS = 2000;
const PAGE = 50;

export function jobsPage(root, params, guard) {
  const status = h("select", { id: "filter-status" },
    h("option", { value: "" }, "any status"), STATUSES.map((s) => h("option", { value: s }, s.replace("_", " "))));
  status.value = params.get("status") || "";
  const meta = h("input", { id: "filter-metadata", placeholder: "key=value", value: params.get("metadata") || "" });
  const body = h("tbody");
  const note = h("div", { "aria-live": "polite" });
  // Pages of PAGE jobs, newest first; "Show more" adds one, and every refresh re-reads them all
  // (keyset pages through `after`), so live progress covers every job shown.
  let pages = 1;
  let latest = 0;
  const more = h("button", { type: "button", id: "more-jobs", hidden: true,
    onclick: () => { pages += 1; refresh(); } }, "Show more jobs");
  const apply = (e) => {
    e && e.preventDefault();
    const q = new URLSearchParams();
    if (status.value) q.set("status", status.value);
    if (meta.value.trim()) q.set("metadata", meta.value.trim());
    const hash = `#/jobs${q.toString() ? "?" + q : ""}`;
    if (location.hash !== hash) location.hash = hash; else refresh();
  };
  status.addEventListener("change", apply);
  clear(root,
    h("div", { class: "page-head" }, h("h1", {}, "Fine-tuning jobs"), h("a", { class: "button primary", href: "#/new" }, "New job")),
    h("form", { class: "filters", onsubmit: apply, "aria-label": "filter jobs" },
      h("label", { for: "filter-status" }, "Status"), status,
      h("label", { for: "filter-metadata" }, "Metadata"), meta,
      h("button", { type: "submit" }, "Filter")),
    note,
    h("div", { class: "table-wrap" }, h("table", { class: "jobs" },
      h("thead", {}, h("tr", {}, ["Job", "Status", "Base model", "Progress", "ETA", "Created"].map((t) => h("th", { scope: "col" }, t)))),
      body)),
    h("div", { class: "actions" }, more));

  async function refresh() {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (status.value) q.set("status", status.value);
    const [k, ...v] = meta.value.trim().split("=");
    if (k && v.length) q.set(`metadata[${k.trim()}]`, v.join("=").trim());
    else if (meta.value.trim()) { clear(note, errorBox({ message: "write the metadata filter as key=value" }, "Filter: ")); return; }
    const mine = ++latest;  // the timer and "Show more" overlap: only the latest may show
    try {
      const jobs = [];
      let page = { has_more: true, last_id: null };
      for (let i = 0; i < pages && page.has_more; i++) {
        if (page.last_id) q.set("after", page.last_id);
        page = await api("GET", `/jobs?${q}`);
        jobs.push(...page.data);
      }
      if (mine !== latest) return;
      clear(note);
      more.hidden = !page.has_more;
      clear(body, jobs.length ? jobs.map(jobRow)
        : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No jobs match. Start one from New job.")));
    } catch (err) {
      if (!guard(err)) clear(note, errorBox(err, "Could not list jobs: "));
    }
  }
  refresh();
  const timer = setInterval(refresh, POLL_MS);
  return () => clearInterval(timer);
}

function jobRow(job) {
  return h("tr", { "data-job": job.id },
    h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.id), job.suffix ? h("div", { class: "muted" }, job.suffix) : null),
    h("td", {}, badge(job.status)),
    h("td", {}, job.base_model),
    h("td", { class: "progress-cell" }, progressBar(job)),
    h("td", {}, eta(job)),
    h("td", {}, when(job.created_at)));
}

export function jobPage(root, id, guard) {
  const controller = new AbortController();
  const head = h("div", { class: "page-head" });
  const summary = h("section", { class: "card", "aria-label": "summary" });
  const chartBox = h("div", { id: "chart", class: "chart", "data-points": 0 });
  const timeline = h("ol", { class: "timeline", "aria-label": "status timeline" });
  const events = h("ol", { class: "events", "aria-label": "latest events" });
  const checkpoints = h("tbody");
  const details = h("div", { class: "grid3" });
  const notice = h("div", { "aria-live": "polite" });
  clear(root, head, notice, summary,
    h("section", { class: "card" }, h("h2", {}, "Training curves"), chartBox,
      h("p", { class: "muted small" }, "Training loss per step, validation loss per epoch, learning rate on the right axis.")),
    h("div", { class: "grid2" },
      h("section", { class: "card" }, h("h2", {}, "Status timeline"), timeline),
      h("section", { class: "card" }, h("h2", {}, "Latest events"), events)),
    h("section", { class: "card" }, h("h2", {}, "Checkpoints"), h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Epoch", "Step", "Validation loss", "Train loss", "Eval score", ""].map((t) => h("th", { scope: "col" }, t)))),
      checkpoints))),
    details);
  const chart = new LossChart(chartBox);
  const seen = [];
  let job = null;

  async function act(verb) {
    try {
      job = await api("POST", `/jobs/${id}/${verb}`);
      render();
    } catch (err) {
      if (!guard(err)) clear(notice, errorBox(err, `Could not ${verb}: `));
    }
  }

  function render() {
    const can = { cancel: !TERMINAL.has(job.status), pause: ["queued", "running"].includes(job.status),
                  resume: job.status === "paused" };
    clear(head, h("div", {}, h("h1", {}, `Job ${job.id}`), h("div", {}, badge(job.status), " ",
        job.fine_tuned_model ? h("code", { id: "model-name" }, job.fine_tuned_model) : null)),
      h("div", { class: "actions" },
        job.fine_tuned_model && job.status === "succeeded"
          ? h("a", { class: "button", href: `#/playground?model=${encodeURIComponent(job.fine_tuned_model)}` }, "Chat") : null,
        ["pause", "resume", "cancel"].map((v) => h("button", { disabled: !can[v], onclick: () => act(v),
          class: v === "cancel" ? "danger" : "" }, v[0].toUpperCase() + v.slice(1)))));
    const p = job.progress || {};
    clear(summary, progressBar(job), facts([
      ["Base model", job.base_model], ["Method", job.method && job.method.type],
      ["Progress", p.total_steps ? `step ${p.step} of ${p.total_steps}, epoch ${(p.epoch || 0).toFixed(2)}` : "—"],
      ["Current loss", p.loss !== null && p.loss !== undefined ? p.loss.toFixed(4) : null],
      ["ETA", eta(job)], ["Trained tokens", job.trained_tokens], ["Attempt", job.attempt],
      ["Created", when(job.created_at)], ["Finished", job.finished_at ? when(job.finished_at) : null],
      ["Serving", job.deployment ? h("span", { id: "deployment", "data-status": job.deployment.status },
        job.deployment.status + (job.deployment.error ? `: ${job.deployment.error}` : "")) : null],
    ]), job.error ? errorBox(job.error, "The job failed: ") : null,
    job.early_stopping ? h("p", { class: "hint" }, `Stopped early: ${job.early_stopping.reason}`) : null);
    renderDetails();
  }

  function renderDetails() {
    const hp = job.hyperparameters;
    const plan = job.plan;
    const ds = job.dataset;
    clear(details,
      h("section", { class: "card" }, h("h2", {}, "Hyperparameters (as resolved)"),
        facts(Object.entries(hp).filter(([, v]) => v !== null && !(Array.isArray(v) && !v.length))
          .map(([k, v]) => [k, Array.isArray(v) ? v.join(", ") : String(v)]))),
      h("section", { class: "card" }, h("h2", {}, "Memory plan"), plan ? [
        facts([["Device", plan.device], ["Micro-batch", plan.micro_batch_size],
               ["Gradient accumulation", plan.gradient_accumulation_steps], ["Packing", plan.packing],
               ["Tokens per row", plan.row_tokens],
               // plans from before the field always checkpointed, except on the CPU
               ["Gradient checkpointing", plan.gradient_checkpointing === false || plan.device === "cpu" ? "off" : "on"],
               ["Estimated peak", bytes(plan.estimated_peak_bytes)],
               ["Available", bytes(plan.available_bytes)]]),
        h("table", { class: "breakdown" }, h("tbody", {}, Object.entries(plan.breakdown || {}).map(([k, v]) =>
          h("tr", {}, h("th", { scope: "row" }, k.replaceAll("_", " ")), h("td", {}, bytes(v)))))),
      ] : h("p", { class: "muted" }, "Planned when a runner claims the job.")),
      h("section", { class: "card" }, h("h2", {}, "Dataset"), ds ? [facts([
        ["Format", ds.format], ["Examples", ds.n_examples], ["Training", ds.n_train],
        ["Validation", `${ds.n_validation} (${ds.validation_source})`],
        ["Trained tokens / epoch", ds.supervised_tokens], ["Context tokens / epoch", ds.context_tokens],
        ["Lengths", ds.lengths ? `mean ${ds.lengths.mean}, p95 ${ds.lengths.p95}, max ${ds.lengths.max}` : null],
        ["Duplicates", ds.n_duplicates || null], ["Over max length", ds.n_overlong || null]]),
        (ds.warnings || []).map((w) => h("p", { class: "hint" }, w))] : h("p", { class: "muted" }, "Validating…")));
  }

  function addEvent(e) {
    seen.push(e);
    if (e.type === "metrics" && e.data) chart.addStep(e.data.step, e.data.loss, e.data.learning_rate);
    if (e.type === "checkpoint" && e.data && e.data.metrics) chart.addValid(e.data.step, e.data.metrics.valid_loss);
    if (e.type === "status" && e.data) {
      timeline.append(h("li", {}, badge(e.data.status), h("span", { class: "muted" }, ` ${when(e.created_at)}`),
        h("div", { class: "small" }, e.message)));
    }
    events.prepend(h("li", { class: `level-${e.level}` }, h("span", { class: "muted" }, new Date(e.created_at * 1000).toLocaleTimeString()), " ", e.message));
    while (events.children.length > 30) events.lastChild.remove();
  }

  async function follow() {
    try {
      for await (const data of sse(`/jobs/${id}/events`, { signal: controller.signal })) addEvent(JSON.parse(data));
    } catch (err) {
      if (err.name !== "AbortError" && !guard(err)) clear(notice, errorBox(err, "The event stream stopped: "));
    }
  }

  async function loadCheckpoints() {
    const page = await api("GET", `/jobs/${id}/checkpoints`);
    clear(checkpoints, page.data.length ? page.data.map((c) => {
      const served = job.fine_tuned_model ? `${job.fine_tuned_model}:ckpt-${c.epoch}` : null;
      const serve = h("button", { disabled: !served, onclick: async () => {
        try {
          const m = await api("POST", `/jobs/${id}/checkpoints/${c.epoch}/deploy`);
          serve.textContent = `Serving as ${m.id}`;
        } catch (err) { if (!guard(err)) clear(notice, errorBox(err, "Could not serve the checkpoint: ")); }
      } }, "Serve");
      return h("tr", {}, h("td", {}, c.epoch), h("td", {}, c.step),
        h("td", {}, c.metrics.valid_loss !== undefined ? c.metrics.valid_loss.toFixed(4) : "—"),
        h("td", {}, c.metrics.train_loss !== undefined ? c.metrics.train_loss.toFixed(4) : "—"),
        h("td", {}, evalCell(c)),
        h("td", { class: "actions" }, serve, served ? h("a", { class: "button", href: `#/playground?model=${encodeURIComponent(served)}&deploy=${c.epoch}&job=${id}` }, "Chat") : null));
    }) : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "One per epoch, as each ends.")));
  }

  // A graded job's score at this epoch beside the base model's, and each answer with its score.
  function evalCell(c) {
    if (c.metrics.eval_score === undefined) return "—";
    const base = job.base_eval_score !== null && job.base_eval_score !== undefined ? ` (base ${job.base_eval_score.toFixed(2)})` : "";
    return h("details", {}, h("summary", {}, `${c.metrics.eval_score.toFixed(2)}${base}`),
      h("ul", { class: "small" }, (c.samples || []).map((sample) =>
        h("li", {}, h("strong", {}, `${sample.score === null ? "—" : sample.score.toFixed(2)} `), `${sample.prompt} → ${sample.answer}`,
          sample.error ? h("span", { class: "muted" }, ` (${sample.error})`) : null))));
  }

  async function refresh() {
    try {
      job = await api("GET", `/jobs/${id}`);
      render();
      await loadCheckpoints();
      // Keep watching a finished job until its adapter is served (or failed to be).
      const deploying = job.status === "succeeded" && job.deploy &&
        (!job.deployment || ["pending", "loading"].includes(job.deployment.status));
      return !TERMINAL.has(job.status) || deploying;
    } catch (err) {
      if (!guard(err)) clear(notice, errorBox(err, err.status === 404 ? "No such job: " : "Could not load the job: "));
      return false;
    }
  }

  let timer = null;
  refresh().then((live) => {
    if (!job) return;  // not found, or not readable: refresh() said why
    follow();
    if (live) timer = setInterval(async () => { if (!(await refresh())) clearInterval(timer); }, POLL_MS);
  });
  return () => { controller.abort(); clearInterval(timer); chart.destroy(); };
}

