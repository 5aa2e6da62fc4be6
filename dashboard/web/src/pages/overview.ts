import { get, type Summary, type HubEvent } from "../api";
import { h, clear, errorBox, fmtNum, relTime, emptyState } from "../dom";
import { openStream } from "../live";
import type { Ctx } from "../main";

// overviewPage: the fleet at a glance. Counts and rates are polled (the
// summary is one cheap request); rejections and activity come live.
export function overviewPage(ctx: Ctx): () => void {
  const cards = h("div", { class: "cards" });
  const rejections = h("tbody");
  const activity = h("ul", { class: "feed" });
  const err = h("div");
  clear(ctx.main,
    h("div", { class: "page-head" }, h("h1", null, "Fleet overview"),
      h("div", { class: "actions" }, h("a", { class: "btn", href: "#/devices" }, "All devices"), h("a", { class: "btn ghost", href: "#/help" }, "Grafana recipe"))),
    err, cards,
    h("div", { class: "grid2" },
      h("section", { class: "panel" }, h("h2", null, "Recent rejections"),
        h("table", { class: "table", id: "recent-rejections" },
          h("thead", null, h("tr", null, h("th", null, "When"), h("th", null, "Device"), h("th", null, "Reason"), h("th", null, "Detail"))),
          rejections),
        h("p", { class: "muted small" }, h("a", { href: "#/deadletters" }, "All dead letters →"))),
      h("section", { class: "panel" }, h("h2", null, "Live activity"), activity)));

  let recent: HubEvent[] = [];
  const renderRejections = () => {
    if (recent.length === 0) {
      clear(rejections, h("tr", null, h("td", { colspan: 4, class: "muted" }, "No rejected messages since the hub started.")));
      return;
    }
    clear(rejections, recent.slice(0, 10).map((e) => h("tr", null,
      h("td", { class: "nowrap" }, relTime(e.ts)),
      h("td", null, h("a", { href: `#/devices/${encodeURIComponent(e.device)}` }, e.device)),
      h("td", null, h("span", { class: "badge reason" }, e.data?.reason ?? "")),
      h("td", { class: "detail" }, e.data?.detail ?? ""))));
  };

  const card = (id: string, label: string, value: string, sub?: Node | string, cls = "") =>
    h("div", { class: "card " + cls, id }, h("div", { class: "card-label" }, label), h("div", { class: "card-value" }, value), sub ? h("div", { class: "card-sub" }, sub) : null);

  const load = async () => {
    try {
      const s = await get<Summary>("/api/v1/summary");
      clear(err);
      if (s.recent_rejections) { recent = s.recent_rejections.slice().reverse(); renderRejections(); }
      clear(cards,
        card("card-total", "Devices", String(s.devices.total)),
        card("card-online", "Online", String(s.devices.online), s.devices.total ? `${Math.round(100 * s.devices.online / s.devices.total)} %` : "", "ok"),
        card("card-offline", "Offline", String(s.devices.offline), "", s.devices.offline ? "warn" : ""),
        card("card-readings", "Readings / s", fmtNum(s.rates.readings_per_sec), sparkline(s.rates.readings), ""),
        card("card-rejections", "Rejections / s", fmtNum(s.rates.rejections_per_sec), sparkline(s.rates.rejections), s.rates.rejections_per_sec > 0 ? "bad" : ""));
      if (s.devices.total === 0) {
        clear(err, emptyState("No devices yet",
          "Add one on the ", h("a", { href: "#/devices" }, "devices page"), ", or start a simulated fleet: ",
          h("code", null, "devicesim run --profile configs/devicesim/fleet.yaml --provision …"), " (see the README)."));
      }
    } catch (e) {
      clear(err, errorBox(e, load));
    }
  };
  load();
  const timer = window.setInterval(load, 5000);

  const stop = openStream({
    types: ["presence", "command", "rejection"],
    onEvent: (e) => {
      if (e.type === "rejection") { recent.unshift(e); recent = recent.slice(0, 20); renderRejections(); }
      const li = h("li", { class: "ev-" + e.type },
        h("span", { class: "muted nowrap" }, new Date(e.ts).toLocaleTimeString()), " ",
        h("a", { href: `#/devices/${encodeURIComponent(e.device)}` }, e.device), " ", describe(e));
      activity.prepend(li);
      while (activity.children.length > 30) activity.lastElementChild!.remove();
    },
  });
  renderRejections();
  return () => { clearInterval(timer); stop(); };
}

export function describe(e: HubEvent): string {
  switch (e.type) {
    case "presence": return e.data?.online ? "came online" : "went offline";
    case "command": return `command ${e.data?.name ?? ""} ${e.data?.from ? e.data.from + " → " : ""}${e.data?.to ?? ""}`;
    case "rejection": return `message rejected: ${e.data?.reason ?? ""}`;
    default: return e.type;
  }
}

// sparkline draws per-second counts as a small inline SVG.
function sparkline(vals: number[]): SVGSVGElement {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const w = 120, hgt = 28;
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.setAttribute("class", "spark");
  const max = Math.max(1, ...vals);
  const pts = vals.map((v, i) => `${(i / Math.max(1, vals.length - 1)) * w},${hgt - 2 - (v / max) * (hgt - 4)}`).join(" ");
  const pl = document.createElementNS(ns, "polyline");
  pl.setAttribute("points", pts);
  svg.appendChild(pl);
  return svg;
}
