import { api, get, enc, ApiError, type Device, type Point, type Command, type TwinView, type TwinDoc } from "../api";
import { h, clear, errorBox, relTime, fmtTime, fmtNum, badge, errText, debounce } from "../dom";
import { openStream } from "../live";
import { MetricChart, stepFor } from "../chart";
import { tokenPanel } from "./devices";
import { deadLetterTable } from "./deadletters";
import type { Ctx } from "../main";

const RANGES: [string, number][] = [["15m", 15 * 60e3], ["1h", 3600e3], ["6h", 6 * 3600e3], ["24h", 24 * 3600e3], ["7d", 7 * 24 * 3600e3]];

// devicePage: one device, live. Charts of its numeric metrics (range
// picker, drag to zoom with server-side bucketing, live updates), its
// commands (form, ledger, live state), its twin and its dead letters.
export function devicePage(ctx: Ctx, id: string): () => void {
  const cleanups: (() => void)[] = [];
  const title = h("h1", null, h("span", { class: "dot off", id: "device-dot" }), " ", id);
  const meta = h("div", { class: "meta" });
  const latestBox = h("div", { class: "latest-cards", id: "latest" });
  const err = h("div");
  const rangeBar = h("div", { class: "seg", id: "range" });
  const zoomNote = h("span", { class: "muted" });
  const charts = h("div", { class: "charts", id: "charts" });
  const cmdPanel = h("section", { class: "panel", id: "commands" });
  const twinPanel = h("section", { class: "panel", id: "twin" });
  const dlPanel = h("section", { class: "panel", id: "device-deadletters" });
  const rotate = h("button", { type: "button", class: "btn", id: "rotate-token" }, "Rotate token");
  const del = h("button", { type: "button", class: "btn danger", id: "delete-device" }, "Delete");

  clear(ctx.main,
    h("p", { class: "crumbs" }, h("a", { href: "#/devices" }, "Devices"), " / ", id),
    h("div", { class: "page-head" }, title,
      h("div", { class: "actions" }, h("a", { class: "btn ghost", href: `#/help?device=${enc(id)}` }, "Grafana"), rotate, del)),
    meta, err, latestBox,
    h("section", { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", null, "Telemetry"), h("div", { class: "actions" }, zoomNote, rangeBar)),
      charts),
    h("div", { class: "grid2" }, cmdPanel, twinPanel),
    dlPanel);

  let device: Device | undefined;
  const typeOf = () => ctx.types.find((t) => t.name === device?.type);
  const unitOf = (m: string) => typeOf()?.metrics?.[m]?.unit ?? "";
  // Booleans are stored as 0/1; show them as such when the type says so.
  const fmtValue = (m: string, v: number) => (typeOf()?.metrics?.[m]?.type === "bool" ? (v ? "true" : "false") : fmtNum(v));

  // ---- device and latest values
  const renderDevice = () => {
    if (!device) return;
    const dot = title.querySelector(".dot")!;
    dot.className = "dot " + (device.online ? "on" : "off");
    clear(meta,
      h("span", null, device.online ? h("strong", { class: "ok-text" }, "online") : h("span", null, "offline, last seen ", relTime(device.last_seen))),
      h("span", null, "type ", device.type ? h("strong", null, device.type) : h("span", { class: "muted" }, "none (any metric accepted)")),
      Object.keys(device.labels ?? {}).length ? h("span", null, Object.entries(device.labels).map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`))) : null,
      h("span", { class: "muted" }, "added ", fmtTime(device.created_at)));
    const latest = device.latest ?? [];
    clear(latestBox, latest.length === 0
      ? h("p", { class: "muted" }, "No readings stored yet. The device publishes to ", h("code", null, `devices/${id}/telemetry`), ".")
      : latest.map((s) => h("div", { class: "lcard", "data-metric": s.metric },
        h("div", { class: "card-label" }, s.metric), h("div", { class: "card-value" }, fmtValue(s.metric, s.value), h("small", null, " " + unitOf(s.metric))),
        h("div", { class: "card-sub", title: fmtTime(s.ts) }, relTime(s.ts)))));
  };
  const loadDevice = async () => {
    try {
      device = await get<Device>(`/api/v1/devices/${enc(id)}`);
      clear(err);
      renderDevice();
      ensureCharts();
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        clear(ctx.main, h("div", { class: "empty" }, h("h3", null, `No device "${id}"`), h("p", null, "It may have been deleted. ", h("a", { href: "#/devices" }, "Back to the list"))));
        return;
      }
      clear(err, errorBox(e, loadDevice));
    }
  };

  // ---- charts
  let range = 15 * 60e3;
  let zoom: [number, number] | null = null;
  const chartMap = new Map<string, MetricChart>();
  const window_ = (): [number, number] => zoom ?? [Date.now() - range, Date.now()];
  // Charts for the metrics the device has sent (a declared metric it never
  // sent would only be an empty chart).
  const chartMetrics = () => [...new Set((device?.latest ?? []).map((s) => s.metric))].sort();
  const onZoom = (from: number, to: number) => { zoom = [from, to]; renderRange(); loadCharts(); };
  const ensureCharts = () => {
    const ms = chartMetrics();
    if (ms.length === 0 && chartMap.size === 0) {
      clear(charts, h("p", { class: "muted", id: "no-charts" }, "Charts appear with the first reading."));
      return;
    }
    charts.querySelector("#no-charts")?.remove();
    let added = false;
    for (const m of ms) {
      if (!chartMap.has(m)) { chartMap.set(m, new MetricChart(charts, m, unitOf(m), onZoom, typeOf()?.metrics?.[m]?.type === "bool")); added = true; }
    }
    if (added) loadCharts();
  };
  let chartSeq = 0;
  const loadCharts = async () => {
    const seq = ++chartSeq;
    const [from, to] = window_();
    const step = stepFor(to - from);
    try {
      await Promise.all([...chartMap.values()].map(async (c) => {
        const pts = await get<Point[]>(`/api/v1/devices/${enc(id)}/telemetry/${enc(c.metric)}?from=${from}&to=${to}&step=${step}s&agg=avg`);
        if (seq === chartSeq) c.setData(pts, from, to, step);
      }));
    } catch (e) {
      clear(err, errorBox(e, loadCharts));
    }
  };
  const renderRange = () => {
    clear(rangeBar, RANGES.map(([label, ms]) => {
      const b = h("button", { type: "button", class: "btn small" + (!zoom && ms === range ? " active" : ""), "data-range": label }, label);
      b.addEventListener("click", () => { range = ms; zoom = null; renderRange(); loadCharts(); });
      return b;
    }));
    if (zoom) {
      const reset = h("button", { type: "button", class: "btn small" }, "Back to live");
      reset.addEventListener("click", () => { zoom = null; renderRange(); loadCharts(); });
      clear(zoomNote, `zoomed: ${new Date(zoom[0]).toLocaleString()} – ${new Date(zoom[1]).toLocaleTimeString()} `, reset);
    } else {
      clear(zoomNote, "drag across a chart to zoom");
    }
  };
  renderRange();

  // ---- commands
  const name = h("input", { type: "text", id: "cmd-name", list: "cmd-names", placeholder: "reboot", required: true });
  const params = h("textarea", { id: "cmd-params", rows: 2, spellcheck: false }, "{}");
  const timeout = h("input", { type: "text", id: "cmd-timeout", placeholder: "default", size: 8 });
  const cmdMsg = h("p", { class: "form-error", role: "alert" });
  const sendBtn = h("button", { type: "submit", class: "btn primary", id: "cmd-send" }, "Send");
  const ledger = h("tbody", { id: "cmd-ledger" });
  const cmdForm = h("form", { class: "cmd-form" },
    h("datalist", { id: "cmd-names" }, ["reboot", "set_interval", "set", "fail"].map((n) => h("option", { value: n }))),
    h("div", { class: "row" },
      h("label", null, "Command", name),
      h("label", null, "Timeout", timeout)),
    h("label", null, "Params (JSON object)", params),
    h("div", { class: "row" }, sendBtn, cmdMsg));
  clear(cmdPanel, h("h2", null, "Commands"), cmdForm,
    h("table", { class: "table" }, h("thead", null, h("tr", null, h("th", null, "Sent"), h("th", null, "Command"), h("th", null, "State"), h("th", null, "Result"))), ledger));
  cmdForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    cmdMsg.textContent = "";
    let p: unknown;
    try { p = JSON.parse(params.value || "{}"); } catch (er) { cmdMsg.textContent = "Params are not valid JSON: " + errText(er); return; }
    if (p === null || typeof p !== "object" || Array.isArray(p)) { cmdMsg.textContent = "Params must be a JSON object."; return; }
    sendBtn.disabled = true;
    try {
      // A fresh key per click: a retried request cannot send twice.
      await api<Command>("POST", `/api/v1/devices/${enc(id)}/commands`, {
        name: name.value.trim(), params: p, timeout: timeout.value.trim() || undefined, idempotency_key: crypto.randomUUID(),
      });
      loadCommands();
    } catch (er) {
      cmdMsg.textContent = errText(er);
    } finally {
      sendBtn.disabled = false;
    }
  });
  const open = new Set<string>();
  const loadCommands = async () => {
    try {
      const cmds = await get<Command[]>(`/api/v1/devices/${enc(id)}/commands?limit=20`);
      if (cmds.length === 0) { clear(ledger, h("tr", null, h("td", { colspan: 4, class: "muted" }, "No commands sent to this device yet."))); return; }
      const rows: HTMLElement[] = [];
      for (const c of cmds) {
        const tr = h("tr", { class: "cmd-row", "data-id": c.id, "data-state": c.state },
          h("td", { class: "nowrap", title: fmtTime(c.created_at) }, relTime(c.created_at)),
          h("td", null, h("code", null, c.name), " ", h("span", { class: "muted small" }, shortJSON(c.params))),
          h("td", null, badge(c.state)),
          h("td", { class: "detail" }, c.error ? h("span", { class: "bad-text" }, c.error) : c.result !== undefined ? shortJSON(c.result) : ""));
        tr.addEventListener("click", () => { open.has(c.id) ? open.delete(c.id) : open.add(c.id); loadCommands(); });
        rows.push(tr);
        if (open.has(c.id)) rows.push(h("tr", { class: "history" }, h("td", { colspan: 4 }, await historyOf(c.id))));
      }
      clear(ledger, rows);
    } catch (e) {
      clear(ledger, h("tr", null, h("td", { colspan: 4 }, errorBox(e, loadCommands))));
    }
  };
  const historyOf = async (cid: string) => {
    const c = await get<Command>(`/api/v1/commands/${enc(cid)}`);
    return h("ol", { class: "timeline" }, (c.history ?? []).map((t) => h("li", null,
      h("span", { class: "muted" }, new Date(t.at).toLocaleTimeString()), " ", t.from ? `${t.from} → ` : "", badge(t.to), t.detail ? " " + t.detail : "")));
  };
  const reloadCommands = debounce(loadCommands, 150);

  // ---- twin
  const desired = h("textarea", { id: "twin-desired", rows: 8, spellcheck: false });
  const reported = h("pre", { id: "twin-reported", class: "json" });
  const delta = h("pre", { id: "twin-delta", class: "json" });
  const twinMsg = h("p", { class: "form-error", role: "alert" });
  const dVer = h("span", { class: "muted small" });
  const rVer = h("span", { class: "muted small" });
  const saveTwin = h("button", { type: "button", class: "btn primary", id: "twin-save" }, "Set desired");
  let dirty = false;
  desired.addEventListener("input", () => { dirty = true; });
  clear(twinPanel, h("h2", null, "Twin"),
    h("div", { class: "twin" },
      h("div", null, h("h3", null, "Desired ", dVer), desired, h("div", { class: "row" }, saveTwin, twinMsg)),
      h("div", null, h("h3", null, "Reported ", rVer), reported, h("h3", null, "Delta ", h("span", { class: "muted small" }, "(desired, not yet reported)")), delta)));
  const pretty = (d: TwinDoc) => JSON.stringify(d.doc ?? {}, null, 2);
  const loadTwin = async () => {
    try {
      const t = await get<TwinView>(`/api/v1/devices/${enc(id)}/twin`);
      if (!dirty) desired.value = pretty(t.desired);
      dVer.textContent = t.desired.version ? `v${t.desired.version}, ${relTime(t.desired.updated_at)}` : "never set";
      rVer.textContent = t.reported.version ? `v${t.reported.version}, ${relTime(t.reported.updated_at)}` : "nothing reported";
      reported.textContent = pretty(t.reported);
      const dk = Object.keys(t.delta ?? {});
      delta.textContent = dk.length ? JSON.stringify(t.delta, null, 2) : "in sync";
      delta.classList.toggle("in-sync", dk.length === 0);
    } catch (e) {
      twinMsg.textContent = errText(e);
    }
  };
  saveTwin.addEventListener("click", async () => {
    twinMsg.textContent = "";
    let doc: unknown;
    try { doc = JSON.parse(desired.value || "{}"); } catch (er) { twinMsg.textContent = "Not valid JSON: " + errText(er); return; }
    if (doc === null || typeof doc !== "object" || Array.isArray(doc)) { twinMsg.textContent = "The desired state must be a JSON object."; return; }
    saveTwin.disabled = true;
    try {
      await api<TwinDoc>("PUT", `/api/v1/devices/${enc(id)}/twin/desired`, doc);
      dirty = false;
      await loadTwin();
    } catch (er) {
      twinMsg.textContent = errText(er);
    } finally {
      saveTwin.disabled = false;
    }
  });

  // ---- dead letters
  const dl = deadLetterTable({ device: id, includeReplayed: true, limit: 20, compact: true });
  clear(dlPanel, h("h2", null, "Dead letters of this device"), dl.el);
  cleanups.push(dl.dispose);

  // ---- actions
  rotate.addEventListener("click", async () => {
    if (!confirm(`Rotate the token of ${id}? The old token stops working for new connections at once.`)) return;
    try {
      const r = await api<{ token: string }>("POST", `/api/v1/devices/${enc(id)}/token`);
      const done = h("button", { type: "button", class: "btn primary" }, "Done");
      const dlg = h("dialog", { class: "dialog" }, h("div", { class: "dialog-body" }, h("h2", null, `New token for ${id}`), tokenPanel(ctx.info, id, r.token), h("div", { class: "actions" }, done)));
      document.body.appendChild(dlg);
      done.addEventListener("click", () => { dlg.close(); dlg.remove(); });
      dlg.showModal();
    } catch (e) { alert(errText(e)); }
  });
  del.addEventListener("click", async () => {
    if (!confirm(`Delete ${id}? Its token stops working and its pending commands are cancelled. Stored telemetry stays until retention.`)) return;
    try {
      await api("DELETE", `/api/v1/devices/${enc(id)}`);
      location.hash = "#/devices";
    } catch (e) { alert(errText(e)); }
  });

  // ---- live
  cleanups.push(openStream({
    device: id,
    onOpen: () => { loadDevice(); loadCommands(); loadTwin(); dl.reload(); },
    onEvent: (e) => {
      if (!device) return;
      switch (e.type) {
        case "reading": {
          const samples: { metric: string; ts: number; value: number }[] = e.data?.samples ?? [];
          const latest = new Map((device.latest ?? []).map((s) => [s.metric, s]));
          for (const s of samples) {
            const cur = latest.get(s.metric);
            if (!cur || s.ts >= cur.ts) latest.set(s.metric, s);
          }
          device.latest = [...latest.values()].sort((a, b) => (a.metric < b.metric ? -1 : 1));
          device.last_seen = new Date().toISOString();
          renderDevice();
          ensureCharts();
          if (!zoom) {
            const [from, to] = window_();
            for (const s of samples) chartMap.get(s.metric)?.append(s.ts, s.value, from, to);
          }
          break;
        }
        case "presence":
          device.online = !!e.data?.online;
          device.last_seen = new Date(e.ts).toISOString();
          renderDevice();
          break;
        case "command":
          reloadCommands();
          if (e.data?.to === "succeeded") loadTwin();
          break;
        case "rejection":
          dl.reload();
          break;
      }
    },
  }));
  const timers = [
    window.setInterval(loadTwin, 5000),
    window.setInterval(() => { renderDevice(); if (!zoom) { const [f, t] = window_(); for (const c of chartMap.values()) if (c.points === 0) c.setData([], f, t, stepFor(t - f)); } }, 10000),
  ];
  loadDevice();
  loadCommands();
  loadTwin();
  return () => {
    for (const c of cleanups) c();
    for (const t of timers) clearInterval(t);
    for (const c of chartMap.values()) c.destroy();
  };
}

function shortJSON(v: unknown): string {
  if (v === undefined || v === null) return "";
  const s = JSON.stringify(v);
  if (s === "{}") return "";
  return s.length > 80 ? s.slice(0, 77) + "…" : s;
}
