// Small DOM helpers: elements are built with h(), never from HTML strings, so text from the
// service (job errors, training rows, model answers) is always shown as text.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function badge(status) {
  return h("span", { class: `badge status-${status}`, "data-status": status }, status.replace("_", " "));
}

export function when(unix) {
  if (!unix) return "—";
  return new Date(unix * 1000).toLocaleString();
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function eta(job) {
  if (TERMINAL.has(job.status)) return job.status === "succeeded" ? "done" : "—";
  if (!job.estimated_finish) {
    const est = job.estimate && job.estimate.seconds;
    return est ? `~${duration(est)} (estimate)` : "—";
  }
  return `${duration(job.estimated_finish - Date.now() / 1000)} left`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 2 : 0)} ${units[i]}`;
}

export function progressBar(job) {
  const p = job.progress || {};
  const done = job.status === "succeeded";
  const frac = done ? 1 : (p.total_steps ? Math.min(1, p.step / p.total_steps) : 0);
  const label = p.total_steps ? `step ${p.step} of ${p.total_steps}` : (done ? "done" : "not started");
  return h("div", { class: "progress", role: "progressbar", "aria-label": "training progress",
                    "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(frac * 100),
                    "aria-valuetext": label, title: label },
    h("div", { class: "progress-fill", style: `width:${(frac * 100).toFixed(1)}%` }));
}

// A definition list from [label, value] pairs, skipping empty values.
export function facts(pairs) {
  return h("dl", { class: "facts" },
    pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
      .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

// An error shown to the user: the service's words, plus what to do where we know it.
export function errorBox(err, prefix = "") {
  const advice = {
    unauthorized: "Sign in again with a valid API key.",
    missing_api_key: "Sign in with your API key.",
    unreachable: "Check that the service is running, then try again.",
    object_store_unavailable: "Storage is briefly unavailable; try again in a few seconds.",
    model_server_unavailable: "The model server is starting or restarting; try again in a minute.",
    model_loading: "The model is still being loaded and checked; try again in a few seconds.",
  }[err.code];
  return h("div", { class: "error", role: "alert" },
    h("strong", {}, prefix || "Something went wrong: "), err.message,
    err.line ? ` (line ${err.line})` : "", advice ? h("div", { class: "hint" }, advice) : null);
}
