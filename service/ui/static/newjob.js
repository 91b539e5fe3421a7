// New job: drop a JSONL file, see it checked line by line and its first rows rendered with the
// base model's chat template (trained text highlighted), pick the model and hyperparameters,
// see the memory plan and time estimate (a dry run), then start it.

import { api } from "./api.js";
import { bytes, clear, duration, errorBox, facts, h } from "./dom.js";

function field(id, label, input, hint) {
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input, hint ? h("div", { class: "help" }, hint) : null);
}

export function newJobPage(root, guard) {
  let file = null;
  let preview = null;
  const fileInput = h("input", { type: "file", id: "training-file", accept: ".jsonl,.json,application/jsonl,text/plain" });
  const drop = h("label", { class: "drop", for: "training-file" },
    h("strong", {}, "Drop a JSONL training file here"), h("span", { class: "muted" }, " or choose one"), fileInput);
  const model = h("select", {});
  // Bounds, defaults and help come from GET /hyperparameters (declared once, on the server).
  const inputs = {
    n_epochs: h("input", { type: "number" }),
    learning_rate: h("input", { type: "number", step: "any" }),
    batch_size: h("input", { type: "number" }),
    max_seq_length: h("input", { type: "number" }),
    lora_r: h("input", { type: "number" }),
  };
  const hints = Object.fromEntries(Object.keys(inputs).map((k) => [k, h("span", { class: "hp-about" })]));
  const method = h("select", {}, h("option", { value: "supervised" }, "supervised (SFT)"), h("option", { value: "dpo" }, "preference (DPO)"));
  const suffix = h("input", { placeholder: "optional, e.g. support-bot", pattern: "[a-z0-9\\-]*", maxlength: 40 });
  const metadata = h("input", { placeholder: "optional: team=search, run=3" });
  const deploy = h("input", { type: "checkbox", checked: true });
  const check = h("section", { class: "card", id: "check", "aria-live": "polite" }, h("p", { class: "muted" }, "No file yet."));
  const plan = h("section", { class: "card", id: "plan", "aria-live": "polite" }, h("p", { class: "muted" }, "The memory plan and time estimate show once the file is valid."));
  const notice = h("div", { "aria-live": "assertive" });
  const start = h("button", { type: "submit", class: "primary", id: "start-job", disabled: true }, "Start training");
  // Served adapters have a rank limit (the model server's); the field keeps to it while
  // "serve" is checked. GET /serving says what it is.
  let servedRank = null;
  const rankHint = h("span", { id: "lora-r-hint" });
  let rankMax = null;  // the API's own bound on lora_r
  function rankLimit() {
    if (deploy.checked && servedRank) {
      inputs.lora_r.max = Math.min(servedRank, rankMax || servedRank);
      rankHint.textContent = `Served adapters go up to rank ${servedRank}; uncheck serving below for more.`;
    } else {
      if (rankMax) inputs.lora_r.max = rankMax; else inputs.lora_r.removeAttribute("max");
      rankHint.textContent = "";
    }
  }

  // One field from its JSON Schema: the number's bounds (of the numeric branch when it may also
  // be "auto" or null), its default as the starting value, its meaning as the hint.
  function applySchema(props) {
    for (const [name, el] of Object.entries(inputs)) {
      const p = props[name];
      if (!p) continue;
      const num = (p.anyOf || [p]).find((b) => b.type === "integer" || b.type === "number") || {};
      if (num.minimum !== undefined) el.min = num.minimum;
      else if (num.exclusiveMinimum !== undefined) el.min = num.exclusiveMinimum;
      if (num.maximum !== undefined) el.max = num.maximum;
      if (el.value === "" && typeof p.default === "number") el.value = p.default;
      hints[name].textContent = p.description || "";
    }
    rankMax = inputs.lora_r.max ? Number(inputs.lora_r.max) : null;
  }
  // Edits fire checks and estimates faster than they answer: only the latest one may show. A file
  // check in flight outranks any estimate: it ends in a fresh estimate, so an estimate begun before
  // it (or while it runs) must neither show its plan nor enable Start.
  let latestPreview = 0;
  let latestEstimate = 0;
  let checking = false;

  clear(root, h("div", { class: "page-head" }, h("h1", {}, "New fine-tuning job")), notice,
    h("form", { class: "grid2", onsubmit: submit, "aria-label": "new job" },
      h("div", {},
        h("section", { class: "card" }, h("h2", {}, "1. Training data"), drop),
        check),
      h("div", {},
        h("section", { class: "card" }, h("h2", {}, "2. Model and hyperparameters"),
          field("base-model", "Base model", model), field("method", "Method", method),
          field("n-epochs", "Epochs", inputs.n_epochs, hints.n_epochs),
          field("learning-rate", "Learning rate", inputs.learning_rate, hints.learning_rate),
          field("batch-size", "Batch size", inputs.batch_size, hints.batch_size),
          field("max-seq-length", "Max sequence length", inputs.max_seq_length, hints.max_seq_length),
          field("lora-r", "LoRA rank", inputs.lora_r, [hints.lora_r, " ", rankHint]),
          field("deploy", "Serve the model when training succeeds", deploy,
            "Uncheck to train on a base model no vLLM serves, or a LoRA rank above what serving loads."),
          field("suffix", "Model name suffix", suffix), field("metadata", "Metadata", metadata, "key=value pairs, comma-separated; filter jobs by them.")),
        plan, h("div", { class: "actions" }, start))));

  function request(dryRun) {
    const hp = {};
    for (const [k, el] of Object.entries(inputs)) if (el.value !== "") hp[k] = Number(el.value);
    const meta = {};
    for (const pair of metadata.value.split(",").map((p) => p.trim()).filter(Boolean)) {
      const [k, ...v] = pair.split("=");
      meta[k.trim()] = v.join("=").trim();
    }
    const body = { base_model: model.value, training_file: file.id, hyperparameters: hp,
                   method: { type: method.value }, metadata: meta, deploy: deploy.checked, dry_run: dryRun };
    if (suffix.value) body.suffix = suffix.value;
    return body;
  }

  async function loadModels() {
    try {
      applySchema((await api("GET", "/hyperparameters")).properties);
      servedRank = (await api("GET", "/serving")).max_lora_rank;
      rankLimit();
      const page = await api("GET", "/models");
      clear(model, page.data.filter((m) => m.kind === "base").map((m) => h("option", { value: m.id }, m.id)));
    } catch (err) { if (!guard(err)) clear(notice, errorBox(err, "Could not list base models: ")); }
  }

  async function upload(f) {
    clear(check, h("p", { class: "muted" }, `Uploading ${f.name} (${bytes(f.size)})…`));
    start.disabled = true;
    const form = new FormData();
    form.append("file", f, f.name);
    try {
      file = await api("POST", "/files", form);
      await runPreview();
    } catch (err) {
      file = null;
      if (!guard(err)) clear(check, errorBox(err, "The upload failed: "));
    }
  }

  async function runPreview() {
    if (!file) return;
    const mine = ++latestPreview;
    latestEstimate++;  // an estimate still in flight was made for the settings before this change
    checking = true;
    start.disabled = true;
    clear(check, h("p", { class: "muted" }, `Checking ${file.filename} for ${model.value}…`));
    // The plan shown was made for the settings before this change: not shown as current.
    clear(plan, h("p", { class: "muted" }, "Checking the file again before the estimate…"));
    let found;
    try {
      found = await api("POST", `/files/${file.id}/preview`, {
        base_model: model.value, n_rows: 3, method: method.value, max_seq_length: Number(inputs.max_seq_length.value) || 2048 });
    } catch (err) {
      if (mine === latestPreview) {
        checking = false;
        if (!guard(err)) clear(check, errorBox(err, "Could not check the file: "));
      }
      return;
    }
    if (mine !== latestPreview) return;
    checking = false;
    preview = found;
    showPreview();
    if (preview.valid) estimate(); else clear(plan, h("p", { class: "muted" }, "Fix the file to see the plan."));
  }

  function showPreview() {
    const p = preview;
    const head = p.valid
      ? h("p", { class: "ok", id: "check-result" }, `✓ ${p.n_examples} valid examples (${p.format}).`)
      : h("div", { class: "error", role: "alert", id: "check-result" },
          h("strong", {}, `This file cannot train: `),
          p.n_errors ? `${p.n_errors} line${p.n_errors === 1 ? " has an error" : "s have errors"}. Fix ${p.n_errors === 1 ? "it" : "them"} and drop the file again.` : p.message,
          h("ul", { class: "line-errors" }, p.errors.map((e) => h("li", {}, h("strong", {}, `line ${e.line}: `), e.message))),
          p.n_errors > p.errors.length ? h("p", {}, `…and ${p.n_errors - p.errors.length} more.`) : null);
    clear(check, h("h2", {}, `Check: ${file.filename}`), head,
      (p.warnings || []).map((w) => h("p", { class: "hint" }, w)),
      p.rows.length ? [h("h3", {}, `First ${p.rows.length} rows as ${p.base_model} will see them`),
        h("p", { class: "small muted" }, h("mark", { class: "trained" }, "highlighted"), " text is trained (carries the loss); the rest is context."),
        p.rows.map(renderRow)] : null);
  }

  function renderRow(row) {
    const text = (segments) => h("pre", { class: "rendered" }, segments.map((s) =>
      s.trained ? h("mark", { class: "trained", title: `${s.tokens} trained tokens` }, s.text) : h("span", {}, s.text)));
    return h("figure", { class: "row-preview", "data-line": row.line },
      h("figcaption", {}, `line ${row.line}: ${row.tokens} tokens, ${row.trained_tokens} trained${row.truncated ? " (truncated to max length)" : ""}`),
      text(row.segments),
      row.rejected_segments ? [h("div", { class: "small muted" }, "rejected answer:"), text(row.rejected_segments)] : null);
  }

  async function estimate() {
    if (!file || !preview || !preview.valid || checking) return;
    const mine = ++latestEstimate;
    clear(plan, h("p", { class: "muted" }, "Estimating…"));
    start.disabled = true;
    try {
      const est = await api("POST", "/jobs", request(true));
      if (mine !== latestEstimate) return;
      const e = est.estimate;
      const p = est.plan;
      clear(plan, h("h2", {}, "3. Plan and estimate"),
        facts([["Epochs", est.hyperparameters.n_epochs], ["Batch size", est.hyperparameters.batch_size],
               ["Training examples", est.dataset.n_train], ["Validation examples", `${est.dataset.n_validation} (${est.dataset.validation_source})`],
               ["Tokens to train", e.tokens],
               ["Estimated time", e.seconds ? `${duration(e.seconds)} on ${e.device} (from ${e.calibration_jobs} finished job${e.calibration_jobs === 1 ? "" : "s"})` : (e.message || "no estimate yet")]]),
        p ? [h("h3", {}, `Memory on ${p.device}: ${bytes(p.estimated_peak_bytes)} of ${bytes(p.available_bytes)}`),
             h("table", { class: "breakdown" }, h("tbody", {}, Object.entries(p.breakdown || {}).map(([k, v]) =>
               h("tr", {}, h("th", { scope: "row" }, k.replaceAll("_", " ")), h("td", {}, bytes(v))))))]
          : h("p", { class: "muted", id: "no-plan" }, "No memory plan yet: the first job of this model shape calibrates the device."));
      start.disabled = false;
    } catch (err) {
      if (mine === latestEstimate && !guard(err)) clear(plan, errorBox(err, "This job cannot start as set: "));
    }
  }

  async function submit(e) {
    e.preventDefault();
    if (!file) return;
    start.disabled = true;
    try {
      const job = await api("POST", "/jobs", request(false));
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      start.disabled = false;
      if (!guard(err)) clear(notice, errorBox(err, "The job was not created: "));
    }
  }

  fileInput.addEventListener("change", () => fileInput.files[0] && upload(fileInput.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) upload(e.dataTransfer.files[0]);
  });
  model.addEventListener("change", runPreview);
  method.addEventListener("change", runPreview);
  inputs.max_seq_length.addEventListener("change", runPreview);
  for (const el of [inputs.n_epochs, inputs.batch_size, inputs.learning_rate, inputs.lora_r]) el.addEventListener("change", estimate);
  deploy.addEventListener("change", () => { rankLimit(); estimate(); });
  loadModels();
  return () => {};
}
