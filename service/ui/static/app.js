// The dashboard shell: sign-in, navigation and a hash router (#/jobs, #/jobs/<id>, #/new,
// #/playground). Each page is a function that renders into the main element and returns a
// cleanup function that stops its polling and streams when the user leaves it.

import { api, ApiError, session } from "./api.js";
import { clear, errorBox, h } from "./dom.js";
import { jobPage, jobsPage } from "./jobs.js";
import { newJobPage } from "./newjob.js";
import { playgroundPage } from "./playground.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let leave = () => {};

function signInPage(root, message) {
  const input = h("input", { id: "api-key", type: "password", autocomplete: "off", required: true,
                             spellcheck: "false", placeholder: "td-…" });
  const status = h("div", { "aria-live": "polite" }, message ? errorBox(message, "") : null);
  const form = h("form", { class: "card signin", "aria-labelledby": "signin-title", onsubmit: async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    session.set(key);
    clear(status, h("p", { class: "muted" }, "Checking the key…"));
    try {
      await api("GET", "/jobs?limit=1");
      route();
    } catch (err) {
      session.clear();
      const words = err.status === 401
        ? new ApiError(401, { error: { code: "bad_key", message: "That API key was not accepted. Check it for typos, or ask your administrator for a new one (python -m service keys create --tenant NAME)." } })
        : err;
      clear(status, errorBox(words, "Could not sign in: "));
      input.focus();
    }
  } },
  h("h1", { id: "signin-title" }, "Sign in to tunedock"),
  h("p", { class: "muted" }, "Your API key is kept for this browser session only and sent with each request; it is never put in a link."),
  h("label", { for: "api-key" }, "API key"), input,
  h("button", { type: "submit", class: "primary" }, "Sign in"), status);
  clear(root, form);
  input.focus();
  return () => {};
}

function renderNav(signedIn) {
  const here = location.hash || "#/jobs";
  const link = (href, text) => h("a", { href, "aria-current": here.startsWith(href) ? "page" : null }, text);
  clear(nav, signedIn ? [
    link("#/jobs", "Jobs"), link("#/new", "New job"), link("#/playground", "Playground"),
    h("button", { class: "link", id: "sign-out", onclick: () => { session.clear(); location.hash = "#/jobs"; route(); } }, "Sign out"),
  ] : []);
}

function route() {
  leave();
  leave = () => {};
  const [path, query] = (location.hash.slice(1) || "/jobs").split("?");
  const params = new URLSearchParams(query || "");
  renderNav(Boolean(session.key));
  main.focus({ preventScroll: true });
  if (!session.key) {
    leave = signInPage(main);
    return;
  }
  // Any page may find the key refused (revoked meanwhile): back to sign-in, with the reason.
  const guard = (err) => {
    if (err instanceof ApiError && err.status === 401) {
      session.clear();
      renderNav(false);
      leave = signInPage(main, new ApiError(401, { error: { code: "unauthorized", message: "Your API key is no longer accepted." } }));
      return true;
    }
    return false;
  };
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "jobs" && parts[1]) leave = jobPage(main, decodeURIComponent(parts[1]), guard);
  else if (parts[0] === "new") leave = newJobPage(main, guard);
  else if (parts[0] === "playground") leave = playgroundPage(main, params, guard);
  else leave = jobsPage(main, params, guard);
}

window.addEventListener("hashchange", route);
route();
