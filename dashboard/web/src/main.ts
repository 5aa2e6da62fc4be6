import "uplot/dist/uPlot.min.css";
import "./style.css";
import { api, setCSRF, setUnauthorizedHandler, type SessionInfo, type Info, type DeviceType, ApiError } from "./api";
import { h, clear, errText } from "./dom";
import { onLiveState } from "./live";
import { overviewPage } from "./pages/overview";
import { devicesPage } from "./pages/devices";
import { devicePage } from "./pages/device";
import { deadLettersPage } from "./pages/deadletters";
import { tokensPage } from "./pages/tokens";
import { helpPage } from "./pages/help";

// Ctx is what every page gets: the hub's info and device types, and a
// place to render.
export interface Ctx {
  info: Info;
  types: DeviceType[];
  session: SessionInfo;
  main: HTMLElement;
  params: URLSearchParams;
}

// A page renders into ctx.main and returns its cleanup (streams, timers).
export type Page = (ctx: Ctx, ...args: string[]) => (() => void) | void;

const app = document.getElementById("app")!;
let dispose: (() => void) | void;

const routes: [RegExp, Page, string][] = [
  [/^\/?$/, overviewPage, "overview"],
  [/^\/devices$/, devicesPage, "devices"],
  [/^\/devices\/([^/]+)$/, devicePage, "devices"],
  [/^\/deadletters$/, deadLettersPage, "deadletters"],
  [/^\/tokens$/, tokensPage, "tokens"],
  [/^\/help$/, helpPage, "help"],
];

async function boot() {
  setUnauthorizedHandler(() => { if (dispose) dispose(); dispose = undefined; renderLogin("Your session ended. Log in again."); });
  try {
    const s = await api<SessionInfo>("GET", "/api/v1/session");
    await start(s);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) renderLogin();
    else clear(app, h("div", { class: "error-box" }, "The hub did not answer: ", errText(e)));
  }
}

function renderLogin(note?: string) {
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "current-password", placeholder: "fha_…", required: true, autofocus: true });
  const msg = h("p", { class: "form-error", role: "alert" }, note ?? "");
  const btn = h("button", { type: "submit", class: "btn primary", id: "login" }, "Log in");
  const form = h("form", { class: "login-card" },
    h("div", { class: "brand big" }, h("span", { class: "logo" }), "fieldhub"),
    h("label", { for: "token" }, "API token"),
    input,
    btn,
    msg,
    h("p", { class: "hint" }, "The first admin token is in ", h("code", null, "data_dir/admin.token"),
      " (the hub's log says where on first start). Scripts use the same token as ", h("code", null, "Authorization: Bearer …"), "."));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    btn.disabled = true;
    msg.textContent = "";
    try {
      const s = await api<SessionInfo>("POST", "/api/v1/session", { token: input.value.trim() });
      input.value = "";
      await start(s);
    } catch (err) {
      msg.textContent = err instanceof ApiError && err.status === 401 ? "That token is not valid." : errText(err);
      btn.disabled = false;
    }
  });
  clear(app, h("div", { class: "login-wrap" }, form));
  input.focus();
}

async function start(session: SessionInfo) {
  setCSRF(session.csrf_token ?? "");
  const [info, types] = await Promise.all([
    api<Info>("GET", "/api/v1/info"),
    api<{ types: DeviceType[] }>("GET", "/api/v1/types"),
  ]);
  const main = h("main", { id: "main" });
  const nav = h("nav", { class: "nav" },
    ...[["#/", "Overview", "overview"], ["#/devices", "Devices", "devices"], ["#/deadletters", "Dead letters", "deadletters"],
      ["#/tokens", "Tokens", "tokens"], ["#/help", "Help", "help"]].map(([href, label, key]) => h("a", { href, "data-key": key }, label)));
  const live = h("span", { class: "live", title: "live event stream" });
  const logout = h("button", { type: "button", class: "btn small ghost", id: "logout" }, "Log out");
  logout.addEventListener("click", async () => {
    try { await api("DELETE", "/api/v1/session"); } catch { /* ended anyway */ }
    if (dispose) dispose();
    dispose = undefined;
    location.hash = "";
    renderLogin("Logged out.");
  });
  clear(app,
    h("header", { class: "top" },
      h("a", { class: "brand", href: "#/" }, h("span", { class: "logo" }), "fieldhub"),
      nav,
      h("div", { class: "who" }, live, h("span", { class: "muted" }, session.token_name), logout)),
    main);
  onLiveState((s) => { live.className = "live " + s; live.textContent = s === "live" ? "live" : s === "connecting" ? "connecting…" : ""; });
  const ctx: Ctx = { info, types: types.types, session, main, params: new URLSearchParams() };
  const route = () => {
    if (dispose) dispose();
    dispose = undefined;
    const [path, query] = location.hash.replace(/^#/, "").split("?");
    ctx.params = new URLSearchParams(query ?? "");
    for (const [re, page, key] of routes) {
      const m = re.exec(path || "/");
      if (m) {
        for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", a.dataset.key === key);
        clear(main);
        window.scrollTo(0, 0);
        dispose = page(ctx, ...m.slice(1).map(decodeURIComponent));
        return;
      }
    }
    clear(main, h("div", { class: "empty" }, h("h3", null, "No such page"), h("a", { href: "#/" }, "Back to the overview")));
  };
  window.onhashchange = route;
  route();
}

boot();
