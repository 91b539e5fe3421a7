// Playground: one prompt, answered side by side by the base model and a fine-tuned model or
// checkpoint, both streamed through the tenant-checked /v1 gateway (greedy, so runs compare).

import { api, streamChat } from "./api.js";
import { clear, errorBox, h } from "./dom.js";

export function playgroundPage(root, params, guard) {
  const controller = new AbortController();
  const left = h("select", { id: "model-left" });
  const right = h("select", { id: "model-right" });
  const prompt = h("textarea", { id: "prompt", rows: 3, placeholder: "Ask both models the same thing" });
  const send = h("button", { type: "submit", class: "primary" }, "Ask both");
  const notice = h("div", { "aria-live": "polite" });
  const answers = [h("div", { class: "answer", id: "answer-left", "aria-live": "polite" }),
                   h("div", { class: "answer", id: "answer-right", "aria-live": "polite" })];
  const wanted = params.get("model");

  clear(root, h("div", { class: "page-head" }, h("h1", {}, "Playground")), notice,
    h("form", { class: "card", onsubmit: ask, "aria-label": "ask both models" },
      h("label", { for: "prompt" }, "Prompt"), prompt, h("div", { class: "actions" }, send)),
    h("div", { class: "grid2 side-by-side" },
      h("section", { class: "card" }, h("label", { for: "model-left" }, "Model A"), left, answers[0]),
      h("section", { class: "card" }, h("label", { for: "model-right" }, "Model B"), right, answers[1])));

  async function load() {
    try {
      // A checkpoint opened from a job page is served first (idempotent), then listed.
      if (params.get("deploy") && params.get("job")) {
        await api("POST", `/jobs/${params.get("job")}/checkpoints/${params.get("deploy")}/deploy`);
      }
      const page = await api("GET", "/models");
      const option = (m) => h("option", { value: m.id },
        m.kind === "base" ? `${m.id} (base)` : `${m.id}${m.status && m.status !== "loaded" ? ` (${m.status})` : ""}`);
      const bases = page.data.filter((m) => m.kind === "base" && m.served);
      const tuned = page.data.filter((m) => m.kind === "adapter" && m.status !== "unloaded");
      clear(left, [...bases, ...tuned].map(option));
      clear(right, [...tuned, ...bases].map(option));
      if (wanted && ![...right.options].some((o) => o.value === wanted)) right.append(h("option", { value: wanted }, `${wanted} (loading)`));
      if (wanted) right.value = wanted;
      if (!bases.length) clear(notice, errorBox({ message: "no base model is being served, so there is nothing to chat with; start the serving sidecar" }, "Playground: "));
    } catch (err) {
      if (!guard(err)) clear(notice, errorBox(err, "Could not list models: "));
    }
  }

  async function ask(e) {
    e.preventDefault();
    const text = prompt.value.trim();
    if (!text) { prompt.focus(); return; }
    send.disabled = true;
    clear(notice);
    await Promise.all([left, right].map(async (select, i) => {
      const out = answers[i];
      out.dataset.state = "streaming";
      clear(out);
      try {
        await streamChat(select.value, text, (piece) => out.append(piece), controller.signal);
        out.dataset.state = "done";
      } catch (err) {
        out.dataset.state = "error";
        if (err.name !== "AbortError" && !guard(err)) clear(out, errorBox(err, `${select.value}: `));
      }
    }));
    send.disabled = false;
  }

  load();
  return () => controller.abort();
}
